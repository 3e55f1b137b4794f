"""The package installed from a wheel (not editable) works away from the checkout: the shipped
topologies are package data, and the commands a new user tries first all run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_harness import REPO

pytestmark = pytest.mark.slow

CONFIG = """\
[orchestrator]
topology = "a100-mixed"

[models.student-a]
model = "Qwen/Qwen2.5-7B-Instruct-AWQ"
port = 8001
profile = "3g.40gb"

[models.student-b]
model = "Qwen/Qwen2.5-1.5B-Instruct"
port = 8002
profile = "2g.20gb"
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `pip install` of a wheel built from a copy of the source (the checkout stays clean)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(
        REPO / "orchestrator",
        src / "orchestrator",
        ignore=shutil.ignore_patterns("__pycache__", "*.memory.json"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    site = root / "site"
    # Offline and quick: no dependencies (the test venv has them), the venv's own setuptools.
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run(
        [*pip, "--no-build-isolation", "--target", str(site), str(src)],
        check=True,
        capture_output=True,
    )
    return site


def run(site: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Run from a folder without the checkout, so only the installed copy can be imported.
    env = {**os.environ, "PYTHONPATH": str(site)}
    command = [str(site / "bin" / "mig-orchestrator"), *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_installed_copy_is_the_one_imported(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import orchestrator; print(orchestrator.__file__)"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed)
    shipped = sorted(p.name for p in (installed / "orchestrator/gpu/topologies").glob("*.toml"))
    assert "a100-mixed.toml" in shipped and len(shipped) >= 6


def test_demo_help(installed: Path, tmp_path: Path) -> None:
    r = run(installed, "demo", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--students" in r.stdout and "--exit-when-ready" in r.stdout


def test_slices_on_a_shipped_topology_named_without_a_path(installed: Path, tmp_path: Path) -> None:
    r = run(installed, "slices", "--topology", "a100-mixed", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("source: topology:a100-mixed\n")
    profiles = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("GPU0  ")]
    assert profiles == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]


def test_check_a_config_on_a_shipped_topology(installed: Path, tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(CONFIG)
    r = run(installed, "check", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{config}: OK (2 models, 4 slices)"
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace('"a100-mixed"', '"a100-nope"'))
    r = run(installed, "check", "--config", str(bad), cwd=tmp_path)
    assert r.returncode == 2
    assert "a100-nope" in r.stderr and "shipped topologies: " in r.stderr


def test_practicum_help_and_a_report_from_the_installed_copy(
    installed: Path, tmp_path: Path
) -> None:
    r = run(installed, "practicum", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--cpu" in r.stdout and "--ports CODER,CHAT" in r.stdout and "--results" in r.stdout
    r = run(installed, "practicum", "report", "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Not run: `mig-orchestrator practicum up`" in (tmp_path / "r" / "report.md").read_text()


def test_the_package_holds_no_lab_tooling_and_imports_no_tests(installed: Path) -> None:
    sources = list((installed / "orchestrator").rglob("*.py"))
    assert not (installed / "orchestrator" / "tooling" / "gpu_session.py").exists()
    for path in sources:
        text = path.read_text()
        assert "/root/h5" not in text, path
        assert "from tests" not in text and "import tests" not in text, path
        assert "tests.perf" not in text, path
