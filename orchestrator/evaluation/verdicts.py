"""Verdict formats: what the judge is told to write, how a server is made to obey, strict parsing.

Two formats. `json` is an object with an explanation and the score (or winner); a server with
structured outputs is held to it with OpenAI's `response_format` json_schema, which vLLM 0.32
maps to its own `structured_outputs.json` (`entrypoints/generate/base/protocol.py`). `tag` is
MT-Bench's `[[rating]]` / `[[A]]`; it is held with vLLM's `structured_outputs.regex`. vLLM 0.32
silently ignores the removed `guided_json`/`guided_regex` fields (`serve/engine/protocol.py`),
so those are never sent. A verdict that does not parse is reported, never guessed.
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


def regex(kind: Kind, explanation_chars: int) -> str:
    """MT-Bench's tag format as a regex: a bounded explanation, then exactly one tag."""
    tag = r"\[\[(10|[1-9])\]\]" if kind == "single" else r"\[\[(A|B|C)\]\]"
    return rf"[^\[\]]{{0,{explanation_chars}}}{tag}"


def request_fields(fmt: Format, kind: Kind, explanation_chars: int) -> dict[str, Any]:
    """Body fields that make a server emit only well-formed verdicts."""
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
    return {"structured_outputs": {"regex": regex(kind, explanation_chars)}}


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
