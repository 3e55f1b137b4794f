"""`mig-orchestrator monitor` on fake topologies: table, CSV and JSON lines."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from orchestrator.cli import gpu as gpu_cli
from orchestrator.gpu import topology_file
from orchestrator.units import GIB, MIB

TOPOLOGIES = Path(__file__).resolve().parents[2] / "orchestrator" / "gpu" / "topologies"
A100_MIXED = TOPOLOGIES / "a100-mixed.toml"
A100_3G = "MIG-31b2252a-f41b-47f9-8b11-f2fca23e49d2"


def run_monitor(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    gpu_cli.register(parser.add_subparsers())
    args = parser.parse_args(["monitor", "--interval", "0", *argv])
    return int(args.func(args))


def cells(line: str) -> list[str]:
    """A table line's columns (they are separated by at least two spaces)."""
    return re.split(r" {2,}", line.strip())


def test_mig_gpu_shows_na_utilisation_never_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_monitor("--topology", str(A100_MIXED), "--count", "1", "--per-slice") == 0
    header, note, gpu, *slices = capsys.readouterr().out.splitlines()
    assert cells(header)[:5] == ["#time", "gpu", "mig", "sm%", "mem%"]
    assert note.startswith("# n/a (MIG): NVML gives no utilisation")
    assert cells(gpu)[1:] == [
        "0",
        "on",
        "n/a (MIG)",
        "n/a (MIG)",
        "64.3",
        "31",
        "1410",
        "1593",
        "0",
        "81920",
        "NVIDIA A100-SXM4-80GB",
    ]
    assert [cells(s)[2] for s in slices] == [
        "└ 3g.40gb gi 2 ci 0",
        "└ 2g.20gb gi 3 ci 0",
        "└ 1g.10gb gi 9 ci 0",
        "└ 1g.10gb gi 10 ci 0",
    ]
    assert [cells(s)[-3:-1] for s in slices] == [
        ["0", "40192"],
        ["0", "19968"],
        ["0", "9728"],
        ["0", "9728"],
    ]


def test_whole_gpu_shows_utilisation_and_no_note(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_monitor("--topology", str(TOPOLOGIES / "h100-whole.toml"), "--count", "3") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.startswith("#time")
    assert len(rows) == 3  # one row per GPU per sample, header once, no MIG note
    assert all(cells(r)[2:5] == ["off", "37", "12"] for r in rows)


def test_held_memory_shows_in_slice_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = Path(shutil.copy(A100_MIXED, tmp_path))
    topology_file.hold_memory(topology, A100_3G, 3 * GIB)
    assert run_monitor("--topology", str(topology), "--count", "1", "--per-slice") == 0
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.endswith(A100_3G))
    assert cells(row)[-3:-1] == ["3072", "40192"]
    assert cells(out[2])[-3] == "3072"  # the GPU row's aggregate


def test_csv_has_gpu_and_slice_rows_with_blank_utilisation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu.csv"
    argv = ("--topology", str(A100_MIXED), "--count", "2", "--per-slice", "--csv", str(out))
    assert run_monitor(*argv) == 0
    assert "n/a (MIG)" in capsys.readouterr().out  # the table still goes to stdout
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == (["gpu"] + ["slice"] * 4) * 2
    gpu = rows[0]
    assert (gpu["mig_enabled"], gpu["sm_util_pct"], gpu["mem_util_pct"]) == ("True", "", "")
    assert (gpu["power_w"], gpu["memory_total_bytes"]) == ("64.3", str(81920 * MIB))
    assert [r["profile"] for r in rows[1:5]] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert rows[1]["uuid"] == A100_3G and rows[1]["gi_id"] == "2"


def test_json_lines_nest_slices_and_use_null_for_na(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--topology", str(TOPOLOGIES / "a100x2-3g.toml"), "--count", "2", "--json")
    assert run_monitor(*argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in records] == [0, 1, 0, 1]
    for r in records:
        assert r["mig_enabled"] is True
        assert r["sm_util_pct"] is None and r["mem_util_pct"] is None
        assert [s["profile"] for s in r["slices"]] == ["3g.40gb", "3g.40gb"]
        assert r["time"]


def test_interval_paces_the_samples(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    topology = str(TOPOLOGIES / "h100-whole.toml")
    assert run_monitor("--topology", topology, "--count", "3", "--interval", "0.1") == 0
    assert time.monotonic() - start >= 0.2  # three samples span two intervals
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_missing_topology_fails_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_monitor("--topology", str(tmp_path / "nope.toml"), "--count", "1") == 1
    assert "nope.toml: cannot read topology file" in capsys.readouterr().err


def test_unwritable_csv_fails_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing-dir" / "out.csv"
    assert run_monitor("--topology", str(A100_MIXED), "--count", "1", "--csv", str(target)) == 1
    assert f"cannot write {target}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [("--interval", "soon"), ("--interval", "-1"), ("--interval", "nan"), ("--count", "-2")]
)
def test_bad_arguments_are_rejected(
    argv: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_monitor(*argv)
    assert exit_.value.code == 2
    assert f"argument {argv[0]}" in capsys.readouterr().err


def test_wired_into_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli.main import main

    topology = str(TOPOLOGIES / "h200-3g71.toml")
    assert main(["monitor", "--topology", topology, "--count", "1", "--per-slice"]) == 0
    assert "└ 3g.71gb gi 1 ci 0" in capsys.readouterr().out
