"""`mig-orchestrator practicum`'s options: presets per device, and refusals before any start."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from orchestrator.cli.main import build_parser
from orchestrator.cli.main import main as cli
from orchestrator.gpu.nvml import Nvml, NvmlError
from orchestrator.practicum import plan


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["practicum", *argv])


def test_cpu_gets_the_quick_preset_and_a_given_option_wins() -> None:
    args = _args("--cpu", "--levels", "1,8")
    assert plan.apply_preset(args) is plan.PRESETS["cpu"]
    assert args.levels == "1,8" and args.input_len == 64 and args.vs_prompts == 16
    gpu = _args()
    plan.apply_preset(gpu)
    assert gpu.levels.endswith(",256") and gpu.vs_prompts == 2000
    # the GPU estimate is sized for its bigger workload and colder first start
    assert sum(plan.estimate_all(gpu, 2, 2).values()) > sum(plan.estimate_all(args, 2, 2).values())


def test_ports_are_two_different_ones() -> None:
    assert _args("--ports", "8101,8102").ports == (8101, 8102)
    for bad in ("8101", "8101,8101", "0,8102", "a,b"):
        with pytest.raises(SystemExit):
            _args("--ports", bad)


def test_a_bad_variant_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(["practicum", "--cpu", "--results", str(tmp_path), "--variant", "x:=1"])
    assert code == 2 and "--variant" in capsys.readouterr().err
    assert not (tmp_path / "commands.jsonl").exists()


def test_without_a_gpu_it_points_at_the_cpu_rehearsal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        Nvml.open(None).close()
    except NvmlError:
        pass
    else:
        pytest.skip("this machine has a GPU")
    code = cli(["practicum", "up", "--results", str(tmp_path), "--engine-venv", str(tmp_path)])
    err = capsys.readouterr().err
    assert (
        code == 2 and "no usable NVIDIA GPU" in err and "--cpu" in err and "--topology" not in err
    )


def test_an_interrupted_phase_is_recorded_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.practicum import run

    def stopped(args: argparse.Namespace, rec: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(run.PHASES, "serve", stopped)
    args = _args("--cpu", "--results", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run.run_phase(args, "serve")
    text = run.report.render(tmp_path, tmp_path / "report.md")
    assert "| serve | serve | **FAILED** |" in text and "interrupted (Ctrl-C or SIGTERM)" in text
