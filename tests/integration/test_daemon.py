"""The real daemon, as a subprocess, supervising stand-in engines on a simulated MIG topology."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.gpu import topology_file
from orchestrator.units import GIB
from tests.daemon_harness import (
    engine_pids,
    events,
    free_ports,
    group_pids,
    wait_until,
    write_secret,
)
from tests.daemon_harness import standin_model as model

pytestmark = pytest.mark.slow


def test_ready_status_and_openai_on_own_port(daemons) -> None:
    p1, p2 = free_ports(2)
    d = daemons({"alice": model(p1, profile="3g.40gb"), "bob": model(p2, min_memory_gib=15)})
    d.start(wait_ready=["alice", "bob"])
    a = d.status("alice")
    assert a["slice"]["profile"] == "3g.40gb"
    assert a["slice"]["uuid"].startswith("MIG-")
    assert a["endpoint"] == f"http://127.0.0.1:{p1}/v1"
    assert a["pid"] in engine_pids("alice")
    assert a["restarts"] == 0 and a["uptime_s"] > 0
    assert d.status("bob")["slice"]["profile"] == "2g.20gb"  # best fit for 15 GiB
    r = httpx.post(
        f"http://127.0.0.1:{p1}/v1/completions",
        json={"model": "alice", "prompt": "hello there", "max_tokens": 4},
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    # The engine saw its slice and the exact flags, through the daemon's argv and env.
    listing = d.get("/api/v1/models").json()
    assert [m["name"] for m in listing] == ["alice", "bob"]
    assert d.get("/api/v1/models/nobody").status_code == 404
    assert "error" in d.get("/api/v1/models/nobody").json()
    slices = d.get("/api/v1/slices").json()
    assert {s["profile"] for s in slices} == {"3g.40gb", "2g.20gb", "1g.10gb"}
    assert d.get("/healthz").json()["ready"] == 2


def test_engine_env_and_argv(daemons, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    state = tmp_path / "events.jsonl"
    key = write_secret(tmp_path / "alice.key", "sk-alice\n")
    d = daemons(
        {
            "alice": model(
                port,
                profile="2g.20gb",
                api_key_file=str(key),
                enable_prefix_caching=False,
                max_model_len=1024,
                env={"STANDIN_STATE_FILE": str(state)},
            )
        }
    )
    d.start(wait_ready=["alice"])
    started = next(e for e in events(state) if e["event"] == "started")
    assert "--no-enable-prefix-caching" in started["argv"]
    assert "sk-alice" not in " ".join(started["argv"])
    slice_uuid = d.status("alice")["slice"]["uuid"]
    assert started["env"]["CUDA_VISIBLE_DEVICES"] == slice_uuid
    assert "NOTIFY_SOCKET" not in started["env"]
    r = httpx.get(f"http://127.0.0.1:{port}/v1/models")
    assert r.status_code == 401
    r = httpx.get(
        f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer sk-alice"}
    )
    assert r.json()["data"][0]["id"] == "alice"


def test_crash_restarts_with_backoff_then_fails(daemons, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    state = tmp_path / "events.jsonl"
    d = daemons(
        {
            "crashy": model(
                port, env={"STANDIN_CRASH_AFTER": "0.3", "STANDIN_STATE_FILE": str(state)}
            )
        },
        orchestrator={"max_restarts": 3, "backoff_initial_s": 0.5, "backoff_max_s": 5.0},
    )
    d.start()
    s = d.wait_state("crashy", "failed", timeout=40)
    assert s["restarts"] == 3
    assert "giving up" in s["reason"] and "exited with code 1" in s["reason"]
    assert s["last_exit"]["code"] == 1
    assert "injected crash" in s["last_exit"]["reason"]  # the engine's own error line
    starts = [e for e in events(state) if e["event"] == "started"]
    assert len(starts) == 4
    # The daemon's own transition times: each backoff -> starting comes 0.5, 1, 2 s after the
    # crash put it in backoff.
    stamps = re.findall(
        r"^\S+ (\d\d:\d\d:\d\d,\d+) \w+ orchestrator.engine.lifecycle: crashy: (\w+) -> (\w+)$",
        d.log(),
        re.MULTILINE,
    )
    times = [(dt.datetime.strptime(t, "%H:%M:%S,%f"), a, b) for t, a, b in stamps]
    entered = [t for t, _, b in times if b == "backoff"]
    left = [t for t, a, b in times if a == "backoff" and b == "starting"]
    waits = [(lv - en).total_seconds() for en, lv in zip(entered, left, strict=False)]
    assert len(waits) == 3, stamps
    for got, want in zip(waits, (0.5, 1.0, 2.0), strict=True):
        assert want - 0.01 <= got <= want + 0.5, waits
    assert not engine_pids("crashy")
    # An admin can bring a failed model back.
    assert d.post("/api/v1/models/crashy/start").status_code == 202
    d.wait_state("crashy", "starting", "ready", "backoff")


def test_sigkill_of_engine_is_noticed_at_once_and_orphans_removed(daemons) -> None:
    (port,) = free_ports(1)
    d = daemons(
        {"m": model(port, env={"STANDIN_SPAWN_GRANDCHILD": "1"})},
        orchestrator={"health_interval_s": 30.0},
    )
    d.start(wait_ready=["m"])
    pid = d.status("m")["pid"]
    group = group_pids(pid)
    assert len(group) == 2  # server + its EngineCore stand-in
    os.kill(pid, signal.SIGKILL)
    # health_interval_s is 30 s: only the exit notification can make this quick.
    s = wait_until(lambda: (st := d.status("m"))["restarts"] == 1 and st, 3, "the restart")
    assert (
        "SIGKILL" in (s["last_exit"]["reason"] or "") or s["last_exit"]["signal"] == signal.SIGKILL
    )
    s = d.wait_state("m", "ready")
    assert all(p not in group_pids(pid) for p in group)  # the orphaned EngineCore is gone
    assert engine_pids("m") == [s["pid"]] or len(group_pids(s["pid"])) == 2


def test_hang_makes_it_unhealthy_then_restarted(daemons) -> None:
    (port,) = free_ports(1)
    d = daemons(
        {"m": model(port, env={"STANDIN_HANG_AFTER": "0.2"})},
        orchestrator={"unhealthy_threshold": 2, "max_restarts": 10},
    )
    d.start(wait_ready=["m"])
    first = d.status("m")["pid"]
    d.wait_state("m", "unhealthy", timeout=10)
    s = wait_until(lambda: (st := d.status("m"))["restarts"] >= 1 and st, 15, "restart after hang")
    assert s["last_exit"]["reason"].startswith("unhealthy")
    assert first not in engine_pids("m")


def test_stop_removes_whole_tree_even_when_sigterm_is_ignored(daemons) -> None:
    (port,) = free_ports(1)
    d = daemons(
        {
            "stubborn": model(
                port, env={"STANDIN_IGNORE_SIGTERM": "1", "STANDIN_SPAWN_GRANDCHILD": "1"}
            )
        },
        orchestrator={"stop_grace_s": 1.0},
    )
    d.start(wait_ready=["stubborn"])
    pid = d.status("stubborn")["pid"]
    assert len(group_pids(pid)) == 2
    t0 = time.monotonic()
    assert d.post("/api/v1/models/stubborn/stop").status_code == 202
    d.wait_state("stubborn", "stopped", timeout=15)
    assert time.monotonic() - t0 >= 1.0  # it waited the grace period before SIGKILL
    assert group_pids(pid) == [] and engine_pids("stubborn") == []
    assert "SIGKILL" in "\n".join(d.get("/api/v1/models/stubborn/logs?tail=20").json()["lines"])


def test_port_in_use_fails_that_model_only(daemons) -> None:
    import socket

    p1, p2 = free_ports(2)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", p1))
    squatter.listen()
    try:
        d = daemons({"blocked": model(p1), "fine": model(p2)})
        d.start(wait_ready=["fine"])
        s = d.wait_state("blocked", "failed")
        assert f"port {p1} is already in use" in s["reason"]
        assert engine_pids("blocked") == []
        assert d.status("fine")["state"] == "ready"
    finally:
        squatter.close()


def test_bad_engine_setting_reports_engine_error(daemons) -> None:
    (port,) = free_ports(1)
    d = daemons(
        {
            "bad": model(
                port, env={"STANDIN_FAIL_START": "ValueError: max_model_len 999999 is too large"}
            )
        },
        orchestrator={"max_restarts": 1},
    )
    d.start()
    s = d.wait_state("bad", "failed", timeout=20)
    assert "ValueError: max_model_len 999999 is too large" in s["reason"]


def test_daemon_sigterm_leaves_nothing_and_exits_zero(daemons) -> None:
    ports = free_ports(3)
    d = daemons(
        {f"m{i}": model(p, env={"STANDIN_SPAWN_GRANDCHILD": "1"}) for i, p in enumerate(ports)}
    )
    d.start(wait_ready=["m0", "m1", "m2"])
    groups = [d.status(f"m{i}")["pid"] for i in range(3)]
    t0 = time.monotonic()
    assert d.terminate() == 0
    assert time.monotonic() - t0 < 5  # in parallel, not one grace period after another
    for pgid in groups:
        assert group_pids(pgid) == []
    for i in range(3):
        assert engine_pids(f"m{i}") == []


def test_concurrent_start_stop_storm_never_doubles_an_engine(daemons) -> None:
    (port,) = free_ports(1)
    d = daemons({"m": model(port, env={"STANDIN_STARTUP_DELAY": "0.2"})})
    d.start(wait_ready=["m"])
    seen_max = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal seen_max
        while not stop.is_set():
            seen_max = max(seen_max, len(engine_pids("m")))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()

    def storm(i: int) -> None:
        with httpx.Client(base_url=d.url, timeout=30) as c:
            for j in range(8):
                verb = ("start", "stop", "restart")[(i + j) % 3]
                assert c.post(f"/api/v1/models/m/{verb}").status_code == 202

    threads = [threading.Thread(target=storm, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert d.post("/api/v1/models/m/start").status_code == 202
    d.wait_state("m", "ready", timeout=30)
    time.sleep(0.5)
    stop.set()
    watcher.join()
    assert seen_max == 1
    assert len(engine_pids("m")) == 1


def test_stable_slices_and_desired_state_survive_daemon_restart(daemons) -> None:
    p1, p2 = free_ports(2)
    d = daemons({"a": model(p1), "b": model(p2)})
    d.start(wait_ready=["a", "b"])
    slices = {n: d.status(n)["slice"]["uuid"] for n in ("a", "b")}
    d.post("/api/v1/models/b/stop")
    d.wait_state("b", "stopped")
    assert d.terminate() == 0
    d.start(wait_ready=["a"])
    assert {n: d.status(n)["slice"]["uuid"] for n in ("a", "b")} == slices
    time.sleep(1)
    assert d.status("b")["state"] == "stopped"  # an admin's stop is remembered


def test_engines_of_a_killed_daemon_are_stopped_by_the_next_one(daemons) -> None:
    (port,) = free_ports(1)
    d = daemons({"m": model(port, env={"STANDIN_SPAWN_GRANDCHILD": "1"})})
    d.start(wait_ready=["m"])
    old = d.status("m")["pid"]
    d.kill9()
    assert old in engine_pids("m")  # nothing killed it yet
    d.start(wait_ready=["m"])
    new = d.status("m")["pid"]
    assert new != old and engine_pids("m") == [new]
    assert len(group_pids(new)) == 2
    assert group_pids(old) == []


def test_reload_applies_only_the_difference(daemons) -> None:
    p1, p2, p3, p4 = free_ports(4)
    d = daemons({"keep": model(p1), "change": model(p2), "drop": model(p3)})
    d.start(wait_ready=["keep", "change", "drop"])
    keep_pid, change_pid = d.status("keep")["pid"], d.status("change")["pid"]
    d.models = {"keep": model(p1), "change": model(p2, max_model_len=512), "add": model(p4)}
    d.write_config()
    r = d.post("/api/v1/reload")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "added": ["add"],
        "removed": ["drop"],
        "changed": ["change"],
        "unchanged": ["keep"],
    }
    d.wait_state("add", "ready")
    s = d.wait_state("change", "ready")
    assert s["pid"] != change_pid and "--max-model-len" in s["argv"]
    assert d.status("keep")["pid"] == keep_pid
    assert d.get("/api/v1/models/drop").status_code == 404 and engine_pids("drop") == []
    # A broken file is refused with its errors; everything keeps running.
    d.config_path.write_text(d.config_path.read_text().replace("max_model_len", "max_model_lenn"))
    r = d.post("/api/v1/reload")
    assert r.status_code == 422 and "max_model_lenn" in r.json()["error"]
    assert d.status("keep")["pid"] == keep_pid and d.status("add")["state"] == "ready"
    # SIGHUP does the same as the REST call.
    d.models["keep"] = model(p1, max_num_seqs=8)
    d.write_config()
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: d.status("keep")["pid"] not in (None, keep_pid), 10, "reload by SIGHUP")


def test_tokens_admin_and_students(daemons, tmp_path: Path) -> None:
    p1, p2 = free_ports(2)
    files = {}
    for who, secret in (("admin", "adm-123"), ("alice", "tok-alice"), ("bob", "tok-bob")):
        f = tmp_path / f"{who}.token"
        write_secret(f, secret)
        files[who] = str(f)
    d = daemons(
        {"alice": model(p1, token_file=files["alice"]), "bob": model(p2, token_file=files["bob"])},
        orchestrator={"admin_token_file": files["admin"]},
    )
    d.start()
    assert d.get("/healthz").status_code == 200
    assert d.get("/api/v1/models").status_code == 401
    assert d.post("/api/v1/models/alice/stop", token="wrong").status_code == 401
    assert [m["name"] for m in d.get("/api/v1/models", token="tok-alice").json()] == ["alice"]
    assert d.get("/api/v1/models/bob", token="tok-alice").status_code == 403
    assert d.post("/api/v1/models/bob/stop", token="tok-alice").status_code == 403
    assert d.get("/api/v1/slices", token="tok-alice").status_code == 403
    assert d.post("/api/v1/reload", token="tok-alice").status_code == 403
    assert d.post("/api/v1/models/alice/restart", token="tok-alice").status_code == 202
    # Students tune typed settings; raw env or argv could run code as the daemon's user.
    ok = {"overrides": {"max_num_seqs": 4}}
    assert d.post("/api/v1/models/alice/restart", ok, token="tok-alice").status_code == 202
    for raw in ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, {"extra_args": ["--port", "1"]}):
        r = d.post("/api/v1/models/alice/restart", {"overrides": raw}, token="tok-alice")
        assert r.status_code == 403 and "admin token" in r.json()["error"]
    assert (
        d.post("/api/v1/models/alice/restart", {"overrides": {}}, token="adm-123").status_code
        == 202
    )
    assert d.get("/api/v1/models/alice/logs?tail=5", token="tok-alice").status_code == 200
    assert len(d.get("/api/v1/models", token="adm-123").json()) == 2
    assert "adm-123" not in d.log()


def test_world_readable_token_file_is_refused(daemons, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    f = tmp_path / "admin.token"
    f.write_text("secret")
    f.chmod(0o644)
    d = daemons({"m": model(port)}, orchestrator={"admin_token_file": str(f)})
    with pytest.raises(AssertionError, match="readable by every user"):
        d.start()


def test_relaunch_waits_for_slice_memory_release(daemons) -> None:
    (port,) = free_ports(1)
    d = daemons({"m": model(port, profile="3g.40gb")}, orchestrator={"health_interval_s": 30.0})
    d.start(wait_ready=["m"])
    s = d.status("m")
    uuid = s["slice"]["uuid"]
    # The old engine's memory is still held when it dies (as a slow driver teardown would).
    topology_file.hold_memory(d.topology, uuid, 30 * GIB)
    os.kill(s["pid"], signal.SIGKILL)
    time.sleep(2.0)
    assert d.status("m")["state"] in ("starting", "backoff") and engine_pids("m") == []
    logs = "\n".join(d.get("/api/v1/models/m/logs?tail=20").json()["lines"])
    assert "waiting for slice memory to be released" in logs
    topology_file.release_memory(d.topology, uuid)
    d.wait_state("m", "ready", timeout=10)


def test_unplaceable_models_block_start_unless_partial(daemons) -> None:
    ports = free_ports(3)
    models = {
        "a": model(ports[0], profile="3g.40gb"),
        "b": model(ports[1], profile="3g.40gb"),
        "c": model(ports[2], profile="2g.20gb"),
    }
    d = daemons(models)
    with pytest.raises(AssertionError, match=r"b: needs 3g.40gb: it is taken by a"):
        d.start()
    d2 = daemons(models, extra_args=["--allow-partial"])
    d2.start(wait_ready=["a", "c"])
    s = d2.status("b")
    assert s["state"] == "failed" and "taken by a" in s["reason"]
