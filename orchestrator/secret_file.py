"""Read a secret (token or API key) from its file, refusing one every local user could read."""

from __future__ import annotations

import stat
from pathlib import Path


def read_secret_file(path: Path, what: str, fix_mode: str = "600") -> str:
    """The file's stripped text; ValueError naming `what` and `path` when unusable (the hint
    suggests `fix_mode`: 640 where a group must read it too)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot read ({e.strerror or e})") from None
    if mode & stat.S_IROTH:
        raise ValueError(
            f"{what} {path} is readable by every user (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod {fix_mode} {path}"
        )
    if not text:
        raise ValueError(f"{what} {path} is empty")
    return text
