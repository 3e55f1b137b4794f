"""The dashboard in a real browser: headless Chromium against the real daemon and stand-in engines.

Three of them also take docs/dashboard.md's screenshots (see the `shot` fixture).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from orchestrator.gpu import topology_file
from tests.daemon_harness import Daemon, group_pids, marked_pids
from tests.dashboard_host import (
    ADMIN_TOKEN,
    CAROL_ERROR,
    STUDENT_TOKENS,
    dashboard_daemon,
    send_traffic,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GIB = 1024**3


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = dashboard_daemon(tmp_path_factory.mktemp("dashboard"))
    d.start(wait_ready=["alice", "bob", "dave"])
    d.wait_state("carol", "failed")
    # Engines that hold memory, as real ones do (alice and dave are never restarted here: a
    # relaunch would wait for the memory to be released).
    topology_file.hold_memory(d.topology, d.status("alice")["slice"]["uuid"], 36 * GIB)
    topology_file.hold_memory(d.topology, d.status("dave")["slice"]["uuid"], 71 * GIB)
    send_traffic(d, "alice")
    yield d
    d.terminate()
    for pid in marked_pids(d.root):
        os.kill(pid, signal.SIGKILL)


def wait(browser: Any, what: str, cond: Callable[[Any], Any], timeout: float = 10) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(cond, f"waiting for {what}")


def log_in(browser: Any, d: Daemon, token: str) -> None:
    browser.get(f"{d.url}/ui/models/alice")  # any page: without a session it sends to log-in
    wait(browser, "the log-in form", lambda b: b.current_url.endswith("/ui/login"))
    field = wait(browser, "the token field", lambda b: b.find_element(By.ID, "token"))
    field.send_keys(token + Keys.ENTER)
    wait(browser, "logging in", lambda b: not b.current_url.endswith("/ui/login"))


def text(browser: Any, css: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def row_text(browser: Any, model: str, css: str) -> str:
    return text(browser, f'tbody[data-key="{model}"] {css}')


def fetch_status(browser: Any, path: str, method: str = "GET") -> int:
    """The HTTP status the page itself gets for `path`, with its cookie and CSRF token."""
    script = """
        const [path, method, done] = arguments;
        fetch("/ui/api/session").then((r) => r.json()).then((s) =>
            fetch(path, {method, headers: {"X-CSRF-Token": s.csrf}})).then((r) => done(r.status));
    """
    return int(browser.execute_async_script(script, path, method))


def no_page_errors(browser: Any) -> None:
    """No CSP violation or script error on the console (HTTP errors the tests provoke aside)."""
    errors = [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and e["source"] != "network"
    ]
    assert errors == []


@pytest.fixture
def traffic(host: Daemon) -> Iterator[None]:
    """Requests to alice all along, so the live numbers move."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            send_traffic(host, "alice", requests=2)
            stop.wait(0.3)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


def test_admin_sees_every_model_and_slice(
    browser: Any, host: Daemon, traffic: None, shot: Callable[[str], None]
) -> None:
    log_in(browser, host, ADMIN_TOKEN)
    assert browser.current_url == f"{host.url}/ui"
    wait(browser, "alice ready", lambda b: row_text(b, "alice", ".badge") == "ready")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.models tbody.model")
    assert [r.get_attribute("data-key") for r in rows] == ["alice", "bob", "carol", "dave"]
    assert row_text(browser, "alice", "td:nth-child(3)") == "3g.40gb · GPU 0"
    assert row_text(browser, "dave", "td:nth-child(3)") == "whole GPU · GPU 1"
    assert row_text(browser, "alice", "code.endpoint") == host.status("alice")["endpoint"]
    expected = {
        ("3g.40gb", "36.0 / 39.3 GiB", "alice"),
        ("2g.20gb", "0.0 / 19.5 GiB", "bob"),
        ("1g.10gb", "0.0 / 9.5 GiB", "carol"),
        ("1g.10gb", "0.0 / 9.5 GiB", "free"),
        ("whole GPU", "71.0 / 79.6 GiB", "dave"),
    }

    def slices(b: Any) -> set[tuple[str, ...]]:
        rows = b.find_elements(By.CSS_SELECTOR, ".gpu table.slices tbody tr")
        return {tuple(c.text for c in r.find_elements(By.TAG_NAME, "td")) for r in rows}

    # Memory comes from the GPU sampler (every 2 s): the held memory shows at its next sample.
    try:
        wait(browser, "every slice with its memory and model", lambda b: slices(b) == expected)
    except TimeoutException:
        assert slices(browser) == expected
    utilisation = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".gpu .value.util")]
    assert utilisation == ["n/a (MIG)", "37%"]  # the topology's H100 reports 37 %
    # The engine's own numbers, live: alice gets requests all along.
    wait(
        browser,
        "alice's throughput and TTFT",
        lambda b: (
            row_text(b, "alice", "td:nth-child(6)") not in ("—", "0.0 tok/s")
            and row_text(b, "alice", "td:nth-child(7)").endswith(" ms")
        ),
        timeout=15,
    )
    assert row_text(browser, "alice", "td:nth-child(8)").endswith("%")  # prefix-cache hit rate
    assert row_text(browser, "bob", "td:nth-child(7)") == "—"  # no request yet: no TTFT
    no_page_errors(browser)
    shot("admin")


def test_failed_engine_shows_its_reason(
    browser: Any, host: Daemon, shot: Callable[[str], None]
) -> None:
    log_in(browser, host, ADMIN_TOKEN)
    wait(browser, "carol's row", lambda b: row_text(b, "carol", ".badge") == "failed")
    assert CAROL_ERROR in row_text(browser, "carol", "td.reason")
    assert row_text(browser, "alice", "td.reason") == ""
    browser.find_element(By.LINK_TEXT, "carol").click()
    box = wait(browser, "the reason box", lambda b: b.find_element(By.CSS_SELECTOR, ".reason-box"))
    wait(browser, "the reason", lambda b: CAROL_ERROR in box.text)
    assert box.text.startswith("⚠ Failed: 2 failures within 900s; giving up.")
    # The engine's traceback is in the live log tail.
    wait(browser, "the log tail", lambda b: "Traceback" in text(b, "pre.log"))
    no_page_errors(browser)
    shot("failed")


def test_stop_click_stops_the_engine_and_shows_it_within_2s(browser: Any, host: Daemon) -> None:
    log_in(browser, host, ADMIN_TOKEN)
    wait(browser, "bob ready", lambda b: row_text(b, "bob", ".badge") == "ready")
    pid = host.status("bob")["pid"]
    stop = browser.find_element(By.CSS_SELECTOR, 'tbody[data-key="bob"] [data-action="stop"]')
    clicked = time.monotonic()
    stop.click()
    wait(browser, "bob shown stopped", lambda b: row_text(b, "bob", ".badge") == "stopped", 2)
    print(f"stop click -> page shows stopped: {time.monotonic() - clicked:.2f} s")
    assert host.status("bob")["state"] == "stopped"
    assert group_pids(pid) == [], "the engine's processes outlived the stop"
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert stop.get_attribute("disabled") is not None  # nothing left to stop
    browser.find_element(By.CSS_SELECTOR, 'tbody[data-key="bob"] [data-action="start"]').click()
    wait(browser, "bob ready again", lambda b: row_text(b, "bob", ".badge") == "ready")
    assert host.status("bob")["pid"] != pid


def test_student_sees_only_their_model(browser: Any, host: Daemon) -> None:
    log_in(browser, host, STUDENT_TOKENS["bob"])
    # Whatever page a student asks for first, they land on their own model's.
    assert browser.current_url == f"{host.url}/ui/models/bob"
    wait(browser, "bob's page", lambda b: text(b, ".title-row .badge") == "ready")
    links = {a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "main a")}
    assert not any("/ui/models/" in (href or "") for href in links)
    for path in ("/ui/models/alice", "/ui/api/models/alice", "/ui/api/models/alice/logs"):
        assert fetch_status(browser, path) == 403, path
    assert fetch_status(browser, "/ui/api/overview") == 403
    assert fetch_status(browser, "/ui/api/models/alice/stop", "POST") == 403
    assert host.status("alice")["state"] == "ready"
    browser.get(f"{host.url}/ui/models/alice")
    assert text(browser, "h1") == "403"
    assert "does not grant access to model 'alice'" in text(browser, "main")
    browser.get(f"{host.url}/ui")
    wait(browser, "the redirect home", lambda b: b.current_url == f"{host.url}/ui/models/bob")
    # Their own engine: live log and a working restart.
    wait(browser, "bob's log tail", lambda b: "/health" in text(b, "pre.log"))
    pid = host.status("bob")["pid"]
    browser.find_element(By.CSS_SELECTOR, '.title-row [data-action="restart"]').click()
    wait(browser, "a new engine", lambda b: host.status("bob")["pid"] not in (None, pid))
    wait(browser, "bob ready again", lambda b: text(b, ".title-row .badge") == "ready")
    no_page_errors(browser)


def test_student_view_has_endpoint_snippets_and_usage(
    browser: Any, host: Daemon, traffic: None, shot: Callable[[str], None]
) -> None:
    log_in(browser, host, STUDENT_TOKENS["alice"])
    endpoint = host.status("alice")["endpoint"]
    wait(browser, "the endpoint", lambda b: text(b, ".endpoint-row code") == endpoint)
    snippets = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".snippet pre")]
    assert len(snippets) == 2
    curl, python = snippets
    assert f"export OPENAI_BASE_URL={endpoint}" in curl
    assert '"model": "qwen-coder"' in curl and "$OPENAI_API_KEY" in curl
    assert f'OpenAI(base_url="{endpoint}", api_key=os.environ["OPENAI_API_KEY"])' in python
    assert 'model="qwen-coder"' in python
    usage = {
        s.find_element(By.CLASS_NAME, "label").text: s.find_element(By.CLASS_NAME, "big").text
        for s in browser.find_elements(By.CSS_SELECTOR, "#usage .stat")
    }
    assert int(usage["Requests"].replace(",", "")) >= 6
    assert int(usage["Completion tokens"].replace(",", "")) >= 6 * 24
    assert usage["Prefix-cache hit rate"].endswith("%")
    wait(browser, "recent throughput", lambda b: "tok/s" in text(b, "#recent"))
    no_page_errors(browser)
    shot("student")
