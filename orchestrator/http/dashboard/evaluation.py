"""The latest evaluation run's leaderboard for the dashboard, read from the evaluation's database.

`orchestrator.evaluation.store` is standard-library only, so reading it pulls nothing of the
evaluation into the daemon.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from orchestrator.evaluation.store import StoreError, latest_result


def _summary(found: dict[str, Any]) -> dict[str, Any]:
    """What the page shows: the table and how it was made, not the prompt texts."""
    config, result = found["config"], found["result"]
    judge = config.get("judge") or {}
    return {
        "run_id": found["run_id"],
        "status": found["status"],
        "updated": found["updated"],
        "mode": result.get("mode"),
        "judge": judge.get("label"),
        "questions": config.get("questions"),
        "structured_outputs": config.get("structured_outputs"),
        "prompt_sha256": (config.get("judge_prompt") or {}).get("sha256"),
        "single": result.get("single"),
        "pairwise": result.get("pairwise"),
        "failed": result.get("failed") or {},
    }


async def latest(path: Path | None) -> dict[str, Any]:
    """{"db", "run", "error"}; run is None when nothing was evaluated yet."""
    if path is None:
        return {"db": None, "run": None, "error": None}
    try:
        # sqlite3 blocks; the daemon's loop must not.
        found = await asyncio.to_thread(latest_result, path)
    except StoreError as exc:
        return {"db": str(path), "run": None, "error": str(exc)}
    return {"db": str(path), "run": _summary(found) if found else None, "error": None}
