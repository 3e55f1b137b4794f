"""One Prometheus scrape target for the host: models, slices, GPUs and engine vLLM metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Protocol

from orchestrator import prom_text
from orchestrator.engine.lifecycle import Engine, EngineStatus
from orchestrator.engine.probe import http_get
from orchestrator.engine.states import StandbyState, State
from orchestrator.gpu.nvml import GpuSample, SliceSample
from orchestrator.prom_text import Family, Sample, TextFamily
from orchestrator.supervisor.supervisor import Supervisor

log = logging.getLogger(__name__)

# The engine series the course reads; the rest of vLLM's output stays on the engine's own port.
ENGINE_METRICS = (
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:prompt_tokens_cached",
    "vllm:kv_cache_usage_perc",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_preemptions",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
)
HELP = {
    "mig_orchestrator_gpu_sm_util_pct": "SM utilisation in percent (none while MIG is on).",
    "mig_orchestrator_gpu_mem_util_pct": "Memory utilisation in percent (none while MIG is on).",
    "mig_orchestrator_gpu_power_w": "Power draw in watts.",
    "mig_orchestrator_gpu_temperature_c": "GPU temperature in degrees Celsius.",
    "mig_orchestrator_gpu_sm_clock_mhz": "SM clock in MHz.",
    "mig_orchestrator_gpu_mem_clock_mhz": "Memory clock in MHz.",
    "mig_orchestrator_gpu_memory_used_bytes": "Memory used on the GPU, its MIG slices included.",
    "mig_orchestrator_gpu_memory_total_bytes": "Memory of the GPU.",
    "mig_orchestrator_slice_memory_used_bytes": "Memory used on the slice.",
    "mig_orchestrator_slice_memory_total_bytes": "Memory of the slice (a MIG device or a GPU).",
}


class GpuSampler(Protocol):
    def sample(self) -> list[GpuSample]: ...


Rows = Iterable[tuple[Mapping[str, str], float]]


def family(name: str, help_text: str, rows: Rows, kind: str = "gauge") -> Family:
    """A family of one sample per (labels, value) row."""
    return Family(name, kind, help_text, [Sample(name, labels, v) for labels, v in rows])


def engine_series(
    name: str, labels: Mapping[str, str], text: str | None
) -> dict[str, TextFamily] | None:
    """The chosen families of one engine's page with `labels` added; None without a good page."""
    if text is None:
        return None
    try:
        return prom_text.relabel(text, ENGINE_METRICS, labels)
    except prom_text.PromTextError as e:
        log.warning("%s: its /metrics page is not Prometheus text, left out: %s", name, e)
        return None


async def scrape(e: Engine, timeout_s: float) -> str | None:
    """The engine's own /metrics page; None when it does not answer 200 in time."""
    try:
        async with asyncio.timeout(timeout_s):
            code, body = await http_get(e.spec.probe_host, e.spec.port, "/metrics", body=True)
    except (OSError, ValueError):  # TimeoutError is an OSError
        return None
    return body.decode(errors="replace") if code == "200" else None


class MetricsCollector:
    def __init__(
        self, supervisor: Supervisor, sampler: GpuSampler | None, timeout_s: float | None = None
    ) -> None:
        self.supervisor = supervisor
        self.sampler = sampler
        self.timeout_s = timeout_s or supervisor.cfg.orchestrator.metrics_timeout_s

    async def _scrape(self, e: Engine) -> str | None:
        return await scrape(e, self.timeout_s)

    async def render(self) -> str:
        started = time.perf_counter()
        engines = sorted(self.supervisor.engines.items())
        live = [(n, e) for n, e in engines if e.state in (State.READY, State.UNHEALTHY)]
        # Engines are scraped concurrently with a bound, so a hung one costs one timeout at most.
        texts = await asyncio.gather(*(self._scrape(e) for _, e in live))
        families: list[Family | TextFamily] = [*self._model_families(engines)]
        families += await self._gpu_families()
        pages = []
        for (name, e), text in zip(live, texts, strict=True):
            labels = self._model_labels(name, e)
            pages.append((labels, engine_series(name, labels, text)))
        families.append(
            family(
                "mig_orchestrator_engine_scrape_up",
                "Whether the engine's /metrics answered.",
                ((labels, int(page is not None)) for labels, page in pages),
            )
        )
        families += prom_text.merge(page for _, page in pages if page is not None)
        took = time.perf_counter() - started
        families.append(
            family(
                "mig_orchestrator_scrape_duration_seconds",
                "Time to build this page.",
                [({}, round(took, 6))],
            )
        )
        return prom_text.render(families)

    def _model_labels(self, name: str, e: Engine) -> dict[str, str]:
        s = e.spec.slice
        m = self.supervisor.cfg.models.get(name)
        return {
            "model": name,
            "student": (m.student if m else None) or name,
            "slice": s.uuid if s else "",
            "profile": (s.profile or "whole") if s else "",
            "gpu": str(s.gpu_index) if s else "",
        }

    def _model_families(self, engines: list[tuple[str, Engine]]) -> list[Family]:
        labelled = [(self._model_labels(name, e), e.status()) for name, e in engines]
        states = (
            ({**lab, "state": st.value}, int(e.state is st)) for lab, e in labelled for st in State
        )
        return [
            family("mig_orchestrator_model_state", "1 for the state the model is in.", states),
            family(
                "mig_orchestrator_model_restarts_total",
                "Automatic restarts since the daemon started.",
                ((lab, e.restarts) for lab, e in labelled),
                kind="counter",
            ),
            family(
                "mig_orchestrator_model_uptime_seconds",
                "Seconds since the engine process started.",
                ((lab, round(e.uptime_s or 0, 3)) for lab, e in labelled),
            ),
            family(
                "mig_orchestrator_model_ready",
                "1 when the engine answers /health.",
                ((lab, int(e.state is State.READY)) for lab, e in labelled),
            ),
            *standby_families(labelled),
        ]

    async def _gpu_families(self) -> list[Family]:
        if self.sampler is None:
            return []
        up_help = "Whether NVML answered for this scrape."
        try:
            samples = await asyncio.to_thread(self.sampler.sample)
        except Exception as e:  # telemetry must never break the scrape
            log.warning("GPU sampling failed: %s", e)
            return [family("mig_orchestrator_gpu_sample_up", up_help, [({}, 0)])]
        return [
            family("mig_orchestrator_gpu_sample_up", up_help, [({}, 1)]),
            *gpu_families(samples, self._models_by_slice()),
        ]

    def _models_by_slice(self) -> dict[str, list[str]]:
        assigned: dict[str, list[str]] = {}
        for name, engine in self.supervisor.engines.items():
            if engine.spec.slice is not None:
                assigned.setdefault(engine.spec.slice.uuid, []).append(name)
        return assigned


def standby_families(labelled: list[tuple[dict[str, str], EngineStatus]]) -> list[Family]:
    """The standby's state and memory, and how long the last start took, per model."""
    standbys = [(lab, e.standby) for lab, e in labelled]
    starts = [(lab, e.last_start) for lab, e in labelled]
    return [
        family(
            "mig_orchestrator_standby_state",
            "1 for the state the model's standby is in.",
            (
                ({**lab, "state": s.value}, int(st.state is s))
                for lab, st in standbys
                for s in StandbyState
            ),
        ),
        family(
            "mig_orchestrator_standby_rss_bytes",
            "Host memory held by the model's standby.",
            ((lab, st.rss_bytes) for lab, st in standbys if st.rss_bytes is not None),
        ),
        family(
            "mig_orchestrator_model_last_start_seconds",
            "Launch (or standby trigger) to ready.",
            (
                ({**lab, "via": last.via}, round(last.launch_to_ready_s, 3))
                for lab, last in starts
                if last is not None and last.launch_to_ready_s is not None
            ),
        ),
    ]


def _gpu_values(g: GpuSample) -> dict[str, float | None]:
    """One GPU's series by name; None where NVML does not report the value."""
    return {
        "sm_util_pct": g.sm_util_pct,
        "mem_util_pct": g.mem_util_pct,
        "power_w": g.power_w,
        "temperature_c": g.temperature_c,
        "sm_clock_mhz": g.sm_clock_mhz,
        "mem_clock_mhz": g.mem_clock_mhz,
        "memory_used_bytes": g.memory_used_bytes,
        "memory_total_bytes": g.memory_total_bytes,
    }


def _slice_values(s: SliceSample) -> dict[str, float]:
    return {"memory_used_bytes": s.memory_used_bytes, "memory_total_bytes": s.memory_total_bytes}


def gpu_families(samples: list[GpuSample], models_on: Mapping[str, list[str]]) -> list[Family]:
    """Per-GPU telemetry and per-slice memory; slice series name the models placed there."""
    rows: dict[str, list[tuple[Mapping[str, str], float]]] = {}
    for g in samples:
        labels = {"gpu": str(g.index), "uuid": g.uuid, "name": g.name}
        for key, value in _gpu_values(g).items():
            if value is not None:
                rows.setdefault(f"mig_orchestrator_gpu_{key}", []).append((labels, value))
        for s in g.slices:
            labels = {
                "gpu": str(g.index),
                "slice": s.uuid,
                "profile": s.profile or "whole",
                "model": ",".join(models_on.get(s.uuid, [])),
            }
            for key, value in _slice_values(s).items():
                rows.setdefault(f"mig_orchestrator_slice_{key}", []).append((labels, value))
    return [family(name, HELP[name], series) for name, series in rows.items()]
