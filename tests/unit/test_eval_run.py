"""`eval` end to end against a stand-in server whose judge gives known verdicts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import main
from orchestrator.evaluation import plot
from orchestrator.evaluation.stats import Game, bootstrap_mean, bradley_terry
from tests.eval_standin import Standin, serve

QUESTIONS = [
    {"question_id": 1, "category": "sorting", "turns": ["QID=1 sort this", "now stably"]},
    {"question_id": 2, "category": "http", "turns": ["QID=2 a server", "add POST"],
     "reference": ["use http.server"]},
]  # fmt: skip


def score(n: float) -> str:
    return json.dumps({"explanation": "ok", "score": n})


def winner(v: str) -> str:
    return json.dumps({"explanation": "ok", "verdict": v})


@pytest.fixture
def standin() -> Iterator[Standin]:
    with serve(Standin()) as s:
        yield s


@pytest.fixture
def qfile(tmp_path: Path) -> Path:
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return p


def run_eval(
    s: Standin, tmp: Path, qfile: Path, *argv: str, quiet: bool = True
) -> tuple[int, dict[str, Any]]:
    out = tmp / "result.json"
    rc = main(
        ["eval", "--questions", str(qfile), "--db", str(tmp / "e.sqlite"), "--json", str(out),
         *(["-q"] if quiet else []), "--judge", f"{s.url}#judge", *argv]
    )  # fmt: skip
    return rc, json.loads(out.read_text()) if out.exists() else {}


def models(s: Standin, *names: str) -> list[str]:
    return [x for n in names for x in ("--model", f"{s.url}#{n}")]


def test_single_grading_scores_what_parses_and_counts_the_rest(
    standin: Standin, tmp_path: Path, qfile: Path
) -> None:
    good = {("1", 1): 9, ("1", 2): 8, ("2", 1): 7, ("2", 2): 10}
    for (q, t), n in good.items():
        standin.single[("good", q, t)] = score(n)
    standin.single[("bad", "1", 1)] = score(3)
    standin.single[("bad", "1", 2)] = "Score: 3"
    standin.single[("bad", "2", 1)] = score(7.5)
    standin.single[("bad", "2", 2)] = score(2)
    rc, payload = run_eval(standin, tmp_path, qfile, *models(standin, "good", "bad"))
    assert rc == 0 and payload["status"] == "finished"
    rows = {r["model"]: r for r in payload["result"]["single"]["rows"]}
    ci = bootstrap_mean([9.0, 8.0, 7.0, 10.0])
    assert ci is not None
    assert rows["good"]["mean"] == 8.5 and rows["good"]["ci95"] == [ci.low, ci.high]
    assert rows["good"]["categories"] == {"http": 8.5, "sorting": 8.5}
    assert (rows["bad"]["mean"], rows["bad"]["scored"], rows["bad"]["unparseable"]) == (2.5, 2, 2)
    assert rows["bad"]["categories"] == {"http": 2.0, "sorting": 3.0}
    assert payload["result"]["single"]["unparseable"] == 2
    # The judge is a vLLM server (owned_by vllm): every verdict was asked for with the regex.
    judged = [b for b in standin.bodies if b["model"] == "judge"]
    assert len(judged) == 8
    assert all(b["structured_outputs"]["regex"].startswith('\\{"explanation"') for b in judged)
    assert all((b["temperature"], b["seed"]) == (0.0, 0) for b in judged)
    # The reference goes to the judge for the turn that has one, and only there.
    assert sum("Reference Answer" in b["messages"][-1]["content"] for b in judged) == 2
    config = payload["config"]
    assert config["judge_prompt"]["sha256"] and "single" in config["judge_prompt"]["texts"]
    assert config["structured_outputs"] is True and config["judge_generation"]["seed"] == 0


def test_turns_are_answered_in_conversation(standin: Standin, tmp_path: Path, qfile: Path) -> None:
    run_eval(standin, tmp_path, qfile, *models(standin, "good"), "--mode", "answers")
    second = [b for b in standin.bodies if len(b["messages"]) == 3]
    assert len(second) == 2
    user1, assistant, user2 = second[0]["messages"]
    assert (user1["content"], user2["content"]) in {
        (q["turns"][0], q["turns"][1]) for q in QUESTIONS
    }
    assert assistant["role"] == "assistant" and assistant["content"].startswith("I am good")


def test_a_rerun_asks_nothing_again(standin: Standin, tmp_path: Path, qfile: Path) -> None:
    for key in [("good", q, t) for q in "12" for t in (1, 2)]:
        standin.single[key] = score(6)
    run_eval(standin, tmp_path, qfile, *models(standin, "good"), "--mode", "answers")
    assert standin.calls("good") == 4 and standin.calls("judge") == 0
    _, first = run_eval(standin, tmp_path, qfile, *models(standin, "good"))
    assert standin.calls("good") == 4 and standin.calls("judge") == 4
    _, again = run_eval(standin, tmp_path, qfile, *models(standin, "good"))
    assert standin.calls("good") == 4 and standin.calls("judge") == 4
    assert again["result"]["single"] == first["result"]["single"]
    assert again["result"]["calls"]["judgments"]["cached"] == 4
    assert again["run_id"] == first["run_id"]


def test_a_failing_model_is_reported_and_the_others_go_on(
    standin: Standin, tmp_path: Path, qfile: Path
) -> None:
    standin.broken.add("broken")
    for key in [("good", q, t) for q in "12" for t in (1, 2)]:
        standin.single[key] = score(5)
    rc, payload = run_eval(standin, tmp_path, qfile, *models(standin, "good", "broken"))
    assert rc == 0
    assert "HTTP 500: engine is down" in payload["result"]["failed"]["broken"]
    assert [r["model"] for r in payload["result"]["single"]["rows"]] == ["good"]


def test_without_structured_outputs_nothing_constrains_the_judge(
    standin: Standin, tmp_path: Path, qfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    standin.owned_by = "someone"  # not vLLM: auto leaves the request alone
    key = tmp_path / "key"
    key.write_text("sk-service\n")
    key.chmod(0o600)
    for key_ in [("good", q, t) for q in "12" for t in (1, 2)]:
        standin.single[key_] = "Rating: [[4]]"
    argv = [*models(standin, "good"), "--verdict-format", "tag", "--api-key-file", str(key)]
    rc, payload = run_eval(standin, tmp_path, qfile, *argv)
    assert rc == 0 and payload["result"]["single"]["rows"][0]["mean"] == 4.0
    assert not any("response_format" in b or "structured_outputs" in b for b in standin.bodies)
    assert standin.auth == {"Bearer sk-service"}
    capsys.readouterr()
    rc, payload = run_eval(standin, tmp_path, qfile, *argv, "--structured", "on")
    assert rc == 2 and "only on a vLLM judge" in capsys.readouterr().err
    argv = [*models(standin, "good"), "--structured", "on"]
    for key_ in [("good", q, t) for q in "12" for t in (1, 2)]:
        standin.single[key_] = score(4)
    rc, payload = run_eval(standin, tmp_path, qfile, *argv)
    judged = [b for b in standin.bodies if b["model"] == "judge"][-1]
    assert judged["response_format"]["json_schema"]["strict"] is True


def test_pairwise_all_counts_both_orders_and_a_flip_is_a_tie(
    standin: Standin, tmp_path: Path, qfile: Path
) -> None:
    turns = [(q, t) for q in "12" for t in (1, 2)]
    for q, t in turns:
        standin.pair[("good", "bad", q, t)] = winner("A")
        standin.pair[("bad", "good", q, t)] = winner("B")
        standin.pair[("good", "ugly", q, t)] = winner("A")  # position bias: A both times
        standin.pair[("ugly", "good", q, t)] = winner("A")
        standin.pair[("bad", "ugly", q, t)] = winner("B")
        standin.pair[("ugly", "bad", q, t)] = winner("A")
    standin.pair[("bad", "ugly", "2", 2)] = "[[A]]"  # malformed for the json format
    argv = [*models(standin, "good", "bad", "ugly"), "--mode", "pairwise-all"]
    rc, payload = run_eval(standin, tmp_path, qfile, *argv)
    assert rc == 0
    p = payload["result"]["pairwise"]
    rows = {r["model"]: r for r in p["rows"]}
    assert (rows["good"]["wins"], rows["good"]["ties"], rows["good"]["losses"]) == (4, 4, 0)
    assert (rows["bad"]["wins"], rows["bad"]["ties"], rows["bad"]["losses"]) == (0, 0, 7)
    assert (rows["ugly"]["wins"], rows["ugly"]["ties"], rows["ugly"]["losses"]) == (3, 4, 0)
    assert rows["good"]["win_rate"] == 0.75 and rows["ugly"]["win_rate"] == round(5 / 7, 3)
    assert (p["pairs_judged"], p["order_flips"], p["unparseable"]) == (11, 4, 1)
    assert p["flip_rate"] == round(4 / 11, 3)
    games = (
        [Game("good", "bad", "good")] * 4
        + [Game("good", "ugly", None)] * 4
        + [Game("bad", "ugly", "ugly")] * 3
    )
    expected = bradley_terry(games)
    assert {m: r["rating"] for m, r in rows.items()} == {
        m: round(v, 1) for m, v in expected.items()
    }
    assert standin.calls("judge") == 3 * 4 * 2


def test_the_count_and_an_estimate_come_before_an_all_vs_all_run(
    standin: Standin, tmp_path: Path, qfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for q, t in [(q, t) for q in "12" for t in (1, 2)]:
        standin.pair[("good", "bad", q, t)] = winner("A")
        standin.pair[("bad", "good", q, t)] = winner("B")
    argv = [*models(standin, "good", "bad"), "--mode", "pairwise-all"]
    run_eval(standin, tmp_path, qfile, *argv)
    capsys.readouterr()
    # Another judge seed: nothing cached, and the first run's timing gives the estimate.
    rc, _ = run_eval(standin, tmp_path, qfile, *argv, "--judge-seed", "1", quiet=False)
    err = capsys.readouterr().err
    count = err.index("[judge] 8 judge calls to judge (pairwise-all)")
    estimate = err.index("[judge] estimate: ~")
    first_progress = err.index("[judge] 1/8") if "[judge] 1/8" in err else len(err)
    assert rc == 0 and count < estimate < first_progress
    rc = main(["eval", "--questions", str(qfile), "--db", str(tmp_path / "e.sqlite"),
               "--judge", f"{standin.url}#judge", *argv, "--dry-run"])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0 and "up to 8 answers, 8 judgments" in out.err
    assert "time estimate for the judge, uncached: ~" in out.out
    assert standin.calls("judge") == 16  # the dry run asked nothing


def test_pairwise_baseline_and_bad_input(
    standin: Standin, tmp_path: Path, qfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for q, t in [(q, t) for q in "12" for t in (1, 2)]:
        standin.pair[("good", "bad", q, t)] = winner("A")
        standin.pair[("bad", "good", q, t)] = winner("B")
    argv = [*models(standin, "good", "bad"), "--mode", "pairwise-baseline", "--baseline", "bad"]
    rc, payload = run_eval(standin, tmp_path, qfile, *argv)
    rows = {r["model"]: r for r in payload["result"]["pairwise"]["rows"]}
    assert rc == 0 and rows["good"]["win_rate"] == 1.0 and rows["bad"]["win_rate"] == 0.0
    assert payload["result"]["pairwise"]["baseline"] == "bad"
    capsys.readouterr()
    rc, _ = run_eval(standin, tmp_path, qfile, *argv[:-1], "zz")
    assert rc == 2 and "--baseline 'zz' is not one of the models" in capsys.readouterr().err
    rc, payload = run_eval(standin, tmp_path, qfile, "--model", f"{standin.url}#nope")
    assert rc == 1 and "does not serve nope" in payload["result"]["failed"]["nope"]
    rc, _ = run_eval(standin, tmp_path, tmp_path / "missing.jsonl", *models(standin, "good"))
    assert rc == 2 and "missing.jsonl: cannot read" in capsys.readouterr().err


def test_concurrency_is_limited_per_endpoint_and_a_slow_model_times_out(
    standin: Standin, tmp_path: Path
) -> None:
    qfile = tmp_path / "many.jsonl"
    qfile.write_text(
        "".join(
            json.dumps({"question_id": n, "category": "c", "turns": [f"QID={n} go"]}) + "\n"
            for n in range(8)
        )
    )
    standin.delay_s = 0.2
    standin.slow.add("ugly")
    for n in range(8):
        standin.single[("good", str(n), 1)] = score(5)
        standin.single[("bad", str(n), 1)] = score(6)
    argv = [*models(standin, "good", "bad", "ugly"), "--concurrency", "2"]
    rc, payload = run_eval(standin, tmp_path, qfile, *argv, "--judge-concurrency", "3",
                           "--timeout", "0.5")  # fmt: skip
    assert rc == 0
    assert standin.max_in_flight["good"] == 2 and standin.max_in_flight["bad"] == 2
    assert standin.max_in_flight["judge"] == 3
    assert payload["result"]["failed"] == {"ugly": "timed out after 0.5s"}
    assert [r["model"] for r in payload["result"]["single"]["rows"]] == ["bad", "good"]


def test_csv_and_plot_and_without_matplotlib_the_numbers_stay(
    standin: Standin, tmp_path: Path, qfile: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    for key in [(m, q, t) for m in ("good", "bad") for q in "12" for t in (1, 2)]:
        standin.single[key] = score(8 if key[0] == "good" else 3)
    csv_path, png = tmp_path / "board.csv", tmp_path / "board.png"
    argv = [*models(standin, "good", "bad"), "--csv", str(csv_path), "--plot", str(png)]
    rc, _ = run_eval(standin, tmp_path, qfile, *argv)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "model,mean,95% CI,scored,unparseable,missing,http,sorting"
    assert lines[1].startswith("good,8.00,8.00-8.00,4,0,0")
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png.unlink()

    def missing() -> None:
        raise plot.PlotUnavailable("the plot needs matplotlib")

    monkeypatch.setattr(plot, "require_matplotlib", missing)
    rc, payload = run_eval(standin, tmp_path, qfile, *argv)
    assert rc == 0 and not png.exists()
    assert "no plot: the plot needs matplotlib" in capsys.readouterr().err
    assert payload["result"]["single"]["rows"][0]["mean"] == 8.0
    assert csv_path.read_text().splitlines()[1].startswith("good,8.00")
