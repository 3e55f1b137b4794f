"""A /metrics page shaped like vLLM 0.33's under prometheus_client's text format 0.0.4.

The families, label sets and bucket counts follow /work/shared/reference/vllm.md section 3 and
prometheus_client's writer: counters are declared with their `_total` name, and every counter and
histogram is followed by its `_created` gauge. About 400 lines, as a real engine's page.
"""

from __future__ import annotations

LATENCY_LE = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
TOKENS_LE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
PYTHON = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
python_gc_objects_collected_total{generation="1"} 2345.0
python_gc_objects_collected_total{generation="2"} 345.0
# HELP python_gc_objects_uncollectable_total Uncollectable objects found during GC
# TYPE python_gc_objects_uncollectable_total counter
python_gc_objects_uncollectable_total{generation="0"} 0.0
python_gc_objects_uncollectable_total{generation="1"} 0.0
python_gc_objects_uncollectable_total{generation="2"} 0.0
# HELP python_gc_collections_total Number of times this generation was collected
# TYPE python_gc_collections_total counter
python_gc_collections_total{generation="0"} 1234.0
python_gc_collections_total{generation="1"} 112.0
python_gc_collections_total{generation="2"} 10.0
# HELP python_info Python platform information
# TYPE python_info gauge
python_info{implementation="CPython",major="3",minor="12",patchlevel="3",version="3.12.3"} 1.0
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# TYPE process_virtual_memory_bytes gauge
process_virtual_memory_bytes 3.2e+10
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.5e+09
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.76e+09
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 123.4
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 97.0
# HELP process_max_fds Maximum number of open file descriptors.
# TYPE process_max_fds gauge
process_max_fds 1.048576e+06
"""


def vllm_page(model_name: str) -> str:
    labels = f'engine="0",model_name="{model_name}"'
    lines = [PYTHON.rstrip("\n")]

    def head(name: str, kind: str) -> None:
        lines.extend([f"# HELP {name} {name} as vLLM describes it.", f"# TYPE {name} {kind}"])

    def gauge(name: str, value: float, extra: str = "") -> None:
        head(name, "gauge")
        lines.append(f"{name}{{{extra}{labels}}} {value}")

    def counter(name: str, values: dict[str, float]) -> None:
        head(f"{name}_total", "counter")
        lines.extend(f"{name}_total{{{extra}{labels}}} {v}" for extra, v in values.items())
        head(f"{name}_created", "gauge")
        lines.extend(f"{name}_created{{{extra}{labels}}} 1.76e+09" for extra in values)

    def histogram(name: str, bounds: tuple[float, ...]) -> None:
        head(name, "histogram")
        for i, le in enumerate((*bounds, "+Inf")):
            lines.append(f'{name}_bucket{{{labels},le="{float(le)}"}} {float(10 * i)}')
        lines.append(f"{name}_count{{{labels}}} {float(10 * len(bounds))}")
        lines.append(f"{name}_sum{{{labels}}} 123.456")
        head(f"{name}_created", "gauge")
        lines.append(f"{name}_created{{{labels}}} 1.76e+09")

    gauge("vllm:num_requests_running", 3.0)
    gauge("vllm:num_requests_waiting", 0.0)
    for state in ("awake", "weights_offloaded", "discard_all"):
        gauge("vllm:engine_sleep_state", float(state == "awake"), f'sleep_state="{state}",')
    gauge("vllm:kv_cache_usage_perc", 0.25)
    for name in (
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:external_prefix_cache_queries",
        "vllm:external_prefix_cache_hits",
        "vllm:mm_cache_queries",
        "vllm:mm_cache_hits",
        "vllm:num_preemptions",
        "vllm:prompt_tokens",
        "vllm:prompt_tokens_cached",
        "vllm:generation_tokens",
    ):
        counter(name, {"": 1234.0})
    counter(
        "vllm:prompt_tokens_by_source",
        {f'source="{s}",': 100.0 for s in ("local_compute", "local_cache_hit", "external_kv")},
    )
    counter(
        "vllm:request_success",
        {f'finished_reason="{r}",': 7.0 for r in ("stop", "length", "abort", "error", "repeat")},
    )
    for name in ("vllm:iteration_tokens_total", "vllm:request_prompt_tokens"):
        histogram(name, TOKENS_LE)
    for name in ("vllm:request_generation_tokens", "vllm:request_params_max_tokens"):
        histogram(name, TOKENS_LE)
    for name in (
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:request_time_per_output_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
    ):
        histogram(name, LATENCY_LE)
    gauge("vllm:cache_config_info", 1.0, 'block_size="16",num_gpu_blocks="2048",')
    return "\n".join(lines) + "\n"
