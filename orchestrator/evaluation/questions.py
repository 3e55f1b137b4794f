"""Question sets in MT-Bench's JSONL format: question_id, category, turns, optional reference."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

BUILTIN_PREFIX = "builtin:"
BUILTIN_SETS = ("coding",)


class QuestionError(ValueError):
    """A question file that cannot be used; the message names the file, line and field."""


class _QuestionIn(BaseModel):
    # MT-Bench's files carry more fields (e.g. in derived sets); they are ignored, not refused.
    model_config = ConfigDict(extra="ignore")

    question_id: StrictInt | StrictStr
    category: StrictStr = Field(min_length=1)
    turns: list[StrictStr] = Field(min_length=1)
    reference: list[StrictStr] | StrictStr | None = None


@dataclass(frozen=True)
class Question:
    question_id: str
    category: str
    turns: tuple[str, ...]
    # One entry per turn; None where that turn has no reference answer.
    reference: tuple[str | None, ...]

    def digest(self, upto_turn: int | None = None) -> str:
        """A hash of the question's content up to a turn (all turns by default), for cache keys."""
        last = len(self.turns) if upto_turn is None else upto_turn + 1
        body = [self.question_id, self.category, list(self.turns[:last])]
        return _sha(json.dumps(body, ensure_ascii=False))


@dataclass(frozen=True)
class QuestionSet:
    source: str
    sha256: str
    questions: tuple[Question, ...]

    @property
    def turn_count(self) -> int:
        return sum(len(q.turns) for q in self.questions)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _field_error(where: str, exc: ValidationError) -> QuestionError:
    first = exc.errors()[0]
    # A union's member names (int, str, list[str]) are noise in the location: keep the field
    # and list indices.
    loc = ".".join(str(p) for i, p in enumerate(first["loc"]) if i == 0 or isinstance(p, int))
    return QuestionError(f"{where}: field '{loc}': {first['msg']}")


def _convert(where: str, raw: Any) -> Question:
    if not isinstance(raw, dict):
        raise QuestionError(f"{where}: want a JSON object, got {type(raw).__name__}")
    try:
        q = _QuestionIn.model_validate(raw)
    except ValidationError as exc:
        raise _field_error(where, exc) from None
    if any(not t.strip() for t in q.turns):
        raise QuestionError(f"{where}: field 'turns': a turn is empty")
    refs = [q.reference] if isinstance(q.reference, str) else list(q.reference or [])
    if len(refs) > len(q.turns):
        raise QuestionError(
            f"{where}: field 'reference': {len(refs)} references for {len(q.turns)} turns"
        )
    padded = tuple(refs) + (None,) * (len(q.turns) - len(refs))
    return Question(str(q.question_id), q.category, tuple(q.turns), padded)


def parse_questions(text: str, source: str) -> QuestionSet:
    """Questions from JSONL text; blank lines are skipped, question ids must be unique."""
    out: list[Question] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuestionError(f"{where}: not JSON: {exc.msg}") from None
        q = _convert(where, raw)
        if q.question_id in seen:
            raise QuestionError(
                f"{where}: question_id {q.question_id!r} repeats line {seen[q.question_id]}"
            )
        seen[q.question_id] = lineno
        out.append(q)
    if not out:
        raise QuestionError(f"{source}: no questions")
    return QuestionSet(source, _sha(text), tuple(out))


def load_questions(spec: str) -> QuestionSet:
    """A JSONL file, or `builtin:NAME` for a set shipped with the package."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN_SETS:
            raise QuestionError(f"{spec}: no such built-in set (have: {', '.join(BUILTIN_SETS)})")
        text = resources.files(__package__).joinpath("questions", f"{name}.jsonl").read_text()
        return parse_questions(text, spec)
    try:
        text = Path(spec).read_text(encoding="utf-8")
    except OSError as exc:
        raise QuestionError(f"{spec}: cannot read ({exc.strerror or exc})") from None
    return parse_questions(text, spec)
