"""The evaluation panel of the dashboard's overview in a real browser (headless Chromium)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.daemon_harness import Daemon, free_ports, marked_pids, standin_model, write_secret
from tests.eval_standin import fill_eval_db

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ADMIN = "eval-browser-admin"


def test_the_overview_shows_the_latest_leaderboard(
    browser: Any, tmp_path: Path, shot: Callable[[str], None]
) -> None:
    db, q = tmp_path / "eval.sqlite", tmp_path / "q.jsonl"
    q.write_text(
        '{"question_id": 1, "category": "sorting", "turns": ["QID=1 sort"]}\n'
        '{"question_id": 2, "category": "search", "turns": ["QID=2 find"]}\n'
    )
    fill_eval_db(db, q)
    admin = write_secret(tmp_path / "admin.token", ADMIN)
    d = Daemon(
        tmp_path,
        {"alice": standin_model(free_ports(1)[0], profile="1g.10gb")},
        orchestrator={"admin_token_file": str(admin), "eval_db": str(db)},
        token=ADMIN,
    )
    d.start(wait_ready=["alice"])
    try:
        browser.get(f"{d.url}/ui")
        WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith("/ui/login"))
        browser.find_element(By.ID, "token").send_keys(ADMIN + Keys.ENTER)
        panel = WebDriverWait(browser, 10).until(
            lambda b: (p := b.find_element(By.ID, "evaluation")).is_displayed() and p
        )
        rows = WebDriverWait(browser, 10).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, "#evaluation tbody tr")
        )
        cells = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]
        assert [c[:2] for c in cells] == [["good", "9.00"], ["bad", "2.00"]]
        assert "single, judge judge (structured outputs)" in panel.text
        # No script error or CSP violation (the 401 of the log-in page's first probe aside).
        log = browser.get_log("browser")
        assert [e for e in log if e["level"] == "SEVERE" and e["source"] != "network"] == []
        shot("evaluation")
    finally:
        d.terminate()
        for pid in marked_pids(d.root):
            os.kill(pid, signal.SIGKILL)
