"""All engines of one host: placement, autostart, reaping, durable state, reload, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.config import Config, ConfigError
from orchestrator.daemon.state_lock import StateDirLock
from orchestrator.engine import process
from orchestrator.engine.launch import build_launch
from orchestrator.engine.lifecycle import Engine, EngineContext, EngineSpec
from orchestrator.engine.logfile import EngineLog
from orchestrator.engine.marker import DaemonMark
from orchestrator.engine.spec import ExitListener
from orchestrator.engine.standby.slot import StandbySettings
from orchestrator.engine.states import Desired, State
from orchestrator.gpu.inventory import Inventory
from orchestrator.placement import PlacementError, Plan, plan_partial
from orchestrator.supervisor import overrides as runtime_overrides
from orchestrator.supervisor.leftovers import stop_leftovers
from orchestrator.supervisor.store import DaemonState, EngineRecord, StateStore
from orchestrator.trusted_paths import private_subdir

log = logging.getLogger(__name__)
# Engines and standbys run in this directory of state_dir, never in the daemon's own.
ENGINE_CWD = "engine-cwd"


class SliceMemory(Protocol):
    def slice_memory(self, uuid: str) -> tuple[int, int]: ...

    def slice_pids(self, uuid: str) -> set[int] | None: ...


class UnknownModel(KeyError):
    pass


class StateNotSaved(RuntimeError):
    """What was asked cannot be written to state.json; the message says why."""


@dataclass
class ReloadResult:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _spec_identity(spec: EngineSpec) -> tuple[Any, ...]:
    """What must be equal for a running engine to be left alone on reload."""
    return (
        spec.launch.argv,
        spec.launch.fork,
        sorted(spec.launch.extra_env.items()),
        spec.slice.uuid if spec.slice else None,
        spec.startup_timeout_s,
    )


class Supervisor:
    def __init__(
        self,
        cfg: Config,
        inventory: Inventory,
        store: StateStore,
        nvml: SliceMemory | None = None,
        reap_all: bool = False,
        allow_partial: bool = False,
        ops: process.ProcessOps | None = None,
    ) -> None:
        self.cfg = cfg
        self.inventory = inventory
        self.store = store
        self.nvml = nvml
        self.reap_all = reap_all
        self.allow_partial = allow_partial
        self.ops = ops or process.OsProcesses(cfg.orchestrator.state_dir / ENGINE_CWD)
        self._mark: DaemonMark | None = None  # read from state_dir once it is ours (open)
        self.engines: dict[str, Engine] = {}
        self.unplaced: dict[str, str] = {}
        self.plan = Plan()
        self.started_at = time.time()
        self._pids: dict[int, ExitListener] = {}
        self._slice_locks: dict[str, asyncio.Lock] = {}
        self._saved: DaemonState = DaemonState()
        self._save_pending = False
        self._save_task: asyncio.Task[None] | None = None
        self._save_lock = asyncio.Lock()
        self._written: DaemonState | None = None
        self._dir_lock = StateDirLock(cfg.orchestrator.state_dir)
        # Restart overrides answered 202 but not yet applied: saved at once, like desired state.
        self._asked_overrides: dict[str, dict[str, Any]] = {}
        self._ctx = EngineContext(
            settings=cfg.orchestrator,
            slice_lock=self._slice_lock,
            slice_memory=self._slice_memory,
            track=self._track,
            changed=self._changed,
            ops=self.ops,
            slice_pids=self._slice_pids,
        )
        self.listeners: list[Callable[[], None]] = []  # e.g. sd_notify STATUS updates

    # ----- start-up -----

    async def open(self) -> None:
        """Take the state_dir, load saved state, stop leftovers of an earlier instance, place
        every model."""
        self._dir_lock.acquire()
        try:
            await self._open()
        except BaseException:
            self._dir_lock.release()
            raise

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        self._saved = self.store.load()
        o = self.cfg.orchestrator
        private_subdir(o.state_dir / ENGINE_CWD)
        self._mark = DaemonMark.load(o.state_dir)
        await stop_leftovers(self.ops, self._mark, self._saved.leftovers(), o.stop_grace_s)
        self._saved.engines.clear()
        self._saved.standbys.clear()
        plan = plan_partial(self.cfg, self.inventory, self._saved.assignments)
        if plan.unplaced and not self.allow_partial:
            raise PlacementError(dict(plan.unplaced), plan)
        self.plan = plan
        self.unplaced = dict(plan.unplaced)
        # Saved by an earlier daemon, maybe under other rules or another models.toml.
        saved = runtime_overrides.usable(self.cfg, plan, self._saved.overrides)
        for name in self.cfg.models:
            self.engines[name] = self._make_engine(
                name, saved.get(name, {}), self.wanted_running(name)
            )
        self._changed()

    def _make_engine(self, name: str, overrides: dict[str, Any], wanted: bool) -> Engine:
        spec = self._spec(name, overrides)
        o = self.cfg.orchestrator
        elog = EngineLog(o.log_dir / f"{name}.log", o.log_max_bytes, o.log_backups)
        engine = Engine(spec, self._ctx, elog)
        if name in self.unplaced:
            if wanted:  # so that a reload that places it starts it
                engine.want(Desired.RUNNING)
            engine.cannot_start(f"not placed: {self.unplaced[name]}")
        return engine

    def _spec(self, name: str, overrides: dict[str, Any]) -> EngineSpec:
        m = self.cfg.models[name]
        slc = self.plan.assignments.get(name)
        return EngineSpec(
            name=name,
            model=m.model,
            served_model_name=m.served_model_name or name,
            host=self.cfg.engine_host(name),
            port=m.port,
            slice=slc,
            shared_slice=slc is not None and len(self.plan.models_on(slc.uuid)) > 1,
            launch=build_launch(self.cfg, name, slc, overrides, mark=self._mark),
            settings=self.cfg.effective_settings(name, overrides),
            overrides=dict(overrides),
            startup_timeout_s=m.startup_timeout_s or self.cfg.orchestrator.startup_timeout_s,
            standby=StandbySettings.of(self.cfg, name),
        )

    def wanted_running(self, name: str) -> bool:
        saved = self._saved.desired.get(name)
        return saved == Desired.RUNNING if saved is not None else self.cfg.models[name].autostart

    async def autostart(self) -> list[str]:
        """Start what was running before (or autostart models on a first boot), all at once."""
        names = [n for n in self.engines if n not in self.unplaced and self.wanted_running(n)]
        for n in names:
            await self.engines[n].start()
        return names

    # ----- commands -----

    def engine(self, name: str) -> Engine:
        try:
            return self.engines[name]
        except KeyError:
            raise UnknownModel(name) from None

    async def start(self, name: str) -> None:
        e = self.engine(name)
        if name in self.unplaced:
            return
        await e.start()

    async def stop(self, name: str) -> None:
        await self.engine(name).stop()

    async def restart(self, name: str, overrides: dict[str, Any] | None = None) -> None:
        e = self.engine(name)
        if name in self.unplaced:
            return
        if overrides is None:
            await e.restart()
            return
        self._asked_overrides[name] = overrides
        self._changed()
        try:
            await e.restart(self._spec(name, overrides))
        finally:
            if self._asked_overrides.get(name) is overrides:  # not replaced by a later restart
                del self._asked_overrides[name]

    def overrides_of(self, name: str) -> dict[str, Any]:
        """The model's accepted overrides: those a pending restart will apply, else the running."""
        return dict(self._overrides().get(name, {}))

    def accept_overrides(self, name: str, overrides: dict[str, Any]) -> Callable[[], None]:
        """Raise OverrideError unless the overrides make a valid engine beside every other
        accepted one; else hold them as pending for restart() to apply, and saved with the
        command. Returns what takes them back if the command is refused."""
        self.engine(name)
        # No await between the check and the hold: a second caller sees these at once, so two
        # restarts racing on one shared GPU cannot both pass the cap against stale specs.
        runtime_overrides.check(self.cfg, self.plan, self._overrides(), name, overrides)
        self._asked_overrides[name] = overrides

        def undo() -> None:
            if self._asked_overrides.get(name) is overrides:
                del self._asked_overrides[name]

        return undo

    def _overrides(self) -> dict[str, dict[str, Any]]:
        """Accepted overrides per model: pending (asked, not yet applied) win over running."""
        return {
            n: o
            for n, e in self.engines.items()
            if (o := self._asked_overrides.get(n, e.spec.overrides))
        }

    # ----- reload -----

    async def reload(self, new: Config) -> ReloadResult:
        """Apply a new configuration as a difference: untouched engines keep running."""
        previous = {n: s.uuid for n, s in self.plan.assignments.items()}
        current = self._overrides()
        plan = plan_partial(new, self.inventory, previous, current)
        if plan.unplaced and not self.allow_partial:
            raise PlacementError(dict(plan.unplaced), plan)
        if stale := runtime_overrides.stale(new, plan, current):
            raise ConfigError("runtime overrides", stale)
        old_cfg, self.cfg = self.cfg, new
        self.plan, self.unplaced = plan, dict(plan.unplaced)
        self._ctx.settings = new.orchestrator
        result = ReloadResult()
        for name in sorted(set(old_cfg.models) - set(new.models)):
            e = self.engines.pop(name)
            e.retire()  # a start already on its way for the removed model must not run it
            await e.stop()
            e.log.close()
            result.removed.append(name)
        for name in sorted(new.models):
            e_old = self.engines.get(name)
            if e_old is None:
                e = self._make_engine(name, {}, new.models[name].autostart)
                self.engines[name] = e
                result.added.append(name)
                if name not in self.unplaced and new.models[name].autostart:
                    await e.start()
                continue
            spec = self._spec(name, e_old.spec.overrides)
            if _spec_identity(spec) == _spec_identity(e_old.spec):
                e_old.set_spec(spec)
                result.unchanged.append(name)
                continue
            result.changed.append(name)
            if e_old.desired is Desired.RUNNING and name not in self.unplaced:
                await e_old.restart(spec)
                continue
            # Losing its slice is not an admin's stop: what was asked for stays for the next
            # reload that places it.
            await e_old.stop(desired=e_old.desired)
            e_old.set_spec(spec)
            if name in self.unplaced:
                e_old.cannot_start(f"not placed: {self.unplaced[name]}")
        self._changed()
        return result

    # ----- shutdown -----

    async def shutdown(self) -> None:
        """Stop every engine in parallel; what each was asked to be survives for the next start."""
        for e in self.engines.values():
            e.retire()  # commands still arriving through the control plane must not start one
        await asyncio.gather(*(e.stop(desired=e.desired) for e in self.engines.values()))
        self._changed()
        await self.flush()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
        for e in self.engines.values():
            e.log.close()
        self._dir_lock.release()

    # ----- plumbing for engines -----

    def _slice_lock(self, uuid: str) -> asyncio.Lock:
        return self._slice_locks.setdefault(uuid, asyncio.Lock())

    async def _slice_memory(self, uuid: str) -> tuple[int, int] | None:
        if self.nvml is None:
            return None
        try:
            return await asyncio.to_thread(self.nvml.slice_memory, uuid)
        except Exception as e:  # NVML hiccups must not take an engine down
            log.warning("cannot read memory of slice %s: %s", uuid, e)
            return None

    async def _slice_pids(self, uuid: str) -> set[int] | None:
        if self.nvml is None:
            return None
        try:
            return await asyncio.to_thread(self.nvml.slice_pids, uuid)
        except Exception as e:  # as for memory: never take an engine down
            log.warning("cannot list GPU processes of slice %s: %s", uuid, e)
            return None

    def _track(self, pid: int, engine: ExitListener | None) -> None:
        if engine is None:
            self._pids.pop(pid, None)
        else:
            self._pids[pid] = engine

    def _reap(self) -> None:
        for pid, status in self.ops.reap(None if self.reap_all else list(self._pids)):
            engine = self._pids.pop(pid, None)
            if engine is not None:
                engine.on_exit(pid, status)

    def _changed(self) -> None:
        for fn in self.listeners:
            fn()
        if self._save_pending:
            return
        self._save_pending = True
        with contextlib.suppress(RuntimeError):  # no loop yet: open() saves later
            self._save_task = asyncio.get_running_loop().create_task(self._save())

    def snapshot(self) -> DaemonState:
        engines = {}
        standbys = {}
        for name, e in self.engines.items():
            st = e.status()
            if (sb := st.standby_process) is not None:
                # Its own session: pid = process group. It exits when this daemon's end of its
                # channel closes, but a daemon started after a crash makes sure.
                standbys[name] = EngineRecord(sb.pid, sb.pid, sb.create_time, None)
            if st.pid is not None:
                pid = st.process
                if pid is not None:
                    engines[name] = EngineRecord(
                        pid=pid.pid,
                        pgid=st.pid,
                        create_time=pid.create_time,
                        slice_uuid=e.spec.slice.uuid if e.spec.slice else None,
                    )
        return DaemonState(
            assignments={n: s.uuid for n, s in self.plan.assignments.items()},
            desired={n: e.desired.value for n, e in self.engines.items()},
            overrides=self._overrides(),
            engines=engines,
            standbys=standbys,
        )

    async def _save(self) -> None:
        await asyncio.sleep(0)  # coalesce the burst of changes one event-loop turn brings
        async with self._save_lock:
            self._save_pending = False
            with contextlib.suppress(StateNotSaved):  # logged; the next change tries again
                await self._write_if_changed()

    async def persist(self, force: bool = False) -> None:
        """Return once what was asked so far is on disk: a command's 202 must survive a crash;
        StateNotSaved when it cannot be. `force` writes even an unchanged state: a command
        whose later changes (its engine's new pid) could not be saved is refused up front."""
        async with self._save_lock:
            await self._write_if_changed(force)

    async def _write_if_changed(self, force: bool = False) -> None:
        snap = self.snapshot()
        # Most changes are state transitions, which are not saved: no write (and fsync) then.
        if snap == self._written and not force:
            return
        try:
            await asyncio.to_thread(self.store.save, snap)
        except OSError as e:
            log.error("cannot save state to %s: %s", self.store.path, e)
            raise StateNotSaved(f"cannot save state to {self.store.path}: {e}") from e
        self._written = snap

    async def flush(self) -> None:
        if self._save_task is not None:
            await asyncio.gather(self._save_task, return_exceptions=True)
        async with self._save_lock:
            snap = self.snapshot()
            await asyncio.to_thread(self.store.save, snap)
            self._written = snap

    def counts(self) -> tuple[int, int]:
        ready = sum(1 for e in self.engines.values() if e.state is State.READY)
        return ready, len(self.engines)
