"""Per-model engine log: a size-capped rotating file plus the last lines kept in memory."""

from __future__ import annotations

import os
import re
from collections import deque
from pathlib import Path

from orchestrator.trusted_paths import open_own

# vLLM ends a failed start with the exception line (e.g. "ValueError: …") or argparse's "error:".
# The name must end the line or be followed by ":", so a traceback's `raise ValueError(` is not one.
_ERROR_LINE = re.compile(r"(^|\s)([A-Za-z_][\w.]*(Error|Exception)(:.*)?|.*\berror: .*)$")
# vLLM re-raises a worker's or EngineCore's failure as a RuntimeError that only points back at it.
_WRAPPER = re.compile(r"see root cause above|check the stack trace above", re.IGNORECASE)
# vLLM's ERROR log line; its child processes prefix theirs with "(EngineCore_DP0 pid=…) ".
_ERROR_LOG = re.compile(r"^(\([^)]*\)\s+)?ERROR\b")
# pydantic's summary line says only how many errors; the reason is on the lines below it
# (vLLM's config validation: "  Value error, User-specified max_model_len (…) is greater…").
_PYDANTIC = re.compile(r"ValidationError: \d+ validation errors? for ")
_NOISE = re.compile(r"^\s*(\^+|~+|File \"|Traceback \(most recent call last\))")
# An engine that never prints a newline must not grow the held-back line without bound.
_MAX_PARTIAL = 64 * 1024


class EngineLog:
    def __init__(self, path: Path, max_bytes: int, backups: int, keep_lines: int = 500) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self.count = 0  # lines ever written, so callers can mark a point in the stream
        self._partial = b""  # output after the last newline, completed by a later write
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        # Never through a link: engine output appended to whatever it names (the admin token).
        return open_own(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def write(self, data: bytes) -> None:
        """Append raw engine output; rotate once the file passes max_bytes."""
        # The pipe is read in chunks that cut lines, even UTF-8 characters, anywhere.
        *complete, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > _MAX_PARTIAL:
            complete.append(self._partial)
            self._partial = b""
        for chunk in complete:
            for line in chunk.decode("utf-8", "replace").splitlines() or [""]:
                self.lines.append(line)
                self.count += 1
        view = memoryview(data)
        while view:  # os.write may stop short of the whole chunk
            view = view[os.write(self._fd, view) :]
        self._size += len(data)
        if self._size >= self.max_bytes:
            self._rotate()

    def write_lines(self, data: bytes) -> None:
        """Output of another process (a standby) that must not join an engine's unfinished line."""
        if self._partial:
            self.write(b"\n")
        self.write(data)

    def note(self, text: str) -> None:
        """A line from the daemon itself, marked so readers can tell it from engine output."""
        # The engine's unterminated line is ended first, so that the note stands alone.
        self.write_lines(f"[mig-orchestrator] {text}\n".encode())

    def _rotate(self) -> None:
        os.close(self._fd)
        for i in range(self.backups, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i - 1}" if i > 1 else self.path.name)
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i}"))
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        self._fd = self._open()
        self._size = 0

    def _recent(self) -> list[str]:
        partial = self._partial.decode("utf-8", "replace")
        return [*self.lines, partial] if partial else list(self.lines)

    def tail(self, n: int) -> list[str]:
        if n <= 0:
            return []
        return self._recent()[-n:]

    def lines_since(self, mark: int) -> list[str]:
        """The complete lines written after line number `mark` that are still held in memory."""
        new = self.count - mark
        return list(self.lines)[-new:] if new > 0 else []

    def error_reason(self, since: int = 0) -> str | None:
        """The engine's own last error line among those logged after line number `since`."""
        new = self.count - since + (1 if self._partial else 0)
        recent = self._recent()[-new:] if new > 0 else []
        wrapper = None
        for i in range(len(recent) - 1, -1, -1):
            text = recent[i].strip()
            if text.startswith("[mig-orchestrator]") or _NOISE.match(text):
                continue
            if _ERROR_LINE.search(text):
                if _PYDANTIC.search(text):
                    text = _with_pydantic_detail(text, recent[i + 1 : i + 8])
                if not _WRAPPER.search(text):
                    return _clip(text)
                wrapper = wrapper or _clip(text)
        if wrapper is not None:
            return wrapper
        # No exception line: fall back to the last line vLLM's logger wrote at ERROR level.
        return next((_clip(ln.strip()) for ln in reversed(recent) if _ERROR_LOG.match(ln)), None)

    def close(self) -> None:
        os.close(self._fd)


def _clip(text: str, limit: int = 400) -> str:
    """Keep the start of a long error line: the exception name and the cause come first."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _with_pydantic_detail(summary: str, following: list[str]) -> str:
    """Append the first error message pydantic printed under its summary line."""
    for line in following:
        detail = line.strip()
        if (
            detail
            and not detail.startswith(("For further information", "http"))
            and ("error" in detail.lower() or "[type=" in detail)
        ):
            return f"{summary}: {detail.split(' [type=')[0]}"
    return summary
