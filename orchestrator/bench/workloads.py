"""What the bench sends: the course's batch prompts, random prompts of a set size, Ralph loops."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

Message = tuple[str, str]  # (role, content)


@dataclass(frozen=True)
class Prompt:
    """A conversation to send; /v1/completions gets it rendered as plain text."""

    messages: tuple[Message, ...]

    def text(self) -> str:
        """Plain-text rendering; append-only as the conversation grows, so prefixes stay shared."""
        if len(self.messages) == 1 and self.messages[0][0] == "user":
            return self.messages[0][1]
        turns = "\n\n".join(f"{role.upper()}: {content}" for role, content in self.messages)
        return f"{turns}\n\nASSISTANT:"

    def estimated_tokens(self) -> int:
        """Rough input size: whitespace-separated words (the client has no tokenizer)."""
        return sum(len(content.split()) for _, content in self.messages)


class Workload(Protocol):
    """A source of independent prompts, indexed so runs are reproducible."""

    name: str

    def prompt(self, index: int) -> Prompt: ...


BATCH_PROMPTS = (
    "Write a quicksort function in Python with type hints and a short docstring.",
    "Write a binary search function in JavaScript that returns -1 when the value is missing.",
    "Write a minimal HTTP server in Go that answers GET /health with 200 OK.",
    "Write a Rust function that reverses the words of a sentence without allocating twice.",
    "Write a C function that computes the Fibonacci numbers iteratively with uint64_t.",
    "Write a SQL query that returns the ten customers with the highest total order value.",
    "Write a bash script that finds the five largest files under a directory.",
    "Write a Java class for a thread-safe bounded queue using ReentrantLock.",
    "Write a TypeScript function that debounces another function with a configurable delay.",
    "Write a Python async function that fetches several URLs concurrently with httpx.",
    "Write a merge sort in C++ using std::vector and iterators.",
    "Write a Python class implementing an LRU cache without functools.",
    "Write a Go function that reads a CSV file and sums one column.",
)


@dataclass
class BatchWorkload:
    """The course's fixed coding prompts, cycled."""

    name: str = "batch"

    def prompt(self, index: int) -> Prompt:
        return Prompt((("user", BATCH_PROMPTS[index % len(BATCH_PROMPTS)]),))


# Common short English words; the ones the engine's tokenizer counts as one token each make the
# random prompts (sized_prompts.py).
_WORD_LIST = (
    "the of and to in is it you that he was for on are with as his they be at one have this from "
    "or had by hot word but what some we can out other were all there when up use your how said "
    "an each she which do their time if will way about many then them write would like so these "
    "her long make thing see him two has look more day could go come did number sound no most "
    "people my over know water than call first who may down side been now find any new work part "
    "take get place made live where after back little only round man year came show every good "
    "me give our under name very through just form sentence great think say help low line differ "
    "turn cause much mean before move right boy old too same tell does set three want air well "
    "also play small end put home read hand port large spell add even land here must big high"
)
WORDS = tuple(_WORD_LIST.split())


@dataclass
class RandomWorkload:
    """Prompts of `words` random words of `vocabulary`, distinct per index."""

    words: int
    seed: int = 0
    vocabulary: tuple[str, ...] = WORDS
    name: str = "random"

    def prompt(self, index: int) -> Prompt:
        # One generator per index: reproducible without shared state between concurrent workers.
        rng = random.Random(self.seed * 1_000_003 + index)
        return Prompt((("user", " ".join(rng.choices(self.vocabulary, k=max(1, self.words)))),))


RALPH_INSTRUCTION = "\n\n".join(
    (
        (
            "You are an autonomous software engineering agent working inside a loop. Every "
            "iteration you receive this same instruction followed by the transcript of everything "
            "you have done so far, and you must make exactly one step of progress. Work in small, "
            "verifiable increments and never repeat work that the transcript shows as finished."
        ),
        (
            "Your workspace is a Git repository for a small command-line tool. The file PROMPT.md "
            "states the goal, fix_plan.md lists the open tasks in priority order, and AGENT.md "
            "records how to build, lint and test the project. Read these files before you act. "
            "Choose the single most important open task from fix_plan.md. Before changing code, "
            "search the repository to confirm that the task is not already done; do not assume "
            "that something is missing. Implement the task completely: no placeholders, no stubs, "
            "no TODO comments in place of behaviour. Write or update the tests that prove the "
            "behaviour, run them, and fix what fails. When the tests pass, update fix_plan.md: "
            "remove the finished item, add anything new you discovered, and keep the list sorted "
            "by priority. If you learned how to build or test the project in a better way, record "
            "it in AGENT.md so the next iteration benefits."
        ),
        (
            "Rules. Make one change per iteration. Prefer the standard library over new "
            "dependencies. Keep functions short and named for what they do. Handle errors with "
            "clear messages that name the file, the field or the input that was wrong. Never "
            "delete tests to make a build pass. Never commit secrets. If a command fails, read "
            "its output, reason about the cause and try a different approach instead of repeating "
            "the same command. If you are blocked, write down why in fix_plan.md and move to the "
            "next task."
        ),
        (
            "Output format. Reply with four short sections: PLAN (one sentence naming the task "
            "you chose), ACTIONS (the commands you ran and the files you changed), RESULT (what "
            "the tests reported), NEXT (the task the next iteration should take). Be concise; the "
            "transcript grows every iteration and the same instruction is sent again each time."
        ),
    )
)

RALPH_TASKS = (
    "a tool that converts Markdown tables to CSV",
    "a tool that deduplicates lines of large log files",
    "a tool that checks links in HTML files",
    "a tool that renames photos by their EXIF date",
    "a tool that summarises disk usage per user",
    "a tool that validates JSON files against a schema",
    "a tool that tails several log files and merges them by timestamp",
    "a tool that converts temperatures and units from the command line",
)

RALPH_CONTINUE = "Continue with the next step."


@dataclass
class RalphLoop:
    """One agent loop: the fixed instruction, this loop's goal, and the growing transcript."""

    index: int
    transcript: list[Message] = field(default_factory=list)

    def prompt(self) -> Prompt:
        goal = RALPH_TASKS[self.index % len(RALPH_TASKS)]
        task = f"Loop {self.index}. PROMPT.md says: build {goal}. Begin."
        return Prompt((("system", RALPH_INSTRUCTION), ("user", task), *self.transcript))

    def advance(self, answer: str | None) -> None:
        """Append the answer and a continue turn; after a failure the same prompt goes again."""
        if answer is not None:
            self.transcript += [("assistant", answer), ("user", RALPH_CONTINUE)]
