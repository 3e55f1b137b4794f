"""Random prompts of exactly --input-len tokens as the engine counts them, by its own /tokenize.

The client has no tokenizer. The engine's /tokenize counts a prompt the way the endpoint will
(special tokens on /v1/completions, the chat template on /v1/chat/completions), so: measure what
the engine adds around any content, keep the words it counts as one token both first and after
a space, and fill the rest of --input-len with those. Sample prompts are counted again before the
run; every answer's usage reports the served count, which the runner compares once more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from orchestrator.bench.workloads import WORDS, Prompt, RandomWorkload

Count = Callable[[Prompt], Awaitable[int]]
PARALLEL = 8  # /tokenize calls in flight while sizing
CHECKED = 8  # prompts counted again before the run


class SizingError(ValueError):
    """Prompts of the requested length cannot be made for this engine; the message says why."""


@dataclass(frozen=True)
class Sizing:
    """What the engine adds to every prompt, and the words it counts as exactly one token."""

    fixed: int
    vocabulary: tuple[str, ...]

    def workload(self, input_len: int, seed: int) -> RandomWorkload:
        words = input_len - self.fixed
        if words < 1:
            raise SizingError(
                f"--input-len {input_len} leaves no room for content: the engine counts "
                f"{self.fixed} tokens around any prompt on this endpoint"
            )
        return RandomWorkload(words, seed, self.vocabulary)


def _user(text: str) -> Prompt:
    return Prompt((("user", text),))


async def _counts(count: Count, prompts: Sequence[Prompt]) -> list[int]:
    gate = asyncio.Semaphore(PARALLEL)

    async def one(prompt: Prompt) -> int:
        async with gate:
            return await count(prompt)

    return list(await asyncio.gather(*(one(p) for p in prompts)))


async def measure(count: Count, words: Sequence[str] = WORDS) -> Sizing:
    """Ask the engine what it adds around content and which words count one token anywhere."""
    ref = words[0]
    fixed, after_ref = await _counts(count, [_user(""), _user(ref)])
    first = await _counts(count, [_user(w) for w in words])
    later = await _counts(count, [_user(f"{ref} {w}") for w in words])
    unit = tuple(
        w
        for w, a, b in zip(words, first, later, strict=True)
        if a - fixed == 1 and b - after_ref == 1
    )
    if len(unit) < 2:
        raise SizingError(
            f"the engine's tokenizer counts {len(unit)} of {len(words)} common words as one "
            "token; random prompts of an exact length cannot be built from them"
        )
    return Sizing(fixed, unit)


async def sized_workload(count: Count, input_len: int, seed: int) -> tuple[RandomWorkload, Sizing]:
    """A random workload whose prompts the engine counts as input_len tokens, checked on samples."""
    sizing = await measure(count)
    workload = sizing.workload(input_len, seed)
    counted = await _counts(count, [workload.prompt(i) for i in range(CHECKED)])
    wrong = [(i, n) for i, n in enumerate(counted) if n != input_len]
    if wrong:
        shown = ", ".join(f"prompt {i}: {n}" for i, n in wrong[:4])
        raise SizingError(
            f"the engine counts {len(wrong)} of {CHECKED} sample prompts other than the "
            f"{input_len} tokens requested ({shown}); its tokenizer does not add up word by word"
        )
    return workload, sizing
