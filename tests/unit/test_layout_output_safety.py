"""Layout output that a sysadmin applies to a GPU: names, partial plans, and the reasons given."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli.main import main
from orchestrator.config import parse_config
from orchestrator.gpu.mig_profiles import GPU_MODELS, PROFILE_TABLES
from orchestrator.layout import render
from orchestrator.layout.pack import plan_layout
from orchestrator.layout.targets import synthetic

COURSE = Path(__file__).resolve().parents[2] / "models.toml"
A100 = next(m for m in GPU_MODELS.values() if m.label == "A100-80GB")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse refusals
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(autouse=True)
def no_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


@pytest.mark.parametrize("name", ["a: b", "#x", "", "my course", "-x", "x" * 64, "a\nb"])
def test_a_name_that_is_no_label_value_is_refused(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    rc, out, err = run(
        capsys,
        "layout",
        "-c",
        str(COURSE),
        "--topology",
        "course-a100x2",
        "--format",
        "mig-parted",
        f"--name={name}",
    )
    assert rc == 2 and out == ""
    assert "not a Kubernetes label value" in err


@pytest.mark.parametrize("name", ["yes", "no", "on", "1.0", "course-2026_a"])
def test_names_yaml_would_retype_stay_strings(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    rc, out, _ = run(
        capsys,
        "layout",
        "-c",
        str(COURSE),
        "--topology",
        "course-a100x2",
        "--format",
        "mig-parted",
        "--name",
        name,
    )
    assert rc == 0
    assert list(yaml.safe_load(out)["mig-configs"]) == [name]


def test_an_unplaced_course_prints_no_applyable_config(capsys: pytest.CaptureFixture[str]) -> None:
    # The course's A100 profiles do not exist on an H200: nothing is placed, and the config that
    # used to be printed said `mig-enabled: false`, which would turn MIG off.
    rc, out, err = run(
        capsys, "layout", "-c", str(COURSE), "--gpu", "H200-141GB", "--format", "mig-parted"
    )
    assert rc == 1 and out == ""
    for model in ("student-a", "student-b", "student-c"):
        assert model in err
    assert "--partial" in err


def test_partial_prints_the_config_and_names_what_it_leaves_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, err = run(
        capsys,
        "layout",
        "-c",
        str(COURSE),
        "--gpu",
        "H200-141GB",
        "--format",
        "mig-parted",
        "--partial",
    )
    assert rc == 1  # still infeasible
    assert "student-a" in err and "NOT PLACED" in out and "student-a" in out
    assert yaml.safe_load(out)["version"] == "v1"


def test_the_config_says_it_carries_counts_not_start_slots(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, _ = run(
        capsys, "layout", "-c", str(COURSE), "--topology", "course-a100x2", "--format", "mig-parted"
    )
    assert rc == 0 and "carries counts" in out


def test_two_media_extension_pins_blame_the_one_per_gpu_rule() -> None:
    me = next(p.name for p in PROFILE_TABLES[A100.key] if p.name.endswith("+me"))
    cfg = parse_config(
        "\n".join(
            f'[models.m{i}]\nmodel = "org/x"\nport = {19401 + i}\nprofile = "{me}"\n'
            "[models.m{i}.size_hint]\nweights_gib = 1.0\nnum_hidden_layers = 2\n"
            "hidden_size = 64\nintermediate_size = 128\nvocab_size = 100\n"
            "num_attention_heads = 2\n".replace("{i}", str(i))
            for i in range(2)
        )
    )
    plan = plan_layout(cfg, synthetic(A100, 2), None)
    text = " ".join(plan.reasons)
    assert "media-extension (+me)" in text and "at most one" in text
    assert "where instances may start" not in text


def test_check_config_name_accepts_the_default() -> None:
    assert render.check_config_name(render.MIG_PARTED_NAME) == render.MIG_PARTED_NAME
