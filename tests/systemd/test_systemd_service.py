"""The installed mig-orchestrator.service under a real systemd: install, start, crash, reload, stop.

Engines are the stand-in (tests/standin_engine.py) on a fake NVML topology, so no GPU is needed.
The tests run in file order and share one container: each step starts from the previous state.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from nspawn_harness import REPO, Container, wait_for
from service_support import (
    CONFIG,
    INSTALL,
    METRICS_TOKEN,
    TOKEN,
    TOPOLOGY,
    UNIT,
    Site,
    free_ports,
    journal_since,
    model_table,
    orchestrator_table,
    show,
    status_is,
)

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

STANDIN = "/repo/tests/standin_engine.py"
# argv[0] of the stand-in's grandchild, which plays vLLM's EngineCore: it survives a SIGKILL
# of its server.
ENGINE_CORE = "VLLM::EngineCore"


def _config(site: Site, models: list[str]) -> str:
    lines = orchestrator_table(
        site,
        ["/usr/bin/python3", STANDIN],
        "health_interval_s = 1",
        "stop_grace_s = 10",
        "standby = false  # engines are told apart by their command lines here",
    )
    lines += ["", "[defaults]", 'env = { STANDIN_SPAWN_GRANDCHILD = "1" }']
    for name in models:
        lines += model_table(site, name, f"standin/{name}")
    return "\n".join(lines) + "\n"


def _engines(container: Container) -> dict[str, Counter[str]]:
    """Stand-in servers per served model name, and EngineCore grandchildren per owning server.

    Both are told apart by parentage, so this relies on nothing the daemon does: a core
    whose server is gone counts as "<orphan>".
    """
    out = container.run(["ps", "-eo", "pid=,ppid=,args="]).stdout
    rows = {pid: (ppid, args) for pid, ppid, *args in (line.split() for line in out.splitlines())}
    standins = {pid for pid, (_, args) in rows.items() if STANDIN in args}
    # A just-forked core still runs its server's argv: its parent is a stand-in, a server's isn't.
    servers = {
        pid: args[args.index("--served-model-name") + 1]
        for pid, (ppid, args) in rows.items()
        if pid in standins and ppid not in standins and "--served-model-name" in args
    }
    cores = [ppid for ppid, args in rows.values() if args[0] == ENGINE_CORE]
    return {
        "server": Counter(servers.values()),
        "core": Counter(servers.get(ppid, "<orphan>") for ppid in cores),
    }


def _assert_engines(container: Container, *names: str) -> None:
    """Exactly one server and one core per model (polled briefly: a core takes a moment to exec)."""
    expected = {"server": Counter(names), "core": Counter(names)}
    deadline = time.monotonic() + 15
    while (found := _engines(container)) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert found == expected


def _engine_pids(site: Site) -> dict[str, int]:
    return {m["name"]: m["pid"] for m in site.get("/api/v1/models")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def site(container: Container) -> Site:
    """The daemon installed by deploy/install.sh (not started) with two stand-in models."""
    if not (REPO / TOPOLOGY).exists():
        pytest.fail(f"{TOPOLOGY} is missing: the service test runs on that fake topology")
    listen, *ports = free_ports(4)
    result = Site(container, listen, dict(zip(["alice", "bob", "carol"], ports, strict=True)))
    container.path("/root/models.toml").write_text(_config(result, ["alice", "bob"]))
    argv = [INSTALL, "--source", "/repo", "--vllm", "none", "--config", "/root/models.toml"]
    container.run([*argv, "--no-start"], timeout=600)
    return result


def test_install_is_idempotent_and_unit_verifies(site: Site) -> None:
    c = site.container
    assert c.run(["systemctl", "is-enabled", UNIT]).stdout.strip() == "enabled"
    assert show(c, "ActiveState")["ActiveState"] == "inactive"
    modes = c.run(
        [
            "stat",
            "-c",
            "%n %a %U %G",
            "/etc/mig-orchestrator",
            CONFIG,
            TOKEN,
            METRICS_TOKEN,
            "/var/lib/mig-orchestrator",
            "/var/log/mig-orchestrator",
        ]
    ).stdout.splitlines()
    assert modes == [
        "/etc/mig-orchestrator 751 root mig-orchestrator",
        f"{CONFIG} 640 root mig-orchestrator",
        f"{TOKEN} 600 mig-orchestrator mig-orchestrator",
        f"{METRICS_TOKEN} 640 root mig-orchestrator-metrics",
        "/var/lib/mig-orchestrator 750 mig-orchestrator mig-orchestrator",
        "/var/log/mig-orchestrator 750 mig-orchestrator mig-orchestrator",
    ]
    assert len(c.path(TOKEN).read_text().strip()) >= 32
    assert c.path(METRICS_TOKEN).read_text() != c.path(TOKEN).read_text()
    # The rootfs has Debian's prometheus package: its user reads the metrics token, not the admin's.
    groups = c.run(["id", "-nG", "prometheus"]).stdout.split()
    assert "mig-orchestrator-metrics" in groups and "mig-orchestrator" not in groups

    before = {p: _sha(c.path(p)) for p in (CONFIG, TOKEN, METRICS_TOKEN)}
    c.path(CONFIG).write_text(c.path(CONFIG).read_text() + "# admin's edit\n")
    before[CONFIG] = _sha(c.path(CONFIG))
    c.run([INSTALL, "--vllm", "none", "--no-start"], timeout=600)
    assert {p: _sha(c.path(p)) for p in (CONFIG, TOKEN, METRICS_TOKEN)} == before

    # Engines must still open /dev/nvidia*: no device allow-list or private /dev sneaked in.
    sandbox = show(c, "DevicePolicy", "DeviceAllow", "PrivateDevices")
    # (systemctl show leaves out an empty DeviceAllow=)
    devices = (sandbox["DevicePolicy"], sandbox.get("DeviceAllow", ""), sandbox["PrivateDevices"])
    assert devices == ("auto", "", "no")

    verify = c.run(["systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}"], check=False)
    complaints = [ln for ln in verify.stderr.splitlines() if UNIT in ln]
    assert verify.returncode == 0 and not complaints, verify.stderr


def test_start_reports_ready_over_sd_notify(site: Site) -> None:
    c = site.container
    # Type=notify: start returns once the daemon sent READY=1.
    c.run(["systemctl", "start", UNIT], timeout=150)
    state = show(c, "ActiveState", "SubState", "Type", "NotifyAccess")
    assert state == {
        "Type": "notify",
        "NotifyAccess": "main",
        "ActiveState": "active",
        "SubState": "running",
    }
    wait_for(lambda: status_is(c, "2/2 models ready"), 60, 'StatusText "2/2 models ready"')
    health = site.get("/healthz")
    assert (health["status"], health["models"], health["ready"]) == ("ok", 2, 2)
    _assert_engines(c, "alice", "bob")
    users = c.run(["ps", "-o", "user=", "-p", ",".join(map(str, _engine_pids(site).values()))])
    assert set(users.stdout.split()) == {"mig-orchestrator"}


def test_prometheus_scrapes_with_the_shipped_config(site: Site) -> None:
    """deploy/prometheus.yml as an admin installs it, checked and run as Prometheus' own user."""
    c = site.container
    shipped = "/etc/prometheus/prometheus.yml"
    c.run(["install", "-m", "0644", "/repo/deploy/prometheus.yml", shipped])
    check = c.run(["runuser", "-u", "prometheus", "--", "promtool", "check", "config", shipped])
    assert "SUCCESS" in check.stdout, check.stdout + check.stderr
    # The same file, pointed at this daemon's port, in a real Prometheus run as that user.
    (web_port,) = free_ports(1)
    ours = c.path(shipped).read_text().replace("127.0.0.1:8700", f"127.0.0.1:{site.listen_port}")
    c.path("/etc/prometheus/mig-test.yml").write_text(ours)
    c.run(["install", "-d", "-o", "prometheus", "/var/lib/prometheus/mig-test"])
    c.run(
        [
            "systemd-run",
            "--unit=prometheus-mig-test",
            "--uid=prometheus",
            "/usr/bin/prometheus",
            "--config.file=/etc/prometheus/mig-test.yml",
            "--storage.tsdb.path=/var/lib/prometheus/mig-test",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ]
    )
    try:
        query = f"http://127.0.0.1:{web_port}/api/v1/query?query="

        def scraped() -> list[Any] | None:
            try:
                with urllib.request.urlopen(query + "mig_orchestrator_model_ready", timeout=5) as r:
                    return json.load(r)["data"]["result"] or None
            except OSError:
                return None

        ready = wait_for(scraped, 60, "Prometheus to scrape the daemon with the metrics token")
        assert {s["metric"]["model"]: s["value"][1] for s in ready} == {"alice": "1", "bob": "1"}
        with urllib.request.urlopen(query + 'up{job="mig-orchestrator"}', timeout=5) as r:
            (up,) = json.load(r)["data"]["result"]
        assert up["value"][1] == "1"
    finally:
        c.run(["systemctl", "stop", "prometheus-mig-test"], check=False)
    # The token Prometheus holds stops nothing.
    token = c.path(METRICS_TOKEN).read_text().strip()
    stop = urllib.request.Request(
        f"{site.url}/api/v1/models/alice/stop",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(stop, timeout=5)
    assert refused.value.code == 403
    assert {m["name"]: m["state"] for m in site.get("/api/v1/models")} == {
        "alice": "ready",
        "bob": "ready",
    }


def test_sigkill_of_daemon_restarts_it_without_duplicate_engines(site: Site) -> None:
    c = site.container
    before = show(c, "MainPID", "NRestarts")
    old_engines = _engine_pids(site)
    c.run(["kill", "-9", before["MainPID"]])

    def restarted() -> bool:
        now = show(c, "MainPID", "NRestarts", "ActiveState", "StatusText")
        return (
            now["NRestarts"] == str(int(before["NRestarts"]) + 1)
            and now["MainPID"] not in ("0", before["MainPID"])
            and now["ActiveState"] == "active"
            and now["StatusText"] == "2/2 models ready"
        )

    # RestartSec=5, then the engines' start-up.
    wait_for(restarted, 90, "systemd to restart the daemon and both models to be ready")
    _assert_engines(c, "alice", "bob")
    alive = c.run(["ps", "-o", "pid=", "-p", ",".join(map(str, old_engines.values()))], check=False)
    assert alive.stdout.split() == [], "engines of the killed daemon are still running"


def test_reload_applies_an_added_model(site: Site) -> None:
    c = site.container
    unchanged = _engine_pids(site)
    c.path(CONFIG).write_text(_config(site, ["alice", "bob", "carol"]))
    c.run(["systemctl", "reload", UNIT], timeout=60)

    def carol_ready() -> bool:
        states = {m["name"]: m["state"] for m in site.get("/api/v1/models")}
        return states.get("carol") == "ready"

    wait_for(carol_ready, 60, "the added model carol to be ready")
    wait_for(lambda: status_is(c, "3/3 models ready"), 30, 'StatusText "3/3 models ready"')
    assert show(c, "ActiveState")["ActiveState"] == "active"
    pids = _engine_pids(site)
    assert {k: pids[k] for k in unchanged} == unchanged, "reload restarted unchanged models"
    _assert_engines(c, "alice", "bob", "carol")


def test_stop_leaves_no_engine(site: Site) -> None:
    c = site.container
    since = c.run(["date", "+@%s"]).stdout.strip()
    c.run(["systemctl", "stop", UNIT], timeout=120)
    state = show(c, "ActiveState", "Result", "ExecMainStatus")
    # Result=success with status 0: the daemon exited on its own, nothing timed out.
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    # Everything in the cgroup is gone once stop returns: no waiting here.
    assert _engines(c) == {"server": Counter(), "core": Counter()}
    # KillMode=mixed SIGKILLs what the daemon left behind; it must have stopped every engine.
    journal = journal_since(c, since)
    assert "SIGKILL" not in journal, journal


def test_uninstall_keeps_config_and_purge_removes_it(site: Site) -> None:
    c = site.container
    c.run([INSTALL, "--uninstall"], timeout=120)
    assert not c.path(f"/etc/systemd/system/{UNIT}").exists()
    assert not c.path("/opt/mig-orchestrator").exists()
    assert c.path(CONFIG).exists() and c.path(TOKEN).exists()
    c.run([INSTALL, "--uninstall", "--purge"], timeout=120)
    assert not c.path("/etc/mig-orchestrator").exists()
    assert not c.path("/var/lib/mig-orchestrator").exists()
    assert c.run(["getent", "passwd", "mig-orchestrator"], check=False).returncode == 2
