"""`k8s render` of three courses against their golden directories; MIG_ORCH_REGENERATE_GOLDEN=1
rewrites them. Also: `kubectl kustomize` builds each directory, and each Deployment's args are the
host's argv without the command prefix."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.cli.main import main
from orchestrator.engine.launch import build_launch
from tests.k8s_support import COURSES, GOLDEN, REGENERATE_ENV, Course, files_under

IDS = [c.name for c in COURSES]


def rendered_dir(course: Course, tmp_path: Path) -> Path:
    out = tmp_path / course.name
    assert main(course.argv(out)) == 0
    return out


@pytest.mark.parametrize("course", COURSES, ids=IDS)
def test_matches_golden(course: Course, tmp_path: Path) -> None:
    out = rendered_dir(course, tmp_path)
    golden = GOLDEN / course.name
    if os.environ.get(REGENERATE_ENV) == "1":
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(out, golden)
    got, want = files_under(out), files_under(golden)
    assert sorted(got) == sorted(want)
    for path, text in got.items():
        assert text == want[path], (
            f"{path} differs from {golden / path} ({REGENERATE_ENV}=1 rewrites)"
        )


def test_check_passes_on_a_fresh_render_and_names_stale_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    course = COURSES[0]  # the schema checks of every course are in test_k8s_checks.py
    out = rendered_dir(course, tmp_path)
    assert main(course.argv(out, "--check")) == 0
    some = sorted((out / "course" / "engines").iterdir())[0]
    some.write_text(some.read_text(encoding="utf-8").replace("Recreate", "RollingUpdate"))
    (out / "course" / "engines" / "gone.yaml").write_text(
        (out / "course" / "namespace.yaml").read_text(encoding="utf-8")
    )
    capsys.readouterr()
    assert main(course.argv(out, "--check")) == 1
    err = capsys.readouterr().err
    assert f"course/engines/{some.name}: out of date" in err
    assert "course/engines/gone.yaml: no longer rendered" in err
    # Rendering again brings the directory back, and removes what is no longer rendered.
    assert main(course.argv(out)) == 0
    assert not (out / "course" / "engines" / "gone.yaml").exists()
    assert main(course.argv(out, "--check")) == 0


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("MIG_ORCH_REQUIRE_KUBECTL") == "1":
            pytest.fail("kubectl is not installed (tests/run.sh installs it as root)")
        pytest.skip("kubectl is not installed")
    return kubectl


def _kustomize(directory: Path) -> list[tuple[str, str | None, str]]:
    built = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return sorted(
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
        for d in yaml.safe_load_all(built.stdout)
    )


@pytest.mark.parametrize("course", COURSES, ids=IDS)
def test_kubectl_kustomize_builds_the_directory(course: Course, tmp_path: Path) -> None:
    """The whole directory, and each part on its own (the MIG configs are applied first)."""
    out = rendered_dir(course, tmp_path)
    want = sorted(
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        for _, o in course.render().objects()
    )
    assert _kustomize(out) == want
    assert sorted(_kustomize(out / "course") + _kustomize(out / "gpu-operator")) == want


def _host_argvs(course: Course, tmp_path: Path) -> dict[str, list[str]]:
    """What `mig-orchestrator plan --json` says each engine runs on a host holding the layout."""
    where = ["--topology", "course-a100x2"]
    if course.name == "h200-lab":  # the host the layout planner plans for this course
        topology = tmp_path / "planned.toml"
        layout = ["layout", "-c", str(course.config), "--gpu", "H200", "--gpus", "2"]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main([*layout, "--topology-out", str(topology)]) == 0
        where = ["--topology", str(topology)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["plan", "-c", str(course.config), *where, "--json"]) == 0
    return {m["model"]: m["argv"] for m in json.loads(printed.getvalue())["models"]}


@pytest.mark.parametrize("course", COURSES, ids=IDS)
def test_deployment_args_are_the_host_argv_without_its_command(
    course: Course, tmp_path: Path
) -> None:
    cfg = course.load()
    if course.name == "department":
        # A whole L40S has no host topology to plan on: the host's argv from build_launch itself.
        host = {
            n: build_launch(cfg, n, None, base_env={}, read_secrets=False).argv for n in cfg.models
        }
    else:
        host = _host_argvs(course, tmp_path)
    engines = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]
        for _, o in course.render().objects()
        if o["kind"] == "Deployment" and o["metadata"]["name"] in cfg.models
    }
    assert sorted(engines) == sorted(cfg.models) == sorted(host)
    prefix = len(cfg.orchestrator.engine_command)
    for name, container in engines.items():
        assert container["args"] == host[name][prefix:], name
        assert host[name][:prefix] == cfg.orchestrator.engine_command
        assert container["command"] == list(
            cfg.kubernetes.engine_command if cfg.kubernetes else ["vllm", "serve"]
        )
