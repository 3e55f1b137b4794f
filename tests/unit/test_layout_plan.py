"""`mig-orchestrator layout` on the course's models.toml, its exports, pins and infeasible cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.cli.main import main
from orchestrator.config import load_config, parse_config
from orchestrator.gpu.mig_profiles import GPU_MODELS
from orchestrator.gpu.nvml import Nvml, NvmlUnavailable, load_inventory
from orchestrator.layout.pack import plan_layout
from orchestrator.layout.targets import from_nvml, synthetic
from orchestrator.placement import place

REPO = Path(__file__).resolve().parents[2]
COURSE = REPO / "models.toml"
TOPOLOGIES = REPO / "orchestrator" / "gpu" / "topologies"
# course-a100x2.toml: GPU1's 2g.20gb.
GPU1_2G = "MIG-3d9c5f4b-6a7e-8192-bdce-3f4a5b6c7d84"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(autouse=True)
def no_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub ids resolve only through caches under tmp_path, whatever this machine has cached."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def instances(doc: dict, gpu: int) -> list[tuple[str, int, str]]:
    g = next(g for g in doc["gpus"] if g["index"] == gpu)
    return [(i["profile"], i["start"], i["model"]) for i in g["instances"]]


def test_course_models_on_the_course_host(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "layout", "-c", str(COURSE), "--topology", "course-a100x2", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["feasible"]
    assert instances(doc, 0) == [("3g.40gb", 0, "student-a"), ("3g.40gb", 4, "student-b")]
    assert instances(doc, 1) == [("2g.20gb", 0, "student-c")]
    assert doc["gpus"][1]["now"] == {"mig_enabled": True, "profiles": ["2g.20gb", "3g.40gb"]}
    totals = {n: round(m["estimate"]["total_bytes"] / 1024**3, 2) for n, m in doc["models"].items()}
    assert totals == {"student-a": 23.29, "student-b": 18.74, "student-c": 7.79}
    c = doc["models"]["student-c"]
    assert c["pinned"] and "the smallest profile holding it is 1g.10gb" in c["choice"]
    rc, out, _ = run(capsys, "layout", "-c", str(COURSE), "--topology", "course-a100x2")
    assert rc == 0
    assert "GPU0 A100-80GB  MIG on: 3g.40gb + 3g.40gb; now: 3g.40gb, 3g.40gb (unchanged)" in out
    assert "(already there; spare: 3g.40gb)" in out
    assert "  free: room for 1g.20gb@2, 3g.40gb@4 (58.75 GiB; see Notes)" in out
    assert "a mig-parted config carries counts only" in out


def test_course_without_pins_picks_by_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(
        capsys, "layout", "-c", str(COURSE), "--gpu", "A100-80GB", "--gpus", "2",
        "--ignore-pins", "--json",
    )  # fmt: skip
    doc = json.loads(out)
    assert rc == 0
    assert instances(doc, 0) == [("3g.40gb", 0, "student-a"), ("3g.40gb", 4, "student-b")]
    assert instances(doc, 1) == [("1g.10gb", 0, "student-c")]


def test_mig_parted_profiles_and_topology_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["layout", "-c", str(COURSE), "--gpu", "A100-80GB", "--gpus", "3"]
    rc, out, _ = run(capsys, *args, "--format", "mig-parted", "--name", "course")
    assert rc == 0
    assert yaml.safe_load(out) == {
        "version": "v1",
        "mig-configs": {
            "course": [
                {"devices": [0], "mig-enabled": True, "mig-devices": {"3g.40gb": 2}},
                {"devices": [1], "mig-enabled": True, "mig-devices": {"2g.20gb": 1}},
                {"devices": [2], "mig-enabled": False},
            ]
        },
    }
    rc, out, _ = run(capsys, *args, "--format", "profiles")
    assert '[models.student-c]\nprofile = "2g.20gb"\n' in out
    topology = tmp_path / "planned.toml"
    rc, _, _ = run(capsys, *args, "--topology-out", str(topology))
    assert rc == 0
    inv = load_inventory(topology)
    assert [(s.gpu_index, s.profile) for s in inv.slices] == [
        (0, "3g.40gb"),
        (0, "3g.40gb"),
        (1, "2g.20gb"),
        (2, None),  # unused: MIG off, one whole-GPU slice
    ]
    # The daemon's own placement puts every model on the planned layout.
    plan = place(load_config(COURSE), inv)
    assert {n: (s.gpu_index, s.profile) for n, s in plan.assignments.items()} == {
        "student-a": (0, "3g.40gb"),
        "student-b": (0, "3g.40gb"),
        "student-c": (1, "2g.20gb"),
    }


def test_plans_are_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["layout", "-c", str(COURSE), "--gpu", "H200", "--ignore-pins", "--json"]
    assert run(capsys, *args)[1] == run(capsys, *args)[1]


def test_infeasible_model_gets_advice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "big.toml"
    path.write_text(
        "[defaults]\ngpu_memory_utilization = 0.9\nmax_model_len = 8192\nmax_num_seqs = 64\n"
        '[models.llama70]\nmodel = "meta-llama/Llama-3.1-70B-Instruct"\nport = 8001\n'
        "[models.llama70.size_hint]\nweights_gib = 131.4\nnum_hidden_layers = 80\n"
        "hidden_size = 8192\nintermediate_size = 28672\nvocab_size = 128256\n"
        "num_attention_heads = 64\nnum_key_value_heads = 8\n"
    )
    rc, out, _ = run(capsys, "layout", "-c", str(path), "--gpu", "A100-80GB")
    assert rc == 1
    assert (
        "llama70: estimate 135.33 GiB: more than A100-80GB's largest profile 7g.80gb "
        "(71.10 GiB usable)" in out
    )
    assert (
        "llama70 would fit 7g.80gb with: a 4-bit (AWQ/GPTQ) variant of the model "
        "(weights about 39.42 GiB)" in out
    )


def test_pinned_slice_too_small_and_too_few_gpus() -> None:
    cfg = load_config(COURSE)
    c = cfg.models["student-c"].model_copy(update={"profile": "1g.10gb", "max_model_len": 65536})
    cfg = cfg.model_copy(update={"models": {**cfg.models, "student-c": c}})
    plan = plan_layout(cfg, synthetic(GPU_MODELS["a100-80gb"], 1))
    assert not plan.feasible
    assert [g.target.extra for g in plan.gpus] == [False, True]
    assert plan.advice[0] == (
        "needs 2 GPUs, 1 available: the extra GPU(s) show what the rest would need"
    )
    assert (
        'student-c would fit 1g.10gb with: max_model_len = 32768; or kv_cache_dtype = "fp8" '
        '(halves the KV cache); or profile = "1g.20gb"' in plan.advice
    )


def test_check_warns_when_the_estimate_exceeds_the_slice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(TOPOLOGIES / "a100-mixed.toml", tmp_path / "topo.toml")
    text = COURSE.read_text().replace('profile = "2g.20gb"', 'profile = "1g.10gb"')
    text = text.replace("max_model_len = 32768", "max_model_len = 65536")
    path = tmp_path / "models.toml"
    b_token = 'token_file = "/etc/mig-orchestrator/tokens/student-b.token"'
    text = text.replace(f'profile = "3g.40gb"\n{b_token}', f'profile = "2g.20gb"\n{b_token}')
    path.write_text(text)
    rc, out, err = run(capsys, "check", "-c", str(path), "--skip-secrets", "--topology",
                       str(tmp_path / "topo.toml"))  # fmt: skip
    assert rc == 0 and out.endswith("OK (3 models, 4 slices)\n")
    lines = err.splitlines()
    assert any(
        "warning: models.student-b: needs an estimated 18.74 GiB" in line
        and "more than GPU0 2g.20gb gives it: 19.50 GiB x 0.9 = 17.55 GiB" in line
        for line in lines
    ), err
    assert any(
        "warning: models.student-c: needs an estimated 9.54 GiB" in line
        and "KV cache 3.50 for 1 x 65536 tokens" in line
        and "it would fit with max_model_len = 32768" in line
        for line in lines
    ), err


def test_pins_to_a_mig_device_and_to_a_whole_gpu() -> None:
    cfg = load_config(COURSE)
    models = dict(cfg.models)
    models["student-c"] = models["student-c"].model_copy(update={"profile": None, "slice": GPU1_2G})
    models["student-b"] = models["student-b"].model_copy(update={"profile": None, "slice": 0})
    cfg = cfg.model_copy(update={"models": models})
    with Nvml.open(TOPOLOGIES / "course-a100x2.toml") as nvml:
        targets, notes, inv = from_nvml(nvml)
    plan = plan_layout(cfg, targets, inv)
    assert plan.feasible and notes == []
    by_gpu = {g.target.index: g for g in plan.gpus}
    # GPU0 goes whole (MIG off) for student-b; student-c keeps a 2g.20gb on GPU1, which leaves
    # room there for student-a's 3g.40gb.
    assert by_gpu[0].whole_models == ("student-b",) and not by_gpu[0].mig
    assert [(str(p), n) for p, n in by_gpu[1].instances] == [
        ("3g.40gb@0", "student-a"),
        ("2g.20gb@4", "student-c"),
    ]


def test_unknown_profile_pin_and_unsized_model() -> None:
    cfg = parse_config(
        '[models.a]\nmodel = "acme/absent"\nport = 8001\nprofile = "3g.40gb"\n'
        '[models.b]\nmodel = "acme/absent"\nport = 8002\n'
    )
    plan = plan_layout(cfg, synthetic(GPU_MODELS["h200-141gb"], 1))
    assert plan.unplaced["a"].startswith("profile '3g.40gb' does not exist on H200-141GB")
    assert "acme/absent is not on this host" in plan.unplaced["b"]


def test_too_few_gpus_names_the_extra_gpu_and_what_would_shrink(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, _ = run(capsys, "layout", "-c", str(COURSE), "--gpu", "A100-80GB", "--ignore-pins")
    assert rc == 1
    assert "GPU1 A100-80GB (extra: not on this host)  MIG on: 1g.10gb" in out
    # With student-b on a 1g.20gb, 3g.40gb + 1g.20gb + 1g.10gb would share one GPU.
    assert (
        "  student-b would fit 1g.20gb with: max_model_len = 3360; or a 4-bit (AWQ/GPTQ) variant "
        "of the model (weights about 4.93 GiB)\n" in out
    )


MIXED_HOST = """
[[gpu]]
name = "NVIDIA H100 80GB HBM3"
uuid = "GPU-00000000-0000-0000-0000-000000000000"
mig = "enabled"
profiles = "h100-80gb"
memory_total_mib = 81559

[[gpu]]
name = "NVIDIA A100-SXM4-80GB"
uuid = "GPU-00000000-0000-0000-0000-000000000001"
mig = "disabled"
profiles = "a100-80gb"
memory_total_mib = 81920

[[gpu]]
name = "NVIDIA L4"
uuid = "GPU-00000000-0000-0000-0000-000000000002"
mig = "unsupported"
memory_total_mib = 23034
"""


def test_mixed_gpu_models_and_a_gpu_without_mig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = tmp_path / "mixed.toml"
    topology.write_text(MIXED_HOST)
    rc, out, _ = run(capsys, "layout", "-c", str(COURSE), "--topology", str(topology), "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["feasible"]
    assert [g["gpu_model"] for g in doc["gpus"]] == ["H100-80GB", "A100-80GB"]
    assert doc["notes"][0] == "GPU2 NVIDIA L4: no known MIG profiles; not planned"
    # Both ways use 2 GPUs; the H100's larger profiles leave 384 MiB more to create if it keeps
    # the room, so the 2g.20gb goes there and the two 3g.40gb fill the A100 (MIG off today).
    assert instances(doc, 0) == [("2g.20gb", 0, "student-c")]
    assert instances(doc, 1) == [("3g.40gb", 0, "student-a"), ("3g.40gb", 4, "student-b")]
    assert doc["gpus"][0]["now"] == {"mig_enabled": True, "profiles": []}
    assert doc["gpus"][1]["now"] == {"mig_enabled": False, "profiles": []}
    # Estimates follow each GPU's vLLM defaults: the H100 gets 8192 batched tokens, the A100 2048.
    assert doc["models"]["student-c"]["estimate"]["max_num_batched_tokens"] == 8192
    assert doc["models"]["student-a"]["estimate"]["max_num_batched_tokens"] == 2048
    assert list(doc["models"]) == ["student-a", "student-b", "student-c"]


def test_share_gpu_models_share_one_whole_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_config(
        "".join(
            f'[models.{n}]\nmodel = "acme/absent"\nport = {p}\nshare_gpu = true\n'
            "gpu_memory_utilization = 0.45\n"
            for n, p in (("x", 8001), ("y", 8002))
        )
        + '[models.z]\nmodel = "acme/absent"\nport = 8003\nprofile = "7g.80gb"\n'
    )
    plan = plan_layout(cfg, synthetic(GPU_MODELS["h100-80gb"], 2))
    assert plan.feasible
    assert [(g.mig, g.whole_models, [n for _, n in g.instances]) for g in plan.gpus] == [
        (True, (), ["z"]),
        (False, ("x", "y"), []),
    ]
    choice = plan.models["x"].choice
    assert choice is not None and choice.why.startswith("share_gpu: a whole GPU (MIG off)")


def test_without_nvml_points_at_gpu_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_driver(cls: type[Nvml], topology: Path | None) -> Nvml:
        raise NvmlUnavailable("NVML Shared Library Not Found.")

    monkeypatch.setattr(Nvml, "open", classmethod(no_driver))
    rc, out, err = run(capsys, "layout", "-c", str(COURSE))
    assert (rc, out) == (2, "")
    assert err == (
        "error: NVML Shared Library Not Found. Or plan for GPUs to come: --gpu MODEL --gpus N.\n"
    )
    rc, _, err = run(capsys, "layout", "-c", str(COURSE), "--gpus", "2")
    assert (rc, err) == (2, "error: --gpus needs --gpu MODEL\n")
