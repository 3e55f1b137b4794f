"""`mig-orchestrator eval`: grade served models with an LLM judge over a question set."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from orchestrator.cli.options import DEFAULT_CONFIG
from orchestrator.client import ControlClient, add_daemon_options, resolve_token
from orchestrator.config import load_config
from orchestrator.config.settings import parse_listen
from orchestrator.evaluation import output, plot
from orchestrator.evaluation.chat import ChatPool, Sampling
from orchestrator.evaluation.endpoints import SpecError
from orchestrator.evaluation.plan import MODES, RunPlan
from orchestrator.evaluation.progress import estimate_s, human_seconds, quiet, stderr_say
from orchestrator.evaluation.questions import QuestionError, load_questions
from orchestrator.evaluation.session import Choices, default_db, execute, make_plan, resolve
from orchestrator.evaluation.store import Store, StoreError
from orchestrator.evaluation.verdicts import FORMATS
from orchestrator.secret_file import read_secret_file

EXIT_INTERRUPTED = 130
API_KEY_ENV = "MIG_ORCH_API_KEY"


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {text}")
    return n


def _add_generation(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (recorded with the run)")
    g.add_argument("--temperature", type=float, default=0.0, help="answers (default 0)")
    g.add_argument("--max-tokens", type=_positive, default=512, help="answers (default 512)")
    g.add_argument("--seed", type=int, default=0, help="answers (default 0)")
    g.add_argument("--judge-temperature", type=float, default=0.0, help="default 0")
    g.add_argument("--judge-max-tokens", type=_positive, default=512, help="default 512")
    g.add_argument("--judge-seed", type=int, default=0, help="default 0")
    g.add_argument("--verdict-format", choices=FORMATS, default="json", help="default json")
    g.add_argument(
        "--structured",
        choices=("auto", "on", "off"),
        default="auto",
        help="hold the judge to the verdict format with structured outputs "
        "(auto: when the judge is a vLLM engine)",
    )
    g.add_argument(
        "--explanation-chars", type=_positive, default=400, help="the judge's explanation cap"
    )


def _add_output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--db", type=Path, default=None, help=f"SQLite cache (default {default_db()})")
    g.add_argument("--json", dest="json_out", metavar="FILE|-", help="the result as JSON")
    g.add_argument("--csv", type=Path, metavar="FILE", help="the leaderboard as CSV")
    g.add_argument("--plot", type=Path, metavar="FILE.png", help="a chart (needs matplotlib)")
    g.add_argument("--dry-run", action="store_true", help="print the plan and call nothing")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress lines")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="grade models with an LLM judge: answers, verdicts, a leaderboard",
        description="Ask every model the questions (turns in conversation), have the judge "
        "grade each turn (single 1-10, or pairwise in both orders), and print a leaderboard. "
        "Answers and verdicts are cached in SQLite: run the same command again to resume.",
    )
    p.add_argument(
        "--questions",
        default="builtin:coding",
        help="MT-Bench-style JSONL file, or builtin:coding (default)",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME|[LABEL=]URL[#MODEL]",
        help="a candidate: a daemon model's served_model_name, or an OpenAI-compatible URL",
    )
    p.add_argument("--judge", metavar="NAME|[LABEL=]URL[#MODEL]", help="the judge, same forms")
    p.add_argument("--mode", choices=MODES, default="single", help="default single")
    p.add_argument("--baseline", help="pairwise-baseline: the label of the baseline model")
    p.add_argument(
        "--gateway",
        default=os.environ.get("MIG_ORCH_GATEWAY_URL"),
        metavar="URL|off",
        help="reach the daemon's models through this gateway (env MIG_ORCH_GATEWAY_URL); "
        "default: the [gateway] of --config when it is enabled; off: their own ports",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="the daemon's models.toml, read for its [gateway] when it exists "
        "(env MIG_ORCH_CONFIG; default %(default)s)",
    )
    p.add_argument(
        "--api-key-file",
        type=Path,
        help=f"the service API key sent with every call (else env {API_KEY_ENV})",
    )
    p.add_argument("--concurrency", type=_positive, default=8, help="per model (default 8)")
    p.add_argument("--judge-concurrency", type=_positive, default=16, help="default 16")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per call")
    add_daemon_options(p)
    _add_generation(p)
    _add_output(p)
    p.set_defaults(func=cmd_eval)


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file:
        return read_secret_file(args.api_key_file, "API key file")
    return os.environ.get(API_KEY_ENV) or None


def _gateway_url(args: argparse.Namespace) -> str | None:
    """--gateway, else the enabled [gateway] of the daemon's config, if this user can read it."""
    if args.gateway:
        return None if args.gateway == "off" else str(args.gateway)
    if not args.config.is_file():
        return None
    gw = load_config(args.config).gateway
    if not gw.enabled:
        return None
    host, port = parse_listen(gw.listen)
    # A wildcard address listens on loopback too; this runs on the server that read the file.
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"


def _choices(args: argparse.Namespace) -> Choices:
    return Choices(
        questions=load_questions(args.questions),
        models=tuple(args.model),
        judge=args.judge,
        mode=args.mode,
        baseline=args.baseline,
        answer_sampling=Sampling(args.temperature, args.max_tokens, args.seed),
        judge_sampling=Sampling(args.judge_temperature, args.judge_max_tokens, args.judge_seed),
        verdict_format=args.verdict_format,
        explanation_chars=args.explanation_chars,
        structured=args.structured,
        gateway_url=_gateway_url(args),
    )


def _run(coro: Coroutine[Any, Any, Any]) -> bool:
    """Run to the end; False when Ctrl-C or SIGTERM stopped it (what was done is saved)."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await coro

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return False
    return True


def _describe(plan: RunPlan, say: Any) -> None:
    labels = [c.label for c in plan.candidates]
    say(f"questions: {plan.questions.source} ({len(plan.questions.questions)} questions, "
        f"{plan.questions.turn_count} turns)")  # fmt: skip
    say(f"models: {', '.join(labels) or 'none'}")
    for u in plan.unavailable:
        say(f"unavailable: {u.label}: {u.reason}")
    if plan.judge:
        how = "structured outputs" if plan.structured else "prompt only"
        say(f"judge: {plan.judge.label} ({plan.prompts.fmt} verdicts, {how}; "
            f"prompt sha256 {plan.prompts.sha256[:12]})")  # fmt: skip
    calls = plan.judge_call_count(labels)
    say(f"calls: up to {len(labels) * plan.questions.turn_count} answers, {calls} judgments")


def _estimate(plan: RunPlan, store: Store, judge_concurrency: int) -> str:
    labels = [c.label for c in plan.candidates]
    calls = plan.judge_call_count(labels)
    per_call = store.judge_latency(plan.judge.identity) if plan.judge else None
    if per_call is None or not calls:
        return "time estimate: none yet (no earlier calls of this judge in the database)"
    est = estimate_s(calls, per_call, judge_concurrency)
    return f"time estimate for the judge, uncached: ~{human_seconds(est)}"


def _emit(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    result = payload["result"]
    if args.json_out == "-":
        print(output.render_json(payload))
    else:
        print(output.render_text(result))
        if args.json_out:
            Path(args.json_out).write_text(output.render_json(payload) + "\n", encoding="utf-8")
    if args.csv:
        args.csv.write_text(output.render_csv(result), encoding="utf-8")
    if args.plot:
        try:
            plot.plot_result(result, args.plot)
        except plot.PlotUnavailable as exc:
            # Everything else is written: a missing plot never costs the numbers.
            print(f"note: no plot: {exc}", file=sys.stderr)


def _daemon_models(args: argparse.Namespace) -> Any:
    def fetch() -> list[dict[str, Any]]:
        with ControlClient(args.url, resolve_token(args.token_file)) as control:
            return control.models()

    return fetch


def cmd_eval(args: argparse.Namespace) -> int:
    say = quiet if args.quiet else stderr_say
    try:
        choices = _choices(args)
        api_key = _api_key(args)
        resolved, judge = resolve(choices, _daemon_models(args), api_key)
        plan = make_plan(choices, resolved, judge)
        store = Store(args.db or default_db())
    except (QuestionError, SpecError, StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with store:
        # A dry run prints only the plan: -q does not silence it.
        _describe(plan, stderr_say if args.dry_run else say)
        if args.dry_run:
            print(_estimate(plan, store, args.judge_concurrency))
            return 0
        pool = ChatPool(args.concurrency, args.timeout, api_key)
        done = execute(plan, store, pool, say, _run_with(pool), args.judge_concurrency)
    payload = {"run_id": done.run_id, "status": done.status, "config": plan.record(),
               "result": done.result}  # fmt: skip
    _emit(args, payload)
    if done.status == "interrupted":
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if done.status == "finished" else 1


def _run_with(pool: ChatPool) -> Any:
    """The event-loop runner for the run; the pool's connections close in the same loop."""

    def run(coro: Coroutine[Any, Any, Any]) -> bool:
        async def body() -> None:
            try:
                await coro
            finally:
                await pool.aclose()

        return _run(body())

    return run
