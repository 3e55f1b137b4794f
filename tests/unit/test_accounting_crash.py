"""A gateway killed with SIGKILL loses only the requests in flight, and they show up as lost."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from orchestrator.accounting.admission import KeyedAdmission
from orchestrator.accounting.database import connect
from orchestrator.accounting.keys import KeyStore, Limits
from orchestrator.accounting.scope import ModelRef

MODELS = (ModelRef("student-a", "coder", "Alice"),)

GATEWAY = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from orchestrator.accounting.admission import KeyedAdmission
    from orchestrator.accounting.scope import ModelRef
    from orchestrator.gateway.admission import Outcome

    async def main(db, secret):
        gate = KeyedAdmission(Path(db), lambda: (ModelRef("student-a", "coder", "Alice"),))
        grants = [await gate.admit(secret, "coder", {"prompt": "x"}) for _ in range(8)]
        for g in grants[:5]:
            await g.finish(Outcome(200, 7, 11, 0.01, 0.2, None, True, "127.0.0.1:1", "r",
                                   "/v1/completions", "coder"))
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_kill_9_keeps_every_finished_request_and_reports_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "accounting.sqlite3"
    store = KeyStore(connect(db))
    secret = store.create("Alice", "student", Limits()).secret
    done = subprocess.run([sys.executable, "-c", GATEWAY, str(db), secret], timeout=60)
    assert done.returncode == -signal.SIGKILL
    totals = store.conn.execute(
        "SELECT sum(requests), sum(prompt_tokens), sum(completion_tokens) FROM usage_daily"
    ).fetchone()
    assert totals == (5, 35, 55)
    gate = KeyedAdmission(db, lambda: MODELS)
    assert gate.lost_at_start == 3
    lost = store.conn.execute("SELECT sum(lost) FROM usage_daily").fetchone()[0]
    assert lost == 3
    asyncio.run(gate.close())
