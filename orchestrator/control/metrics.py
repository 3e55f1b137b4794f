"""One Prometheus scrape target for the host: models, slices, GPUs and engine vLLM metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, Protocol

from orchestrator.control.standby_view import metric_lines as standby_lines
from orchestrator.engine.lifecycle import Engine
from orchestrator.engine.probe import http_get
from orchestrator.engine.states import State
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
_SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\S+)?$")


_SAMPLE_UP_HEADER = (
    "# HELP mig_orchestrator_gpu_sample_up Whether NVML answered for this scrape.",
    "# TYPE mig_orchestrator_gpu_sample_up gauge",
)


class GpuSampler(Protocol):
    def sample(self) -> list[Any]: ...


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kv: object) -> str:
    return ",".join(f'{k}="{_esc(str(v))}"' for k, v in kv.items() if v is not None)


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def relabel(text: str, extra: str) -> tuple[dict[str, list[str]], list[str]]:
    """Keep the chosen engine series and add our labels; returns (HELP/TYPE by family, samples)."""
    meta: dict[str, list[str]] = {}
    samples: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(maxsplit=3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and parts[2] in ENGINE_METRICS:
                meta.setdefault(parts[2], []).append(line)
            continue
        m = _SAMPLE.match(line)
        if not m or _family(m.group(1)) not in ENGINE_METRICS:
            continue
        name, labels, value = m.group(1), m.group(2), m.group(3)
        inner = labels[1:-1] if labels else ""
        joined = f"{extra},{inner}" if inner else extra
        samples.append(f"{name}{{{joined}}} {value}")
    return meta, samples


class MetricsCollector:
    def __init__(
        self, supervisor: Supervisor, sampler: GpuSampler | None, timeout_s: float | None = None
    ) -> None:
        self.supervisor = supervisor
        self.sampler = sampler
        self.timeout_s = timeout_s or supervisor.cfg.orchestrator.metrics_timeout_s

    async def _scrape(self, e: Engine) -> str | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                code, body = await http_get(e.spec.probe_host, e.spec.port, "/metrics", body=True)
        except (OSError, ValueError):  # TimeoutError is an OSError
            return None
        return body.decode(errors="replace") if code == "200" else None

    async def render(self) -> str:
        started = time.perf_counter()
        sup = self.supervisor
        engines = sorted(sup.engines.items())
        live = [(n, e) for n, e in engines if e.state in (State.READY, State.UNHEALTHY)]
        # Engines are scraped concurrently with a bound, so a hung one costs one timeout at most.
        texts = await asyncio.gather(*(self._scrape(e) for _, e in live))
        gpu = await self._gpu_lines()
        out: list[str] = []
        self._model_lines(out, engines)
        out += standby_lines(engines, self._model_labels)
        out += gpu
        meta: dict[str, list[str]] = {}
        samples: list[str] = []
        up = []
        for (name, e), text in zip(live, texts, strict=True):
            labels = self._model_labels(name, e)
            up.append(f"mig_orchestrator_engine_scrape_up{{{labels}}} {int(text is not None)}")
            if text is None:
                continue
            m, s = relabel(text, labels)
            for fam, lines in m.items():
                meta.setdefault(fam, lines)
            samples += s
        out += [
            "# HELP mig_orchestrator_engine_scrape_up Whether the engine's /metrics answered.",
            "# TYPE mig_orchestrator_engine_scrape_up gauge",
            *up,
        ]
        # One pass to sort samples into families: a pass per family cost 13 x 56 engines' samples.
        by_family: dict[str, list[str]] = {}
        for sample in samples:
            by_family.setdefault(_family(sample.split("{", 1)[0]), []).append(sample)
        for fam in ENGINE_METRICS:
            if fam in by_family:
                out += meta.get(fam, []) + by_family[fam]
        out.append("# HELP mig_orchestrator_scrape_duration_seconds Time to build this page.")
        out.append("# TYPE mig_orchestrator_scrape_duration_seconds gauge")
        out.append(f"mig_orchestrator_scrape_duration_seconds {time.perf_counter() - started:.6f}")
        return "\n".join(out) + "\n"

    def _model_labels(self, name: str, e: Engine) -> str:
        s = e.spec.slice
        student = (
            self.supervisor.cfg.models[name].student if name in self.supervisor.cfg.models else None
        )
        return _labels(
            model=name,
            student=student or name,
            slice=s.uuid if s else "",
            profile=(s.profile or "whole") if s else "",
            gpu=s.gpu_index if s else "",
        )

    def _model_lines(self, out: list[str], engines: Iterable[tuple[str, Engine]]) -> None:
        engines = list(engines)
        gauges = {
            "mig_orchestrator_model_state": "1 for the state the model is in.",
            "mig_orchestrator_model_restarts_total": "Automatic restarts since the daemon started.",
            "mig_orchestrator_model_uptime_seconds": "Seconds since the engine process started.",
            "mig_orchestrator_model_ready": "1 when the engine answers /health.",
        }
        rows: dict[str, list[str]] = {k: [] for k in gauges}
        for name, e in engines:
            lab = self._model_labels(name, e)
            for st in State:
                rows["mig_orchestrator_model_state"].append(
                    f'mig_orchestrator_model_state{{{lab},state="{st.value}"}} {int(e.state is st)}'
                )
            rows["mig_orchestrator_model_restarts_total"].append(
                f"mig_orchestrator_model_restarts_total{{{lab}}} {e.restarts}"
            )
            rows["mig_orchestrator_model_uptime_seconds"].append(
                f"mig_orchestrator_model_uptime_seconds{{{lab}}} {e.uptime() or 0:.3f}"
            )
            rows["mig_orchestrator_model_ready"].append(
                f"mig_orchestrator_model_ready{{{lab}}} {int(e.state is State.READY)}"
            )
        for metric, help_text in gauges.items():
            kind = "counter" if metric.endswith("_total") else "gauge"
            out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}", *rows[metric]]

    async def _gpu_lines(self) -> list[str]:
        if self.sampler is None:
            return []
        try:
            samples = await asyncio.to_thread(self.sampler.sample)
        except Exception as e:  # telemetry must never break the scrape
            log.warning("GPU sampling failed: %s", e)
            return [*_SAMPLE_UP_HEADER, "mig_orchestrator_gpu_sample_up 0"]
        assigned: dict[str, list[str]] = {}
        for name, engine in self.supervisor.engines.items():
            if engine.spec.slice is not None:
                assigned.setdefault(engine.spec.slice.uuid, []).append(name)
        series: dict[str, list[str]] = {}
        for g in samples:
            fields = dataclasses.asdict(g)
            base = _labels(
                gpu=fields.get("index"), uuid=fields.get("uuid"), name=fields.get("name")
            )
            for key, value in fields.items():
                if key in ("index",) or isinstance(value, bool):
                    continue
                if isinstance(value, int | float):
                    series.setdefault(f"mig_orchestrator_gpu_{key}", []).append(
                        f"mig_orchestrator_gpu_{key}{{{base}}} {value}"
                    )
                elif isinstance(value, list | tuple):
                    for item in value:
                        if not isinstance(item, dict):
                            continue
                        uuid = item.get("uuid")
                        lab = _labels(
                            gpu=fields.get("index"),
                            slice=uuid,
                            profile=item.get("profile") or "whole",
                            model=",".join(assigned.get(str(uuid), [])),
                        )
                        for k, v in item.items():
                            if (
                                isinstance(v, int | float)
                                and not isinstance(v, bool)
                                and k not in ("gi_id", "ci_id")
                            ):
                                series.setdefault(f"mig_orchestrator_slice_{k}", []).append(
                                    f"mig_orchestrator_slice_{k}{{{lab}}} {v}"
                                )
        out = [*_SAMPLE_UP_HEADER, "mig_orchestrator_gpu_sample_up 1"]
        for metric, lines in sorted(series.items()):
            out += [f"# TYPE {metric} gauge", *lines]
        return out
