"""Fuzz the control plane from its own OpenAPI schema (schemathesis) against the real daemon."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from orchestrator.config import VllmSettings
from tests.daemon_harness import Daemon, engine_pids, free_ports, write_secret

pytestmark = pytest.mark.slow

TOKEN = "fuzz-admin-token"
# Names no other test uses, so engines of parallel runs are easy to tell apart in ps.
MODELS = ("fuzz-a", "fuzz-b")
STARTUP_TIMEOUT_S = 5.0  # a fuzzed --port in extra_args never answers: give up on it quickly
EXAMPLES = 30


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("fuzz")
    token_file = write_secret(root / "admin.token", TOKEN)
    ports = free_ports(len(MODELS))
    d = Daemon(
        root,
        {
            n: {"model": "stand-in", "port": p, "host": "127.0.0.1"}
            for n, p in zip(MODELS, ports, strict=True)
        },
        orchestrator={
            "admin_token_file": str(token_file),
            # Fuzzed overrides may make an engine crash on start; it must stay restartable.
            "max_restarts": 1000,
            "startup_timeout_s": STARTUP_TIMEOUT_S,
        },
        token=TOKEN,
    )
    d.start(wait_ready=MODELS)
    yield d
    try:
        if d.proc is not None and d.proc.poll() is None:
            d.terminate()
    finally:
        for name in MODELS:
            for pid in engine_pids(name):
                os.kill(pid, signal.SIGKILL)


def load_schema(daemon: Daemon, patch: Callable[[dict[str, Any]], None] | None = None) -> Any:
    raw = httpx.get(f"{daemon.url}/openapi.json", timeout=10).json()
    if patch is not None:
        patch(raw)
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=daemon.url)
    return schema


def restart_clean(daemon: Daemon, name: str) -> dict[str, Any]:
    """Restart without overrides and wait for ready: whatever the fuzz left behind is undone."""
    r = daemon.post(f"/api/v1/models/{name}/restart", json={"overrides": {}})
    assert r.status_code == 202, r.text
    return daemon.wait_state(name, "ready", timeout=30)


def documented_or_client_error(ctx: Any, response: Any, case: Case) -> bool | None:
    """Only documented statuses, plus 4xx (401/403/404 are not in FastAPI's generated schema)."""
    documented = {int(code) for code in case.operation.definition.raw["responses"]}
    code = response.status_code
    assert code != 401, f"the admin token was not sent: {case.method} {case.path}"
    assert code in documented or 400 <= code < 500, (
        f"{case.method} {case.formatted_path} answered {code}, not in {sorted(documented)} or 4xx"
    )
    return None


def restart_settles(daemon: Daemon) -> Callable[[Any, Any, Case], bool | None]:
    """An accepted restart of a real model ends ready on a new process, or in backoff/failed."""

    def check(ctx: Any, response: Any, case: Case) -> bool | None:
        name = (case.path_parameters or {}).get("name")
        if not case.path.endswith("/restart") or response.status_code != 202 or name not in MODELS:
            return None
        old_pid = response.json()["pid"]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S + 10
        while time.monotonic() < deadline:
            s = daemon.status(name)
            settled = s["state"] in ("backoff", "failed")
            if settled or (s["state"] == "ready" and s["pid"] != old_pid):
                return None
            time.sleep(0.05)
        raise AssertionError(f"{name} stuck after restart {case.body!r}: {daemon.status(name)}")

    return check


def examples(strategy: st.SearchStrategy[Case], checks: list[Any]) -> Counter[int]:
    """Send EXAMPLES cases from strategy, checking each response; returns the status counts."""
    seen: Counter[int] = Counter()

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case) -> None:
        seen[case.call_and_validate(checks=checks, timeout=30).status_code] += 1

    run()
    return seen


def _param(path: str) -> str:
    return "key_id" if "{key_id}" in path else "name"


def _new_key(daemon: Daemon) -> str:
    body = {"owner": "fuzz-service", "kind": "service", "models": list(MODELS)}
    r = httpx.post(f"{daemon.url}/api/v1/keys", json=body, headers=daemon.headers(TOKEN))
    assert r.status_code == 201, r.text
    return str(r.json()["key"]["id"])


def fuzz(daemon: Daemon, schema: Any, only: set[str] | None = None) -> dict[str, Counter[int]]:
    """Run every (chosen) operation in both modes; returns status counts by operation."""
    checks = [
        not_a_server_error,
        response_schema_conformance,
        content_type_conformance,
        documented_or_client_error,
        restart_settles(daemon),
        negative_data_rejection,  # invalid data must be refused: the API's types are strict
    ]
    auth = {"authorization": f"Bearer {TOKEN}"}
    failures: list[str] = []
    statuses: dict[str, Counter[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if only is not None and operation.label not in only:
            continue
        seen = statuses.setdefault(operation.label, Counter())
        # The schema cannot know the configured names, so without them every {name} call is a
        # 404: the real names are fuzzed beside arbitrary ones.
        names: list[str | None] = [None]
        if "{name}" in operation.path:
            names += MODELS
        elif "{key_id}" in operation.path:  # a key made now: rotated or revoked by the fuzz
            names += [_new_key(daemon)]
        # Only a body or a query can be made invalid here: the token header is fixed and any
        # string is a valid {name}. (Hypothesis needs seconds to prove there is nothing else.)
        negatable = bool(list(operation.body)) or bool(list(operation.query))
        for mode in GenerationMode if negatable else [GenerationMode.POSITIVE]:
            strategy = st.one_of(
                [
                    operation.as_strategy(
                        generation_mode=mode,
                        headers=auth,
                        path_parameters=None if n is None else {_param(operation.path): n},
                    )
                    for n in names
                ]
            )
            try:
                seen.update(examples(strategy, checks))
            except Exception as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    return statuses


def test_control_plane_fuzz(daemon: Daemon) -> None:
    statuses = fuzz(daemon, load_schema(daemon))
    # The fuzz got past authentication and the name lookup into every handler.
    assert len(statuses) == 16, sorted(statuses)
    for label, seen in statuses.items():
        if label == "POST /api/v1/keys":
            continue  # a valid owner is rarely drawn; _new_key's own 201 shows the success path
        assert any(200 <= code < 300 for code in seen), f"{label} never succeeded: {dict(seen)}"
    assert statuses["GET /api/v1/models/{name}/logs"][422] > 0  # e.g. tail=-1


def test_restart_overrides_fuzz(daemon: Daemon) -> None:
    # The published schema says only "overrides: object", so random keys are all 422. The real
    # shape (VllmSettings) makes the fuzz send settings engines are actually restarted with.
    def real_overrides(raw: dict[str, Any]) -> None:
        body = raw["components"]["schemas"]["RestartBody"]["properties"]
        body["overrides"] = {"anyOf": [VllmSettings.model_json_schema(), {"type": "null"}]}

    label = "POST /api/v1/models/{name}/restart"
    # Overrides are strictly typed, as models.toml is ("max_model_len": "5" is refused), so
    # invalid data from VllmSettings' schema must be rejected too.
    seen = fuzz(daemon, load_schema(daemon, real_overrides), {label})[label]
    assert seen[202] > 0 and seen[422] > 0, dict(seen)


@pytest.mark.parametrize(
    "overrides",
    [
        {"extra_args": ["\ud800"]},
        {"env": {"A": "\udcff"}},
        {"extra_args": ["--x", "a\x00b"]},
        {"env": {"A": "\x00"}},
        {"env": {"A=B": "1"}},
    ],
    ids=["surrogate-arg", "surrogate-env", "nul-arg", "nul-env", "equals-in-env-name"],
)
def test_overrides_exec_cannot_take_are_refused(daemon: Daemon, overrides: dict[str, Any]) -> None:
    # Regression: these were accepted (202); the engine then never left "starting" and, for a
    # lone surrogate, GET /api/v1/models answered 500 until the overrides changed.
    before = restart_clean(daemon, MODELS[0])
    r = httpx.post(
        f"{daemon.url}/api/v1/models/{MODELS[0]}/restart",
        # ASCII JSON carries a lone surrogate as "\ud800", as any client could send it.
        content=json.dumps({"overrides": overrides}),
        headers={**daemon.headers(), "content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("overrides.")
    assert daemon.get("/api/v1/models").status_code == 200
    assert daemon.status(MODELS[0])["pid"] == before["pid"]


def test_null_env_override_means_no_env_override(daemon: Daemon) -> None:
    restart_clean(daemon, MODELS[1])
    # Regression: this answered 500 (the settings merge cannot take a null env table).
    r = daemon.post(
        f"/api/v1/models/{MODELS[1]}/restart", json={"overrides": {"env": None, "max_num_seqs": 3}}
    )
    assert r.status_code == 202, r.text
    s = daemon.wait_state(MODELS[1], "ready")
    assert s["overrides"] == {"max_num_seqs": 3} and "--max-num-seqs" in s["argv"]


def test_daemon_survives_the_fuzz(daemon: Daemon) -> None:
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()[-4000:]
    assert httpx.get(f"{daemon.url}/healthz", timeout=5).status_code == 200
    for name in MODELS:  # every model comes back, whatever the fuzz did to it
        assert restart_clean(daemon, name)["overrides"] == {}
    assert "Traceback" not in daemon.log(), daemon.log()[-6000:]
