"""The usage page in headless Chromium: the admin's totals equal `mig-orchestrator usage`, and a
student's model page shows only their own usage, keys and requests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from orchestrator.accounting.admission import KeyedAdmission
from orchestrator.accounting.database import connect
from orchestrator.accounting.keys import KeyStore, Limits
from orchestrator.accounting.scope import ModelRef
from orchestrator.gateway.admission import Outcome
from tests.browser.test_dashboard_browser import log_in, no_page_errors, wait
from tests.daemon_harness import Daemon, free_ports, write_secret
from tests.daemon_harness import standin_model as model
from tests.integration.conftest import daemons  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ADMIN, ALICE_TOKEN = "usage-admin-1", "usage-alice-1"
REFS = (ModelRef("alice", "alice-chat", "Alice"), ModelRef("bob", "bob-chat", "Bob"))


async def _traffic(db: Path) -> None:
    store = KeyStore(connect(db))
    alice = store.create("Alice", "student", Limits(max_tokens=64, quota_tokens=1000,
                                                    quota_period="day")).secret  # fmt: skip
    bob = store.create("Bob", "student", Limits()).secret
    gate = KeyedAdmission(db, lambda: REFS)
    for i, (secret, name, status) in enumerate(
        [(alice, "alice-chat", 200), (alice, "alice-chat", 200), (bob, "bob-chat", 500)]
    ):
        grant = await gate.admit(secret, name, {"prompt": "x"})
        await grant.finish(Outcome(
            status, 10 + i, 20 + i, 0.05, 0.4 + i, None if status < 400 else "engine 500",
            False, "127.0.0.1:9", f"req-{i}", "/v1/completions", name,
        ))  # fmt: skip
    await gate.close()


def _cli_totals(d: Daemon) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "usage", "--state-dir", str(d.root / "state"),
         "--by", "owner", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = json.loads(out)
    return {k: sum(r[k] for r in rows) for k in ("requests", "prompt_tokens", "completion_tokens")}


def _number(browser: Any, id_: str) -> int:
    return int(browser.find_element(By.ID, id_).text.replace(",", "") or -1)


async def test_usage_page_totals_equal_the_cli_and_a_student_sees_their_own(
    daemons: Callable[..., Daemon],  # noqa: F811  (the imported fixture)
    tmp_path: Path,
    browser: Any,
) -> None:
    admin = write_secret(tmp_path / "admin.token", ADMIN)
    alice_token = write_secret(tmp_path / "alice.token", ALICE_TOKEN)
    a, b = free_ports(2)
    d = daemons(
        {
            "alice": model(a, student="Alice", served_model_name="alice-chat",
                           token_file=str(alice_token), autostart=False),
            "bob": model(b, student="Bob", served_model_name="bob-chat", autostart=False),
        },
        orchestrator={"admin_token_file": str(admin)}, token=ADMIN,
    ).start()  # fmt: skip
    await _traffic(d.root / "state" / "accounting.sqlite3")
    cli = _cli_totals(d)
    assert cli == {"requests": 3, "prompt_tokens": 33, "completion_tokens": 63}

    log_in(browser, d, ADMIN)
    browser.get(f"{d.url}/ui/usage")
    wait(browser, "the totals", lambda b: _number(b, "usage-total-requests") == cli["requests"])
    assert _number(browser, "usage-total-prompt") == cli["prompt_tokens"]
    assert _number(browser, "usage-total-completion") == cli["completion_tokens"]
    assert _number(browser, "usage-total-errors") == 1
    keys = browser.find_element(By.ID, "usage-keys").text
    assert "Alice" in keys and "alice-chat" in keys and "938 left of 1,000 / day" in keys
    failing = browser.find_element(By.ID, "usage-failing").text
    assert "Bob" in failing and "500" in failing and "Alice" not in failing
    assert "Bob" in browser.find_element(By.ID, "usage-slowest").text.splitlines()[1]
    no_page_errors(browser)

    browser.delete_all_cookies()
    log_in(browser, d, ALICE_TOKEN)
    browser.get(f"{d.url}/ui/models/alice")
    own = wait(browser, "the student's usage", lambda b: b.find_element(By.ID, "own-usage"))
    wait(browser, "their requests", lambda b: "/v1/completions" in own.text)
    assert "alice-chat" in own.text and "938 left of 1,000 / day" in own.text
    assert "bob" not in own.text.lower()
    browser.get(f"{d.url}/ui/usage")
    assert "403" in browser.find_element(By.TAG_NAME, "h1").text
