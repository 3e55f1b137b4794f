"""`bench --plot` and `compare --plot` without matplotlib stop before any request is sent."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import bench as bench_commands
from orchestrator.cli.main import main

MESSAGE = "error: --plot needs matplotlib, which is not installed: pip install"


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import matplotlib...` raise ImportError.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)

    def no_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the run started although the plot cannot be drawn")

    monkeypatch.setattr(bench_commands, "run_bench", no_run)
    monkeypatch.setattr(bench_commands, "run_compare", no_run)
    monkeypatch.setattr(bench_commands, "ControlClient", no_run)


@pytest.mark.usefixtures("no_matplotlib")
@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--target", "http://127.0.0.1:9", "--served-model-name", "m"],
        ["bench", "--model", "alice"],
        ["compare", "--model", "alice", "--variant", "on:enable_prefix_caching=true"],
    ],
    ids=["bench-target", "bench-model", "compare"],
)
def test_missing_matplotlib_is_refused_before_the_run(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "out.png"
    assert main([*argv, "--plot", str(png)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(MESSAGE), err
    assert "Traceback" not in err and out == ""
    assert not png.exists()


@pytest.mark.usefixtures("no_matplotlib")
def test_without_plot_matplotlib_is_not_needed(capsys: pytest.CaptureFixture[str]) -> None:
    # The check only applies to --plot: here the run starts (and meets the stand-in above).
    with pytest.raises(AssertionError, match="the run started"):
        main(["bench", "--target", "http://127.0.0.1:9", "--served-model-name", "m"])
