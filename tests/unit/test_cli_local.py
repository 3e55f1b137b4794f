"""`mig-orchestrator check` and `plan` run in-process against fake topologies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import main
from orchestrator.engine.nvml_fix import SHIM_DIR
from orchestrator.gpu import nvml
from orchestrator.supervisor.store import DaemonState, StateStore
from orchestrator.units import GIB

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "orchestrator" / "gpu" / "topologies"
# a100-mixed.toml: one A100-80GB split 3g.40gb + 2g.20gb + 1g.10gb + 1g.10gb.
MIG_3G = "MIG-31b2252a-f41b-47f9-8b11-f2fca23e49d2"
MIG_2G = "MIG-d5c1d7d2-70d1-4e7c-9e77-e14baa90f8bd"
MIG_1G_A = "MIG-b983c945-b915-4486-80fd-b6d9b45b418c"
MIG_1G_B = "MIG-6a9d5772-e620-413e-9e37-20d21dad41af"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder with a copy of the a100-mixed topology, a private API key and a state dir."""
    shutil.copy(TOPOLOGIES / "a100-mixed.toml", tmp_path / "topo.toml")
    key = tmp_path / "alice.key"
    key.write_text("sk-alice-very-secret\n")
    key.chmod(0o600)
    return tmp_path


def write_config(site: Path, models: str, orchestrator: str = "") -> Path:
    path = site / "models.toml"
    path.write_text(
        f'[orchestrator]\ntopology = "topo.toml"\nstate_dir = "state"\nlog_dir = "logs"\n'
        f'engine_command = ["/opt/vllm/bin/vllm", "serve"]\n{orchestrator}\n'
        f"[defaults]\nenable_prefix_caching = true\n{models}"
    )
    return path


GOOD = """
[models.alice]
model = "Qwen/Qwen2.5-7B-Instruct-AWQ"
port = 8001
profile = "3g.40gb"
api_key_file = "alice.key"
gpu_memory_utilization = 0.9

[models.bob]
model = "acme/tiny-model"
port = 8002
min_memory_gib = 15
enforce_eager = true
"""


# ----- check -----


def test_check_good_file(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(site, GOOD)
    rc, out, err = run(capsys, "check", "--config", str(path))
    assert (rc, err) == (0, "")
    assert out == f"{path}: OK (2 models, 4 slices)\n"


def test_check_topology_option_overrides_the_config(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(site, '[models.a]\nmodel = "m"\nport = 8001\nprofile = "3g.40gb"\n')
    rc, _, err = run(
        capsys, "check", "-c", str(path), "--topology", str(TOPOLOGIES / "h100-whole.toml")
    )
    assert rc == 1
    assert "models.a: cannot be placed: needs 3g.40gb: no such slice on this host" in err


def test_check_unknown_key(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(site, GOOD + "gpu_memory_utilisation = 0.5\n")
    rc, out, err = run(capsys, "check", "-c", str(path))
    assert rc == 2
    assert out == ""
    assert err == (
        f"{path}: models.bob.gpu_memory_utilisation: unknown setting "
        "(did you mean 'gpu_memory_utilization'?)\n"
    )


def test_check_lists_every_config_problem(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace('profile = "3g.40gb"', 'profile = "3g.40gb"\nslice = 0')
    path = write_config(site, text + "tensor_parallel_size = 2\n")
    rc, _, err = run(capsys, "check", "-c", str(path))
    assert rc == 2
    assert [line.split(": ")[1] for line in err.splitlines()] == [
        "models.alice",
        "models.bob.tensor_parallel_size",
    ]
    assert all(line.startswith(f"{path}: ") for line in err.splitlines())


def test_check_duplicate_port(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(site, GOOD.replace("port = 8002", "port = 8001"))
    rc, _, err = run(capsys, "check", "-c", str(path))
    assert rc == 2
    assert err == f"{path}: models.bob.port: port 8001 is also used by models.alice\n"


def test_check_invalid_toml(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = site / "models.toml"
    path.write_text('[models.a]\nmodel = "unterminated\n')
    rc, _, err = run(capsys, "check", "-c", str(path))
    assert rc == 2
    assert err.startswith(f"{path}: not valid TOML: ")


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.toml"
    rc, _, err = run(capsys, "check", "-c", str(path))
    assert rc == 2
    assert err == f"{path}: cannot read: No such file or directory\n"


def test_check_unplaceable_models(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = "".join(
        f'[models.s{i}]\nmodel = "m"\nport = {8001 + i}\nprofile = "1g.10gb"\n' for i in range(3)
    )
    path = write_config(site, models + '[models.z]\nmodel = "m"\nport = 8100\nslice = 0\n')
    rc, out, err = run(capsys, "check", "-c", str(path))
    assert (rc, out) == (1, "")
    assert err.splitlines() == [
        f"{path}: models.s2: cannot be placed: needs 1g.10gb: both are taken by s0, s1",
        f"{path}: models.z: cannot be placed: GPU 0 has MIG enabled: "
        "pin one of its MIG UUIDs or ask for a profile",
    ]


def test_check_world_readable_key(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "alice.key").chmod(0o644)
    path = write_config(site, GOOD)
    rc, _, err = run(capsys, "check", "-c", str(path))
    assert rc == 1
    key = site.resolve() / "alice.key"
    assert err == (
        f"{path}: models.alice.api_key_file: API key file {key} is readable by every user "
        f"(mode 0644); run: chmod 600 {key}\n"
    )
    # Away from the server the secrets can be left out of the check.
    rc, out, _ = run(capsys, "check", "-c", str(path), "--skip-secrets")
    assert rc == 0 and out.endswith("OK (2 models, 4 slices)\n")


def test_check_open_listen_without_admin_token(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(site, GOOD, orchestrator='listen = "0.0.0.0:8700"')
    rc, _, err = run(capsys, "check", "-c", str(path))
    assert rc == 1
    assert f"{path}: orchestrator.listen: 0.0.0.0:8700 is reachable from other hosts" in err


def test_check_without_nvml_validates_the_config_only(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_driver(cls: type[nvml.Nvml], topology: Path | None) -> nvml.Nvml:
        assert topology is None
        raise nvml.NvmlUnavailable("NVML Shared Library Not Found")

    monkeypatch.setattr(nvml.Nvml, "open", classmethod(no_driver))
    path = site / "models.toml"
    path.write_text('[models.a]\nmodel = "m"\nport = 8001\n')
    rc, out, err = run(capsys, "check", "-c", str(path))
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        f"{path}: configuration is valid; slices not checked: NVML Shared Library Not Found",
        f"{path}: OK (1 models)",
    ]


# ----- plan -----


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    rc, out, err = run(capsys, "plan", "--json", *argv)
    return rc, json.loads(out), err


def test_plan_json_shape(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(site, GOOD)
    rc, doc, err = plan_json(capsys, "-c", str(path))
    assert (rc, err) == (0, "")
    assert doc == {
        "inventory": f"topology:{site.resolve() / 'topo.toml'}",
        "unplaced": {},
        "models": [
            {
                "model": "alice",
                "port": 8001,
                "slice": {
                    "uuid": MIG_3G,
                    "gpu_index": 0,
                    "profile": "3g.40gb",
                    "memory_total_bytes": doc["models"][0]["slice"]["memory_total_bytes"],
                    "shared_with": [],
                },
                "argv": [
                    "/opt/vllm/bin/vllm",
                    "serve",
                    "--model",
                    "Qwen/Qwen2.5-7B-Instruct-AWQ",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    "8001",
                    "--served-model-name",
                    "alice",
                    "--gpu-memory-utilization",
                    "0.9",
                    "--enable-prefix-caching",
                ],
                "env": {
                    "PYTHONUNBUFFERED": "1",
                    "CUDA_VISIBLE_DEVICES": MIG_3G,
                    "PYTHONPATH": str(SHIM_DIR),
                    "MIG_ORCH_MIG_UUID": MIG_3G,
                    "VLLM_API_KEY": "***",
                },
                "mig_nvml_fix": "on",
                "unplaced": None,
            },
            {
                "model": "bob",
                "port": 8002,
                "slice": {
                    "uuid": MIG_2G,
                    "gpu_index": 0,
                    "profile": "2g.20gb",
                    "memory_total_bytes": doc["models"][1]["slice"]["memory_total_bytes"],
                    "shared_with": [],
                },
                "argv": [
                    "/opt/vllm/bin/vllm",
                    "serve",
                    "--model",
                    "acme/tiny-model",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    "8002",
                    "--served-model-name",
                    "bob",
                    "--enable-prefix-caching",
                    "--enforce-eager",
                ],
                "env": {
                    "PYTHONUNBUFFERED": "1",
                    "CUDA_VISIBLE_DEVICES": MIG_2G,
                    "PYTHONPATH": str(SHIM_DIR),
                    "MIG_ORCH_MIG_UUID": MIG_2G,
                },
                "mig_nvml_fix": "on",
                "unplaced": None,
            },
        ],
    }
    # The NVIDIA profile names promise at least their size in GB.
    assert 39 * GIB < doc["models"][0]["slice"]["memory_total_bytes"] <= 40 * GIB
    assert 19 * GIB < doc["models"][1]["slice"]["memory_total_bytes"] <= 20 * GIB


def test_plan_never_prints_the_api_key(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(site, GOOD)
    for extra in ([], ["--json"]):
        rc, out, err = run(capsys, "plan", "-c", str(path), *extra)
        assert rc == 0
        assert "sk-alice-very-secret" not in out + err
        assert "VLLM_API_KEY=***" in out or '"VLLM_API_KEY": "***"' in out


def test_plan_does_not_need_to_read_the_key(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "alice.key").unlink()
    path = write_config(site, GOOD)
    rc, doc, _ = plan_json(capsys, "-c", str(path))
    assert rc == 0
    assert doc["models"][0]["env"]["VLLM_API_KEY"] == "***"


def test_plan_text(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(site, GOOD)
    rc, out, _ = run(capsys, "plan", "-c", str(path))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["MODEL", "SLICE", "MEMORY", "PORT", "MIG", "NVML", "FIX", "UUID"]
    assert lines[1].split()[:3] == ["alice", "GPU0", "3g.40gb"]
    assert lines[1].split()[-3:] == ["8001", "on", MIG_3G]
    assert lines[2].split()[:3] == ["bob", "GPU0", "2g.20gb"]
    assert (
        "  argv /opt/vllm/bin/vllm serve --model acme/tiny-model --host 0.0.0.0 --port 8002 "
        "--served-model-name bob --enable-prefix-caching --enforce-eager"
    ) in lines
    assert (
        f"  env  CUDA_VISIBLE_DEVICES={MIG_2G} MIG_ORCH_MIG_UUID={MIG_2G} "
        f"PYTHONPATH={SHIM_DIR} PYTHONUNBUFFERED=1"
    ) in lines


def test_plan_says_where_the_mig_fix_is_off(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bob_off = GOOD.replace('"acme/tiny-model"', '"acme/tiny-model"\nmig_nvml_fix = false')
    path = write_config(site, bob_off)
    rc, doc, _ = plan_json(capsys, "-c", str(path))
    assert rc == 0
    assert [m["mig_nvml_fix"] for m in doc["models"]] == ["on", "off (mig_nvml_fix = false)"]
    assert "PYTHONPATH" not in doc["models"][1]["env"]
    shutil.copy(TOPOLOGIES / "h100-whole.toml", site / "topo.toml")
    rc, doc, _ = plan_json(capsys, "-c", str(path), "--allow-partial")
    assert rc == 0
    assert [m["mig_nvml_fix"] for m in doc["models"]] == ["-", "off (whole GPU)"]


def test_plan_with_unplaced_models(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(
        site, GOOD + '[models.carol]\nmodel = "m"\nport = 8003\nprofile = "3g.40gb"\n'
    )
    rc, doc, err = plan_json(capsys, "-c", str(path))
    assert rc == 1
    assert doc["unplaced"] == {"carol": "needs 3g.40gb: it is taken by alice"}
    carol = doc["models"][2]
    assert carol["model"] == "carol"
    assert carol["slice"] is None
    assert carol["unplaced"] == "needs 3g.40gb: it is taken by alice"
    assert "CUDA_VISIBLE_DEVICES" not in carol["env"]
    assert err.strip() == "cannot place carol: needs 3g.40gb: it is taken by alice"
    rc, doc2, _ = plan_json(capsys, "-c", str(path), "--allow-partial")
    assert rc == 0
    assert doc2 == doc


def test_plan_keeps_the_daemons_previous_assignments(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(site, '[models.a]\nmodel = "m"\nport = 8001\n')
    _, doc, _ = plan_json(capsys, "-c", str(path))
    assert doc["models"][0]["slice"]["uuid"] == MIG_3G  # unconstrained: the largest slice
    StateStore(site / "state").save(DaemonState(assignments={"a": MIG_1G_B}))
    _, doc, _ = plan_json(capsys, "-c", str(path))
    assert doc["models"][0]["slice"]["uuid"] == MIG_1G_B


def test_plan_shows_who_shares_a_whole_gpu(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    share = "share_gpu = true\ngpu_memory_utilization = 0.45\n"
    path = write_config(
        site,
        f'[models.a]\nmodel = "m"\nport = 8001\n{share}'
        f'[models.b]\nmodel = "m"\nport = 8002\n{share}',
    )
    rc, doc, _ = plan_json(
        capsys, "-c", str(path), "--topology", str(TOPOLOGIES / "h100-whole.toml")
    )
    assert rc == 0
    a, b = doc["models"]
    assert a["slice"]["uuid"] == b["slice"]["uuid"]
    assert a["slice"]["profile"] is None
    assert (a["slice"]["shared_with"], b["slice"]["shared_with"]) == (["b"], ["a"])
    assert a["env"]["CUDA_VISIBLE_DEVICES"] == a["slice"]["uuid"]


def test_plan_missing_topology(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(site, GOOD)
    rc, out, err = run(capsys, "plan", "-c", str(path), "--topology", str(site / "nope.toml"))
    assert rc == 2
    assert out == ""
    assert str(site / "nope.toml") in err


def test_example_config_plans_as_its_comments_say(capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, err = plan_json(
        capsys,
        "-c",
        str(REPO / "models.toml"),
        "--topology",
        str(TOPOLOGIES / "course-a100x2.toml"),
    )
    assert (rc, err, doc["unplaced"]) == (0, "", {})
    where = {m["model"]: (m["slice"]["gpu_index"], m["slice"]["profile"]) for m in doc["models"]}
    assert where == {
        "student-a": (0, "3g.40gb"),
        "student-b": (0, "3g.40gb"),
        "student-c": (1, "2g.20gb"),
    }
    for m in doc["models"]:
        assert m["env"]["CUDA_VISIBLE_DEVICES"] == m["slice"]["uuid"]
        assert not any("log-requests" in a for a in m["argv"])


def test_check_missing_local_model_path(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(site, GOOD.replace("acme/tiny-model", "/nonexistent/tiny"))
    rc, _, err = run(capsys, "check", "-c", str(path))
    assert rc == 1
    assert err == f"{path}: models.bob.model: /nonexistent/tiny does not exist on this host\n"
    rc, _, _ = run(capsys, "check", "-c", str(path), "--skip-secrets")
    assert rc == 0


def test_check_with_an_unreadable_topology_fails(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(site, GOOD)
    rc, _, err = run(capsys, "check", "-c", str(path), "--topology", str(site / "missing.toml"))
    assert rc == 2 and "missing.toml" in err
