"""Verdict formats: what the judge is told to write, how a server is made to obey, strict parsing.

Two formats: `json`, an object with an explanation and the score (or winner), and `tag`,
MT-Bench's `[[rating]]` / `[[A]]`. A vLLM judge is held to either with
`structured_outputs.regex`: the JSON layout is spelled out in the regex, because with
`response_format` json_schema vLLM 0.32's xgrammar allows any whitespace between tokens
(`v1/structured_output/backend_xgrammar.py`; the request's `disable_any_whitespace` is not
read), and a random-weight judge wrote blanks until max_tokens (docs/evaluation.md). Other servers
get OpenAI's `response_format` json_schema. vLLM 0.32 silently ignores the removed
`guided_json`/`guided_regex` fields (`entrypoints/serve/engine/protocol.py`), so those are
never sent. A verdict that does not parse is reported, never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["json", "tag"]
Kind = Literal["single", "pair"]
FORMATS: tuple[Format, ...] = ("json", "tag")
SCORE_MIN, SCORE_MAX = 1, 10
PAIR_JSON = ("A", "B", "tie")
# MT-Bench's pair-v2 letters: C is a tie.
PAIR_TAG = {"A": "A", "B": "B", "C": "tie"}
_TAG = re.compile(r"\[\[([^\[\]]*)\]\]")
_SCORE = re.compile(r"(10|[1-9])")


@dataclass(frozen=True)
class Parsed:
    """A score (1-10), a winner ("A", "B", "tie"), or why the text is not a verdict."""

    value: int | str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def schema(kind: Kind, explanation_chars: int) -> dict[str, Any]:
    """The JSON schema of a verdict; the explanation is bounded so that it always ends."""
    verdict: dict[str, Any] = (
        {"type": "integer", "minimum": SCORE_MIN, "maximum": SCORE_MAX}
        if kind == "single"
        else {"type": "string", "enum": list(PAIR_JSON)}
    )
    key = "score" if kind == "single" else "verdict"
    return {
        "type": "object",
        "properties": {
            "explanation": {"type": "string", "maxLength": explanation_chars},
            key: verdict,
        },
        "required": ["explanation", key],
        "additionalProperties": False,
    }


def regex(fmt: Format, kind: Kind, explanation_chars: int) -> str:
    """The format as a regex with a bounded explanation, so that a constrained reply ends."""
    n = explanation_chars
    if fmt == "tag":
        tag = r"\[\[(10|[1-9])\]\]" if kind == "single" else r"\[\[(A|B|C)\]\]"
        return rf"[^\[\]]{{0,{n}}}{tag}"
    # A JSON string without control characters; escapes as JSON has them (but \u).
    text = rf'"([^"\\\x00-\x1f]|\\["\\/bfnrt]){{0,{n}}}"'
    if kind == "single":
        return rf'\{{"explanation": {text}, "score": (10|[1-9])\}}'
    return rf'\{{"explanation": {text}, "verdict": "(A|B|tie)"\}}'


def request_fields(fmt: Format, kind: Kind, explanation_chars: int, vllm: bool) -> dict[str, Any]:
    """Body fields that make the server emit only well-formed verdicts."""
    if vllm:
        return {"structured_outputs": {"regex": regex(fmt, kind, explanation_chars)}}
    if fmt == "json":
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": f"{kind}_verdict",
                    "schema": schema(kind, explanation_chars),
                    "strict": True,
                },
            }
        }
    raise ValueError("the tag format can be enforced only on a vLLM judge")


def _parse_json(text: str, kind: Kind) -> Parsed:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return Parsed(None, f"not JSON: {exc.msg} at character {exc.pos}")
    key = "score" if kind == "single" else "verdict"
    if not isinstance(obj, dict) or set(obj) != {"explanation", key}:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        return Parsed(None, f"want an object with keys explanation and {key}, got {got}")
    if not isinstance(obj["explanation"], str):
        return Parsed(None, "explanation is not a string")
    value = obj[key]
    if kind == "single":
        # bool is an int in Python; `true` is not a score.
        if type(value) is not int or not SCORE_MIN <= value <= SCORE_MAX:
            return Parsed(None, f"score {value!r} is not an integer from 1 to 10")
        return Parsed(value)
    if value not in PAIR_JSON:
        return Parsed(None, f"verdict {value!r} is not one of A, B, tie")
    return Parsed(value)


def _parse_tag(text: str, kind: Kind) -> Parsed:
    tags = _TAG.findall(text)
    if len(tags) != 1:
        return Parsed(None, f"want exactly one [[...]] tag, found {len(tags)}")
    tag = tags[0].strip()
    if kind == "single":
        if not _SCORE.fullmatch(tag):
            return Parsed(None, f"[[{tag}]] is not an integer rating from 1 to 10")
        return Parsed(int(tag))
    if tag not in PAIR_TAG:
        return Parsed(None, f"[[{tag}]] is not [[A]], [[B]] or [[C]]")
    return Parsed(PAIR_TAG[tag])


def parse(text: str, fmt: Format, kind: Kind) -> Parsed:
    """The verdict in `text`, or the reason there is none; nothing is inferred or rounded."""
    text = text.strip()
    if not text:
        return Parsed(None, "empty reply")
    return _parse_json(text, kind) if fmt == "json" else _parse_tag(text, kind)
