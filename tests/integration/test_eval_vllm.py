"""`eval` against real vLLM CPU engines under the daemon: two tiny models answer, a third judges.

The models have random weights, so only the judge's format can be relied on: with structured
outputs every verdict parses, without them none does.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.cli.main import main
from orchestrator.prom_text import parse as parse_metrics
from tests.daemon_harness import (
    REPO,
    Daemon,
    cpu_vllm_daemon,
    free_ports,
    stop_leaving_nothing,
    wait_until,
)
from tests.vllm_support import engine_venv, tiny_model

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
READY_TIMEOUT = 900
QUESTIONS = [
    {"question_id": 1, "category": "sorting", "turns": ["Sort a list.", "Now in reverse."]},
    {"question_id": 2, "category": "search", "turns": ["Binary search?", "First match?"],
     "reference": ["Halve the range until found."]},
    {"question_id": 3, "category": "http", "turns": ["A tiny server.", "Add POST."]},
]  # fmt: skip
# Short answers and verdicts: the engines share two cores.
FAST = ["--max-tokens", "12", "--judge-max-tokens", "96", "--explanation-chars", "24"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    venv = engine_venv()
    root = tmp_path_factory.mktemp("eval")
    ports = free_ports(3)
    names = [("alice", "3g.40gb", 0), ("bob", "2g.20gb", 1), ("judge", "1g.10gb", 2)]
    models = [
        (name, name, port, profile, True, tiny_model(seed=seed))
        for (name, profile, seed), port in zip(names, ports, strict=True)
    ]
    d = cpu_vllm_daemon(root, venv, models, orchestrator={"standby": False})
    d.start()
    for name, _, _ in names:
        d.wait_state(name, "ready", timeout=READY_TIMEOUT)
    yield d
    stop_leaving_nothing(d, root)


@pytest.fixture(scope="module")
def qfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("q") / "q.jsonl"
    p.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return p


def argv(d: Daemon, qfile: Path, db: Path, out: Path, *more: str) -> list[str]:
    return ["eval", "--url", d.url, "--questions", str(qfile), "--db", str(db),
            "--model", "alice", "--model", "bob", "--judge", "judge", "--json", str(out),
            *FAST, *more]  # fmt: skip


def run(d: Daemon, qfile: Path, tmp: Path, *more: str) -> dict[str, Any]:
    out = tmp / "out.json"
    assert main([*argv(d, qfile, tmp / "e.sqlite", out, "-q"), *more]) == 0
    return dict(json.loads(out.read_text()))


def test_structured_verdicts_all_parse_and_are_scored(
    daemon: Daemon, qfile: Path, tmp_path: Path
) -> None:
    payload = run(daemon, qfile, tmp_path)
    single = payload["result"]["single"]
    assert payload["config"]["structured_outputs"] is True
    assert single["unparseable"] == 0, single["examples"]
    for row in single["rows"]:
        assert (row["scored"], row["unparseable"], row["missing"]) == (6, 0, 0), row
        assert 1 <= row["ci95"][0] <= row["mean"] <= row["ci95"][1] <= 10
        assert set(row["categories"]) == {"sorting", "search", "http"}
    pair = run(daemon, qfile, tmp_path, "--mode", "pairwise-all", "--verdict-format", "tag")
    p = pair["result"]["pairwise"]
    assert (p["pairs_judged"], p["unparseable"]) == (6, 0), p["examples"]
    assert pair["result"]["calls"]["answers"]["asked"] == 0  # the answers were cached


def test_without_structured_outputs_random_verdicts_are_never_scored(
    daemon: Daemon, qfile: Path, tmp_path: Path
) -> None:
    payload = run(daemon, qfile, tmp_path, "--structured", "off", "--judge-max-tokens", "24")
    single = payload["result"]["single"]
    assert payload["config"]["structured_outputs"] is False
    for row in single["rows"]:
        assert (row["scored"], row["unparseable"], row["mean"]) == (0, 6, None), row
    assert single["unparseable"] == 12


def finished_requests(d: Daemon, name: str) -> float:
    """Requests the engine finished (stopped or at length), not the aborted ones."""
    base = d.status(name)["endpoint"].removesuffix("/v1")
    samples = parse_metrics(httpx.get(f"{base}/metrics", timeout=10).text)
    return sum(
        s.value
        for s in samples.samples()
        if s.name == "vllm:request_success_total"
        and s.labels.get("finished_reason") in ("stop", "length")
    )


def stored(db: Path) -> tuple[int, int]:
    """Answers and verdicts in the database; none while the run has not yet made its tables."""
    try:
        with sqlite3.connect(db) as c:
            return (
                c.execute("SELECT COUNT(*) FROM answers").fetchone()[0],
                c.execute("SELECT COUNT(*) FROM judgments").fetchone()[0],
            )
    except sqlite3.OperationalError:
        return (0, 0)


def test_a_killed_run_finishes_without_asking_again(
    daemon: Daemon, qfile: Path, tmp_path: Path
) -> None:
    db, out = tmp_path / "kill.sqlite", tmp_path / "kill.json"
    cmd = [sys.executable, "-m", "orchestrator", *argv(daemon, qfile, db, out, "-q")]
    cmd += ["--concurrency", "1", "--seed", "7"]  # a seed no other test used: nothing cached
    proc = subprocess.Popen(cmd, cwd=REPO)
    try:
        wait_until(lambda: db.exists() and stored(db)[0] >= 3, 600, "three answers stored")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(2)  # let the engines count the request the kill aborted
    answers_before, judged_before = stored(db)
    assert answers_before < 12, "the run finished before it was killed"
    before = {m: finished_requests(daemon, m) for m in ("alice", "bob", "judge")}
    assert main([*argv(daemon, qfile, db, out, "-q"), "--concurrency", "1", "--seed", "7"]) == 0
    calls = json.loads(out.read_text())["result"]["calls"]
    assert calls["answers"]["cached"] == answers_before
    assert calls["answers"]["asked"] + answers_before == 12
    assert calls["judgments"]["cached"] == judged_before
    assert calls["judgments"]["asked"] + judged_before == 12
    # The engines saw exactly the calls that were missing, nothing asked twice.
    after = {m: finished_requests(daemon, m) for m in before}
    assert (
        after["alice"] + after["bob"] - before["alice"] - before["bob"]
        == (calls["answers"]["asked"])
    )
    assert after["judge"] - before["judge"] == calls["judgments"]["asked"]
