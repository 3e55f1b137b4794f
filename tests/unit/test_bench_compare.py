"""compare against a fake control plane whose engine is a null OpenAI server: variants, failures,
and the original overrides coming back after success, errors, cancellation and SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pytest
import uvicorn
from fastapi import Body, FastAPI, HTTPException

from orchestrator.bench.compare import (
    CompareReport,
    NotReady,
    ThreadedControl,
    Variant,
    VariantError,
    parse_variant,
    restart_and_wait,
    run_compare,
    sweep_variants,
)
from orchestrator.bench.nullserver import NullServer, NullServerConfig
from orchestrator.bench.openai_stream import Generation
from orchestrator.bench.runner import BenchPlan, Target, new_report, run_bench
from orchestrator.bench.stats import BenchReport
from orchestrator.cli.main import main
from orchestrator.client import ControlClient

T = TypeVar("T")
ORIGINAL = {"max_num_seqs": 4}
ROOT = Path(__file__).resolve().parents[2]


class FakeDaemon:
    """The control plane's model API for one model `m`; a restart takes about 0.15 s and, like
    the real daemon, answers 202 before the old engine has even begun to stop."""

    def __init__(self, engine: NullServer, overrides: dict[str, Any]) -> None:
        self.engine = engine
        self.restarts: list[dict[str, Any] | None] = []
        self.pids = iter(range(1001, 2000))
        self.cycle: asyncio.Task[None] | None = None
        self.status: dict[str, Any] = {
            "name": "m",
            "state": "ready",
            "desired": "running",
            "pid": next(self.pids),
            "endpoint": f"{engine.url}/v1",  # as the real daemon publishes it
            "served_model_name": "tiny",
            "overrides": dict(overrides),
            "reason": None,
            "last_exit": None,
        }
        self.app = FastAPI()
        self.app.get("/api/v1/models/{name}")(self.get)
        self.app.post("/api/v1/models/{name}/restart", status_code=202)(self.restart)
        self.app.post("/api/v1/models/{name}/stop", status_code=202)(self.stop)

    def _model(self, name: str) -> dict[str, Any]:
        if name != "m":
            raise HTTPException(404, f"no model {name}")
        return dict(self.status)

    async def get(self, name: str, show_env: bool = False) -> dict[str, Any]:
        status = self._model(name)
        env = status["overrides"].get("env")
        if env and not show_env:  # as the real daemon masks them
            status["overrides"] = {**status["overrides"], "env": dict.fromkeys(env, "***")}
        return status

    async def restart(
        self, name: str, body: Annotated[dict[str, Any] | None, Body()] = None
    ) -> dict[str, Any]:
        answer = self._model(name)
        overrides = None if body is None else body.get("overrides")
        if overrides and "bogus_setting" in overrides:
            raise HTTPException(422, "overrides.bogus_setting: Extra inputs are not permitted")
        self.restarts.append(overrides)
        if self.cycle is not None:
            self.cycle.cancel()
        self.cycle = asyncio.create_task(self._cycle(overrides))
        return answer

    async def stop(self, name: str) -> dict[str, Any]:
        self._model(name)
        self.status.update(state="stopped", desired="stopped", pid=None)
        return dict(self.status)

    async def _cycle(self, overrides: dict[str, Any] | None) -> None:
        self.status.update(state="stopping", desired="running")
        await asyncio.sleep(0.05)
        if overrides is not None:
            self.status["overrides"] = dict(overrides)
        self.status.update(state="starting", pid=None, reason=None)
        await asyncio.sleep(self.status["overrides"].get("start_s", 0.1))
        if self.status["overrides"].get("fail_me"):
            self.status.update(state="failed", reason="engine exited with code 1 during startup")
            return
        caching = self.status["overrides"].get("enable_prefix_caching", True)
        self.engine.config = dataclasses.replace(self.engine.config, prefix_caching=caching)
        self.status.update(state="ready", pid=next(self.pids))


class Host:
    """Runs the fake daemon and its engine on an event loop in a thread, so synchronous clients,
    other event loops and subprocesses can all talk to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=15)

    def __enter__(self) -> Host:
        self.thread.start()
        self.engine = NullServer(NullServerConfig(model="tiny", token_delay_s=0.002))
        self.run(self.engine.start())
        self.daemon = FakeDaemon(self.engine, ORIGINAL)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.daemon.app, log_level="warning"))

        async def serve() -> None:
            self.serving = asyncio.create_task(self.server.serve(sockets=[sock]))
            while not self.server.started:
                await asyncio.sleep(0.01)

        self.run(serve())
        return self

    def __exit__(self, *exc: object) -> None:
        async def down() -> None:
            if self.daemon.cycle is not None:
                self.daemon.cycle.cancel()
            self.server.should_exit = True
            await self.serving
            await self.engine.close()

        self.run(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def host() -> Iterator[Host]:
    with Host() as h:
        yield h


def _control(host: Host) -> ThreadedControl:
    return ThreadedControl(ControlClient(host.url))


RALPH = BenchPlan(workload="ralph", loops=2, iterations=3, gen=Generation(max_tokens=8))


async def _ralph(target: Target) -> BenchReport:
    report = new_report(target, RALPH)
    await run_bench(target, RALPH, report, lambda _: None)
    return report


def _quiet(_: str) -> None:
    pass


async def test_each_variant_is_measured_then_the_original_overrides_return(host: Host) -> None:
    report = CompareReport(model="m")
    variants = [
        parse_variant(v)
        for v in ("on:enable_prefix_caching=true", "off:enable_prefix_caching=false")
    ]
    await run_compare(_control(host), "m", variants, _ralph, report, progress=_quiet)
    assert [v.status for v in report.variants] == ["ok", "ok"]
    on, off = (v.report.ralph for v in report.variants if v.report)
    assert on is not None and off is not None and on.cache and off.cache
    assert on.iterations[-1].cache and (on.iterations[-1].cache.hit_rate or 0) > 0.9
    assert off.cache.hits == 0 and off.cache.hit_rate is None
    assert host.daemon.restarts == [
        {"max_num_seqs": 4, "enable_prefix_caching": True},
        {"max_num_seqs": 4, "enable_prefix_caching": False},
        ORIGINAL,
    ]
    assert report.restored and report.original_overrides == ORIGINAL
    assert host.daemon.status["state"] == "ready"
    assert host.daemon.status["overrides"] == ORIGINAL


async def test_env_overrides_are_restored_with_their_values(host: Host) -> None:
    original = {"env": {"HF_TOKEN": "hf_secret"}}
    host.daemon.status["overrides"] = dict(original)
    report = CompareReport(model="m")
    await run_compare(
        _control(host), "m", [parse_variant("a:max_num_seqs=2")], _ralph, report, progress=_quiet
    )
    assert host.daemon.restarts == [{**original, "max_num_seqs": 2}, original]
    assert report.restored and host.daemon.status["overrides"] == original


async def test_an_exception_while_measuring_still_restores(host: Host) -> None:
    calls = []

    async def measure(target: Target) -> BenchReport:
        calls.append(target)
        if len(calls) == 2:
            raise RuntimeError("measurement broke")
        return await _ralph(target)

    report = CompareReport(model="m")
    variants = [Variant("a", {"max_num_seqs": 1}), Variant("b", {"max_num_seqs": 2})]
    with pytest.raises(RuntimeError, match="measurement broke"):
        await run_compare(_control(host), "m", variants, measure, report, progress=_quiet)
    assert [v.status for v in report.variants] == ["ok", "interrupted"]
    assert host.daemon.restarts[-1] == ORIGINAL
    assert report.restored and host.daemon.status["state"] == "ready"
    assert host.daemon.status["overrides"] == ORIGINAL
    assert calls[0].base_url == host.engine.url and calls[0].served_model == "tiny"


async def test_cancellation_while_measuring_still_restores(host: Host) -> None:
    measuring = asyncio.Event()

    async def measure(target: Target) -> BenchReport:
        measuring.set()
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    report = CompareReport(model="m")
    task = asyncio.create_task(
        run_compare(
            _control(host),
            "m",
            [Variant("a", {"max_num_seqs": 1})],
            measure,
            report,
            progress=_quiet,
        )
    )
    await asyncio.wait_for(measuring.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert host.daemon.restarts == [{"max_num_seqs": 1}, ORIGINAL]
    assert report.restored and host.daemon.status["overrides"] == ORIGINAL


async def test_failed_and_rejected_variants_are_reported_and_the_rest_still_run(host: Host) -> None:
    report = CompareReport(model="m")
    variants = [
        Variant("broken", {"fail_me": True}),
        Variant("unknown", {"bogus_setting": 1}),
        Variant("fine", {}),
    ]
    await run_compare(
        _control(host), "m", variants, _ralph, report, ready_timeout_s=10, progress=_quiet
    )
    broken, unknown, fine = report.variants
    assert broken.status == "failed" and "exited with code 1" in (broken.reason or "")
    assert unknown.status == "failed" and "422" in (unknown.reason or "")
    assert fine.status == "ok" and fine.report is not None
    assert report.restored and host.daemon.status["state"] == "ready"


async def test_a_ready_answer_from_the_old_engine_is_not_taken_for_the_new_one(host: Host) -> None:
    old_pid = host.daemon.status["pid"]
    status = await restart_and_wait(_control(host), "m", {"max_num_seqs": 8}, 10, poll_s=0.01)
    assert status["state"] == "ready" and status["pid"] != old_pid
    assert status["overrides"] == {"max_num_seqs": 8}
    with pytest.raises(NotReady, match=r"m is starting after 0\.5 s, not ready"):
        await restart_and_wait(_control(host), "m", {"start_s": 60}, 0.5, poll_s=0.01)


async def test_a_model_that_was_stopped_is_stopped_again(host: Host) -> None:
    host.daemon.status.update(state="stopped", desired="stopped", pid=None)
    report = CompareReport(model="m")
    await run_compare(_control(host), "m", [Variant("a", {})], _ralph, report, progress=_quiet)
    assert report.restored and host.daemon.status["state"] == "stopped"


def test_variant_and_sweep_syntax() -> None:
    assert parse_variant("prefix=on:enable_prefix_caching=true") == Variant(
        "prefix=on", {"enable_prefix_caching": True}
    )
    assert parse_variant("gpu_memory_utilization=0.5,max_num_seqs=8") == Variant(
        "gpu_memory_utilization=0.5,max_num_seqs=8",
        {"gpu_memory_utilization": 0.5, "max_num_seqs": 8},
    )
    assert parse_variant("baseline:") == Variant("baseline", {})
    assert parse_variant('x:extra_args=["--a","b"],dtype=half') == Variant(
        "x", {"extra_args": ["--a", "b"], "dtype": "half"}
    )
    assert parse_variant("served_model_name=a:b").settings == {"served_model_name": "a:b"}
    with pytest.raises(VariantError, match="not KEY=VALUE"):
        parse_variant("label:oops")
    assert [v.label for v in sweep_variants(["gpu_memory_utilization=0.5,0.9"])] == [
        "gpu_memory_utilization=0.5",
        "gpu_memory_utilization=0.9",
    ]
    grid = sweep_variants(["enable_prefix_caching=true,false", "dtype=half,bfloat16"])
    assert [v.settings for v in grid] == [
        {"enable_prefix_caching": True, "dtype": "half"},
        {"enable_prefix_caching": True, "dtype": "bfloat16"},
        {"enable_prefix_caching": False, "dtype": "half"},
        {"enable_prefix_caching": False, "dtype": "bfloat16"},
    ]
    with pytest.raises(VariantError, match="--sweep"):
        sweep_variants(["max_num_seqs"])


def test_compare_command_prints_writes_json_and_plot(
    host: Host, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["compare", "--url", host.url, "--model", "m", "--variant", "a:max_num_seqs=2"]
    argv += ["--variant", "base:", "--concurrency", "1,2", "--requests", "4", "--max-tokens", "4"]
    rc = main([*argv, "--json", str(out), "--plot", str(png), "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "VARIANT" in text and "restored m to overrides" in text
    data = json.loads(out.read_text())
    assert [v["label"] for v in data["variants"]] == ["a", "base"]
    assert [lv["concurrency"] for lv in data["variants"][0]["report"]["levels"]] == [1, 2]
    assert data["restored"] is True and data["original_overrides"] == ORIGINAL
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert host.daemon.restarts == [{"max_num_seqs": 2}, ORIGINAL, ORIGINAL]


def test_bench_command_resolves_the_model_through_the_daemon(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--url", host.url, "--model", "m", "--workload", "random", "--input-len", "30"]
    rc = main([*argv, "--concurrency", "2", "--requests", "4", "--max-tokens", "5", "--json", "-"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == host.engine.url and data["model"] == "tiny"
    level = data["levels"][0]
    assert level["completed"] == 4 and level["output_tokens"] == 20
    assert data["settings"]["ignore_eos"] is True
    host.daemon.status.update(state="failed", reason="out of memory")
    assert main(["bench", "--url", host.url, "--model", "m", "-q"]) == 1
    assert "model m is failed: out of memory" in capsys.readouterr().err


def test_bench_command_reports_errors_by_kind(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    host.engine.config = dataclasses.replace(host.engine.config, fail_every=2)
    argv = ["bench", "--target", host.engine.url, "--concurrency", "1", "--requests", "4", "-q"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "concurrency 1: http_500 x2" in text and "injected failure" in text


def test_sigterm_during_compare_restores_the_original_overrides(host: Host) -> None:
    argv = [sys.executable, "-m", "orchestrator", "compare", "--url", host.url, "--model", "m"]
    argv += ["--variant", "a:max_num_seqs=2", "--concurrency", "1", "--duration", "60", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while host.engine.generation_requests < 3:  # the variant is being measured
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert host.daemon.restarts == [{"max_num_seqs": 2}, ORIGINAL]
    assert host.daemon.status["state"] == "ready" and host.daemon.status["overrides"] == ORIGINAL
    assert "restored m to overrides" in out and "interrupted" in out
