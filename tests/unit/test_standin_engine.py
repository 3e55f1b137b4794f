"""The vLLM stand-in behaves like vLLM where the orchestrator looks, and its fault knobs work."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

STANDIN = Path(__file__).resolve().parents[1] / "standin_engine.py"
WAIT_S = 5.0


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def is_gone(pid: int) -> bool:
    """True once pid has exited (a zombie counts: PID 1 here may never reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


@dataclass
class StandIn:
    proc: subprocess.Popen[bytes]
    state: Path
    out: Path
    err: Path
    port: int = 0

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        if not self.state.exists():
            return []
        lines = self.state.read_text().splitlines()
        found = [json.loads(line) for line in lines]
        return [e for e in found if name is None or e["event"] == name]

    def event(self, name: str) -> dict[str, Any]:
        return wait_for(f"event {name!r}", lambda: self.events(name))[0]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self) -> None:
        self.event("ready")

    def wait_exit(self, timeout: float = WAIT_S) -> int:
        return self.proc.wait(timeout)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()


Start = Callable[..., StandIn]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start stand-ins in their own process groups; kill every group afterwards."""
    started: list[StandIn] = []
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith("STANDIN_") and k != "VLLM_API_KEY"
    }

    def launch(*flags: str, env: dict[str, str] | None = None, ready: bool = True) -> StandIn:
        n = len(started)
        state, out, err = (
            tmp_path / f"{kind}{n}" for kind in ("state.jsonl.", "out.log.", "err.log.")
        )
        argv = [sys.executable, str(STANDIN), "--model", "/models/tiny", "--host", "127.0.0.1"]
        argv += ["--served-model-name", "tiny", "--dtype", "auto"]
        argv += flags if "--port" in flags else ("--port", "0", *flags)
        with out.open("wb") as out_file, err.open("wb") as err_file:
            proc = subprocess.Popen(
                argv,
                env={**base_env, "STANDIN_STATE_FILE": str(state), **(env or {})},
                stdout=out_file,
                stderr=err_file,
                start_new_session=True,
            )
        s = StandIn(proc, state, out, err)
        started.append(s)
        if ready:
            s.port = s.event("started")["port"]
            s.wait_ready()
        return s

    yield launch
    for s in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(s.proc.pid, signal.SIGKILL)
        s.proc.wait()


def complete(s: StandIn, prompt: str, **extra: Any) -> dict[str, Any]:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 4, **extra}
    r = httpx.post(s.url("/v1/completions"), json=body)
    assert r.status_code == 200, r.text
    return r.json()


def metric(s: StandIn, name: str) -> float:
    text = httpx.get(s.url("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + "{"):
            assert 'engine="0"' in line and 'model_name="tiny"' in line
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def test_port_refuses_connections_until_loaded(start: Start) -> None:
    s = start(env={"STANDIN_STARTUP_DELAY": "0.6"}, ready=False)
    s.port = s.event("started")["port"]
    began = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", s.port), timeout=1).close()

    def healthy() -> bool:
        try:
            return httpx.get(s.url("/health")).status_code == 200
        except httpx.ConnectError:
            return False

    wait_for("/health 200", healthy)
    assert time.monotonic() - began >= 0.4
    assert httpx.get(s.url("/health")).content == b""
    assert f"Starting vLLM server on http://127.0.0.1:{s.port}" in s.stdout()
    assert "Application startup complete." in s.stderr()
    started = s.event("started")
    assert started["argv"][:2] == ["--model", "/models/tiny"] and "--dtype" in started["argv"]
    assert started["pgid"] == s.proc.pid and started["cmdline"][1] == str(STANDIN)


def test_models_version_and_completions(start: Start) -> None:
    s = start("--max-model-len", "64", "--enable-prompt-tokens-details")
    models = httpx.get(s.url("/v1/models")).json()
    assert models["object"] == "list"
    assert models["data"][0] | {"created": 0} == {
        "id": "tiny",
        "object": "model",
        "created": 0,
        "owned_by": "vllm",
        "root": "/models/tiny",
        "parent": None,
        "max_model_len": 64,
    }
    assert httpx.get(s.url("/version")).json() == {"version": "0.33.0"}

    reply = complete(s, "one two three", max_tokens=3)
    assert reply["object"] == "text_completion" and reply["model"] == "tiny"
    assert reply["choices"][0]["text"] == " the quick brown"
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"] == {
        "prompt_tokens": 3,
        "total_tokens": 6,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    chat = httpx.post(
        s.url("/v1/chat/completions"),
        json={"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 2},
    ).json()
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["content"] == " the quick"
    assert chat["usage"]["prompt_tokens"] == 4  # <|user|> hi there <|assistant|>

    wrong = httpx.post(s.url("/v1/completions"), json={"model": "other", "prompt": "x"})
    assert wrong.status_code == 404 and "`other` does not exist" in wrong.json()["error"]["message"]
    too_long = httpx.post(s.url("/v1/completions"), json={"prompt": words(60), "max_tokens": 10})
    assert too_long.status_code == 400
    assert "maximum context length is 64" in too_long.json()["error"]["message"]
    assert httpx.post(s.url("/v1/completions"), content=b"{").status_code == 400
    chunked = httpx.post(s.url("/v1/completions"), content=iter([b'{"prompt": "x"}']))
    assert chunked.status_code == 400
    assert httpx.get(s.url("/nope")).status_code == 404
    assert httpx.get(s.url("/v1/completions")).status_code == 405


def sse_events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_tokenize_counts_as_generation_does(start: Start) -> None:
    s = start()
    count = lambda body: httpx.post(s.url("/tokenize"), json=body).json()["count"]  # noqa: E731
    assert (
        count({"prompt": "one two three"}) == complete(s, "one two three")["usage"]["prompt_tokens"]
    )
    assert count({"prompt": ""}) == 0
    chat = [{"role": "user", "content": "one two"}]
    assert count({"messages": chat, "add_generation_prompt": True}) == 4  # <|user|>, <|assistant|>


def test_streaming_emits_max_tokens_chunks_then_done(start: Start) -> None:
    s = start()
    body = {"prompt": "a b c", "max_tokens": 5, "stream": True}
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", s.url("/v1/completions"), json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["text"] for c in chunks[:-1]]
    assert texts == [" the", " quick", " brown", " fox", " jumps"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-2:] == [None, "length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5

    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    with httpx.stream("POST", s.url("/v1/chat/completions"), json=chat) as r:
        events = sse_events(r)
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": " the"},
        {"content": " quick"},
    ]
    assert events[-1] == "[DONE]"


def test_connections_are_kept_alive(start: Start) -> None:
    s = start()
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(s.url("/health")).status_code == 200

    def peers() -> list[str]:  # the access line is written just after the response
        lines = s.stdout().splitlines()
        found = [line.split(" ")[5] for line in lines if '"GET /health' in line]
        return found if len(found) == 3 else []

    assert len(set(wait_for("3 access-log lines", peers))) == 1


@pytest.mark.parametrize("caching", [True, False])
def test_prefix_cache_counters_follow_vllm(start: Start, caching: bool) -> None:
    s = start() if caching else start("--no-enable-prefix-caching")
    complete(s, words(40))  # 40 prompt tokens, nothing cached yet
    complete(s, words(40))  # full blocks of 16, capped at 39 tokens: 32 hits
    complete(s, words(20) + " " + words(20, "x"))  # shares one block with the first prompt
    queries, hits = 120.0, 48.0
    if not caching:  # vLLM skips the lookup, and so both counters, with caching off
        queries, hits = 0.0, 0.0
    assert metric(s, "vllm:prefix_cache_queries_total") == queries
    assert metric(s, "vllm:prefix_cache_hits_total") == hits
    assert metric(s, "vllm:prompt_tokens_total") == 120.0
    assert metric(s, "vllm:generation_tokens_total") == 12.0


def test_chat_history_hits_the_cache_of_the_previous_turn(start: Start) -> None:
    s = start()
    turn = [{"role": "system", "content": words(30)}, {"role": "user", "content": "go on"}]
    first = httpx.post(s.url("/v1/chat/completions"), json={"messages": turn, "max_tokens": 20})
    answer = first.json()["choices"][0]["message"]
    turn += [answer, {"role": "user", "content": "more"}]
    second = httpx.post(s.url("/v1/chat/completions"), json={"messages": turn, "max_tokens": 1})
    # 35 prompt tokens + 20 generated = 55 cached, 3 full blocks; the new prompt has 58 tokens.
    assert second.json()["usage"]["prompt_tokens"] == 58
    assert metric(s, "vllm:prefix_cache_hits_total") == 48.0


def test_api_key_guards_v1_only(start: Start) -> None:
    s = start(env={"VLLM_API_KEY": "sk-test"})
    assert httpx.get(s.url("/v1/models")).status_code == 401
    assert httpx.get(s.url("/v1/models")).json() == {"error": "Unauthorized"}
    bad = {"Authorization": "Bearer nope"}
    assert httpx.post(s.url("/v1/completions"), headers=bad, json={}).status_code == 401
    good = {"Authorization": "Bearer sk-test"}
    assert httpx.get(s.url("/v1/models"), headers=good).status_code == 200
    for open_path in ("/health", "/metrics", "/version"):
        assert httpx.get(s.url(open_path)).status_code == 200
    assert s.event("started")["env"]["VLLM_API_KEY"] == "***"


async def test_queue_and_kv_gauges_while_requests_run(start: Start) -> None:
    slow = {"STANDIN_TOKEN_DELAY": "0.05"}
    s = start("--max-num-seqs", "1", "--num-gpu-blocks-override", "10", env=slow)
    body = {"prompt": words(30), "max_tokens": 16}  # 0.8 s each, one at a time
    async with httpx.AsyncClient() as client:
        pending = asyncio.gather(
            *(client.post(s.url("/v1/completions"), json=body) for _ in range(2))
        )
        while metric(s, "vllm:num_requests_waiting") != 1.0:
            assert not pending.done()
            await asyncio.sleep(0.01)
        assert metric(s, "vllm:num_requests_running") == 1.0
        assert 0.2 <= metric(s, "vllm:kv_cache_usage_perc") <= 0.3  # 2-3 of 10 blocks
        replies = await pending
    assert [r.status_code for r in replies] == [200, 200]
    assert metric(s, "vllm:num_requests_running") == 0.0
    assert metric(s, "vllm:kv_cache_usage_perc") == 0.0


def test_crash_after_exits_with_the_code(start: Start) -> None:
    s = start("--standin-crash-after", "0.2", "--standin-crash-code=3")
    assert s.wait_exit() == 3
    assert s.events()[-1] | {"t": 0} == {
        "event": "exit",
        "t": 0,
        "pid": s.proc.pid,
        "code": 3,
        "reason": "crash",
    }


def test_crash_code_defaults_to_one_and_env_works(start: Start) -> None:
    s = start(env={"STANDIN_CRASH_AFTER": "0.1"})
    assert s.wait_exit() == 1


def test_hang_accepts_connections_but_never_answers(start: Start) -> None:
    s = start(env={"STANDIN_HANG_AFTER": "0.1"})
    s.event("hang")
    with socket.create_connection(("127.0.0.1", s.port), timeout=1):
        pass  # still accepting
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(s.url("/health"), timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(s.url("/metrics"), timeout=0.3)
    assert s.proc.poll() is None
    s.proc.send_signal(signal.SIGTERM)  # the stalled connections must not spoil a clean stop
    assert s.wait_exit() == 0
    assert s.stderr().splitlines()[-1] == f"INFO:     Finished server process [{s.proc.pid}]"


def test_hang_mode_503_fails_only_health(start: Start) -> None:
    s = start(env={"STANDIN_HANG_AFTER": "0.1", "STANDIN_HANG_MODE": "503"})
    wait_for("/health 503", lambda: httpx.get(s.url("/health")).status_code == 503)
    assert httpx.get(s.url("/metrics")).status_code == 200
    assert complete(s, "still works")["usage"]["completion_tokens"] == 4


def test_sigterm_stops_cleanly_and_takes_the_grandchild(start: Start) -> None:
    s = start(env={"STANDIN_SPAWN_GRANDCHILD": "1", "STANDIN_SIGTERM_DELAY": "0.3"})
    grandchild = s.event("grandchild")["pid"]
    idle = httpx.Client()
    assert idle.get(s.url("/health")).status_code == 200  # leaves a keep-alive connection open
    began = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.wait_exit() == 0
    idle.close()
    assert s.stderr().splitlines()[-1] == f"INFO:     Finished server process [{s.proc.pid}]"
    assert 0.3 <= time.monotonic() - began < 2.0
    assert "[shutdown] API server: shutdown triggered" in s.stdout()
    assert is_gone(grandchild)
    assert [e["event"] for e in s.events()][-2:] == ["sigterm", "exit"]
    assert s.events("exit")[0]["reason"] == "sigterm"


def test_ignored_sigterm_needs_sigkill(start: Start) -> None:
    s = start(env={"STANDIN_IGNORE_SIGTERM": "1", "STANDIN_SPAWN_GRANDCHILD": "1"})
    grandchild = s.event("grandchild")["pid"]
    os.killpg(s.proc.pid, signal.SIGTERM)
    assert s.event("sigterm")["ignored"] is True
    time.sleep(0.3)
    assert s.proc.poll() is None and not is_gone(grandchild)
    assert httpx.get(s.url("/health")).status_code == 200
    s.proc.kill()
    assert s.wait_exit() == -signal.SIGKILL


def test_grandchild_outlives_sigkill_until_its_group_is_killed(start: Start) -> None:
    s = start(env={"STANDIN_SPAWN_GRANDCHILD": "1"})
    child = s.event("grandchild")
    pid = child["pid"]
    comm = Path(f"/proc/{pid}/comm")
    wait_for("EngineCore's name", lambda: comm.read_text().strip() == "VLLM::EngineCor")
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[0] == b"VLLM::EngineCore" and b"--served-model-name" not in argv
    assert child["ppid"] == s.proc.pid
    assert (child["pgid"], child["sid"]) == (s.proc.pid, s.proc.pid)  # same group and session
    s.proc.kill()
    assert s.wait_exit() == -signal.SIGKILL
    time.sleep(0.2)
    assert not is_gone(pid) and os.getpgid(pid) == s.proc.pid
    with pytest.raises(ConnectionRefusedError):  # the port frees with the server
        socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
    os.killpg(s.proc.pid, signal.SIGKILL)
    wait_for("grandchild to die", lambda: is_gone(pid))


def test_grandchild_death_fails_health_then_exits_1(start: Start) -> None:
    s = start(env={"STANDIN_SPAWN_GRANDCHILD": "1"})
    os.kill(s.event("grandchild")["pid"], signal.SIGKILL)
    wait_for("/health 503", lambda: httpx.get(s.url("/health")).status_code == 503)
    assert s.wait_exit() == 1
    assert "died unexpectedly" in s.stdout()
    assert s.events("exit")[0]["reason"] == "engine_dead"


def test_fail_start_ends_stderr_with_the_message(start: Start) -> None:
    message = "ValueError: No available memory for the cache blocks."
    env = {"STANDIN_FAIL_START": message, "STANDIN_STARTUP_DELAY": "0.2"}
    env["STANDIN_SPAWN_GRANDCHILD"] = "1"
    s = start(env=env, ready=False)
    grandchild = s.event("grandchild")["pid"]
    assert s.wait_exit() == 1
    assert s.stderr().splitlines()[-1] == message
    assert "Traceback (most recent call last):" in s.stderr()
    assert is_gone(grandchild)
    assert not s.events("ready")


def test_device_memory_is_logged_like_vllms_gpu_worker_before_listening(start: Start) -> None:
    s = start(env={"STANDIN_DEVICE_MEMORY": "38.91/39.25"})
    lines = s.stdout().splitlines()
    device = next(i for i, line in enumerate(lines) if "Free memory on device" in line)
    assert lines[device].startswith(f"(EngineCore_DP0 pid={s.proc.pid}) INFO ")
    assert "Free memory on device (38.91/39.25 GiB) on startup. Desired GPU memory" in lines[device]
    assert device < next(i for i, line in enumerate(lines) if "Starting vLLM server" in line)


def test_port_clash_fails_at_once(start: Start) -> None:
    first = start()
    second = start("--port", str(first.port), ready=False)
    assert second.wait_exit() == 1
    assert second.stderr().splitlines()[-1] == "OSError: [Errno 98] Address already in use"


@pytest.mark.parametrize(
    ("env", "flags", "named"),
    [
        ({"STANDIN_STARTUP_DELAY": "soon"}, (), "STANDIN_STARTUP_DELAY"),
        ({"STANDIN_HANG_MODE": "slow"}, (), "STANDIN_HANG_MODE"),
        ({"STANDIN_CRASH_AFTR": "1"}, (), "STANDIN_CRASH_AFTR"),
        ({"STANDIN_DEVICE_MEMORY": "80/40"}, (), "STANDIN_DEVICE_MEMORY"),
        ({}, ("--standin-startup-dely", "1"), "--standin-startup-dely"),
        ({}, ("--max-num-seqs", "many"), "--max-num-seqs"),
    ],
)
def test_bad_settings_exit_2_naming_them(
    start: Start, env: dict[str, str], flags: tuple[str, ...], named: str
) -> None:
    s = start(*flags, env=env, ready=False)
    assert s.wait_exit() == 2
    assert named in s.stderr()


@pytest.mark.parametrize("ignore_epipe", [True, False])
def test_a_closed_stdout_ends_it_unless_epipe_is_ignored(
    tmp_path: Path, ignore_epipe: bool
) -> None:
    """A killed daemon closes the engine's pipe: vLLM lives on (its orphan keeps serving)."""
    state = tmp_path / "state.jsonl"
    env = {"STANDIN_STATE_FILE": str(state), "STANDIN_STARTUP_DELAY": "0.3"}
    if ignore_epipe:
        env["STANDIN_IGNORE_EPIPE"] = "1"
    argv = [sys.executable, str(STANDIN), "--model", "m", "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(
        [*argv, "--served-model-name", "tiny"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    s = StandIn(proc, state, tmp_path / "unused", tmp_path / "unused")
    try:
        s.port = s.event("started")["port"]
        assert proc.stdout is not None
        proc.stdout.close()  # before "ready": its ready lines meet a closed pipe
        if not ignore_epipe:
            assert s.wait_exit() == 1
            return
        s.wait_ready()
        assert httpx.get(s.url("/health")).status_code == 200
        assert complete(s, "still serving")["choices"]
        proc.send_signal(signal.SIGTERM)
        assert s.wait_exit() == 0
        assert s.events("exit")[0]["reason"] == "sigterm"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
