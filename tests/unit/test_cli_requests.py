"""`mig-orchestrator requests`: the request log as a table, CSV and JSON, with its filters."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.unit.test_cli_keys import _some_usage, run
from tests.unit.test_cli_keys import config as config


def test_requests_filters_and_formats(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config)
    _, out, _ = run(capsys, "keys", "create", "Alice", "-c", c)
    _some_usage(config, out.strip())  # 200 and 500, then one left in flight
    code, out, _ = run(capsys, "requests", "-c", c, "--json")
    rows = json.loads(out)
    assert code == 0 and [r["status"] for r in rows] == [None, 500, 200]  # newest first
    assert rows[2]["prompt_tokens"] == 10 and rows[2]["route"] == "/v1/completions"
    _, out, _ = run(capsys, "requests", "-c", c, "--errors", "--format", "csv")
    (failed,) = csv.DictReader(io.StringIO(out))
    assert failed["status"] == "500" and failed["owner"] == "Alice"
    _, out, _ = run(capsys, "requests", "-c", c, "--status", "200", "--since", "1h")
    assert "STATUS" in out and "Alice" in out and "500" not in out
    _, out, _ = run(capsys, "requests", "-c", c, "--owner", "Bob", "--json")
    assert json.loads(out) == []
    code, _, err = run(capsys, "requests", "-c", c, "--since", "last week")
    assert code == 2 and "'last week'" in err
