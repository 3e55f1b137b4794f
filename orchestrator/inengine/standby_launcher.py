"""Standby engine launcher: import an engine command's Python ahead of time, run it on a trigger.

The daemon starts `PY [options] launcher.py --channel-fd N -- COMMAND...` with the model's exact
environment. This process imports what COMMAND will need, says so on the channel, waits for one
JSON line carrying the engine's argv, then runs that argv itself: same pid, output pipe and
process group, so the daemon's tracking, logging and tree cleanup apply unchanged.

It runs inside the engine's interpreter by file path, so it uses the standard library only and
keeps to Python 3.10 syntax (vLLM's oldest). docs/standby.md describes the protocol.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import queue
import runpy
import sys
import threading
import time
from dataclasses import dataclass

try:  # imported by the daemon, as part of its package
    from .standby_plan import EXEC, MODULE, SCRIPT, CommandPlan, default_preload, plan_command
except ImportError:  # run by file path in the engine's Python: its folder is on sys.path
    from standby_plan import (  # type: ignore[no-redef]
        EXEC,
        MODULE,
        SCRIPT,
        CommandPlan,
        default_preload,
        plan_command,
    )

PROTOCOL = 1
EXIT_BAD_TRIGGER = 2
# Distinct from an engine's own codes, so the daemon can tell "no standby possible" apart.
EXIT_REFUSED = 3
# vLLM reads it when it starts the EngineCore, not at import, so the trigger can still set it.
FORK_ENV = "VLLM_WORKER_MULTIPROC_METHOD"
_MAX_TRIGGER_BYTES = 1 << 20


# ----- state of this process -----


def rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cuda_initialised() -> bool:
    """Whether torch has created a CUDA context here (holding GPU memory); never imports torch."""
    torch = sys.modules.get("torch")
    check = getattr(getattr(torch, "cuda", None), "is_initialized", None)
    return bool(check()) if callable(check) else False


def libcuda_loaded() -> bool:
    """Whether the CUDA driver library is mapped: a CUDA context needs it, NVML does not."""
    try:
        with open("/proc/self/maps") as f:
            return any("libcuda.so" in line for line in f)
    except OSError:
        return False


# ----- the standby -----


class _Channel:
    """The daemon's socket: one trigger line in, JSON event lines out."""

    def __init__(self, fd: int, say: _Say) -> None:
        self.fd = fd
        self.say = say
        self.triggers: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="standby-channel", daemon=True)

    def start(self) -> None:
        self._reader.start()

    def _read(self) -> None:
        # A thread, so that a daemon that dies while imports run ends this process at once.
        buf = b""
        while b"\n" not in buf:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.say("the daemon closed the channel before a trigger: exiting")
                os._exit(0)
            buf += chunk
            if len(buf) > _MAX_TRIGGER_BYTES:
                self.say(f"trigger longer than {_MAX_TRIGGER_BYTES} bytes: exiting")
                os._exit(EXIT_BAD_TRIGGER)
        self.triggers.put(buf.partition(b"\n")[0])

    def send(self, event: str, **fields: object) -> None:
        data = json.dumps({"event": event, "protocol": PROTOCOL, **fields}).encode() + b"\n"
        try:
            os.write(self.fd, data)
        except OSError:
            # The daemon may hand over a trigger and close the channel at once, even during the
            # imports: once the reader has that trigger, the engine runs whoever listens. With
            # the daemon's end closed, the reader ends at once: with the trigger, or at EOF (exit).
            self._reader.join(5.0)
            if self.triggers.empty() and event != "running":
                self.say("the daemon is gone: exiting")
                os._exit(0)

    def close(self) -> None:
        self._reader.join()
        os.close(self.fd)


class _Say:
    def __init__(self, label: str) -> None:
        self.prefix = f"mig-orchestrator standby{f' [{label}]' if label else ''}: "

    def __call__(self, text: str) -> None:
        # A daemon killed with -9 leaves nobody reading the output pipe: a line that cannot be
        # written must not raise, or the channel's reader dies before it ends this process.
        with contextlib.suppress(OSError):
            print(self.prefix + text, flush=True)


@dataclass
class _Prepared:
    mode: str
    preloaded: list[str]
    failed: list[str]
    reason: str
    seconds: float


def _main_path(plan: CommandPlan) -> None:
    """Give sys.path[0] the value a plain run of the command would, never the working directory:
    not this file's folder; a script's own folder; for a module nothing, as `python -P -m`."""
    here = os.path.dirname(os.path.realpath(__file__))
    if sys.path and sys.path[0] == here and not getattr(sys.flags, "safe_path", False):
        if plan.kind == MODULE:
            # `python -m` would put the working directory here: whoever can write it would run
            # code as the engine's user (PYTHONSAFEPATH drops it on 3.11+; 3.10 lacks it).
            del sys.path[0]
        else:
            sys.path[0] = os.path.dirname(os.path.realpath(plan.target))


def _prepare(plan: CommandPlan, extras: list[str] | None, say: _Say) -> _Prepared:
    started = time.monotonic()
    if plan.kind not in (MODULE, SCRIPT):
        return _Prepared(EXEC, [], [], plan.reason, 0.0)
    derived = default_preload(plan)
    if derived.note:
        say(derived.note)
    optional = derived.optional if extras is None else frozenset()
    modules = derived.own + (derived.extras if extras is None else extras)
    sys.argv = [plan.target]  # what modules that look at argv while importing would see
    preloaded: list[str] = []
    failed: list[str] = []
    for name in dict.fromkeys(modules):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if name in optional and e.name == name:
                continue  # `from P import x` named a function or class, not a module
            failed.append(f"{name}: {type(e).__name__}: {e}")
        except (Exception, SystemExit) as e:
            failed.append(f"{name}: {type(e).__name__}: {e}")
        else:
            preloaded.append(name)
            continue
        if name in derived.own:
            # A fresh process shows the real error, from a clean state, on the trigger.
            reason = f"importing {failed[-1]}"
            return _Prepared(EXEC, preloaded, failed, reason, time.monotonic() - started)
    return _Prepared(plan.kind, preloaded, failed, derived.note, time.monotonic() - started)


def _read_trigger(raw: bytes) -> tuple[list[str], bool]:
    msg = json.loads(raw)
    argv = msg.get("argv") if isinstance(msg, dict) else None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("the trigger needs a non-empty list of strings as argv")
    fork = msg.get("fork", False)
    if not isinstance(fork, bool):
        raise ValueError("fork must be true or false")
    return argv, fork


def _run(plan: CommandPlan, argv: list[str]) -> None:
    rest = argv[plan.args_at :]
    if plan.kind == MODULE:
        # Like `python -m`: the module exists once, as __main__; leaving the preloaded copy makes
        # runpy warn, and a later `import MODULE` would see different globals than a plain run.
        # A package stays: `-m PKG` imports it as usual and runs PKG.__main__.
        if not hasattr(sys.modules.get(plan.target), "__path__"):
            sys.modules.pop(plan.target, None)
        sys.argv = [plan.target, *rest]
        runpy.run_module(plan.target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [plan.target, *rest]
        runpy.run_path(plan.target, run_name="__main__")


def _exec(argv: list[str], env: dict[str, str], say: _Say) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        say(f"cannot run {argv[0]!r}: {e}")
    return 127


def _parse_args(args: list[str]) -> tuple[int, list[str] | None, str, list[str]]:
    """--channel-fd N [--preload A,B] [--label NAME] -- COMMAND...; argparse would eat COMMAND."""
    if "--" not in args:
        raise SystemExit("usage: launcher.py --channel-fd N [--preload A,B] [--label L] -- CMD...")
    opts, command = args[: args.index("--")], args[args.index("--") + 1 :]
    values = dict(zip(opts[::2], opts[1::2], strict=False))
    if len(opts) % 2 or set(values) - {"--channel-fd", "--preload", "--label"}:
        raise SystemExit(f"launcher.py: options not understood: {opts}")
    if "--channel-fd" not in values or not values["--channel-fd"].isdigit():
        raise SystemExit("launcher.py: --channel-fd N is required")
    preload = values.get("--preload")
    extras = None if preload is None else [m for m in preload.split(",") if m]
    return int(values["--channel-fd"]), extras, values.get("--label", ""), command


def main(args: list[str] | None = None) -> int:
    fd, extras, label, command = _parse_args(sys.argv[1:] if args is None else args)
    say = _Say(label)
    env = dict(os.environ)  # before imports: vLLM's set variables of their own
    channel = _Channel(fd, say)
    channel.start()
    plan = plan_command(command)
    _main_path(plan)
    prep = _prepare(plan, extras, say)
    if cuda_initialised():
        reason = "importing the engine initialised CUDA: a standby would hold GPU memory"
        say(f"refused: {reason}")
        channel.send("refused", reason=reason)
        return EXIT_REFUSED
    rss = rss_bytes()
    # Logged before the daemon hears of it, so that the log already says so when it looks.
    say(
        f"ready: {prep.mode} {plan.target or command[:1]}, {len(prep.preloaded)} modules imported"
        f" in {prep.seconds:.2f} s, RSS {rss >> 20} MiB, CUDA not initialised"
        + (f"; {prep.reason}" if prep.reason else "")
    )
    for failure in prep.failed:
        say(f"could not import ahead: {failure}")
    channel.send(
        "ready",
        pid=os.getpid(),
        mode=prep.mode,
        target=plan.target,
        preloaded=prep.preloaded,
        failed=prep.failed,
        reason=prep.reason,
        prepare_s=round(prep.seconds, 3),
        rss_bytes=rss,
        libcuda_loaded=libcuda_loaded(),
    )
    try:
        argv, fork = _read_trigger(channel.triggers.get())
    except ValueError as e:  # json.JSONDecodeError is one
        say(f"bad trigger: {e}")
        channel.send("error", reason=f"bad trigger: {e}")
        return EXIT_BAD_TRIGGER
    mode = prep.mode
    if mode != EXEC and argv[: len(command)] != command:
        say(f"the trigger's argv does not start with {command}: running it plainly")
        mode = EXEC
    if fork:
        # The check above is what fork needs: no CUDA context here to be copied into the child.
        os.environ[FORK_ENV] = env[FORK_ENV] = "fork"
    channel.send("running", mode=mode, fork=fork)
    channel.close()
    say(f"triggered: {'exec' if mode == EXEC else 'running'} {' '.join(argv)}")
    if mode == EXEC:
        return _exec(argv, env, say)
    _run(plan, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
