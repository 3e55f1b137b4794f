"""Headless Debian Chromium driven by selenium, and a screenshot of the page when a test fails.

Needs the Debian packages chromium and chromium-driver (tests/run.sh installs them as root). The
tests skip without them, unless MIG_ORCH_REQUIRE_BROWSER=1 (CI), where they fail instead.
The `shot` fixture writes the README's screenshots to docs/ with MIG_ORCH_DOCS_SCREENSHOTS=1,
otherwise to .work/browser/, so an ordinary run leaves the checkout as it was. The `axe` fixture
runs npm's axe-core (the version pinned in tests/browser/package.json, which tests/run.sh installs
into ~/.cache/mig-orchestrator) on the page the browser shows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import REPO

REQUIRE_ENV_VAR = "MIG_ORCH_REQUIRE_BROWSER"
# Failure screenshots go here (ignored by git), named after the test.
ARTIFACTS = REPO / ".work" / "browser"
DOCS = REPO / "docs" if os.environ.get("MIG_ORCH_DOCS_SCREENSHOTS") == "1" else ARTIFACTS
CHROMIUM = ("chromium", "chromedriver")
AXE_PIN = json.loads((Path(__file__).with_name("package.json")).read_text())["devDependencies"]
AXE_JS = Path(
    os.environ.get("MIG_ORCH_AXE_JS")
    or Path.home()
    / f".cache/mig-orchestrator/axe-core-{AXE_PIN['axe-core']}/node_modules/axe-core/axe.min.js"
)
# What fails a page: the two worst of axe's four impact levels.
AXE_FAILING_IMPACTS = ("serious", "critical")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1366,900",
)


def _required_or_skip(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV_VAR) == "1":
        pytest.fail(f"browser tests need Chromium and axe-core ({REQUIRE_ENV_VAR}=1): {reason}")
    pytest.skip(reason)


def _unavailable() -> str | None:
    missing = [name for name in CHROMIUM if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not found: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the session, on a fresh profile directory."""
    reason = _unavailable()
    if reason:
        _required_or_skip(reason)
    # Selenium Manager would look for a driver online; the Debian one is given explicitly.
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="mig-orch-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or ""
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(
            service=Service(shutil.which("chromedriver") or ""), options=options
        )
        driver.set_page_load_timeout(20)
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture
def browser(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The session's browser, logged out, on a blank page with an empty console log; a failing
    test leaves a screenshot in .work/browser."""
    # Every origin's cookies (delete_all_cookies clears only the current page's).
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    chromium.get_log("browser")  # what an earlier test's pages said is not this test's
    yield chromium
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{request.node.name}.png"
        if full_page_screenshot(chromium, path):
            print(f"screenshot of the failing page ({chromium.current_url}): {path}")
    # Leave no page polling a daemon that the test is about to stop: its failed fetches would
    # land in the next test's console log.
    chromium.get("about:blank")


def full_page_screenshot(driver: Any, path: Path) -> bool:
    """The whole page, not only the window: the viewport grows to the document for the shot."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return window.innerWidth")
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        return bool(driver.save_screenshot(str(path)))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.fixture
def shot(browser: Any) -> Callable[[str], None]:
    """Saves the whole page as dashboard-<name>.png, for the README."""

    def save(name: str) -> None:
        DOCS.mkdir(parents=True, exist_ok=True)
        assert full_page_screenshot(browser, DOCS / f"dashboard-{name}.png")

    return save


def axe_violations(driver: Any, source: str) -> list[dict[str, Any]]:
    """axe-core's violations on the page now shown (WCAG 2.x A and AA rules, best practices)."""
    if not driver.execute_script("return typeof window.axe === 'object'"):
        # Through WebDriver, not a <script> element: the page's CSP stays as it is.
        driver.execute_script(source)
    script = """
        const done = arguments[arguments.length - 1];
        axe.run(document, {resultTypes: ["violations"]})
            .then((r) => done(r.violations), (e) => done([{id: "axe-error", impact: "critical",
                help: String(e), nodes: []}]));
    """
    return list(driver.execute_async_script(script))


def describe_violations(violations: list[dict[str, Any]]) -> str:
    """One line per violation and per element: rule, impact, what axe says, where."""
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']}")
        lines += [f"    {n['target']}: {n.get('failureSummary', '')!r}" for n in v["nodes"]]
    return "\n".join(lines)


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE_JS.is_file():
        _required_or_skip(
            f"no axe-core at {AXE_JS}: bash tests/run.sh installs it (npm ci, tests/browser)"
        )
    return AXE_JS.read_text()


@pytest.fixture
def axe(browser: Any, axe_source: str) -> Callable[[], list[str]]:
    """Fails on any serious or critical axe-core violation of the page now shown; returns the
    rest (moderate and minor) as "rule (impact)" for the caller to judge."""

    def check() -> list[str]:
        found = axe_violations(browser, axe_source)
        failing = [v for v in found if v["impact"] in AXE_FAILING_IMPACTS]
        assert not failing, f"axe-core on {browser.current_url}:\n{describe_violations(failing)}"
        if found:
            print(f"axe-core, moderate and minor on {browser.current_url}:")
            print(describe_violations(found))
        return [f"{v['id']} ({v['impact']})" for v in found]

    return check
