"""A standby started where a student can write never imports the student's module: `python -m X`
puts the working directory first on sys.path, and the launcher once copied that for modules. On
Python 3.10 (no PYTHONSAFEPATH) only the launcher itself keeps it out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from orchestrator.engine.standby.channel import Standby
from tests.second_user import STUDENT, open_tmp, run_as, student_dir

__all__ = ["open_tmp"]  # a fixture
REAL = "import sys\nif __name__ == '__main__':\n    sys.exit(0)\n"
EVIL = "import os, pathlib\npathlib.Path(os.environ['PROOF']).write_text(str(os.getuid()))\n"


async def test_a_standby_never_imports_from_its_working_directory(open_tmp: Path) -> None:
    good = open_tmp / "site"
    good.mkdir()
    (good / "engine_mod.py").write_text(REAL)
    cwd = student_dir(open_tmp / "cwd")
    run_as(STUDENT, ["sh", "-c", f"cat > {cwd}/engine_mod.py"], input_text=EVIL)
    proof = open_tmp / "proof"
    env = {**os.environ, "PYTHONPATH": str(good), "PROOF": str(proof)}
    env.pop("PYTHONSAFEPATH", None)  # as on the Python 3.10 an engine may run
    sb = Standby.spawn([sys.executable, "-m", "engine_mod"], env, cwd=cwd)
    try:
        async with asyncio.timeout(60):
            ready = await sb.ready()
        assert ready.preloaded == ("engine_mod",)
        assert not proof.exists(), f"student code ran as uid {proof.read_text()}"
    finally:
        sb.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sb.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            await asyncio.to_thread(os.waitpid, sb.pid, 0)
        os.close(sb.output_fd)
