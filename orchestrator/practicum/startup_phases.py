"""Where a vLLM engine's start-up time goes, read from its log as the daemon keeps it.

vLLM stamps its lines to the second (`(APIServer pid=7) INFO 12-02 13:22:33 [file.py:12] ...`)
and prints the exact durations of weight loading, torch.compile and CUDA graph capture; the
daemon marks each launch, plain or from a standby, with a `[mig-orchestrator] starting...: ARGV`
note. Together with the launch time and the moment the engine turned ready they give: imports,
engine set-up, weights, compile, graphs, and whatever comes after the graphs (FlashInfer JIT,
warm-up) until ready.
Stdlib only: used on the GPU machine by the practicum and by its tests here.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

# Every launch note of the daemon: plain or from a standby, with the EngineCore forked or not.
_START_NOTE = re.compile(
    r"^\[mig-orchestrator\] starting(?: from standby pid \d+ \([^)]*\))?"
    r"(?: \(EngineCore by fork\))?: (?P<argv>.*)$"
)
_LINE = re.compile(
    r"^(?:\((?P<proc>[A-Za-z_]+?)(?:_DP\d+)?\s+pid=(?P<pid>\d+)\)\s+)?"
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+"
    r"(?P<ts>\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)?\s+\[[^\]]*\]\s+(?P<msg>.*)$"
)
_NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
_ANY = r"[0-9][0-9,]*(?:\.[0-9]+)?"  # a number that qualifies, not the figure
# (key, pattern on the message, group -> value): the figures vLLM prints itself.
_INIT = r"init engine \(profile, create kv cache, warmup model\) took"
_FIGURES = (
    # The loader's line first; the runner's (CUDA only), printed after it, wins when present.
    ("weights_s", re.compile(rf"Loading weights took {_NUMBER} s")),
    ("weights_s", re.compile(rf"Model loading took {_ANY} ?GiB(?: memory)? and {_NUMBER} s")),
    ("weights_gib", re.compile(rf"Model loading took {_NUMBER} ?GiB")),
    ("compile_s", re.compile(rf"torch\.compile took {_NUMBER} s in total")),
    ("dynamo_s", re.compile(rf"Dynamo bytecode transform time: {_NUMBER} s")),
    ("graphs_s", re.compile(rf"Graph capturing finished in {_NUMBER} secs")),
    ("graphs_gib", re.compile(rf"Graph capturing finished in {_ANY} secs, took {_NUMBER} GiB")),
    ("init_engine_s", re.compile(rf"{_INIT} {_NUMBER} s")),
    ("kv_cache_gib", re.compile(rf"Available KV cache memory: {_NUMBER} GiB")),
    ("kv_cache_tokens", re.compile(rf"(?:GPU|CPU) KV cache size: {_NUMBER} tokens")),
    (
        "max_concurrency",
        re.compile(rf"Maximum concurrency for {_ANY} tokens per request: {_NUMBER}x"),
    ),
)
_COMPILE_CACHE_HIT = re.compile(r"Directly load the compiled graph")
_COMPILE_CACHE_MISS = re.compile(r"Compiling a graph for|Cache the graph of")
_ENGINE_INIT = re.compile(r"Initializing a V1 LLM engine")
# vLLM's own line just before it serves (uvicorn's "Application startup complete" has no time).
_READY = re.compile(r"Starting vLLM server on")
_ATTENTION = re.compile(r"Using (FlashAttention version \d|[A-Za-z_]+ backend)")


@dataclass
class Startup:
    """One launch: timestamps (epoch seconds) and vLLM's own figures."""

    launched: float | None = None
    first_log: float | None = None  # the API server has imported vLLM
    engine_init: float | None = None  # the EngineCore has imported vLLM and begins
    graphs_done: float | None = None
    ready: float | None = None
    figures: dict[str, float] = field(default_factory=dict)
    compile_cache: str | None = None  # "hit" | "miss" | None (not compiled: eager)
    attention: str | None = None
    via: str | None = None  # "plain" | "standby", as the daemon noted it
    lines: int = 0

    def phases(self) -> dict[str, float | None]:
        """Seconds per phase; None where the log did not show it."""

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(b - a, 1)

        f = self.figures
        return {
            "imports_api_server_s": span(self.launched, self.first_log),
            "until_engine_core_s": span(self.first_log, self.engine_init),
            "weights_s": f.get("weights_s"),
            "compile_s": f.get("compile_s"),
            "graphs_s": f.get("graphs_s"),
            "after_graphs_until_ready_s": span(self.graphs_done, self.ready),
            "init_engine_s": f.get("init_engine_s"),
            "total_s": span(self.launched, self.ready),
        }

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "phases": self.phases()}


def _stamp(text: str, year: int) -> float:
    parsed = datetime.datetime.strptime(f"{year}-{text}", "%Y-%m-%d %H:%M:%S")
    return time.mktime(parsed.timetuple())  # vLLM logs local time


def _number(text: str) -> float:
    return float(text.replace(",", ""))


# The daemon's own figure once ready (engine/starts.py): from the spawn or the standby's trigger.
_DAEMON_READY = re.compile(
    r"^\[mig-orchestrator\] ready (?P<s>[\d.]+) s after "
    r"(?P<how>the standby's trigger|a plain launch)"
)


def start_argv(line: str) -> list[str] | None:
    """The argv of a daemon launch note, or None when `line` is no such note."""
    m = _START_NOTE.match(line)
    return None if m is None else m["argv"].split()


def launches(lines: Iterable[str]) -> list[list[str]]:
    """The log cut at each daemon launch note; what precedes the first note is dropped."""
    runs: list[list[str]] = []
    for line in lines:
        if start_argv(line) is not None:
            runs.append([])
        elif runs:
            runs[-1].append(line)
    return runs


def parse(
    lines: Iterable[str],
    *,
    launched: float | None = None,
    ready: float | None = None,
    year: int | None = None,
) -> Startup:
    """The start-up of one launch from its log lines (vLLM's and the daemon's)."""
    year = year or datetime.date.today().year
    out = Startup(launched=launched, ready=ready)
    for raw in lines:
        out.lines += 1
        daemon = _DAEMON_READY.match(raw)
        if daemon is not None and out.ready is not None:
            # A standby's process started long before its trigger: the daemon knows the launch.
            out.launched = out.ready - float(daemon["s"])
            out.via = "standby" if daemon["how"].startswith("the standby") else "plain"
        match = _LINE.match(raw.strip())
        if match is None:
            continue
        when, msg = _stamp(match["ts"], year), match["msg"]
        if out.first_log is None:
            out.first_log = when
        if out.engine_init is None and _ENGINE_INIT.search(msg):
            out.engine_init = when
        if _READY.search(msg) and out.ready is None:
            out.ready = when
        if _COMPILE_CACHE_HIT.search(msg):
            out.compile_cache = "hit"
        elif _COMPILE_CACHE_MISS.search(msg) and out.compile_cache is None:
            out.compile_cache = "miss"
        attention = _ATTENTION.search(msg)
        if attention and out.attention is None:
            out.attention = attention.group(1)
        for key, pattern in _FIGURES:
            found = pattern.search(msg)
            if found is None:
                continue
            out.figures[key] = _number(found[1])
            if key == "graphs_s":
                out.graphs_done = when
    return out


def latest(log_text: str, **kwargs: Any) -> Startup:
    """The last launch in an engine log (the whole text when the daemon left no note)."""
    runs = launches(log_text.splitlines())
    return parse(runs[-1] if runs else log_text.splitlines(), **kwargs)
