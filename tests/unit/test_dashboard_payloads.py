"""The dashboard's JSON: GPUs with their slices' models, before and after the first sample."""

from __future__ import annotations

import json
from types import SimpleNamespace

from orchestrator.gpu.inventory import Gpu, Slice
from orchestrator.gpu.nvml import GpuSample, SliceSample
from orchestrator.http.dashboard.payloads import gpus, merge

MIG = Slice("MIG-a", 0, "GPU-0", "A100", "3g.40gb", 40, 0, 1, 0)
FREE = Slice("MIG-b", 0, "GPU-0", "A100", "1g.10gb", 10, 0, 9, 0)


def engine(slc: Slice | None) -> SimpleNamespace:
    return SimpleNamespace(spec=SimpleNamespace(slice=slc))


def test_slices_name_their_models_from_the_inventory_until_a_sample_comes() -> None:
    inv = [Gpu(0, "GPU-0", "A100", 80, 5, True, (MIG, FREE))]
    engines = {"bob": engine(MIG), "alice": engine(MIG), "unplaced": engine(None)}
    (g,) = gpus(inv, engines)  # type: ignore[arg-type]
    assert (g["mig"], g["sm_util_pct"], g["memory_used_bytes"]) == (True, None, 5)
    assert [(s["profile"], s["models"]) for s in g["slices"]] == [
        ("3g.40gb", ["alice", "bob"]),  # two engines sharing one slice, in name order
        ("1g.10gb", []),
    ]
    sample = GpuSample(
        0,
        "GPU-0",
        "A100",
        True,
        None,
        None,
        60.0,
        30,
        1410,
        1593,
        7,
        80,
        (SliceSample("MIG-a", "3g.40gb", 1, 0, 7, 40),),
    )
    (g,) = gpus([sample], engines)  # type: ignore[arg-type]
    assert g["slices"] == [
        {
            "uuid": "MIG-a",
            "profile": "3g.40gb",
            "gi_id": 1,
            "ci_id": 0,
            "memory_used_bytes": 7,
            "memory_total_bytes": 40,
            "models": ["alice", "bob"],
        }
    ]


def test_merge_adds_serialized_members_to_a_json_object() -> None:
    merged = merge({"a": 1}, b=b'[{"x":2}]', c=b"null")
    assert json.loads(merged) == {"a": 1, "b": [{"x": 2}], "c": None}
    assert json.loads(merge({}, status=b'{"s":1}')) == {"status": {"s": 1}}
