"""From command-line choices to a finished run: resolve models, plan, run, record."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from orchestrator.evaluation import leaderboard
from orchestrator.evaluation.chat import ChatPool, Sampling
from orchestrator.evaluation.endpoints import (
    Endpoint,
    Resolved,
    Spec,
    SpecError,
    Unavailable,
    from_daemon,
    from_url,
    parse_spec,
)
from orchestrator.evaluation.plan import Mode, RunPlan
from orchestrator.evaluation.progress import Say
from orchestrator.evaluation.prompts import JudgePrompts
from orchestrator.evaluation.questions import QuestionSet
from orchestrator.evaluation.runner import Runner
from orchestrator.evaluation.store import Store
from orchestrator.evaluation.verdicts import Format

Structured = Literal["auto", "on", "off"]
DEFAULT_DB_NAME = "eval.sqlite"


def default_db() -> Path:
    """$MIG_ORCH_EVAL_DB, else the user's data directory."""
    if env := os.environ.get("MIG_ORCH_EVAL_DB"):
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "mig-orchestrator" / DEFAULT_DB_NAME


@dataclass(frozen=True)
class Choices:
    """What the user asked for, before any model is looked up."""

    questions: QuestionSet
    models: tuple[str, ...]
    judge: str | None
    mode: Mode
    baseline: str | None
    answer_sampling: Sampling
    judge_sampling: Sampling
    verdict_format: Format
    explanation_chars: int
    structured: Structured
    gateway_url: str | None


async def _resolve(
    specs: Sequence[Spec], daemon: Callable[[], Sequence[Mapping[str, Any]]], gateway: str | None,
    http: httpx.AsyncClient,
) -> list[Resolved]:  # fmt: skip
    statuses: Sequence[Mapping[str, Any]] | None = None
    out: list[Resolved] = []
    for spec in specs:
        if spec.url is None:
            if statuses is None:
                statuses = daemon()
            out.append(from_daemon(spec, statuses, gateway))
        else:
            out.append(await from_url(spec, http))
    return out


def resolve(
    choices: Choices, daemon: Callable[[], Sequence[Mapping[str, Any]]], api_key: str | None
) -> tuple[list[Resolved], Resolved | None]:
    """The candidates and the judge; SpecError for a spec that names nothing."""
    specs = [parse_spec(m) for m in choices.models]
    if choices.judge:
        specs.append(parse_spec(choices.judge))

    async def probe() -> list[Resolved]:
        # The API key (the gateway's service key) goes with the /v1/models probes too.
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        async with httpx.AsyncClient(headers=headers, trust_env=False) as http:
            return await _resolve(specs, daemon, choices.gateway_url, http)

    resolved = asyncio.run(probe())
    judge = resolved.pop() if choices.judge else None
    labels = [r.label for r in resolved]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise SpecError(f"two models are labelled {', '.join(dup)}: use LABEL=URL to tell apart")
    return resolved, judge


def make_plan(choices: Choices, resolved: list[Resolved], judge: Resolved | None) -> RunPlan:
    candidates = tuple(r for r in resolved if isinstance(r, Endpoint))
    unavailable = tuple(r for r in resolved if isinstance(r, Unavailable))
    if choices.mode != "answers":
        if judge is None:
            raise SpecError(f"mode {choices.mode} needs --judge")
        if isinstance(judge, Unavailable):
            raise SpecError(f"the judge {judge.label} is unavailable: {judge.reason}")
    if choices.mode == "pairwise-baseline":
        labels = [r.label for r in resolved]
        if choices.baseline not in labels:
            raise SpecError(f"--baseline {choices.baseline!r} is not one of the models: {labels}")
        if choices.baseline not in [c.label for c in candidates]:
            raise SpecError(f"the baseline {choices.baseline} is unavailable")
    judge_ep = judge if isinstance(judge, Endpoint) else None
    structured = choices.structured == "on" or (
        choices.structured == "auto" and judge_ep is not None and judge_ep.is_vllm
    )
    if structured and choices.verdict_format == "tag" and judge_ep and not judge_ep.is_vllm:
        raise SpecError(
            f"the tag format can be enforced only on a vLLM judge, and {judge_ep.label} "
            "does not say it is one: use --verdict-format json, or --structured off"
        )
    return RunPlan(
        questions=choices.questions,
        candidates=candidates,
        unavailable=unavailable,
        judge=judge_ep,
        mode=choices.mode,
        baseline=choices.baseline,
        answer_sampling=choices.answer_sampling,
        judge_sampling=choices.judge_sampling,
        prompts=JudgePrompts(choices.verdict_format, choices.explanation_chars),
        structured=structured,
    )


@dataclass(frozen=True)
class Finished:
    run_id: int
    resumed: bool
    status: str
    result: dict[str, Any]


def execute(
    plan: RunPlan,
    store: Store,
    pool: ChatPool,
    say: Say,
    run: Callable[[Any], bool],
    judge_concurrency: int,
) -> Finished:
    """Run the plan under `run` (which returns False when interrupted) and record the result."""
    run_id, resumed = store.begin_run(plan.key(), plan.record())
    if resumed:
        say(f"resuming run {run_id}: cached answers and verdicts are not asked again")
    runner = Runner(plan, store, pool, say, judge_workers=judge_concurrency)
    if plan.judge is not None:
        pool.set_limit(plan.judge, judge_concurrency)
    finished = run(runner.run())
    result = leaderboard.build(plan, runner.out)
    status = "finished" if finished else "interrupted"
    if finished and (runner.out.judge_failed or not runner.out.answers):
        status = "failed"
    store.finish_run(run_id, status, result)
    return Finished(run_id, resumed, status, result)
