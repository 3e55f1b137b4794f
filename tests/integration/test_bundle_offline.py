"""Build a bundle with real pip from a local index, then install it offline onto a small fake
target: a base environment that already holds one of the dependencies (like the GPU image's
torch). About 20 s; no network."""

from __future__ import annotations

import ensurepip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import engine as engine_cli
from tests.fake_wheels import make_wheel

PIP_WHEELS = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
PY = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip sees only what the test passes: no host index, find-links or constraints."""
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


def _index(root: Path) -> Path:
    index = root / "index"
    make_wheel(
        index,
        "fake-engine",
        "1.0",
        (
            "hostlib>=1.0",  # the target has it: not shipped
            "midlib",
            'backport; python_version < "3.8"',  # false for every supported target
            'gpu-only-kernels; platform_machine == "x86_64"',  # excluded by the recipe
        ),
        files={
            "fake_engine/__init__.py": "import hostlib, midlib\n",
            "fake_engine/_fa2.so": "x" * 4096,  # dropped by the recipe
            "fake_engine/server.py": "print('serving')\n",
        },
    )
    make_wheel(index, "midlib", "2.0", ("leaf[fast]",))
    make_wheel(index, "midlib", "3.0", ("leaf[fast]", "hostlib>=9"))  # newer, but unused below
    make_wheel(index, "leaf", "1.0", ('leafspeed; extra == "fast"',), extras=("fast",))
    make_wheel(index, "leafspeed", "1.0")
    make_wheel(index, "hostlib", "1.5")
    for pip_wheel in PIP_WHEELS[-1:]:
        shutil.copy(pip_wheel, index)
    return index


def _build(root: Path, index: Path, *extra: str) -> Path:
    target_list = root / "target.txt"
    target_list.write_text("# pip freeze of the fake target\nhostlib==1.5\nsomething-else\n")
    out = root / "bundle"
    argv = [
        "--out", str(out), "--target-packages", str(target_list), "--python-version", PY,
        "--platform", "manylinux_2_17_x86_64", "--engine", "fake-engine==1.0",
        "--override", "midlib==2.0", "--exclude", "gpu-only-kernels=not on this target",
        "--drop-file", "fake-engine:fake_engine/_fa2.so", "--check-import", "fake_engine",
        "--no-daemon", "--part-size", "2k", "--cache", str(root / "cache"),
        "--pip-arg=--no-index", f"--pip-arg=--find-links={index}", *extra,
    ]  # fmt: skip
    assert engine_cli.main(["bundle", *argv]) == 0
    return out


@pytest.mark.skipif(not PIP_WHEELS, reason="this Python has no ensurepip wheel to bundle")
def test_build_then_install_offline_on_a_layered_venv(tmp_path: Path, offline: None) -> None:
    index = _index(tmp_path)
    out = _build(tmp_path, index)
    manifest = json.loads((out / "bundle.json").read_text())
    engine = manifest["environments"]["engine"]
    shipped = {manifest["wheels"][w]["name"]: manifest["wheels"][w]["version"]
               for w in engine["wheels"]}  # fmt: skip
    assert shipped == {"fake-engine": "1.0", "midlib": "2.0", "leaf": "1.0", "leafspeed": "1.0"}
    assert engine["provided"]["hostlib"]["target_version"] == "1.5"
    assert engine["excluded"] == {
        "gpu-only-kernels": {"why": "not on this target", "required_by": ["fake-engine 1.0"]}
    }
    parts = manifest["archive"]["parts"]
    assert len(parts) > 1 and all(p["size"] <= 2000 for p in parts)
    (fake_engine,) = [e for e in manifest["wheels"].values() if e["name"] == "fake-engine"]
    assert fake_engine["dropped"] == ["fake_engine/_fa2.so"]
    assert manifest["pip"] is not None

    # The fake target: a base environment that has hostlib, as the GPU image has torch.
    base = tmp_path / "base"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    base_site = subprocess.run(
        [base / "bin" / "python", "-c", purelib], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
         base_site, str(index / "hostlib-1.5-py3-none-any.whl")],
        check=True,
    )  # fmt: skip

    prefix = tmp_path / "opt"
    install = [sys.executable, str(out / "install.py"), "--prefix", str(prefix),
               "--base-python", str(base / "bin" / "python"), "--json"]  # fmt: skip
    first = subprocess.run(install, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    env = result["environments"]["engine"]
    assert env["warnings"] == [] and env["packages"] == 4
    assert env["engine_command"][0] == str(prefix / "vllm-venv" / "bin" / "python")
    assert "engine_command = " in first.stderr

    python = prefix / "vllm-venv" / "bin" / "python"
    probe = subprocess.run(
        [python, "-c",
         "import json, hostlib, fake_engine, leafspeed, sys; "
         "print(json.dumps([hostlib.__file__, fake_engine.__file__]))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    hostlib_file, engine_file = json.loads(probe.stdout)
    assert hostlib_file.startswith(base_site)  # from the target, not copied
    assert engine_file.startswith(str(prefix / "vllm-venv"))
    assert not list((prefix / "vllm-venv").rglob("_fa2.so"))
    assert not (prefix / ".bundle-unpacked").exists()

    again = subprocess.run(install, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "already has this bundle" in again.stderr

    # A part lost in transfer: named, and the installed venv is left as it was.
    (out / parts[1]["name"]).unlink()
    broken = subprocess.run([*install, "--force"], capture_output=True, text=True, check=False)
    assert broken.returncode == 1
    assert f"{parts[1]['name']}: missing" in broken.stderr
    assert subprocess.run([python, "-c", "import fake_engine"], check=False).returncode == 0


@pytest.mark.skipif(not PIP_WHEELS, reason="this Python has no ensurepip wheel to bundle")
def test_a_requirement_the_index_cannot_satisfy_names_who_wants_it(
    tmp_path: Path, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    index = _index(tmp_path)
    (index / "leafspeed-1.0-py3-none-any.whl").unlink()
    target_list = tmp_path / "target.txt"
    target_list.write_text("hostlib==1.5\n")
    code = engine_cli.main(["bundle",
        "--out", str(tmp_path / "b"), "--target-packages", str(target_list),
        "--python-version", PY, "--platform", "manylinux_2_17_x86_64",
        "--engine", "fake-engine==1.0", "--exclude", "gpu-only-kernels", "--no-daemon",
        "--no-pip", "--cache", str(tmp_path / "c"),
        "--pip-arg=--no-index", f"--pip-arg=--find-links={index}",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "leafspeed: leaf 1.0 [fast] wants any version" in err
