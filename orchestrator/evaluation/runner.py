"""Run a plan: answers from every model, then the judge's verdicts; everything through the cache."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from orchestrator.evaluation.chat import CallError, ChatPool
from orchestrator.evaluation.endpoints import Endpoint
from orchestrator.evaluation.plan import JudgeItem, RunPlan, sha256_json
from orchestrator.evaluation.progress import Progress, Say, estimate_s, human_seconds
from orchestrator.evaluation.questions import Question
from orchestrator.evaluation.store import Answer, Judgment, Store
from orchestrator.evaluation.verdicts import Parsed, parse

T = TypeVar("T")


@dataclass
class PhaseCount:
    asked: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        d["output_tok_s"] = self.completion_tokens / self.wall_s if self.wall_s else 0.0
        return d


@dataclass
class Outcome:
    """What a run gathered; the leaderboard is computed from it."""

    answers: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    verdicts: dict[tuple[str, str, str | None, int, bool], Parsed] = field(default_factory=dict)
    judge_failed: str | None = None
    counts: dict[str, PhaseCount] = field(
        default_factory=lambda: {"answers": PhaseCount(), "judgments": PhaseCount()}
    )


async def drain(items: Iterable[T], workers: int, fn: Callable[[T], Awaitable[None]]) -> None:
    """Run fn over items with at most `workers` at once, pulling items lazily."""
    it: Iterator[T] = iter(items)

    async def worker() -> None:
        for item in it:
            await fn(item)

    await asyncio.gather(*(worker() for _ in range(max(1, workers))))


@dataclass
class Runner:
    plan: RunPlan
    store: Store
    pool: ChatPool
    say: Say
    judge_workers: int
    out: Outcome = field(default_factory=Outcome)

    async def run(self) -> Outcome:
        await self._answer_phase()
        if self.plan.judge is not None and self.plan.mode != "answers":
            await self._judge_phase(self.plan.judge)
        return self.out

    # ---- answers

    async def _answer_phase(self) -> None:
        plan = self.plan
        total = len(plan.candidates) * plan.questions.turn_count
        progress = Progress("answers", total, self.say)
        self.say(f"[answers] {len(plan.candidates)} models x {plan.questions.turn_count} turns")
        start = time.monotonic()
        await asyncio.gather(
            *(
                drain(
                    plan.questions.questions,
                    self.pool.concurrency,
                    functools.partial(self._converse, ep, progress=progress),
                )
                for ep in plan.candidates
            )
        )
        self.out.counts["answers"].wall_s = time.monotonic() - start

    async def _converse(self, ep: Endpoint, q: Question, progress: Progress) -> None:
        """Answer the turns in order, each in the conversation of the earlier ones."""
        settings = sha256_json(asdict(self.plan.answer_sampling))
        messages: list[dict[str, str]] = []
        texts: list[str] = []
        count = self.out.counts["answers"]
        for turn, prompt in enumerate(q.turns):
            messages.append({"role": "user", "content": prompt})
            key = sha256_json([q.digest(turn), texts])
            a = self.store.answer(ep.identity, key, turn, settings)
            if a is None:
                # Once a model has failed, its remaining turns are skipped, not asked.
                if ep.label not in self.out.failed:
                    a = await self._ask(ep, q, turn, messages)
                if a is None:
                    for _ in range(turn, len(q.turns)):
                        progress.tick(False)
                    return
                self.store.put_answer(ep.identity, key, turn, settings, a)
                count.asked += 1
                count.prompt_tokens += a.prompt_tokens or 0
                count.completion_tokens += a.completion_tokens or 0
                progress.tick(True)
            else:
                count.cached += 1
                progress.tick(False)
            texts.append(a.text)
            messages.append({"role": "assistant", "content": a.text})
        self.out.answers.setdefault(ep.label, {})[q.question_id] = texts

    async def _ask(
        self, ep: Endpoint, q: Question, turn: int, messages: list[dict[str, str]]
    ) -> Answer | None:
        try:
            r = await self.pool.chat(ep, list(messages), self.plan.answer_sampling)
        except CallError as exc:
            if exc.fatal:
                if ep.label not in self.out.failed:
                    self.out.failed[ep.label] = exc.reason
                    self.say(f"[answers] {ep.label} failed: {exc.reason}; the others go on")
            else:
                self.out.errors.append(
                    {"model": ep.label, "question": q.question_id, "turn": str(turn + 1),
                     "reason": exc.reason}
                )  # fmt: skip
            return None
        return Answer(r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens, r.latency_s)

    # ---- judgments

    def _ready(self, item: JudgeItem) -> list[str] | None:
        """The answers the item needs (A's then B's), or None when a model has none."""
        got = self.out.answers
        qid = item.question.question_id
        need = [item.a] if item.b is None else [item.a, item.b]
        if any(qid not in got.get(m, {}) for m in need):
            return None
        return need

    async def _judge_phase(self, judge: Endpoint) -> None:
        labels = [c.label for c in self.plan.candidates if c.label in self.out.answers]
        total = self.plan.judge_call_count(labels)
        self.say(f"[judge] {total} judge calls to {judge.label} ({self.plan.mode})")
        estimate_after = 0
        if self.plan.mode == "pairwise-all":
            estimate_after = self._announce_estimate(judge, total)
        progress = Progress("judge", total, self.say, estimate_after=estimate_after)
        start = time.monotonic()
        await drain(
            self.plan.judge_items(labels),
            self.judge_workers,
            lambda item: self._judge(judge, item, progress),
        )
        self.out.counts["judgments"].wall_s = time.monotonic() - start

    def _announce_estimate(self, judge: Endpoint, total: int) -> int:
        """Print the time an all-vs-all run will take; 0, or how many calls to measure first."""
        per_call = self.store.judge_latency(judge.identity)
        if per_call is None:
            first = self.judge_workers * 2
            if first >= total:
                return 0
            self.say(f"[judge] no timing of {judge.label} yet: estimate after {first} calls")
            return first
        est = estimate_s(total, per_call, self.judge_workers)
        self.say(
            f"[judge] estimate: ~{human_seconds(est)} at {per_call:.2f}s per call, "
            f"{self.judge_workers} at a time (earlier runs; cached calls cost nothing)"
        )
        return 0

    async def _judge(self, judge: Endpoint, item: JudgeItem, progress: Progress) -> None:
        order = self._ready(item)
        if order is None:
            progress.tick(False)
            return
        if item.swapped:
            order.reverse()
        answers = [self.out.answers[m][item.question.question_id] for m in order]
        key = sha256_json(
            [judge.identity, asdict(self.plan.judge_sampling), self.plan.prompts.sha256,
             self.plan.prompts.fmt, self.plan.structured, item.kind,
             item.question.digest(), item.question.reference, item.turn, answers]
        )  # fmt: skip
        j = self.store.judgment(key)
        count = self.out.counts["judgments"]
        asked = j is None
        if j is None:
            j = await self._ask_judge(judge, item, answers)
            if j is None:
                progress.tick(False)
                return
            self.store.put_judgment(key, judge.identity, j)
            count.asked += 1
            count.prompt_tokens += j.prompt_tokens or 0
            count.completion_tokens += j.completion_tokens or 0
        else:
            count.cached += 1
        verdict_key = (item.a, item.question.question_id, item.b, item.turn, item.swapped)
        self.out.verdicts[verdict_key] = Parsed(j.value, j.error)
        progress.tick(asked)

    async def _ask_judge(
        self, judge: Endpoint, item: JudgeItem, answers: list[list[str]]
    ) -> Judgment | None:
        if self.out.judge_failed:
            return None
        prompts = self.plan.prompts
        if item.kind == "single":
            messages = prompts.single(item.question, item.turn, answers[0])
        else:
            messages = prompts.pair(item.question, item.turn, answers[0], answers[1])
        try:
            r = await self.pool.chat(
                judge, messages, self.plan.judge_sampling, **self.plan.constraint(item.kind)
            )
        except CallError as exc:
            if exc.fatal:
                self.out.judge_failed = self.out.judge_failed or exc.reason
                self.say(f"[judge] {judge.label} failed: {exc.reason}")
            else:
                self.out.errors.append(
                    {"model": f"judge {judge.label}", "question": item.question.question_id,
                     "turn": str(item.turn + 1), "reason": exc.reason}
                )  # fmt: skip
            return None
        p = parse(r.text, prompts.fmt, item.kind)
        return Judgment(r.text, p.value, p.error, r.prompt_tokens, r.completion_tokens, r.latency_s)
