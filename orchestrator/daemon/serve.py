"""`mig-orchestrator serve`: wire config, NVML, supervisor and control plane, and handle signals."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import (
    Config,
    ConfigError,
    check_this_host,
    config_warnings,
    load_config,
    unprivileged_port_start,
)
from orchestrator.daemon import fd_budget
from orchestrator.daemon.gateway_keeper import GatewayKeeper
from orchestrator.daemon.sd_notify import SdNotifier
from orchestrator.engine import process
from orchestrator.gpu.history import GpuHistory
from orchestrator.gpu.nvml import Nvml
from orchestrator.http.api import create_app
from orchestrator.http.auth import Tokens
from orchestrator.http.http_server import ConnectionLimits, build_server
from orchestrator.http.metrics import MetricsCollector
from orchestrator.http.reload_check import refused_changes
from orchestrator.supervisor.store import StateStore
from orchestrator.supervisor.supervisor import ReloadResult, Supervisor
from orchestrator.trusted_paths import UntrustedFile, ensure_dir

log = logging.getLogger("orchestrator")


@dataclass
class ServeOptions:
    config: Path
    topology: Path | None = None
    allow_partial: bool = False


class Daemon:
    def __init__(
        self, opts: ServeOptions, cfg: Config, nvml: Nvml, tokens: Tokens, nofile: int
    ) -> None:
        self.opts = opts
        self.cfg = cfg
        self.nvml = nvml
        self.tokens = tokens
        self.nofile = nofile
        self.budget = fd_budget.budget(nofile, len(cfg.models))
        self.limits = ConnectionLimits(
            max_connections=self.budget.max_connections,
            header_timeout_s=cfg.orchestrator.client_timeout_s,
        )
        self.notifier = SdNotifier.from_env()
        self.supervisor = Supervisor(
            cfg,
            nvml.inventory(),
            StateStore(cfg.orchestrator.state_dir),
            nvml=nvml,
            reap_all=process.become_subreaper(),
            allow_partial=opts.allow_partial,
        )
        self.gateway = GatewayKeeper(cfg, self.supervisor.ops, opts.config)
        self.collector = MetricsCollector(self.supervisor, nvml)
        self.gpu_history = GpuHistory(nvml.sample)  # the dashboard's utilisation chart
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()  # reloads started by SIGHUP
        self._last_status = ""

    async def reload(self) -> ReloadResult:
        """Re-read the config file and apply the difference; a bad file changes nothing."""
        async with self._reload_lock:
            self.notifier.reloading("reloading configuration")
            status = None
            try:
                new, tokens = self._load_for_reload()
                result = await self.supervisor.reload(new)
            except Exception as e:
                status = f"reload refused, old configuration kept: {str(e).splitlines()[0]}"
                raise
            finally:
                if not self._stop.is_set():  # READY after STOPPING would confuse systemd
                    self.notifier.ready(status or self._status_text())
            self.cfg, self.tokens = new, tokens
            self.gateway.reconfigure(new)
            self.limits.max_connections = fd_budget.budget(
                self.nofile, len(new.models)
            ).max_connections
            self.limits.header_timeout_s = new.orchestrator.client_timeout_s
            log.info(
                "reloaded: added %s, removed %s, changed %s, unchanged %s",
                result.added,
                result.removed,
                result.changed,
                result.unchanged,
            )
            return result

    def _load_for_reload(self) -> tuple[Config, Tokens]:
        """The new file and its tokens, or ConfigError; nothing is applied here."""
        source = str(self.opts.config)
        new = load_config(self.opts.config)
        if self.opts.topology is not None:
            orch = new.orchestrator.model_copy(update={"topology": self.opts.topology})
            new = new.model_copy(update={"orchestrator": orch})
        tokens = Tokens.load(new, source)
        check_this_host(new, source)
        check_own_dirs(new, source)
        if problems := refused_changes(self.cfg, new, self.tokens, tokens):
            raise ConfigError(source, problems)
        _log_warnings(new)
        return new, tokens

    async def metrics(self) -> str:
        return await self.collector.render()

    def _status_text(self) -> str:
        ready, total = self.supervisor.counts()
        return f"{ready}/{total} models ready"

    def _update_status(self) -> None:
        text = self._status_text()
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(text)

    async def _on_sighup(self) -> None:
        try:
            await self.reload()
        except (ConfigError, Exception) as e:
            log.error("reload rejected, the running configuration is kept:\n%s", e)

    def _begin_stop(self) -> None:
        """SIGTERM/SIGINT: tell systemd at once, then let run() stop the engines."""
        if not self._stop.is_set():
            self.notifier.stopping("stopping engines")
            self._stop.set()

    def _install_signals(self) -> asyncio.Event:
        """Handled from the first moment, so a signal during start-up is never a hard kill;
        SIGHUP reloads only once the daemon is ready (the returned event)."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._begin_stop)

        def hup() -> None:
            if ready.is_set():
                task = loop.create_task(self._on_sighup())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                log.warning("SIGHUP ignored: still starting (reload once the daemon is ready)")

        loop.add_signal_handler(signal.SIGHUP, hup)
        return ready

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def run(self) -> int:
        can_reload = self._install_signals()
        await self.supervisor.open()
        o = self.cfg.orchestrator
        public = socket.getfqdn()
        app = create_app(self, public_host=public)
        # Everything built so far lives as long as the daemon: keep the collector from walking it
        # again in every full collection (30-60 ms pauses in the control plane's p99 otherwise).
        gc.collect()
        gc.freeze()
        server = build_server(app, o.listen_host, o.listen_port, self.limits, self.budget.backlog)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                self.notifier.stopping(f"control plane could not listen on {o.listen}")
                await self.supervisor.shutdown()
                log.error("control plane could not listen on %s", o.listen)
                return 1
            await asyncio.sleep(0.01)
        log.info(
            "control plane on http://%s: at most %d connections (open-file limit %d)",
            o.listen,
            self.limits.max_connections,
            self.nofile,
        )
        sampler = asyncio.create_task(self.gpu_history.run())
        # After the control plane, which the gateway reads engine states from.
        gateway = asyncio.create_task(self.gateway.run())
        # Kept running through shutdown: stopping engines may take longer than WatchdogSec.
        pinger = None
        if (interval := self.notifier.watchdog_interval()) is not None:
            pinger = asyncio.create_task(self._watchdog(interval))
        if not self._stop.is_set():
            self.supervisor.listeners.append(self._update_status)
            started = await self.supervisor.autostart()
            log.info("launched %s", ", ".join(started) or "nothing")
            self.notifier.ready(self._status_text())
            can_reload.set()
            await self._stop.wait()
        log.info("stopping the gateway and all engines")
        sampler.cancel()
        self.gateway.stop()
        await gateway
        await self.supervisor.shutdown()
        if pinger is not None:
            pinger.cancel()
        server.should_exit = True
        await serving
        return 0


def _log_warnings(cfg: Config) -> None:
    for warning in config_warnings(cfg, unprivileged_port_start()):
        log.warning("%s", warning)


def check_own_dirs(cfg: Config, source: str) -> None:
    """state_dir and log_dir, made if missing, writable by no user but the daemon's own (as sshd's
    StrictModes): any other could make the daemon write through a link it plants there."""
    o = cfg.orchestrator
    found = [
        ensure_dir(o.state_dir, "orchestrator.state_dir"),
        ensure_dir(o.log_dir, "orchestrator.log_dir"),
    ]
    if problems := [p for p in found if p is not None]:
        raise ConfigError(source, problems)


def serve(opts: ServeOptions) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the process exit code."""
    # SIGHUP's default action would kill the daemon before run() installs its handlers.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    cfg = load_config(opts.config)
    topology = opts.topology or cfg.orchestrator.topology
    tokens = Tokens.load(cfg, str(opts.config))
    check_this_host(cfg, str(opts.config))
    check_own_dirs(cfg, str(opts.config))
    _log_warnings(cfg)
    nofile = fd_budget.raise_nofile()
    with Nvml.open(topology) as nvml:
        daemon = Daemon(
            ServeOptions(opts.config, topology, opts.allow_partial), cfg, nvml, tokens, nofile
        )
        try:
            return asyncio.run(daemon.run())
        except UntrustedFile as e:  # a link or another user's file where the daemon writes
            log.error("%s", e)
            return 1
