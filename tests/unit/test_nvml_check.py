"""`mig-orchestrator nvml-check`: the MIG fix's NVML lookups, printed per slice."""

from __future__ import annotations

import json

import pytest

from orchestrator.cli.main import main


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["nvml-check", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_every_mig_slice_is_misread_alone_and_found_with_the_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, _ = check(capsys, "--topology", "course-a100x2", "--json")
    assert rc == 0
    found = json.loads(out)
    assert len(found) == 4
    for item in found:
        assert item["vllm_alone"]["right"] is False
        assert item["with_fix"]["right"] is True
        assert item["with_fix"]["index"] == item["mig"]["parent_index"]
        assert item["vllm_alone"]["index"] == item["mig"]["index_in_parent"]
    assert found[3]["vllm_alone"]["error"] == "NVMLError_InvalidArgument: Invalid Argument"


def test_a_whole_gpu_is_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = check(capsys, "--topology", "h100-whole")
    assert rc == 0
    assert out.splitlines() == [
        "GPU-70d48429-167a-41ec-adbf-7b5c447f3863: 'NVIDIA H100 80GB HBM3', 79.65 GiB, "
        "capability 9.0",
        "  not a MIG device: the daemon does not arm the fix for it",
        "  vLLM alone:    NVML index 0 -> 'NVIDIA H100 80GB HBM3', 79.65 GiB",
    ]


def test_one_uuid_and_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    uuid = "MIG-3d9c5f4b-6a7e-8192-bdce-3f4a5b6c7d84"
    rc, out, _ = check(capsys, "--topology", "course-a100x2", uuid)
    assert rc == 0
    assert out.splitlines()[2:] == [
        "  vLLM alone:    NVML index 2 -> NVMLError_InvalidArgument: Invalid Argument"
        "   <- not this device",
        "  with the fix:  NVML index 1 -> 'NVIDIA A100-SXM4-80GB MIG 2g.20gb', 19.50 GiB",
    ]
    rc, _, err = check(capsys, "--topology", "course-a100x2", "MIG-nope")
    assert rc == 2
    assert "NVML lookups for MIG-nope failed: Not Found" in err
