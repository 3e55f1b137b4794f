"""The judge's prompts, after MT-Bench's single-v1 and pair-v2 protocol, and their hash.

Every turn is graded on its own: the judge sees the conversation up to that turn and grades only
the last answer. The texts and their SHA-256 are recorded with every run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.evaluation.questions import Question
from orchestrator.evaluation.verdicts import Format

Message = dict[str, str]

SYSTEM = "You are a careful, impartial judge of answers to programming questions."

SINGLE = """\
Please act as an impartial judge and evaluate the quality of the assistant's answer to the \
last user message in the conversation below. Consider correctness first, then helpfulness, \
clarity and completeness; for code, check that it runs and does what was asked. Grade only the \
last answer: earlier turns are context.{reference_note} Be as objective as possible.
{reference}
[The Start of the Conversation]
{conversation}
[The End of the Conversation]

{format}"""

PAIR = """\
Please act as an impartial judge and compare the answers of two AI assistants to the last \
user message of the two conversations below. Choose the assistant whose last answer is more \
correct and more helpful; for code, check that it runs and does what was asked. Earlier turns \
are context.{reference_note} Do not let the order of the answers, their length or the names \
of the assistants influence you. Be as objective as possible.
{reference}
[The Start of Assistant A's Conversation]
{conversation_a}
[The End of Assistant A's Conversation]

[The Start of Assistant B's Conversation]
{conversation_b}
[The End of Assistant B's Conversation]

{format}"""

REFERENCE_NOTE = " Compare the last answer with the reference answer, and penalise mistakes."
REFERENCE = "\n[The Start of the Reference Answer]\n{text}\n[The End of the Reference Answer]\n"

FORMATS = {
    ("json", "single"): 'Reply with a JSON object only: {{"explanation": "<at most {chars} '
    'characters>", "score": <an integer from 1 to 10>}}.',
    ("json", "pair"): 'Reply with a JSON object only: {{"explanation": "<at most {chars} '
    'characters>", "verdict": "A" or "B" or "tie"}}.',
    ("tag", "single"): "Give a short explanation of at most {chars} characters, then your "
    'rating strictly in this format: "[[rating]]", for example: "Rating: [[5]]".',
    ("tag", "pair"): "Give a short explanation of at most {chars} characters, then your verdict "
    'strictly in this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is '
    'better, and "[[C]]" for a tie.',
}


def render_conversation(question: Question, turn: int, answers: Sequence[str], who: str) -> str:
    """The user turns and the assistant's answers up to and including `turn`."""
    parts = []
    for i in range(turn + 1):
        parts.append(f"### User:\n{question.turns[i]}\n\n### {who}:\n{answers[i]}")
    return "\n\n".join(parts)


@dataclass(frozen=True)
class JudgePrompts:
    fmt: Format
    explanation_chars: int
    texts: dict[str, str] = field(init=False)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        fmts = {
            kind: FORMATS[(self.fmt, kind)].format(chars=self.explanation_chars)
            for kind in ("single", "pair")
        }
        texts = {
            "system": SYSTEM,
            "single": SINGLE,
            "pair": PAIR,
            "reference_note": REFERENCE_NOTE,
            "reference": REFERENCE,
            "format_single": fmts["single"],
            "format_pair": fmts["pair"],
        }
        digest = hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "sha256", digest)

    def _reference(self, question: Question, turn: int) -> tuple[str, str]:
        ref = question.reference[turn]
        if ref is None:
            return "", ""
        return REFERENCE_NOTE, REFERENCE.format(text=ref)

    def single(self, question: Question, turn: int, answers: Sequence[str]) -> list[Message]:
        note, ref = self._reference(question, turn)
        user = SINGLE.format(
            reference_note=note,
            reference=ref,
            conversation=render_conversation(question, turn, answers, "Assistant"),
            format=self.texts["format_single"],
        )
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def pair(
        self, question: Question, turn: int, answers_a: Sequence[str], answers_b: Sequence[str]
    ) -> list[Message]:
        note, ref = self._reference(question, turn)
        user = PAIR.format(
            reference_note=note,
            reference=ref,
            conversation_a=render_conversation(question, turn, answers_a, "Assistant A"),
            conversation_b=render_conversation(question, turn, answers_b, "Assistant B"),
            format=self.texts["format_pair"],
        )
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
