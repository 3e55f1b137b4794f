"""Every rendered object against the official schemas (kubernetes-validate, strict, several minor
versions; the PodMonitor against the Prometheus Operator's CRD), and our own consistency checks,
which name the object and field at fault."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from orchestrator.k8s import checks
from orchestrator.k8s.render import Rendered
from tests.k8s_support import COURSES, CRD, Course

IDS = [c.name for c in COURSES]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    return {c.name: c.render() for c in COURSES}


@pytest.mark.parametrize("course", COURSES, ids=IDS)
def test_core_objects_pass_the_official_schemas(
    course: Course, rendered: dict[str, Rendered]
) -> None:
    errors, notes = checks.schema(rendered[course.name])
    assert errors == []
    assert notes == ["PodMonitor: not a core kind, no official schema to check it against"]
    assert len(checks.SCHEMA_VERSIONS) >= 2


@pytest.mark.parametrize("version", ["1.30.0", "1.36.0"])
def test_kubernetes_validate_strict_command_passes_every_file(version: str, tmp_path: Path) -> None:
    """The command itself, as a cluster admin would run it on the directory."""
    course = COURSES[1]  # the department: every kind, the gateway included
    from orchestrator.cli.main import main

    assert main(course.argv(tmp_path)) == 0
    files = sorted(str(p) for p in tmp_path.rglob("*.yaml") if p.name != "kustomization.yaml")
    tool = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert tool is not None
    run = subprocess.run(
        [tool, "--strict", "--quiet", "-k", version, *files],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # Only the PodMonitor, a custom resource, has no official schema; it is checked below.
    warned = [line for line in run.stdout.splitlines() if line.startswith("WARN")]
    assert len(warned) == 1 and "PodMonitor" in warned[0]


def _crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    assert crd["metadata"]["annotations"]["operator.prometheus.io/version"] == "0.93.0"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return dict(v1["schema"]["openAPIV3Schema"])


def _unknown_fields(obj: Any, schema: dict[str, Any], where: str) -> list[str]:
    """Fields the CRD does not declare: the API server would prune them without a word."""
    if isinstance(obj, dict) and "properties" in schema:
        out = []
        for key, value in obj.items():
            if key not in schema["properties"]:
                out.append(f"{where}.{key}")
            else:
                out += _unknown_fields(value, schema["properties"][key], f"{where}.{key}")
        return out
    if isinstance(obj, list) and "items" in schema:
        return [
            e
            for i, v in enumerate(obj)
            for e in _unknown_fields(v, schema["items"], f"{where}[{i}]")
        ]
    return []


@pytest.mark.parametrize("course", COURSES, ids=IDS)
def test_pod_monitor_passes_the_prometheus_operator_crd(
    course: Course, rendered: dict[str, Rendered]
) -> None:
    schema = _crd_schema()
    (monitor,) = [o for _, o in rendered[course.name].objects() if o["kind"] == "PodMonitor"]
    jsonschema.Draft7Validator(schema).validate(monitor)
    assert _unknown_fields(monitor["spec"], schema["properties"]["spec"], "spec") == []


def test_the_crd_check_catches_a_wrong_pod_monitor(rendered: dict[str, Rendered]) -> None:
    schema = _crd_schema()
    (monitor,) = [o for _, o in rendered["course"].objects() if o["kind"] == "PodMonitor"]
    wrong = copy.deepcopy(monitor)
    wrong["spec"]["podMetricsEndpoints"][0]["interval"] = "ten seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(wrong)
    wrong = copy.deepcopy(monitor)
    wrong["spec"]["podMetricsEndpoint"] = wrong["spec"].pop("podMetricsEndpoints")
    assert _unknown_fields(wrong["spec"], schema["properties"]["spec"], "spec") == [
        "spec.podMetricsEndpoint"
    ]


@pytest.mark.parametrize("course", COURSES, ids=IDS)
def test_consistency_holds(course: Course, rendered: dict[str, Rendered]) -> None:
    assert checks.consistency(rendered[course.name]) == []


def _mutated(r: Rendered, path: str, kind: str, change: Any) -> Rendered:
    files = copy.deepcopy(r.files)
    (obj,) = [o for o in files[path] if o["kind"] == kind]
    change(obj)
    return Rendered(files, r.readme, r.plan, r.settings, r.secrets)


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"]["spec"]["containers"][0])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: _container(d)["ports"][0].update(containerPort=9999),
            "course/engines/student-a.yaml: Deployment/student-a: spec.template.spec.containers[0]"
            ".ports: {'http': 9999}, but vLLM listens on --port 8001",
        ),
        (
            lambda d: _container(d)["resources"]["limits"].update({"nvidia.com/mig-2g.20gb": 1}),
            "Deployment/student-a: spec.template.spec.containers[0].resources.limits",
        ),
        (
            lambda d: _container(d)["livenessProbe"]["httpGet"].update(port="metrics"),
            "Deployment/student-a: spec.template.spec.containers[0].livenessProbe.httpGet.port: "
            "'metrics' is no container port",
        ),
        (
            lambda d: _container(d)["env"][-1]["valueFrom"]["secretKeyRef"].update(name="other"),
            "Deployment/student-a: spec.template.spec.containers[0].env[5].valueFrom.secretKeyRef: "
            "other/api-key is not among the Secrets",
        ),
        (
            lambda d: d["spec"]["template"]["spec"]["nodeSelector"].update(
                {"nvidia.com/mig.config": "x"}
            ),
            "Deployment/student-a: spec.template.spec.nodeSelector.nvidia.com/mig.config: 'x' is "
            "no mig-parted config",
        ),
    ],
)
def test_consistency_names_object_and_field(
    rendered: dict[str, Rendered], change: Any, expected: str
) -> None:
    broken = _mutated(rendered["course"], "course/engines/student-a.yaml", "Deployment", change)
    problems = checks.consistency(broken)
    assert any(expected in p for p in problems), problems


def test_more_engines_than_slices_is_caught(rendered: dict[str, Rendered]) -> None:
    r = rendered["course"]

    def to_3g(d: dict[str, Any]) -> None:
        _container(d)["resources"]["limits"] = {"nvidia.com/mig-3g.40gb": 1}

    broken = _mutated(r, "course/engines/student-c.yaml", "Deployment", to_3g)
    problems = checks.consistency(broken)
    assert (
        "mig-orchestrator-mig-parted-config: mig-configs.a100: 3 engines request "
        "nvidia.com/mig-3g.40gb, its nodes hold 2" in problems
    )


def test_service_and_policy_checks(rendered: dict[str, Rendered]) -> None:
    r = rendered["course"]
    broken = _mutated(
        r,
        "course/engines/student-b.yaml",
        "Service",
        lambda s: s["spec"]["ports"][0].update(port=80),
    )
    assert checks.consistency(broken) == [
        "course/engines/student-b.yaml: Service/student-b: spec.ports[0].port: 80, but its pod "
        "serves on 8002"
    ]
    broken = _mutated(
        r,
        "course/network-policy.yaml",
        "NetworkPolicy",
        lambda p: p["spec"]["ingress"][0]["ports"].pop(),
    )
    assert checks.consistency(broken) == [
        "course/network-policy.yaml: NetworkPolicy/mig-orchestrator-engines: "
        "spec.ingress[0].ports: engine student-c's port 8003 is not allowed"
    ]


def test_schema_problems_name_object_field_and_version(rendered: dict[str, Rendered]) -> None:
    broken = _mutated(
        rendered["course"],
        "course/engines/student-a.yaml",
        "Deployment",
        lambda d: d["spec"].update(replicas="one"),
    )
    errors, _ = checks.schema(broken, ("1.33",))
    assert errors == [
        "course/engines/student-a.yaml: Deployment/student-a: spec.replicas: 'one' is not of type "
        "'integer', 'null' (Kubernetes 1.33)"
    ]
