"""The control plane's /metrics: one scrape target for models, GPUs, slices and engine series."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from orchestrator import prom_text
from orchestrator.config import DEFAULT_LISTEN, OrchestratorSettings
from orchestrator.gpu import topology_file
from orchestrator.http.metrics import ENGINE_METRICS, engine_series
from orchestrator.units import GIB
from tests.daemon_harness import REPO, Daemon, engine_pids, free_ports, wait_until, write_secret

pytestmark = pytest.mark.slow

TOKEN = "metrics-admin-token"
METRICS_TIMEOUT_S = 2.0
DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"
PROMETHEUS = REPO / "deploy" / "prometheus.yml"
# Series real vLLM 0.33 exports (see /work/shared/reference/vllm.md section 3) that the stand-in
# does not, and the labels only they carry; the daemon passes them through (checked below with
# relabel), so the Grafana dashboard may use them. None today: the stand-in has the TTFT histogram.
NOT_FROM_STANDIN: dict[str, str] = {}
NOT_FROM_STANDIN_LABELS: set[str] = set()
# Names no other test uses: test teardowns kill leftover engines by served name, machine-wide.
A, B, HUNG = "metrics-a", "metrics-b", "metrics-hung"
PROMPT = " ".join(f"w{i}" for i in range(40))  # 40 tokens: two full 16-token blocks to reuse


@dataclass
class Host:
    daemon: Daemon
    ports: dict[str, int]
    events: Path  # the hung engine's state file

    def scrape(self, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.daemon.url}/metrics", headers=headers, timeout=30)

    def parse(self) -> prom_text.Exposition:
        r = self.scrape()
        assert r.status_code == 200, r.text
        return prom_text.parse(r.text)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("metrics")
    token_file = write_secret(root / "admin.token", TOKEN)
    events = root / "hung.events.jsonl"
    names = (A, B, HUNG)
    ports = dict(zip(names, free_ports(len(names)), strict=True))

    def model(name: str, **kw: Any) -> dict[str, Any]:
        return {"model": "stand-in", "port": ports[name], "host": "127.0.0.1", **kw}

    d = Daemon(
        root,
        {
            A: model(A, student="student-a", profile="3g.40gb"),
            B: model(B, student="student-b", profile="2g.20gb"),
            # Stops answering anything (its /metrics too) soon after it is ready.
            HUNG: model(
                HUNG,
                student="student-c",
                env={
                    "STANDIN_HANG_AFTER": "1.0",
                    "STANDIN_HANG_MODE": "hang",
                    "STANDIN_STATE_FILE": str(events),
                },
            ),
        },
        orchestrator={
            "admin_token_file": str(token_file),
            "metrics_timeout_s": METRICS_TIMEOUT_S,
            # Liveness probes would restart the hung engine: keep it "ready" for the whole module.
            "health_interval_s": 300.0,
            "health_timeout_s": 5.0,
        },
        token=TOKEN,
    )
    d.start(wait_ready=names)
    yield Host(d, ports, events)
    try:
        d.terminate()
    finally:
        for name in names:
            for pid in engine_pids(name):
                os.kill(pid, signal.SIGKILL)


def wait_hung(host: Host) -> None:
    def hung() -> bool:
        lines = host.events.read_text().splitlines() if host.events.exists() else []
        return any(json.loads(line)["event"] == "hang" for line in lines)

    wait_until(hung, 15, "the engine to hang")


def test_needs_the_admin_token(host: Host) -> None:
    assert host.scrape(token=None).status_code == 401
    assert host.scrape(token="wrong").status_code == 401
    assert host.scrape().status_code == 200


def test_model_series_carry_model_student_slice(host: Host) -> None:
    expo = host.parse()
    d = host.daemon
    for name, student in ((A, "student-a"), (B, "student-b"), (HUNG, "student-c")):
        sl = d.status(name)["slice"]
        want = {
            "model": name,
            "student": student,
            "slice": sl["uuid"],
            "profile": sl["profile"],
            "gpu": str(sl["gpu_index"]),
        }
        states = expo.find("mig_orchestrator_model_state", want)
        assert {s.labels["state"] for s in states} >= {"ready", "stopped", "failed"}
        assert [s.labels["state"] for s in states if s.value == 1] == ["ready"]
        for metric in (
            "mig_orchestrator_model_restarts_total",
            "mig_orchestrator_model_uptime_seconds",
            "mig_orchestrator_model_ready",
            "mig_orchestrator_engine_scrape_up",
        ):
            assert len(expo.find(metric, want)) == 1, (metric, want)
        assert expo.total("mig_orchestrator_model_ready", want) == 1
    assert expo.families["mig_orchestrator_model_restarts_total"].type == "counter"
    assert expo.families["mig_orchestrator_model_state"].type == "gauge"


def test_gpu_and_slice_series(host: Host) -> None:
    d = host.daemon
    slices = d.get("/api/v1/slices").json()
    a_slice = d.status(A)["slice"]["uuid"]
    held = 7 * GIB
    topology_file.hold_memory(d.topology, a_slice, held)
    try:
        expo = host.parse()
    finally:
        topology_file.release_memory(d.topology, a_slice)
    for s in slices:
        want = {"slice": s["uuid"], "gpu": str(s["gpu_index"]), "profile": s["profile"]}
        (total,) = expo.find("mig_orchestrator_slice_memory_total_bytes", want)
        (used,) = expo.find("mig_orchestrator_slice_memory_used_bytes", want)
        assert total.value == s["memory_total_bytes"]
        assert used.value == (held if s["uuid"] == a_slice else 0)
        assert used.labels["model"] == ",".join(s["models"])
    assert {s.labels["gpu"] for s in expo.find("mig_orchestrator_gpu_power_w")} == {
        str(s["gpu_index"]) for s in slices
    }
    for metric in ("temperature_c", "memory_used_bytes", "memory_total_bytes"):
        assert expo.find(f"mig_orchestrator_gpu_{metric}"), metric


def test_engine_series_relabelled_and_prefix_hits_counted(host: Host) -> None:
    url = f"http://127.0.0.1:{host.ports[A]}"
    for _ in range(3):
        r = httpx.post(
            f"{url}/v1/completions",
            json={"model": A, "prompt": PROMPT, "max_tokens": 4},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    expo = host.parse()
    own = prom_text.parse(httpx.get(f"{url}/metrics", timeout=10).text)
    labels = {"model": A, "student": "student-a", "profile": "3g.40gb"}
    labels["slice"] = host.daemon.status(A)["slice"]["uuid"]
    queries = expo.total("vllm:prefix_cache_queries_total", labels)
    hits = expo.total("vllm:prefix_cache_hits_total", labels)
    assert queries == 3 * len(PROMPT.split())
    assert hits is not None and 0 < hits < queries
    # Relabelling keeps the engine's own labels and values.
    assert hits == own.total("vllm:prefix_cache_hits_total", {"model_name": A})
    for s in expo.find("vllm:prefix_cache_hits_total", {"model": A}):
        assert s.labels["model_name"] == A and s.labels["gpu"] == "0"
    assert expo.total("vllm:prefix_cache_hits_total", {"model": B}) == 0
    assert expo.families["vllm:prefix_cache_hits"].type == "counter"
    for gauge in ("vllm:kv_cache_usage_perc", "vllm:num_requests_running"):
        assert expo.find(gauge, {"model": B, "student": "student-b"}), gauge


def test_hung_engine_does_not_break_the_scrape(host: Host) -> None:
    wait_hung(host)
    assert host.daemon.status(HUNG)["state"] == "ready"  # so the scrape does try it
    result: dict[str, Any] = {}

    def scrape() -> None:
        t0 = time.monotonic()
        result["response"] = host.scrape()
        result["took"] = time.monotonic() - t0
        result["done"] = time.monotonic()

    worker = threading.Thread(target=scrape)
    worker.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    health = httpx.get(f"{host.daemon.url}/healthz", timeout=10)
    healthz_took, healthz_done = time.monotonic() - t0, time.monotonic()
    worker.join(30)
    assert health.status_code == 200
    # /healthz answered while the scrape still waited on the hung engine, and quickly.
    assert healthz_done < result["done"], result
    assert healthz_took < 1.0, healthz_took
    assert METRICS_TIMEOUT_S - 0.5 < result["took"] < METRICS_TIMEOUT_S + 2.0, result["took"]
    r = result["response"]
    assert r.status_code == 200, r.text
    expo = prom_text.parse(r.text)
    assert expo.total("mig_orchestrator_engine_scrape_up", {"model": HUNG}) == 0
    assert expo.total("mig_orchestrator_engine_scrape_up", {"model": A}) == 1
    assert expo.total("mig_orchestrator_engine_scrape_up", {"model": B}) == 1
    assert not expo.find("vllm:num_requests_running", {"model": HUNG})
    assert expo.find("vllm:num_requests_running", {"model": A})


def referenced_names(text: str) -> set[str]:
    """Metric names in PromQL or config text: the two prefixes this target exports."""
    return set(re.findall(r"(?<![\w:])(vllm:[\w:]+|mig_orchestrator_\w+)", text))


def referenced_labels(text: str) -> set[str]:
    """Label names used in by (...), {label=...} matchers and {{label}} legends."""
    labels: set[str] = set()
    for group in re.findall(r"\bby\s*\(([^)]*)\)", text):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    labels |= set(re.findall(r"[{,]\s*(\w+)\s*(?:=~|!~|!=|=)\s*\\?\"", text))
    labels |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))
    return labels


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    queries += [t.get("legendFormat", "") for p in dash["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dash["templating"]["list"]]
    return queries


def test_dashboard_and_prometheus_config_use_exported_names(host: Host) -> None:
    expo = host.parse()
    exported = {s.name for s in expo.samples()}
    labels = {k for s in expo.samples() for k in s.labels}
    texts = {
        DASHBOARD.name: "\n".join(dashboard_queries()),
        PROMETHEUS.name: PROMETHEUS.read_text(),
    }
    for file, text in texts.items():
        names = referenced_names(text)
        assert names, file
        missing = names - exported - NOT_FROM_STANDIN.keys()
        up = [(s.labels["model"], s.value) for s in expo.find("mig_orchestrator_engine_scrape_up")]
        assert not missing, f"{file} uses metrics not exported: {sorted(missing)} (scrape up: {up})"
        unknown = referenced_labels(text) - labels - NOT_FROM_STANDIN_LABELS
        assert not unknown, f"{file} uses labels no series has: {sorted(unknown)}"
    # The exceptions stay honest: still absent from the stand-in, still passed through for vLLM.
    for name in NOT_FROM_STANDIN:
        assert name not in exported, f"the stand-in exports {name} now: drop it from the list"
        family = name.removesuffix("_bucket")
        assert family in ENGINE_METRICS
        engine_text = f'{name}{{engine="0",model_name="m",le="0.1"}} 3.0\n'
        series = engine_series("m", {"model": "m"}, engine_text)
        assert series is not None
        assert series[family].samples == [
            f'{name}{{model="m",engine="0",model_name="m",le="0.1"}} 3.0'
        ]


def test_dashboard_is_importable_and_covers_every_state(host: Host) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"]), p["title"]
    (variable,) = dash["templating"]["list"]
    assert variable["name"] == "model"
    # Every series with a model label is filtered by the variable (the GPU series have none).
    expo = host.parse()
    per_model = {s.name for s in expo.samples() if "model" in s.labels} | NOT_FROM_STANDIN.keys()
    for p in panels:
        for t in p["targets"]:
            for name in referenced_names(t["expr"]) & per_model:
                assert name + '{model=~"$model"' in t["expr"], (p["title"], name)
    # The state timeline's value mapping names every state the daemon exports, one number each.
    exported = {s.labels["state"] for s in expo.find("mig_orchestrator_model_state")}
    (timeline,) = [p for p in panels if p["type"] == "state-timeline"]
    (mapping,) = timeline["fieldConfig"]["defaults"]["mappings"]
    assert {m["text"] for m in mapping["options"].values()} == exported
    expr = timeline["targets"][0]["expr"]
    for number, m in mapping["options"].items():
        if number != "0":  # the state every other term leaves at 0
            weight = "" if number == "1" else f" * {number}"
            assert f'state="{m["text"]}"}}){weight}' in expr, m["text"]


def test_prometheus_config_scrapes_the_daemon() -> None:
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = cfg["scrape_configs"]
    assert job["scrape_interval"] == "5s" and job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": [DEFAULT_LISTEN]}]
    assert job["authorization"]["credentials_file"] == "/etc/mig-orchestrator/admin.token"
    # A scrape must fit in its interval even when it waits out the daemon's engine timeout.
    timeout_s = float(job["scrape_timeout"].removesuffix("s"))
    assert OrchestratorSettings().metrics_timeout_s < timeout_s < 5.0
