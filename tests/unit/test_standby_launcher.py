"""The standby launcher as a process: imports ahead, trigger protocol, fallbacks, exit on EOF.

Each test runs the real launcher (orchestrator/inengine/standby_launcher.py) under this
interpreter on a small fake engine package that records every import with its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine.standby.channel import Standby, StandbyError
from orchestrator.inengine.standby_launcher import EXIT_BAD_TRIGGER, EXIT_REFUSED, FORK_ENV

TIMEOUT = 30
SERVER = ["-m", "fakeengine.server"]

TRACE = """\
import json, os, sys

def note(what):
    with open(os.environ["FAKE_TRACE"], "a") as f:
        f.write(f"{what} {os.getpid()}\\n")

def report(**extra):
    main = sys.modules["__main__"]
    print("REPORT " + json.dumps({
        "pid": os.getpid(), "pgid": os.getpgrp(), "argv": sys.argv, "path0": sys.path[0],
        "main_file": getattr(main, "__file__", None), "fork": os.environ.get("FORK_ENV"), **extra,
    }), flush=True)
    if "--exit" in sys.argv:
        sys.exit(int(sys.argv[sys.argv.index("--exit") + 1]))
""".replace("FORK_ENV", FORK_ENV)

SOURCES = {
    "__init__.py": "",
    "trace.py": TRACE,
    "heavy.py": (
        "import os, time\nfrom fakeengine.trace import note\nnote('import heavy')\n"
        "os.environ['SET_BY_IMPORT'] = '1'\ntime.sleep(float(os.environ.get('FAKE_IMPORT_S', 0)))\n"
    ),
    "lazy.py": "from fakeengine.trace import note\nnote('import lazy')\n",
    "extra.py": "from fakeengine.trace import note\nnote('import extra')\n",
    "server.py": (
        "import sys\nimport fakeengine.heavy\nfrom fakeengine.trace import note, report\n"
        "note(f'exec server as {__name__}')\n\n"
        "def child():\n    sys.exit(42)\n\n"
        "def main():\n    import fakeengine.lazy\n"
        "    extra = {'also_by_name': 'fakeengine.server' in sys.modules}\n"
        "    if '--spawn-child' in sys.argv:\n"
        "        import multiprocessing\n"
        "        p = multiprocessing.get_context('spawn').Process(target=child)\n"
        "        p.start()\n        p.join()\n        extra['child_exit'] = p.exitcode\n"
        "    report(name=__name__, **extra)\n\n"
        "if __name__ == '__main__':\n    main()\n"
    ),
    "unguarded.py": (
        "import fakeengine.heavy\nfrom fakeengine.trace import note, report\n"
        "note('run unguarded')\nreport(name=__name__)\n"
    ),
    "cli.py": (
        "def main():\n    import fakeengine.lazy\n    from fakeengine.trace import report\n"
        "    report(name=__name__)\n"
    ),
    "gpu_at_import.py": "import torch\ntorch.cuda.init()\nif __name__ == '__main__':\n    pass\n",
}
PACKAGE = {
    "__init__.py": "from fakeengine.trace import note\nnote('import package')\n",
    "__main__.py": (
        "import fakeengine.heavy\nfrom fakeengine.trace import report\nreport(name=__name__)\n"
    ),
}
FAKE_TORCH = {
    "__init__.py": "from . import cuda\n",
    "cuda.py": "_on = False\n\ndef init():\n    global _on\n    _on = True\n\n"
    "def is_initialized():\n    return _on\n",
}


@dataclass
class Run:
    """One standby under test, its output read as it comes (an engine must never block on it)."""

    sb: Standby
    trace: Path
    output: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.sb.output_fd, 65536):
            self.output += chunk

    def events(self) -> list[str]:
        return self.trace.read_text().splitlines() if self.trace.exists() else []

    async def exit_code(self) -> int:
        async with asyncio.timeout(TIMEOUT):
            _, status = await asyncio.to_thread(os.waitpid, self.sb.pid, 0)
        self._reader.join(TIMEOUT)
        os.close(self.sb.output_fd)
        return os.waitstatus_to_exitcode(status)

    def text(self) -> str:
        return self.output.decode()

    async def wait_text(self, part: str) -> None:
        """The launcher logs before it reports; this reader thread may still be behind."""
        async with asyncio.timeout(TIMEOUT):
            while part not in self.text():
                await asyncio.sleep(0.01)

    def report(self) -> dict[str, Any]:
        (line,) = [ln for ln in self.text().splitlines() if ln.startswith("REPORT ")]
        return dict(json.loads(line.removeprefix("REPORT ")))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name, text in SOURCES.items():
        (tmp_path / "fakeengine").mkdir(exist_ok=True)
        (tmp_path / "fakeengine" / name).write_text(text)
    for name, text in PACKAGE.items():
        (tmp_path / "fakepkg").mkdir(exist_ok=True)
        (tmp_path / "fakepkg" / name).write_text(text)
    for name, text in FAKE_TORCH.items():
        (tmp_path / "torch").mkdir(exist_ok=True)
        (tmp_path / "torch" / name).write_text(text)
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "fake-engine"
    script.write_text(
        f"#!{sys.executable}\nimport re\nimport sys\nfrom fakeengine.cli import main\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        "    sys.exit(main())\n"
    )
    script.chmod(0o755)
    return tmp_path


@pytest.fixture
async def start(root: Path) -> AsyncIterator[Any]:
    runs: list[Run] = []

    def _start(command: list[str], preload: list[str] | None = None, **env_extra: str) -> Run:
        env = {**os.environ, "PYTHONPATH": str(root), "FAKE_TRACE": str(root / "trace")}
        env.pop(FORK_ENV, None)
        env.update(env_extra)
        sb = Standby.spawn(command, env, preload, label="alice", cwd=root)
        runs.append(Run(sb, root / "trace"))
        return runs[-1]

    yield _start
    for run in runs:  # whatever a failed test left running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.sb.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            await asyncio.to_thread(os.waitpid, run.sb.pid, 0)


async def ready(run: Run) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return await run.sb.ready()


async def trigger(run: Run, argv: list[str], fork: bool = False) -> str:
    async with asyncio.timeout(TIMEOUT):
        return await run.sb.trigger(argv, fork)


async def test_module_is_imported_ahead_then_runs_as_main_in_the_same_process(
    start: Any, root: Path
) -> None:
    run = start([sys.executable, *SERVER])
    r = await ready(run)
    pid = run.sb.pid
    assert (r.pid, r.mode, r.target) == (pid, "module", "fakeengine.server")
    assert r.preloaded[0] == "fakeengine.server"
    assert "fakeengine.lazy" in r.preloaded  # main() imports it lazily
    assert r.failed == ()
    assert r.rss_bytes > 1 << 20
    assert not r.libcuda_loaded
    imported = [
        f"import heavy {pid}",
        f"exec server as fakeengine.server {pid}",
        f"import lazy {pid}",
    ]
    assert run.events() == imported
    await run.wait_text("standby [alice]: ready: module fakeengine.server")

    argv = [sys.executable, *SERVER, "--port", "1", "--exit", "7"]
    assert await trigger(run, argv) == "module"
    assert await run.exit_code() == 7
    rep = run.report()
    assert (rep["pid"], rep["pgid"], rep["name"]) == (pid, pid, "__main__")
    assert rep["argv"] == [str(root / "fakeengine" / "server.py"), "--port", "1", "--exit", "7"]
    assert rep["path0"] == str(root)  # as `python -m` sets it: the working directory
    assert rep["fork"] is None
    # As under `python -m`, the module exists once, as __main__, and runpy had nothing to warn of.
    assert rep["also_by_name"] is False
    assert "Warning" not in run.text()
    # Only the module itself runs again, as __main__; what it imports is not imported again.
    assert run.events() == [*imported, f"exec server as __main__ {pid}"]


async def test_console_script_runs_its_entry_point_with_its_argv(start: Any, root: Path) -> None:
    script = str(root / "bin" / "fake-engine")
    run = start([script, "serve"])
    r = await ready(run)
    assert (r.mode, r.target) == ("script", script)
    assert {"fakeengine.cli", "fakeengine.lazy"} <= set(r.preloaded)
    assert run.events() == [f"import lazy {run.sb.pid}"]
    assert await trigger(run, [script, "serve", "--port", "1"]) == "script"
    assert await run.exit_code() == 0
    rep = run.report()
    assert rep["pid"] == run.sb.pid
    assert rep["argv"] == [script, "serve", "--port", "1"]
    assert rep["main_file"] == script
    assert rep["path0"] == str(root / "bin")
    assert run.events() == [f"import lazy {run.sb.pid}"]


async def test_a_package_runs_its_dunder_main_and_is_imported_once(start: Any) -> None:
    run = start([sys.executable, "-m", "fakepkg"])
    r = await ready(run)
    assert r.preloaded[0] == "fakepkg"
    assert "fakeengine.heavy" in r.preloaded  # what fakepkg/__main__.py imports
    assert await trigger(run, [sys.executable, "-m", "fakepkg", "--port", "1"]) == "module"
    assert await run.exit_code() == 0
    assert run.report()["name"] == "__main__"
    assert run.report()["argv"][1:] == ["--port", "1"]
    assert [e for e in run.events() if e.startswith("import package")] == [
        f"import package {run.sb.pid}"
    ]
    assert "Warning" not in run.text()


async def test_engine_can_spawn_workers_that_reimport_its_main_module(start: Any) -> None:
    # vLLM's EngineCore is such a worker: multiprocessing re-runs __main__ as __mp_main__.
    run = start([sys.executable, *SERVER])
    await ready(run)
    await trigger(run, [sys.executable, *SERVER, "--spawn-child"])
    assert await run.exit_code() == 0
    assert run.report()["child_exit"] == 42


async def test_fork_in_the_trigger_sets_the_start_method_for_the_engine(start: Any) -> None:
    run = start([sys.executable, *SERVER])
    await ready(run)
    await trigger(run, [sys.executable, *SERVER], fork=True)
    assert await run.exit_code() == 0
    assert run.report()["fork"] == "fork"


async def test_a_trigger_sent_during_imports_runs_when_they_are_done(start: Any) -> None:
    run = start([sys.executable, *SERVER], FAKE_IMPORT_S="1")
    t0 = time.monotonic()
    assert await trigger(run, [sys.executable, *SERVER]) == "module"
    assert time.monotonic() - t0 >= 1.0
    assert await run.exit_code() == 0
    assert [e for e in run.events() if e.startswith("import heavy")] == [
        f"import heavy {run.sb.pid}"
    ]


@pytest.mark.parametrize("after_ready", [True, False])
async def test_a_trigger_handed_over_with_the_channel_closed_at_once_still_runs(
    start: Any, after_ready: bool
) -> None:
    """The daemon's hand-over: it sends the trigger and closes its end without waiting, also
    while the standby is still importing (its "ready" then goes nowhere)."""
    run = start([sys.executable, *SERVER], FAKE_IMPORT_S="0" if after_ready else "1")
    if after_ready:
        await ready(run)
    run.sb.hand_over([sys.executable, *SERVER, "--flag"], fork=True)
    assert await run.exit_code() == 0
    report = run.report()
    assert report["pid"] == run.sb.pid and report["argv"][-1] == "--flag"
    assert report["fork"] == "fork"
    assert "the daemon is gone" not in run.text()


async def test_a_hand_over_to_a_standby_that_is_gone_raises(start: Any) -> None:
    run = start([sys.executable, *SERVER])
    await ready(run)
    os.kill(run.sb.pid, signal.SIGKILL)
    await run.exit_code()
    with pytest.raises(OSError):
        run.sb.hand_over([sys.executable, *SERVER])


async def test_closing_the_channel_ends_a_waiting_standby(start: Any) -> None:
    run = start([sys.executable, *SERVER])
    await ready(run)
    run.sb.close()
    assert await run.exit_code() == 0
    assert "closed the channel before a trigger: exiting" in run.text()
    assert "exec server as __main__" not in run.trace.read_text()


async def test_closing_the_channel_during_imports_ends_the_standby_at_once(start: Any) -> None:
    run = start([sys.executable, *SERVER], FAKE_IMPORT_S="60")
    async with asyncio.timeout(TIMEOUT):
        while not run.events():
            await asyncio.sleep(0.02)
    t0 = time.monotonic()
    run.sb.close()
    assert await run.exit_code() == 0
    assert time.monotonic() - t0 < 5


async def test_a_standby_whose_daemon_died_exits_though_nobody_reads_its_output(
    root: Path,
) -> None:
    """kill -9 of the daemon closes both its end of the channel and the output pipe's reader."""
    env = {**os.environ, "PYTHONPATH": str(root), "FAKE_TRACE": str(root / "trace")}
    sb = Standby.spawn([sys.executable, *SERVER], env, label="alice", cwd=root)
    try:
        async with asyncio.timeout(TIMEOUT):
            await sb.ready()
        os.close(sb.output_fd)
        sb.close()
        await asyncio.sleep(0)  # the stream's transport closes the socket on the next turn
        async with asyncio.timeout(10):
            _, status = await asyncio.to_thread(os.waitpid, sb.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sb.pid, signal.SIGKILL)


async def test_imports_that_initialise_cuda_refuse_the_standby(start: Any) -> None:
    run = start([sys.executable, "-m", "fakeengine.gpu_at_import"])
    with pytest.raises(StandbyError, match="initialised CUDA: a standby would hold GPU memory"):
        await ready(run)
    assert await run.exit_code() == EXIT_REFUSED


async def test_a_module_that_cannot_be_imported_is_run_plainly_to_show_its_error(
    start: Any,
) -> None:
    run = start([sys.executable, "-m", "fakeengine.nope"])
    r = await ready(run)
    assert r.mode == "exec"
    assert "No module named 'fakeengine.nope'" in r.reason
    assert await trigger(run, [sys.executable, "-m", "fakeengine.nope"]) == "exec"
    assert await run.exit_code() == 1
    assert "No module named fakeengine.nope" in run.text()  # the interpreter's own words


async def test_a_trigger_for_another_command_execs_it_with_the_original_environment(
    start: Any,
) -> None:
    run = start([sys.executable, *SERVER])
    await ready(run)
    argv = ["/bin/sh", "-c", 'echo "PID $$ ${SET_BY_IMPORT:-unset}"']
    assert await trigger(run, argv) == "exec"
    assert await run.exit_code() == 0
    # Same process; the variable an import set in the standby does not leak into it.
    assert f"PID {run.sb.pid} unset" in run.text()
    assert "does not start with" in run.text()


async def test_a_module_that_works_at_import_waits_for_the_trigger(start: Any) -> None:
    run = start([sys.executable, "-m", "fakeengine.unguarded"])
    r = await ready(run)
    assert "fakeengine.unguarded" not in r.preloaded
    assert "fakeengine.heavy" in r.preloaded
    assert "does its work at import" in r.reason
    assert not any(e.startswith("run unguarded") for e in run.events())
    await trigger(run, [sys.executable, "-m", "fakeengine.unguarded"])
    assert await run.exit_code() == 0
    assert run.report()["name"] == "__main__"


async def test_preload_setting_replaces_the_derived_extras(start: Any) -> None:
    run = start([sys.executable, *SERVER], preload=["fakeengine.extra", "fakeengine.absent"])
    r = await ready(run)
    assert r.preloaded == ("fakeengine.server", "fakeengine.extra")
    assert r.failed[0].startswith("fakeengine.absent: ModuleNotFoundError")
    assert not any(e.startswith("import lazy") for e in run.events())


async def test_a_malformed_trigger_ends_the_standby(start: Any) -> None:
    run = start([sys.executable, *SERVER])
    await ready(run)
    run.sb.sock.sendall(b'{"argv": "not a list"}\n')
    assert await run.exit_code() == EXIT_BAD_TRIGGER
    assert "bad trigger: the trigger needs a non-empty list of strings as argv" in run.text()


def test_a_command_with_nothing_to_import_starts_no_standby(root: Path) -> None:
    with pytest.raises(StandbyError, match="no #! line"):
        Standby.spawn(["/bin/sh", "-c", "sleep 100"], dict(os.environ))


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    yield
    with contextlib.suppress(ChildProcessError):
        assert os.waitpid(-1, os.WNOHANG) == (0, 0), "a standby was left unreaped"
