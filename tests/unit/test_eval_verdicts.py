"""Strict verdict parsing: a score or winner is read only when the text is exactly the format."""

from __future__ import annotations

import json
import re

import pytest

from orchestrator.evaluation.verdicts import parse, regex, request_fields, schema


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"explanation": "fine", "score": 7}', 7),
        (' {"score": 10, "explanation": ""}\n', 10),
        ('{"explanation": "bad", "score": 1}', 1),
    ],
)
def test_json_scores_that_parse(text: str, value: int) -> None:
    assert parse(text, "json", "single").value == value


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"explanation": "x", "score": 7.5}', "not an integer"),
        ('{"explanation": "x", "score": "7"}', "not an integer"),
        ('{"explanation": "x", "score": true}', "not an integer"),
        ('{"explanation": "x", "score": 11}', "not an integer"),
        ('{"explanation": "x", "score": 0}', "not an integer"),
        ('{"score": 7}', "want an object"),
        ('{"explanation": "x", "score": 7, "extra": 1}', "want an object"),
        ('{"explanation": 3, "score": 7}', "explanation is not a string"),
        ('Score: {"explanation": "x", "score": 7}', "not JSON"),
        ('{"explanation": "x", "score": 7} and more', "not JSON"),
        ("[7]", "want an object"),
        ("", "empty reply"),
    ],
)
def test_json_scores_that_do_not_parse_are_never_guessed(text: str, reason: str) -> None:
    p = parse(text, "json", "single")
    assert p.value is None and not p.ok
    assert reason in str(p.error)


def test_json_pair_verdicts() -> None:
    for v in ("A", "B", "tie"):
        assert parse(json.dumps({"explanation": "", "verdict": v}), "json", "pair").value == v
    for bad in ("a", "C", "both", None):
        p = parse(json.dumps({"explanation": "", "verdict": bad}), "json", "pair")
        assert not p.ok and "not one of A, B, tie" in str(p.error)


@pytest.mark.parametrize(
    ("text", "value"),
    [("Solid answer. Rating: [[8]]", 8), ("[[10]]", 10), ("meh [[ 3 ]]", 3)],
)
def test_tag_scores_that_parse(text: str, value: int) -> None:
    assert parse(text, "tag", "single").value == value


@pytest.mark.parametrize(
    "text",
    ["Rating: [[7.5]]", "Rating: [7]", "[[8]] or maybe [[9]]", "[[0]]", "[[11]]", "Rating: 8"],
)
def test_tag_scores_that_do_not_parse(text: str) -> None:
    assert not parse(text, "tag", "single").ok


def test_tag_pair_letters_and_c_is_a_tie() -> None:
    assert parse("A is better [[A]]", "tag", "pair").value == "A"
    assert parse("[[C]]", "tag", "pair").value == "tie"
    # MT-Bench's own parser takes the first letter it finds; here both present means no verdict.
    assert not parse("[[A]] ... no, [[B]]", "tag", "pair").ok
    assert not parse("[[D]]", "tag", "pair").ok


def test_the_tag_regex_accepts_what_the_parser_reads() -> None:
    single = re.compile(regex("tag", "single", 20))
    assert single.fullmatch("short reason [[10]]")
    assert not single.fullmatch("x" * 21 + "[[5]]")  # the explanation is bounded
    assert not single.fullmatch("reason [[11]]")
    pair = re.compile(regex("tag", "pair", 20))
    assert pair.fullmatch("B wins [[B]]") and not pair.fullmatch("[[A]][[B]]")


@pytest.mark.parametrize(
    ("kind", "key", "values"),
    [("single", "score", list(range(1, 11))), ("pair", "verdict", ["A", "B", "tie"])],
)
def test_the_json_regex_is_json_that_parses(kind: str, key: str, values: list[object]) -> None:
    rx = re.compile(regex("json", kind, 30))  # type: ignore[arg-type]
    for value in values:
        for expl in ["", "fine", 'says "hi"\n', "x" * 30, "tab\there"]:
            text = json.dumps({"explanation": expl, key: value})
            assert rx.fullmatch(text), text
            assert parse(text, "json", kind).value == value  # type: ignore[arg-type]
    for bad in [
        '{"explanation": "raw\ncontrol", "score": 5}',
        '{"explanation":"", "score": 5}',
        '{"explanation": "", "score": 11}',
        '{"explanation": "' + "x" * 31 + '", "score": 5}',
    ]:
        assert not rx.fullmatch(bad), bad


def test_request_fields_are_vllm_032s_names() -> None:
    assert request_fields("tag", "pair", 50, vllm=True) == {
        "structured_outputs": {"regex": regex("tag", "pair", 50)}
    }
    assert request_fields("json", "single", 50, vllm=True) == {
        "structured_outputs": {"regex": regex("json", "single", 50)}
    }
    rf = request_fields("json", "single", 50, vllm=False)["response_format"]
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["schema"] == schema("single", 50)
    assert schema("single", 50)["properties"]["explanation"]["maxLength"] == 50
    with pytest.raises(ValueError, match="only on a vLLM judge"):
        request_fields("tag", "single", 50, vllm=False)
