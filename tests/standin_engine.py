"""Stand-in for a vLLM OpenAI API server, for fault injection and scale tests only (stdlib only).

Launched exactly like vLLM (the `vllm serve MODEL ...` form also works):
    python tests/standin_engine.py --model M --host H --port P --served-model-name N [vLLM flags]
vLLM flags it acts on: --model, --host (default 0.0.0.0), --port (default 8000; 0 picks a free
port), --served-model-name (one or more), --max-model-len (default 2048; 32k/32K/auto),
--api-key (or env VLLM_API_KEY), --[no-]enable-prefix-caching (default on), --block-size (16),
--num-gpu-blocks-override (KV capacity, default 4096 blocks), --max-num-seqs (256),
--enable-prompt-tokens-details, --disable-log-stats (no vllm:* metrics),
--disable-uvicorn-access-log, --disable-access-log-for-endpoints. Others are ignored (see the
state file's "argv"/"cmdline" to check them).

Knobs: env STANDIN_<NAME>, or flag --standin-<name> VALUE / --standin-<name>=VALUE (a bare boolean
flag means 1; a flag beats the env; an empty env value is unset; unknown names exit 2).
  STANDIN_STARTUP_DELAY=s   "loading" time: port bound but not listening (connections refused).
  STANDIN_FAIL_START=msg    after the delay: vLLM-like traceback on stderr whose last line is msg;
                            exit 1.
  STANDIN_CRASH_AFTER=s     s after ready: exit at once with STANDIN_CRASH_CODE (default 1), no
                            cleanup, so a grandchild is left behind as after a real crash.
  STANDIN_HANG_AFTER=s      s after ready: STANDIN_HANG_MODE=hang (default) reads requests and
                            never answers any (running generations stall too); =503 makes /health
                            answer 503 while everything else keeps working.
  STANDIN_IGNORE_SIGTERM=1  SIGTERM/SIGINT are ignored (grandchild too): only SIGKILL ends it.
                            Without it, a signal that comes before the "started" event (while
                            Python starts, ~60 ms) kills by default, as during vLLM's imports.
  STANDIN_SIGTERM_DELAY=s   time taken to shut down after SIGTERM (default 0.1), exit 0.
  STANDIN_SPAWN_GRANDCHILD=1  fork a "VLLM::EngineCore" in the same process group and session
                            (cmdline "VLLM::EngineCore -I -S -c ...", comm "VLLM::EngineCor", no
                            --served-model-name). It outlives a SIGKILL of the server until the
                            group is killed, is stopped with the server on SIGTERM, and its death
                            makes the server answer /health 503 and exit 1 after 0.5 s (vLLM's
                            EngineDeadError).
  STANDIN_DEVICE_MEMORY=free/total  GiB: before listening, log vLLM's GPU worker line
                            "Free memory on device (free/total GiB) on startup. ..." (from its
                            EngineCore) with these figures, as vLLM does once it has profiled.
  STANDIN_TOKEN_DELAY=s     sleep per generated token.
  STANDIN_IGNORE_EPIPE=1    once the reader of stdout/stderr is gone (its daemon was killed),
                            output goes to /dev/null and the engine keeps serving, as vLLM does
                            (its logging never dies of a closed pipe). Without it the stand-in
                            exits 1 at its next log line, so an orphan would end by itself.
  STANDIN_STATE_FILE=path   append one JSON object per line per event (below).

Tokens: a string prompt is split on whitespace, one token per word; a list of ints is taken as
token ids. Chat renders each message as "<|role|>" plus its words, then "<|assistant|>".
Generated tokens are words cycling through VOCAB, each with a leading space; finish_reason is
always "length". Default max_tokens: 16 for completions, the rest of the context for chat (as
vLLM). Prefix cache: vLLM's rules (full blocks only, hits capped at prompt_len - 1, prompt and
generated blocks cached, LRU over the KV capacity); with caching off both counters stay 0.

State file events, each {"event": NAME, "t": unix time, "pid": writer's pid, ...}:
  grandchild  {ppid, pgid, sid}           written by the grandchild itself, before "started"
  started     {ppid, pgid, sid, grandchild_pid (or null), host, port (the bound one), model,
               served_model_names, argv (vLLM args), cmdline (exact /proc argv), cwd,
               env (all of it; names with KEY/TOKEN/SECRET/PASSWORD show "***")}
  ready       {host, port}                listening; /health answers 200
  sigterm / sigint {ignored}              each signal received, ignored or not
  hang        {mode}                      STANDIN_HANG_AFTER fired
  grandchild_exit {status}                the grandchild died while the server ran
  exit        {code, reason, [message]}   last line; reason: sigterm, engine_dead, crash,
                                          fail_start or bind_failed. None after a SIGKILL.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # asyncio imports ssl only to offer TLS, which the stand-in never serves; hiding it saves ~6 MB
    # RSS and ~10 ms start per process, a lot over 56 copies. Only when run as a script, so that
    # importing this module never breaks ssl for the importer.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, NoReturn

VLLM_VERSION = "0.33.0"
KEEP_ALIVE_S = 5.0  # uvicorn's default --timeout-keep-alive, which vLLM keeps
ENGINE_DEAD_EXIT_S = 0.5  # vLLM waits 5 s; short here so tests stay quick
DEFAULT_MAX_MODEL_LEN = 2048
VOCAB = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog")
# vLLM 0.33's bucket bounds for vllm:time_to_first_token_seconds (v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
TTFT_BUCKETS += (7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
LENGTH_SUFFIXES = {"k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}
# Paths vLLM's API-key middleware guards; /health, /metrics, /version stay open.
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")

Token = str | int


class UsageError(ValueError):
    """Bad command line or knob value; reported like argparse (exit 2)."""


class ApiError(Exception):
    """An HTTP error answered in the OpenAI error format vLLM uses."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _seconds(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be a number of seconds >= 0")
    return value


def _flag(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _device_memory(raw: str) -> tuple[float, float]:
    free, sep, total = raw.partition("/")
    try:
        pair = (float(free), float(total))
    except ValueError:
        pair = (-1.0, -1.0)
    if not sep or not 0 <= pair[0] <= pair[1]:
        raise ValueError("must be FREE/TOTAL in GiB with 0 <= FREE <= TOTAL, e.g. 38.9/39.25")
    return pair


def _hang_mode(raw: str) -> str:
    if raw not in ("hang", "503"):
        raise ValueError('must be "hang" or "503"')
    return raw


@dataclass(frozen=True)
class Knobs:
    """Fault-injection settings; see the module docstring."""

    startup_delay: float = 0.0
    fail_start: str | None = None
    crash_after: float | None = None
    crash_code: int = 1
    hang_after: float | None = None
    hang_mode: str = "hang"
    ignore_sigterm: bool = False
    sigterm_delay: float = 0.1
    spawn_grandchild: bool = False
    device_memory: tuple[float, float] | None = None
    token_delay: float = 0.0
    ignore_epipe: bool = False
    state_file: str | None = None


KNOB_PARSERS: dict[str, Callable[[str], Any]] = {
    "startup_delay": _seconds,
    "fail_start": str,
    "crash_after": _seconds,
    "crash_code": int,
    "hang_after": _seconds,
    "hang_mode": _hang_mode,
    "ignore_sigterm": _flag,
    "sigterm_delay": _seconds,
    "spawn_grandchild": _flag,
    "device_memory": _device_memory,
    "token_delay": _seconds,
    "ignore_epipe": _flag,
    "state_file": str,
}


def load_knobs(env: Mapping[str, str], flags: Mapping[str, str]) -> Knobs:
    """Knobs from STANDIN_* variables, overridden by --standin-* flags."""
    unknown = [f"--standin-{n.replace('_', '-')}" for n in flags if n not in KNOB_PARSERS]
    unknown += [k for k in env if k.startswith("STANDIN_") and k[8:].lower() not in KNOB_PARSERS]
    if unknown:
        known = ", ".join("STANDIN_" + n.upper() for n in KNOB_PARSERS)
        raise UsageError(f"unknown knob {', '.join(unknown)} (known: {known})")
    values: dict[str, Any] = {}
    for name, parse in KNOB_PARSERS.items():
        var = "STANDIN_" + name.upper()
        source, raw = (
            (f"--standin-{name.replace('_', '-')}", flags[name])
            if name in flags
            else (
                var,
                env.get(var) or None,
            )
        )
        if raw is None:
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise UsageError(f"{source}={raw!r}: {exc}") from None
    return Knobs(**values)


@dataclass(frozen=True)
class ServerArgs:
    """The vLLM settings the stand-in acts on."""

    model: str
    host: str
    port: int
    served_names: tuple[str, ...]
    max_model_len: int
    api_key: str | None
    prefix_caching: bool
    prompt_tokens_details: bool
    log_stats: bool
    access_log: bool
    quiet_paths: frozenset[str]
    block_size: int
    num_blocks: int
    max_num_seqs: int


VALUE_FLAGS = frozenset(
    {
        "--model",
        "--host",
        "--port",
        "--served-model-name",
        "--max-model-len",
        "--api-key",
        "--block-size",
        "--num-gpu-blocks-override",
        "--max-num-seqs",
        "--disable-access-log-for-endpoints",
    }
)
SWITCHES = {
    "--enable-prefix-caching": ("prefix_caching", True),
    "--no-enable-prefix-caching": ("prefix_caching", False),
    "--enable-prompt-tokens-details": ("prompt_tokens_details", True),
    "--no-enable-prompt-tokens-details": ("prompt_tokens_details", False),
    "--disable-log-stats": ("log_stats", False),
    "--disable-uvicorn-access-log": ("access_log", False),
}


def _int_arg(values: Mapping[str, list[str]], flag: str, default: int, minimum: int) -> int:
    if flag not in values:
        return default
    raw = values[flag][0]
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"argument {flag}: invalid int value: {raw!r}") from None
    if value < minimum:
        raise UsageError(f"argument {flag}: must be >= {minimum}, got {value}")
    return value


def _model_len(raw: str) -> int:
    if raw in ("auto", "-1"):
        return DEFAULT_MAX_MODEL_LEN
    scale = LENGTH_SUFFIXES.get(raw[-1:], 1)
    try:
        value = int(float(raw[:-1] if scale > 1 else raw) * scale)
    except ValueError:
        raise UsageError(f"argument --max-model-len: invalid value: {raw!r}") from None
    if value < 1:
        raise UsageError(f"argument --max-model-len: must be >= 1, got {raw!r}")
    return value


def parse_command_line(argv: list[str], env: Mapping[str, str]) -> tuple[ServerArgs, Knobs]:
    """Read vLLM's argv the way vLLM would, ignoring flags the stand-in has no use for."""
    args = argv[1:] if argv[:1] == ["serve"] else list(argv)
    positional = args.pop(0) if args and not args[0].startswith("-") else None
    values: dict[str, list[str]] = {}
    switches: dict[str, bool] = {}
    knob_flags: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, eq, inline = args[i].partition("=")
        i += 1
        if name.startswith("--standin-"):
            if eq:
                raw = inline
            elif i < len(args) and not args[i].startswith("--"):
                raw, i = args[i], i + 1
            else:
                raw = "1"
            knob_flags[name[len("--standin-") :].replace("-", "_")] = raw
        elif name in VALUE_FLAGS:
            found = [inline] if eq else []
            # --served-model-name takes one or more values (nargs="+"), the rest exactly one.
            while not eq and i < len(args) and (not found or name == "--served-model-name"):
                if found and args[i].startswith("-"):
                    break
                found.append(args[i])
                i += 1
            if not found:
                raise UsageError(f"argument {name}: expected one argument")
            values[name] = found
        elif name in SWITCHES:
            key, on = SWITCHES[name]
            switches[key] = on
        # Any other token is a flag or value the stand-in ignores; "argv" in the state file has it.
    model = positional or values.get("--model", ["Qwen/Qwen3-0.6B"])[0]
    api_key = values.get("--api-key", [env.get("VLLM_API_KEY", "")])[0] or None
    quiet = values.get("--disable-access-log-for-endpoints", [""])[0]
    server = ServerArgs(
        model=model,
        host=values.get("--host", ["0.0.0.0"])[0],
        port=_int_arg(values, "--port", 8000, 0),
        served_names=tuple(values.get("--served-model-name", [model])),
        max_model_len=_model_len(values["--max-model-len"][0])
        if "--max-model-len" in values
        else DEFAULT_MAX_MODEL_LEN,
        api_key=api_key,
        prefix_caching=switches.get("prefix_caching", True),
        prompt_tokens_details=switches.get("prompt_tokens_details", False),
        log_stats=switches.get("log_stats", True),
        access_log=switches.get("access_log", True),
        quiet_paths=frozenset(p.strip() for p in quiet.split(",") if p.strip()),
        block_size=_int_arg(values, "--block-size", 16, 1),
        num_blocks=_int_arg(values, "--num-gpu-blocks-override", 4096, 1),
        max_num_seqs=_int_arg(values, "--max-num-seqs", 256, 1),
    )
    return server, load_knobs(env, knob_flags)


@dataclass(frozen=True)
class EventLog:
    """Appends JSON lines to STANDIN_STATE_FILE: {"event", "t", "pid", ...event fields}."""

    path: str | None

    def emit(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        record = {"event": event, "t": time.time(), "pid": os.getpid(), **fields}
        # One O_APPEND write per line keeps lines whole when server and grandchild both write.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)


class _OutlivesItsReader:
    """A text stream that, once the reader of its pipe is gone, writes into /dev/null instead."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return int(self._retrying(lambda: self._stream.write(text)))

    def flush(self) -> None:
        self._retrying(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _retrying(self, op: Callable[[], Any]) -> Any:
        try:
            return op()
        except BrokenPipeError:
            # Both streams share the pipe; what is still buffered then drains into /dev/null too.
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.close(null)
            return op()


def vllm_log(level: str, where: str, message: str, prefix: str = "") -> None:
    """A line in vLLM's logger format (vLLM logs to stdout)."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    sys.stdout.write(f"{prefix}{level} {stamp} [{where}] {message}\n")
    sys.stdout.flush()


def uvicorn_log(message: str, stream: Any = None) -> None:
    """A line in uvicorn's format: server events on stderr, access lines on stdout."""
    out = stream or sys.stderr
    out.write(f"INFO:     {message}\n")
    out.flush()


def _redacted_env(env: Mapping[str, str]) -> dict[str, str]:
    secret = ("KEY", "TOKEN", "SECRET", "PASSWORD")
    return {k: "***" if any(s in k.upper() for s in secret) else v for k, v in env.items()}


def _cmdline() -> list[str]:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return [sys.executable, *sys.argv]


class PrefixCache:
    """vLLM-style prefix cache: chained hashes of full blocks, LRU over the KV capacity."""

    def __init__(self, block_size: int, capacity: int) -> None:
        self._block_size = block_size
        self._capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def block_hashes(self, tokens: list[Token]) -> list[int]:
        hashes: list[int] = []
        parent: int | None = None
        for start in range(0, len(tokens) - self._block_size + 1, self._block_size):
            parent = hash((parent, tuple(tokens[start : start + self._block_size])))
            hashes.append(parent)
        return hashes

    def hit_tokens(self, tokens: list[Token]) -> int:
        """Cached prefix length; like vLLM the last prompt token is always recomputed."""
        usable = self.block_hashes(tokens)[: (len(tokens) - 1) // self._block_size]
        hits = 0
        for h in usable:
            if h not in self._blocks:
                break
            self._blocks.move_to_end(h)
            hits += 1
        return hits * self._block_size

    def insert(self, tokens: list[Token]) -> None:
        for h in self.block_hashes(tokens):
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)


@dataclass
class EngineStats:
    """Counters and gauges behind /metrics."""

    prefix_queries: int = 0
    prefix_hits: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    running: int = 0
    waiting: int = 0
    blocks_in_use: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    # Time from arrival to the first token: cumulative counts per TTFT_BUCKETS bound, sum, count.
    ttft_le: list[int] = field(default_factory=lambda: [0] * len(TTFT_BUCKETS))
    ttft_sum: float = 0.0
    ttft_count: int = 0

    def observe_ttft(self, seconds: float) -> None:
        for i, le in enumerate(TTFT_BUCKETS):
            self.ttft_le[i] += seconds <= le
        self.ttft_sum += seconds
        self.ttft_count += 1


@dataclass(frozen=True)
class Generation:
    """What one request produced."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class Engine:
    """Schedules requests up to --max-num-seqs and "generates" tokens, keeping vLLM's stats."""

    def __init__(
        self, args: ServerArgs, token_delay: float, stall: Callable[[], Awaitable[None]]
    ) -> None:
        self.stats = EngineStats()
        self._block_size = args.block_size
        self._cache = PrefixCache(args.block_size, args.num_blocks) if args.prefix_caching else None
        self._slots = asyncio.Semaphore(args.max_num_seqs)
        self._token_delay = token_delay
        self._stall = stall

    async def generate(
        self, prompt: list[Token], max_tokens: int, on_token: Callable[[str], Awaitable[None]]
    ) -> Generation:
        stats = self.stats
        arrived = time.monotonic()
        stats.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            stats.waiting -= 1
        stats.running += 1
        seq = list(prompt)
        held = 0
        reason = "abort"
        try:
            cached = 0
            if self._cache is not None:
                # vLLM skips the lookup, and so the counters, when caching is off.
                cached = self._cache.hit_tokens(prompt)
                stats.prefix_queries += len(prompt)
                stats.prefix_hits += cached
                self._cache.insert(prompt)
            stats.prompt_tokens += len(prompt)
            for i in range(max_tokens):
                held = self._hold(held, len(seq))
                await self._stall()
                if self._token_delay:
                    await asyncio.sleep(self._token_delay)
                word = VOCAB[i % len(VOCAB)]
                seq.append(word)
                stats.generation_tokens += 1
                if i == 0:
                    stats.observe_ttft(time.monotonic() - arrived)
                await on_token(" " + word)
            reason = "length"
            return Generation(len(prompt), max_tokens, cached)
        finally:
            stats.running -= 1
            stats.blocks_in_use -= held
            stats.finished[reason] = stats.finished.get(reason, 0) + 1
            self._slots.release()
            if self._cache is not None:
                self._cache.insert(seq)

    def _hold(self, held: int, seq_len: int) -> int:
        """Account KV blocks for a sequence about to grow by one token."""
        needed = -(-(seq_len + 1) // self._block_size)
        self.stats.blocks_in_use += needed - held
        return needed


def _words(text: str) -> list[Token]:
    return list(text.split())


def completion_tokens(prompt: Any) -> list[Token]:
    """Tokens of a /v1/completions prompt: a string, token ids, or a batch of one of those."""
    if isinstance(prompt, str):
        return _words(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
        if len(prompt) == 1 and isinstance(prompt[0], str | list):
            return completion_tokens(prompt[0])
    raise ApiError(400, "prompt must be a non-empty string, a list of token ids, or a batch of one")


def chat_tokens(messages: Any) -> list[Token]:
    """Tokens of chat messages rendered by the stand-in's template."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list")
    tokens: list[Token] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, "each message needs a string role")
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        tokens.append(f"<|{message['role']}|>")
        for part in parts:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                tokens += _words(part["text"])
    tokens.append("<|assistant|>")
    return tokens


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"

    def json(self) -> dict[str, Any]:
        try:
            body = json.loads(self.body)
        except ValueError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body


class Responder:
    """Writes one response on a keep-alive connection, plain or chunked (SSE)."""

    def __init__(self, writer: asyncio.StreamWriter, request: Request) -> None:
        self._writer = writer
        self._chunked = request.version == "HTTP/1.1"
        self.keep_alive = request.keep_alive
        self.status = 0

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        self.status = status
        if not self.keep_alive:
            headers.append(("connection", "close"))
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "server: uvicorn"]
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, status: int, body: bytes = b"", content_type: str = "") -> None:
        headers = [("content-length", str(len(body)))]
        if content_type:
            headers.append(("content-type", content_type))
        self._writer.write(self._head(status, headers) + body)
        await self._writer.drain()

    async def send_json(self, status: int, obj: Any) -> None:
        await self.send(status, json.dumps(obj).encode(), "application/json")

    async def start_stream(self) -> None:
        headers = [("content-type", "text/event-stream; charset=utf-8")]
        if self._chunked:
            headers.append(("transfer-encoding", "chunked"))
        else:
            self.keep_alive = False  # HTTP/1.0: the body ends when the connection closes
        self._writer.write(self._head(200, headers))
        await self._writer.drain()

    async def event(self, data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        if self._chunked:
            payload = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
        self._writer.write(payload)
        await self._writer.drain()

    async def end_stream(self) -> None:
        if self._chunked:
            self._writer.write(b"0\r\n\r\n")
            await self._writer.drain()


class StandIn:
    """The API server: fault-injection timeline, signals, HTTP routes."""

    def __init__(
        self,
        args: ServerArgs,
        knobs: Knobs,
        events: EventLog,
        sock: socket.socket,
        grandchild: int | None,
    ) -> None:
        self.args = args
        self.knobs = knobs
        self.events = events
        self._sock = sock
        self._grandchild = grandchild
        self._stopping = asyncio.Event()
        self._stop_reason = ""
        self._exit_code = 0
        self._hang: str | None = None
        self._engine_dead = False
        self._created = int(time.time())
        self._model_label = args.served_names[0].replace("\\", "\\\\").replace('"', '\\"')
        self.engine = Engine(args, knobs.token_delay, self._stall)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        if self._grandchild is not None:
            loop.add_signal_handler(signal.SIGCHLD, self._on_sigchld)
        # "Loading": the socket is bound but not listening, so connects are refused.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.knobs.startup_delay)
        if not self._stopping.is_set():
            if self.knobs.fail_start is not None:
                return self._fail_start(self.knobs.fail_start)
            if self.knobs.device_memory is not None:
                self._log_device_memory(*self.knobs.device_memory)
            try:
                server = await asyncio.start_server(
                    self._serve_connection, sock=self._sock, backlog=1024
                )
            except OSError as exc:
                return self._fail_start(f"OSError: {exc}")
            self._announce_ready(loop)
            await self._stopping.wait()
            server.close()
        if self._stop_reason == "sigterm":
            uvicorn_log("Shutting down")
            await asyncio.sleep(self.knobs.sigterm_delay)
            uvicorn_log("Waiting for application shutdown.")
            uvicorn_log("Application shutdown complete.")
        self._stop_grandchild()
        uvicorn_log(f"Finished server process [{os.getpid()}]")
        self.events.emit("exit", code=self._exit_code, reason=self._stop_reason)
        return self._exit_code

    @staticmethod
    def _log_device_memory(free: float, total: float) -> None:
        # vLLM 0.33 v1/worker/gpu_worker.py compile_or_warm_up_model, after memory profiling.
        vllm_log(
            "INFO",
            "gpu_worker.py:1058",
            f"Free memory on device ({free}/{total} GiB) on startup. Desired GPU memory "
            f"utilization is (0.9, {round(total * 0.9, 2)} GiB). Actual usage is 1.2 GiB for "
            "consumed memory (weights + non-torch), 0.3 GiB for peak activation, and 0.1 GiB "
            "for CUDAGraph memory.",
            prefix=f"(EngineCore_DP0 pid={os.getpid()}) ",
        )

    def _announce_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        host, port = self.args.host, self._sock.getsockname()[1]
        vllm_log("INFO", "api_server.py:1971", f"Starting vLLM server on http://{host}:{port}")
        vllm_log("INFO", "launcher.py:37", "Available routes are: /health, /metrics, /version, ...")
        uvicorn_log(f"Started server process [{os.getpid()}]")
        uvicorn_log("Waiting for application startup.")
        uvicorn_log("Application startup complete.")
        self.events.emit("ready", host=host, port=port)
        if self.knobs.crash_after is not None:
            loop.call_later(self.knobs.crash_after, self._crash)
        if self.knobs.hang_after is not None:
            loop.call_later(self.knobs.hang_after, self._start_hang)

    def _request_stop(self, reason: str, code: int) -> None:
        if not self._stopping.is_set():
            self._stop_reason, self._exit_code = reason, code
            self._stopping.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        self.events.emit(sig.name.lower(), ignored=self.knobs.ignore_sigterm)
        if self.knobs.ignore_sigterm or self._stopping.is_set():
            return
        vllm_log("INFO", "launcher.py:99", "[shutdown] API server: shutdown triggered")
        self._request_stop("sigterm", 0)

    def _on_sigchld(self) -> None:
        if self._grandchild is None:
            return
        try:
            pid, status = os.waitpid(self._grandchild, os.WNOHANG)
        except ChildProcessError:
            pid, status = self._grandchild, 0
        if pid == 0:
            return
        self._grandchild = None
        self.events.emit("grandchild_exit", status=os.waitstatus_to_exitcode(status))
        if self._stopping.is_set():
            return
        vllm_log(
            "ERROR",
            "core_client.py:564",
            "Engine core proc EngineCore_DP0 died unexpectedly, shutting down client.",
        )
        self._engine_dead = True
        asyncio.get_running_loop().call_later(
            ENGINE_DEAD_EXIT_S, self._request_stop, "engine_dead", 1
        )

    def _stop_grandchild(self) -> None:
        """On a normal stop EngineCore goes with the server, as vLLM's shutdown does."""
        if self._grandchild is None:
            return
        try:
            os.kill(self._grandchild, signal.SIGKILL)
            os.waitpid(self._grandchild, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self._grandchild = None

    def _fail_start(self, message: str) -> int:
        self._stop_grandchild()
        vllm_log("ERROR", "core.py:708", "EngineCore failed to start.")
        sys.stderr.write(
            "Traceback (most recent call last):\n"
            '  File "/opt/vllm/vllm/entrypoints/openai/api_server.py", line 2086, in <module>\n'
            "    uvloop.run(run_server(args))\n"
            '  File "/opt/vllm/vllm/v1/engine/utils.py", line 934, in wait_for_engine_startup\n'
            "    raise RuntimeError(\n"
            f"{message}\n"
        )
        sys.stderr.flush()
        self.events.emit("exit", code=1, reason="fail_start", message=message)
        return 1

    def _crash(self) -> NoReturn:
        code = self.knobs.crash_code
        vllm_log("ERROR", "api_server.py:1", f"stand-in: injected crash, exit code {code}")
        self.events.emit("exit", code=code, reason="crash")
        # os._exit skips all cleanup: no shutdown, grandchild left running, like a real crash.
        os._exit(code)

    def _start_hang(self) -> None:
        self._hang = self.knobs.hang_mode
        self.events.emit("hang", mode=self._hang)

    async def _stall(self) -> None:
        if self._hang == "hang":
            await asyncio.get_running_loop().create_future()  # never resolved

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only shutdown cancels connections. Ending normally stops Python 3.11's streams
            # callback from logging the cancellation as an error after "Finished server process".
            pass
        finally:
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            async with asyncio.timeout(KEEP_ALIVE_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError):
            return False
        except asyncio.LimitOverrunError:
            writer.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
            )
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return False
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        length_header = headers.get("content-length", "0")
        if not length_header.isdigit() or "transfer-encoding" in headers:
            # OpenAI clients send JSON with a length; other framings are not worth parsing here.
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return False
        length = int(length_header)
        body = await reader.readexactly(length) if length else b""
        request = Request(parts[0], parts[1].partition("?")[0], parts[2], headers, body)
        out = Responder(writer, request)
        await self._stall()
        try:
            await self._dispatch(request, out)
        except ApiError as exc:
            kind = {400: "BadRequestError", 404: "NotFoundError"}.get(exc.status, "Error")
            error = {"message": exc.message, "type": kind, "param": None, "code": exc.status}
            await out.send_json(exc.status, {"error": error})
        except (ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception:
            traceback.print_exc()
            await out.send_json(500, {"error": {"message": "Internal Server Error", "code": 500}})
        self._access_log(writer, request, out.status)
        return out.keep_alive

    def _access_log(self, writer: asyncio.StreamWriter, request: Request, status: int) -> None:
        if not self.args.access_log or request.path in self.args.quiet_paths:
            return
        peer = writer.get_extra_info("peername") or ("-", 0)
        line = f'{peer[0]}:{peer[1]} - "{request.method} {request.path} {request.version}" {status}'
        uvicorn_log(f"{line} {HTTPStatus(status).phrase}", sys.stdout)

    async def _dispatch(self, request: Request, out: Responder) -> None:
        path, method = request.path, request.method
        key = self.args.api_key
        authorized = request.headers.get("authorization", "") == f"Bearer {key}"
        if key is not None and path.startswith(GUARDED_PREFIXES) and not authorized:
            await out.send_json(401, {"error": "Unauthorized"})
            return
        routes: dict[str, tuple[tuple[str, ...], Callable[[Request, Responder], Awaitable[None]]]]
        routes = {
            "/health": (("GET",), self._health),
            "/ping": (("GET", "POST"), self._health),
            "/version": (("GET",), self._version),
            "/metrics": (("GET",), self._metrics),
            "/v1/models": (("GET",), self._models),
            "/v1/completions": (("POST",), self._completions),
            "/v1/chat/completions": (("POST",), self._completions),
            "/tokenize": (("POST",), self._tokenize),
        }
        if path not in routes:
            await out.send_json(404, {"detail": "Not Found"})
        elif method not in routes[path][0]:
            await out.send_json(405, {"detail": "Method Not Allowed"})
        else:
            await routes[path][1](request, out)

    async def _health(self, request: Request, out: Responder) -> None:
        await out.send(503 if self._engine_dead or self._hang == "503" else 200)

    async def _version(self, request: Request, out: Responder) -> None:
        await out.send_json(200, {"version": VLLM_VERSION})

    async def _tokenize(self, request: Request, out: Responder) -> None:
        """vLLM's /tokenize: a prompt or chat messages, counted as generation would count them
        (an empty prompt is allowed here, as in vLLM)."""
        body = request.json()
        if "messages" in body:
            tokens = chat_tokens(body["messages"])
        else:
            prompt = body.get("prompt")
            tokens = [] if prompt == "" else completion_tokens(prompt)
        answer = {"count": len(tokens), "max_model_len": self.args.max_model_len}
        await out.send_json(200, {**answer, "tokens": list(range(len(tokens)))})

    async def _models(self, request: Request, out: Responder) -> None:
        data = [
            {
                "id": name,
                "object": "model",
                "created": self._created,
                "owned_by": "vllm",
                "root": self.args.model,
                "parent": None,
                "max_model_len": self.args.max_model_len,
            }
            for name in self.args.served_names
        ]
        await out.send_json(200, {"object": "list", "data": data})

    async def _metrics(self, request: Request, out: Responder) -> None:
        await out.send(
            200, self.render_metrics().encode(), "text/plain; version=0.0.4; charset=utf-8"
        )

    def render_metrics(self) -> str:
        """Prometheus text with the vllm:* series (none with --disable-log-stats, as vLLM)."""
        if not self.args.log_stats:
            return ""
        s, args = self.engine.stats, self.args
        labels = f'engine="0",model_name="{self._model_label}"'
        lines: list[str] = []

        def family(
            name: str, kind: str, help_text: str, samples: list[tuple[str, str, float]]
        ) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for suffix, extra, value in samples:
                lines.append(f"{name}{suffix}{{{extra}{labels}}} {float(value)}")
            if kind in ("counter", "histogram"):
                # prometheus_client (vLLM's) follows each with a `_created` gauge family.
                lines.append(f"# HELP {name}_created {help_text}")
                lines.append(f"# TYPE {name}_created gauge")
                for suffix, extra, _ in samples:
                    if suffix in ("_total", "_count"):
                        lines.append(f"{name}_created{{{extra}{labels}}} {self._created:.1f}")

        def gauge(name: str, help_text: str, value: float) -> None:
            family(name, "gauge", help_text, [("", "", value)])

        def counter(name: str, help_text: str, value: float) -> None:
            family(name, "counter", help_text, [("_total", "", value)])

        gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", s.running
        )
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.waiting)
        gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            min(1.0, s.blocks_in_use / args.num_blocks),
        )
        counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            s.prefix_queries,
        )
        counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            s.prefix_hits,
        )
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens)
        counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens
        )
        family(
            "vllm:request_success",
            "counter",
            "Count of successfully processed requests.",
            [("_total", f'finished_reason="{r}",', n) for r, n in sorted(s.finished.items())],
        )
        buckets = [
            ("_bucket", f'le="{le}",', n) for le, n in zip(TTFT_BUCKETS, s.ttft_le, strict=True)
        ]
        family(
            "vllm:time_to_first_token_seconds",
            "histogram",
            "Histogram of time to first token in seconds.",
            [
                *buckets,
                ("_bucket", 'le="+Inf",', s.ttft_count),
                ("_count", "", s.ttft_count),
                ("_sum", "", s.ttft_sum),
            ],
        )
        info = (
            f'block_size="{args.block_size}",enable_prefix_caching="{args.prefix_caching}",'
            f'num_gpu_blocks="{args.num_blocks}",'
        )
        family(
            "vllm:cache_config_info",
            "gauge",
            "Information of the LLMEngine CacheConfig",
            [("", info, 1)],
        )
        return "\n".join(lines) + "\n"

    def _model_name(self, body: dict[str, Any]) -> str:
        name = body.get("model")
        if name is None:
            return self.args.served_names[0]
        if name not in self.args.served_names:
            raise ApiError(404, f"The model `{name}` does not exist.")
        return str(name)

    def _max_tokens(self, body: dict[str, Any], prompt_len: int, chat: bool) -> int:
        limit = self.args.max_model_len
        raw = body.get("max_completion_tokens") if chat else None
        raw = body.get("max_tokens") if raw is None else raw
        if raw is None:
            raw = limit - prompt_len if chat else 16
            if raw < 1:
                raise ApiError(
                    400,
                    f"This model's maximum context length is {limit} tokens. However, your "
                    f"request has {prompt_len} input tokens. Please reduce the length of the "
                    "input messages.",
                )
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
            raise ApiError(400, f"max_tokens must be an integer >= 1, got {raw!r}")
        if prompt_len + raw > limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{raw} output tokens and your prompt contains {prompt_len} input tokens, for a "
                f"total of {prompt_len + raw} tokens. Please reduce the length of the input "
                "prompt or the number of requested output tokens.",
            )
        return raw

    def _usage(self, gen: Generation) -> dict[str, Any]:
        details = {"cached_tokens": gen.cached_tokens} if self.args.prompt_tokens_details else None
        return {
            "prompt_tokens": gen.prompt_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens,
            "completion_tokens": gen.completion_tokens,
            "prompt_tokens_details": details,
        }

    async def _completions(self, request: Request, out: Responder) -> None:
        chat = request.path == "/v1/chat/completions"
        body = request.json()
        model = self._model_name(body)
        prompt = (
            chat_tokens(body.get("messages")) if chat else completion_tokens(body.get("prompt"))
        )
        max_tokens = self._max_tokens(body, len(prompt), chat)
        stream = body.get("stream") is True
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(
            stream_options.get("include_usage")
        )
        rid = ("chatcmpl-" if chat else "cmpl-") + os.urandom(16).hex()
        kind = "chat.completion" if chat else "text_completion"
        base = {"id": rid, "object": kind, "created": int(time.time()), "model": model}

        def choice(text: str, finish: str | None, delta: bool) -> dict[str, Any]:
            body: dict[str, Any] = {"index": 0}
            if not chat:
                body["text"] = text
            elif delta:
                body["delta"] = {"content": text}
            else:
                body["message"] = {"role": "assistant", "content": text, "tool_calls": []}
            return {**body, "logprobs": None, "finish_reason": finish, "stop_reason": None}

        if not stream:
            pieces: list[str] = []

            async def collect(piece: str) -> None:
                pieces.append(piece)

            gen = await self.engine.generate(prompt, max_tokens, collect)
            reply = {**base, "choices": [choice("".join(pieces), "length", False)]}
            await out.send_json(200, {**reply, "usage": self._usage(gen)})
            return

        chunk = {**base, "object": "chat.completion.chunk" if chat else kind}
        await out.start_stream()
        if chat:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
            await out.event(json.dumps({**chunk, "choices": [{**first, "finish_reason": None}]}))
        sent = 0

        async def emit(piece: str) -> None:
            nonlocal sent
            sent += 1
            finish = "length" if sent == max_tokens else None
            await out.event(json.dumps({**chunk, "choices": [choice(piece, finish, True)]}))

        gen = await self.engine.generate(prompt, max_tokens, emit)
        if include_usage:
            await out.event(json.dumps({**chunk, "choices": [], "usage": self._usage(gen)}))
        await out.event("[DONE]")
        await out.end_stream()


def _bind(host: str, port: int) -> socket.socket:
    """Bind now and listen only when "loaded", as vLLM does, so a clash fails at once."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


# What the grandchild runs after exec: rename itself like vLLM's EngineCore and idle until killed.
ENGINE_CORE_CODE = (
    "import signal\n"
    "with open('/proc/self/comm', 'w') as f: f.write('VLLM::EngineCore')\n"
    "while True: signal.pause()\n"
)


def _run_engine_core(knobs: Knobs, events: EventLog) -> NoReturn:
    """The forked "VLLM::EngineCore": stays in the server's process group until killed."""
    try:
        ignore = signal.SIG_IGN if knobs.ignore_sigterm else signal.SIG_DFL
        signal.signal(signal.SIGTERM, ignore)  # an ignored signal stays ignored across exec
        signal.signal(signal.SIGINT, ignore)
        events.emit("grandchild", ppid=os.getppid(), pgid=os.getpgrp(), sid=os.getsid(0))
        prefix = f"(EngineCore_DP0 pid={os.getpid()}) "
        vllm_log("INFO", "core.py:93", "Initializing a V1 LLM engine (v0.33.0)", prefix)
        # exec so /proc/PID/cmdline reads "VLLM::EngineCore" as vLLM's setproctitle makes it: tools
        # that find engines by their argv must not count it. The listening socket is
        # close-on-exec, so the port still frees as soon as the server dies, as with vLLM.
        os.execv(sys.executable, ["VLLM::EngineCore", "-I", "-S", "-c", ENGINE_CORE_CODE])
    finally:
        os._exit(1)


def main(argv: list[str], env: Mapping[str, str]) -> int:
    try:
        args, knobs = parse_command_line(argv, env)
    except UsageError as exc:
        sys.stderr.write(f"standin_engine.py: error: {exc}\n")
        return 2
    if knobs.ignore_epipe:
        sys.stdout = _OutlivesItsReader(sys.stdout)
        sys.stderr = _OutlivesItsReader(sys.stderr)
    if knobs.ignore_sigterm:
        # Ignore from here, not only once asyncio's handlers (which log the signal) are in.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    events = EventLog(knobs.state_file)
    vllm_log("INFO", "api_server.py:1913", f"vLLM API server version {VLLM_VERSION}")
    vllm_log("INFO", "utils.py:253", f"non-default args: {' '.join(argv)}")
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        traceback.print_exception(exc)
        events.emit("exit", code=1, reason="bind_failed", message=str(exc))
        return 1
    grandchild = os.fork() if knobs.spawn_grandchild else None
    if grandchild == 0:
        _run_engine_core(knobs, events)
    events.emit(
        "started",
        ppid=os.getppid(),
        pgid=os.getpgrp(),
        sid=os.getsid(0),
        grandchild_pid=grandchild,
        host=args.host,
        port=sock.getsockname()[1],
        model=args.model,
        served_model_names=list(args.served_names),
        argv=argv,
        cmdline=_cmdline(),
        cwd=os.getcwd(),
        env=_redacted_env(env),
    )
    vllm_log("INFO", "gpu_model_runner.py:2345", f"Starting to load model {args.model}...")
    return asyncio.run(StandIn(args, knobs, events, sock, grandchild).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
