"""Question files in MT-Bench's format, and the SQLite store's migrations and cache."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from orchestrator.evaluation.questions import QuestionError, load_questions, parse_questions
from orchestrator.evaluation.store import (
    SCHEMA_VERSION,
    Answer,
    Judgment,
    Store,
    StoreError,
    latest_result,
)

MT_BENCH_LINE = {
    "question_id": 111,
    "category": "math",
    "turns": ["What is 2+2?", "And times 3?"],
    "reference": ["4", "12"],
    "extra_field": "ignored",
}


def test_mt_bench_lines_load_as_is() -> None:
    qs = parse_questions(json.dumps(MT_BENCH_LINE) + "\n\n", "q.jsonl")
    (q,) = qs.questions
    assert (q.question_id, q.category, q.turns, q.reference) == (
        "111", "math", ("What is 2+2?", "And times 3?"), ("4", "12"),
    )  # fmt: skip
    short = parse_questions(json.dumps({**MT_BENCH_LINE, "reference": ["4"]}), "q")
    assert short.questions[0].reference == ("4", None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "q.jsonl:1: not JSON"),
        ('{"question_id": 1, "category": "x"}', "q.jsonl:1: field 'turns'"),
        ('{"question_id": 1, "category": "x", "turns": []}', "field 'turns'"),
        ('{"question_id": 1.5, "category": "x", "turns": ["a"]}', "field 'question_id'"),
        ('{"question_id": 1, "turns": ["a"]}', "field 'category'"),
        ('{"question_id": 1, "category": "x", "turns": ["a"], "reference": ["1", "2"]}',
         "2 references for 1 turns"),
        ('{"question_id": 1, "category": "x", "turns": ["  "]}', "a turn is empty"),
        ("[1, 2]", "want a JSON object"),
    ],
)  # fmt: skip
def test_bad_lines_name_the_file_line_and_field(line: str, message: str) -> None:
    with pytest.raises(QuestionError, match=re.escape(message)):
        parse_questions(line, "q.jsonl")


def test_repeated_ids_and_empty_files_are_refused(tmp_path: Path) -> None:
    line = json.dumps(MT_BENCH_LINE)
    with pytest.raises(
        QuestionError, match=re.escape("q.jsonl:2: question_id '111' repeats line 1")
    ):
        parse_questions(f"{line}\n{line}", "q.jsonl")
    with pytest.raises(QuestionError, match="no questions"):
        parse_questions("\n", "q.jsonl")
    with pytest.raises(QuestionError, match="cannot read"):
        load_questions(str(tmp_path / "missing.jsonl"))


def test_the_builtin_set_is_coding_tasks_with_categories() -> None:
    qs = load_questions("builtin:coding")
    cats = {q.category for q in qs.questions}
    assert {"sorting", "search", "http"} <= cats
    assert all(len(q.turns) == 2 for q in qs.questions)
    assert any(r is not None for q in qs.questions for r in q.reference)
    with pytest.raises(QuestionError, match="no such built-in set"):
        load_questions("builtin:nope")


def test_the_store_migrates_caches_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite"
    with Store(path) as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        s.put_answer("m", "q", 0, "set", Answer("hi", "stop", 3, 1, 0.5))
        s.put_judgment("k", "j", Judgment("[[7]]", 7, None, 30, 4, 1.5))
        s.put_judgment("k2", "j", Judgment("??", None, "no tag", 30, 1, 0.5))
        run_id, resumed = s.begin_run("key", {"a": 1})
        assert not resumed
        s.finish_run(run_id, "finished", {"mode": "single"})
    with Store(path) as s:  # reopening applies nothing and keeps everything
        assert s.answer("m", "q", 0, "set") == Answer("hi", "stop", 3, 1, 0.5)
        assert s.judgment("k") == Judgment("[[7]]", 7, None, 30, 4, 1.5)
        assert s.judgment("k2") == Judgment("??", None, "no tag", 30, 1, 0.5)
        assert s.judge_latency("j") == pytest.approx(1.0)
        assert s.begin_run("key", {"a": 1}) == (run_id, True)
    latest = latest_result(path)
    assert latest is not None and latest["result"] == {"mode": "single"}
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this program"):
        Store(path)
    assert latest_result(tmp_path / "none.sqlite") is None
