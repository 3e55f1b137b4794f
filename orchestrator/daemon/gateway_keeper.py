"""The daemon's side of the OpenAI gateway: start it as its own process, health-check it, restart
it with backoff, stop it on shutdown. Its crash touches no engine: it is in its own session, and
engines never depend on it.

The gateway carries its own mark (MIG_ORCH_GATEWAY=<state_dir>) and never the engines' one, so a
daemon that starts after a crash stops a gateway left behind instead of taking it for an engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from orchestrator.config import Config, parse_listen
from orchestrator.engine import marker
from orchestrator.engine.process import ProcessId, ProcessOps
from orchestrator.engine.restart_policy import RestartPolicy
from orchestrator.engine.terminate import terminate_tree
from orchestrator.gateway.routes import connect_host
from orchestrator.supervisor.supervisor import ENGINE_CWD
from orchestrator.trusted_paths import open_own, private_subdir

log = logging.getLogger(__name__)

ENV = "MIG_ORCH_GATEWAY"
# A gateway imports in about a second; one that cannot answer /health by then is stuck.
STARTUP_TIMEOUT_S = 30.0
# Streams in flight get this long to finish when the gateway is stopped or replaced.
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class GatewayLaunch:
    argv: list[str]
    url: str  # where the daemon checks /health


def gateway_launch(cfg: Config, config_path: Path | None = None) -> GatewayLaunch:
    """`config_path` (models.toml) is where a gateway with keys finds its models' students."""
    g, o = cfg.gateway, cfg.orchestrator
    host, port = parse_listen(g.listen)
    argv = [
        sys.executable,
        "-m",
        "orchestrator.gateway",
        "--listen",
        g.listen,
        "--control",
        f"http://{connect_host(o.listen_host)}:{o.listen_port}",
        "--refresh-s",
        str(g.refresh_s),
        "--max-body-bytes",
        str(g.max_body_bytes),
        "--body-timeout-s",
        str(g.body_timeout_s),
    ]
    if o.admin_token_file is not None:
        argv += ["--token-file", str(o.admin_token_file)]
    if g.keys:
        if config_path is None:  # never an open gateway where keys were asked for
            raise ValueError("[gateway] keys = true needs the path of models.toml")
        argv += ["--keys-config", str(config_path)]
    if g.otlp_endpoint:
        argv += ["--otlp-endpoint", g.otlp_endpoint]
    return GatewayLaunch(argv, f"http://{connect_host(host)}:{port}")


def gateway_env(state_dir: Path) -> dict[str, str]:
    """The daemon's environment, marked with the daemon's secret tag (never an engine's mark);
    no working directory on the gateway's module path (the keeper starts it in engine-cwd)."""
    env = {k: v for k, v in os.environ.items() if k != marker.ENV}
    env[ENV] = marker.DaemonMark.load(state_dir).tag
    env["PYTHONSAFEPATH"] = "1"
    return env


class GatewayKeeper:
    """Keeps one gateway process running while [gateway] enabled = true."""

    def __init__(self, cfg: Config, ops: ProcessOps, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.ops = ops
        self.config_path = config_path
        self.pid: int | None = None
        self.restarts = 0
        self._policy = RestartPolicy()
        self._changed = asyncio.Event()
        self._stopping = False

    def reconfigure(self, cfg: Config) -> None:
        """After a reload: a changed [gateway] (or control plane) replaces the running one."""
        old = (self.cfg.gateway, gateway_launch(self.cfg, self.config_path))
        self.cfg = cfg
        if (cfg.gateway, gateway_launch(cfg, self.config_path)) != old:
            self._changed.set()

    async def run(self) -> None:
        """Until stop(): stop what an earlier daemon left, then keep the gateway up."""
        await self._stop_leftovers()
        while not self._stopping:
            self._changed.clear()
            if not self.cfg.gateway.enabled:
                await self._changed.wait()
                continue
            up_s = await self._one_life()
            if self._stopping or self._changed.is_set():
                self._policy.reset()
                continue
            delay = self._policy.failed(self.cfg.orchestrator, time.monotonic(), up_s)
            delay = self.cfg.orchestrator.backoff_max_s if delay is None else delay
            self.restarts += 1
            log.warning("gateway: restarting in %.1f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)

    def stop(self) -> None:
        """Make run() stop the gateway and return."""
        self._stopping = True
        self._changed.set()

    async def _one_life(self) -> float | None:
        """Run one gateway process until it exits, fails its health checks or is replaced;
        returns how long it was healthy (None: never)."""
        launch = gateway_launch(self.cfg, self.config_path)
        o = self.cfg.orchestrator
        cwd = private_subdir(o.state_dir / ENGINE_CWD)
        pid = _spawn(launch.argv, gateway_env(o.state_dir), o.log_dir / "gateway.log", cwd)
        self.pid = pid
        ident = self.ops.ident(pid)
        log.info("gateway: started pid %d on %s", pid, self.cfg.gateway.listen)
        exited = _exit_of(pid)
        healthy_since: float | None = None
        try:
            healthy_since = await self._watch(launch.url, exited)
        finally:
            await self._end(pid, ident, exited)
        return None if healthy_since is None else time.monotonic() - healthy_since

    async def _watch(self, url: str, exited: asyncio.Future[None]) -> float | None:
        o = self.cfg.orchestrator
        started = time.monotonic()
        healthy_since: float | None = None
        misses = 0
        async with httpx.AsyncClient(timeout=o.health_timeout_s) as client:
            while not (self._stopping or self._changed.is_set()):
                if exited.done():
                    log.error(
                        "gateway: pid %d exited (log: %s)", self.pid, o.log_dir / "gateway.log"
                    )
                    return healthy_since
                ok = await _healthy(client, url)
                if ok and healthy_since is None:
                    healthy_since = time.monotonic()
                    log.info("gateway: ready on %s", url)
                misses = 0 if ok else misses + 1
                late = healthy_since is None and time.monotonic() - started > STARTUP_TIMEOUT_S
                if late or (healthy_since is not None and misses >= o.unhealthy_threshold):
                    log.error("gateway: pid %d does not answer /health: replacing it", self.pid)
                    return healthy_since
                interval = 0.1 if healthy_since is None else o.health_interval_s
                changed = asyncio.ensure_future(self._changed.wait())
                waits: list[asyncio.Future[Any]] = [exited, changed]
                try:
                    await asyncio.wait(waits, timeout=interval)
                finally:
                    changed.cancel()
        return healthy_since

    async def _end(self, pid: int, ident: ProcessId | None, exited: asyncio.Future[None]) -> None:
        tracked = [ident] if ident is not None else []
        if not exited.done():
            await terminate_tree(self.ops, pid, tracked, STOP_GRACE_S, "gateway")
        exited.cancel()
        # Usually the supervisor's reaper has collected it; where the daemon is no subreaper
        # it reaps only engines, and the gateway would stay a zombie.
        self.ops.reap([pid])
        self.pid = None

    async def _stop_leftovers(self) -> None:
        tag = marker.DaemonMark.load(self.cfg.orchestrator.state_dir).tag
        for t in self.ops.find_by_env(ENV, tag):
            if t.value == tag:
                log.warning("gateway: stopping one left by an earlier daemon: pid %d", t.proc.pid)
                await terminate_tree(self.ops, t.pgid, [t.proc], STOP_GRACE_S, "leftover gateway")


def _spawn(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> int:
    """Start the gateway in its own session in `cwd`, its output appended to log_path."""
    # Never through a link: gateway output appended to whatever it names (the admin token).
    fd = open_own(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    with os.fdopen(fd, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    # The supervisor's reaper collects every child of the daemon; the keeper sees the exit
    # through a pidfd, which does not care who reaps. Popen must not wait on it either.
    proc.returncode = 0
    return proc.pid


def _exit_of(pid: int) -> asyncio.Future[None]:
    """A future done when process `pid` has exited (whoever reaps it)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # gone already
        done.set_result(None)
        return done

    def release(_: asyncio.Future[None]) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    loop.add_reader(fd, lambda: None if done.done() else done.set_result(None))
    done.add_done_callback(release)
    return done


async def _healthy(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(f"{url}/health")).status_code == 200
    except httpx.HTTPError:
        return False
