"""Sizing random prompts by a token counter: what the engine adds, one-token words, checks."""

from __future__ import annotations

import pytest

from orchestrator.bench.sized_prompts import SizingError, measure, sized_workload
from orchestrator.bench.workloads import Prompt


def _counter(extra: int, long_bonus: int = 0, two_token: frozenset[str] = frozenset()):
    """Counts words, two for the `two_token` ones, plus `extra`; `long_bonus` past 5 words."""

    async def count(prompt: Prompt) -> int:
        words = prompt.messages[0][1].split()
        n = sum(2 if w in two_token else 1 for w in words) + extra
        return n + (long_bonus if len(words) > 5 else 0)

    return count


async def test_words_the_engine_splits_are_left_out_and_the_fixed_part_is_measured() -> None:
    sizing = await measure(
        _counter(3, two_token=frozenset({"of", "and"})), ["the", "of", "and", "to"]
    )
    assert sizing.fixed == 3 and sizing.vocabulary == ("the", "to")


async def test_prompts_fill_the_rest_with_one_token_words() -> None:
    workload, sizing = await sized_workload(_counter(14), 64, seed=5)
    assert sizing.fixed == 14 and workload.words == 50
    assert len(workload.prompt(123).messages[0][1].split()) == 50


async def test_a_tokenizer_that_does_not_add_up_is_refused() -> None:
    with pytest.raises(SizingError, match="8 of 8 sample prompts other than the 64 tokens"):
        await sized_workload(_counter(1, long_bonus=1), 64, seed=0)


async def test_too_few_one_token_words_is_refused() -> None:
    with pytest.raises(SizingError, match="counts 1 of 3 common words as one token"):
        await measure(_counter(0, two_token=frozenset({"a", "b"})), ["a", "b", "c"])
