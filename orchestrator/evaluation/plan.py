"""What one run asks: models, judge, mode, settings; recorded in full so it can be reproduced."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from orchestrator import __version__
from orchestrator.evaluation.chat import Sampling
from orchestrator.evaluation.endpoints import Endpoint, Unavailable
from orchestrator.evaluation.prompts import JudgePrompts
from orchestrator.evaluation.questions import Question, QuestionSet
from orchestrator.evaluation.verdicts import Kind, request_fields

Mode = Literal["answers", "single", "pairwise-baseline", "pairwise-all"]
MODES: tuple[Mode, ...] = ("answers", "single", "pairwise-baseline", "pairwise-all")


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class JudgeItem:
    """One judge call: a model's answer alone, or two models' answers in one order."""

    kind: Kind
    question: Question
    turn: int
    a: str
    b: str | None = None  # pair: shown as assistant B
    swapped: bool = False  # pair: this is the second order (the pair's model 2 shown as A)


@dataclass(frozen=True)
class RunPlan:
    questions: QuestionSet
    candidates: tuple[Endpoint, ...]
    unavailable: tuple[Unavailable, ...]
    judge: Endpoint | None
    mode: Mode
    baseline: str | None
    answer_sampling: Sampling
    judge_sampling: Sampling
    prompts: JudgePrompts
    structured: bool

    def constraint(self, kind: Kind) -> dict[str, Any]:
        """The request fields that enforce the verdict's format, when structured outputs are on."""
        if not self.structured or self.judge is None:
            return {}
        return request_fields(
            self.prompts.fmt, kind, self.prompts.explanation_chars, self.judge.is_vllm
        )

    def pairs(self, labels: list[str]) -> list[tuple[str, str]]:
        if self.mode == "pairwise-baseline":
            return [(m, str(self.baseline)) for m in labels if m != self.baseline]
        if self.mode == "pairwise-all":
            return list(itertools.combinations(labels, 2))
        return []

    def judge_items(self, labels: list[str]) -> Iterator[JudgeItem]:
        """Every judge call of the run, built lazily (an all-vs-all run has tens of thousands)."""
        for q in self.questions.questions:
            for turn in range(len(q.turns)):
                if self.mode == "single":
                    for m in labels:
                        yield JudgeItem("single", q, turn, m)
                for m1, m2 in self.pairs(labels):
                    yield JudgeItem("pair", q, turn, m1, m2, swapped=False)
                    yield JudgeItem("pair", q, turn, m1, m2, swapped=True)

    def judge_call_count(self, labels: list[str]) -> int:
        per_turn = len(labels) if self.mode == "single" else 2 * len(self.pairs(labels))
        return 0 if self.mode == "answers" else per_turn * self.questions.turn_count

    def record(self) -> dict[str, Any]:
        """Everything needed to reproduce the run; stored with it."""

        def ep(e: Endpoint | None) -> dict[str, Any] | None:
            return asdict(e) if e else None

        return {
            "version": __version__,
            "questions": {
                "source": self.questions.source,
                "sha256": self.questions.sha256,
                "count": len(self.questions.questions),
                "turns": self.questions.turn_count,
            },
            "mode": self.mode,
            "baseline": self.baseline,
            "candidates": [ep(c) for c in self.candidates],
            "unavailable": [asdict(u) for u in self.unavailable],
            "judge": ep(self.judge),
            "answer_generation": asdict(self.answer_sampling),
            "judge_generation": asdict(self.judge_sampling),
            "judge_prompt": {"sha256": self.prompts.sha256, "texts": self.prompts.texts},
            "verdict_format": self.prompts.fmt,
            "explanation_chars": self.prompts.explanation_chars,
            "structured_outputs": self.structured,
            "constraint": {k: self.constraint(k) for k in ("single", "pair")},
        }

    def key(self) -> str:
        """Same questions, models, judge and settings: the same run, which then resumes."""
        rec = self.record()
        for e in [*rec["candidates"], rec["judge"]]:
            if e:
                e.pop("base_url")  # the gateway and the direct port serve the same model
        rec.pop("unavailable")
        rec.pop("version")
        return sha256_json(rec)
