"""`mig-orchestrator serve`: wire config, NVML, supervisor and control plane, and handle signals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from orchestrator.config import Config, ConfigError, check_local_models, load_config
from orchestrator.control.api import create_app
from orchestrator.control.auth import Tokens
from orchestrator.control.metrics import MetricsCollector
from orchestrator.control.sdnotify import SdNotifier
from orchestrator.engine import process
from orchestrator.gpu.history import GpuHistory
from orchestrator.gpu.nvml import Nvml
from orchestrator.supervisor.store import StateStore
from orchestrator.supervisor.supervisor import ReloadResult, Supervisor

log = logging.getLogger("orchestrator")


@dataclass
class ServeOptions:
    config: Path
    topology: Path | None = None
    allow_partial: bool = False


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon decides how to shut down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    def __init__(self, opts: ServeOptions, cfg: Config, nvml: Nvml, tokens: Tokens) -> None:
        self.opts = opts
        self.cfg = cfg
        self.nvml = nvml
        self.tokens = tokens
        self.notifier = SdNotifier.from_env()
        self.supervisor = Supervisor(
            cfg,
            nvml.inventory(),
            StateStore(cfg.orchestrator.state_dir),
            nvml=nvml,
            reap_all=process.become_subreaper(),
            allow_partial=opts.allow_partial,
        )
        self.collector = MetricsCollector(self.supervisor, nvml)
        self.gpu_history = GpuHistory(nvml.sample)  # the dashboard's utilisation chart
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._last_status = ""

    async def reload(self) -> ReloadResult:
        """Re-read the config file and apply the difference; a bad file changes nothing."""
        async with self._reload_lock:
            self.notifier.reloading("reloading configuration")
            try:
                new = load_config(self.opts.config)
                if self.opts.topology is not None:
                    new = new.model_copy(
                        update={
                            "orchestrator": new.orchestrator.model_copy(
                                update={"topology": self.opts.topology}
                            )
                        }
                    )
                tokens = Tokens.load(new, str(self.opts.config))
                check_local_models(new, str(self.opts.config))
                if new.orchestrator.listen != self.cfg.orchestrator.listen:
                    log.warning("orchestrator.listen changed: takes effect after a daemon restart")
                result = await self.supervisor.reload(new)
            finally:
                self.notifier.ready(self._status_text())
            self.cfg, self.tokens = new, tokens
            log.info(
                "reloaded: added %s, removed %s, changed %s, unchanged %s",
                result.added,
                result.removed,
                result.changed,
                result.unchanged,
            )
            return result

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

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        await self.supervisor.open()
        o = self.cfg.orchestrator
        public = socket.getfqdn()
        app = create_app(self, public_host=public)
        # Everything built so far lives as long as the daemon: keep the collector from walking it
        # again in every full collection (30-60 ms pauses in the control plane's p99 otherwise).
        gc.collect()
        gc.freeze()
        server = _Server(
            uvicorn.Config(
                app,
                host=o.listen_host,
                port=o.listen_port,
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                await self.supervisor.shutdown()
                log.error("control plane could not listen on %s", o.listen)
                return 1
            await asyncio.sleep(0.01)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._on_sighup()))
        self.supervisor.listeners.append(self._update_status)
        started = await self.supervisor.autostart()
        log.info(
            "control plane on http://%s; launched %s", o.listen, ", ".join(started) or "nothing"
        )
        self.notifier.ready(self._status_text())
        sampler = asyncio.create_task(self.gpu_history.run())
        pinger = None
        if (interval := self.notifier.watchdog_interval()) is not None:
            pinger = asyncio.create_task(self._watchdog(interval))
        await self._stop.wait()
        log.info("stopping all engines")
        self.notifier.stopping("stopping engines")
        if pinger is not None:
            pinger.cancel()
        sampler.cancel()
        await self.supervisor.shutdown()
        server.should_exit = True
        await serving
        return 0


def serve(opts: ServeOptions) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the process exit code."""
    cfg = load_config(opts.config)
    topology = opts.topology or cfg.orchestrator.topology
    tokens = Tokens.load(cfg, str(opts.config))
    check_local_models(cfg, str(opts.config))
    with Nvml.open(topology) as nvml:
        daemon = Daemon(ServeOptions(opts.config, topology, opts.allow_partial), cfg, nvml, tokens)
        return asyncio.run(daemon.run())
