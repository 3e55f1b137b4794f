"""Write the bundle's files as one tar.xz stream cut into parts of a fixed size.

Parts are plain byte ranges of one archive: concatenated in order they are the archive, so the
target needs nothing but Python's lzma and tarfile to unpack them, and a transport that limits
file sizes (a 58 MB upload, a FAT32 stick) carries them one by one.
"""

from __future__ import annotations

import hashlib
import lzma
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

ARCHIVE = "bundle.tar.xz"
SUMS = "SHA256SUMS"


@dataclass(frozen=True)
class Part:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Archive:
    name: str
    size: int
    sha256: str
    unpacked_size: int
    parts: tuple[Part, ...]


class _PartWriter:
    """A write-only stream that starts a new numbered file every `part_size` bytes."""

    def __init__(self, out_dir: Path, name: str, part_size: int) -> None:
        self.out_dir, self.name, self.part_size = out_dir, name, part_size
        self.parts: list[Part] = []
        self.whole = hashlib.sha256()
        self.total = 0
        self._handle: BinaryIO | None = None
        self._digest = hashlib.sha256()
        self._written = 0

    def _open_next(self) -> BinaryIO:
        self._close_current()
        path = self.out_dir / f"{self.name}.{len(self.parts):03d}"
        self._handle = handle = path.open("wb")
        self._digest = hashlib.sha256()
        self._written = 0
        self.parts.append(Part(path.name, 0, ""))
        return handle

    def _close_current(self) -> None:
        if self._handle is None:
            return
        self._handle.close()
        last = self.parts[-1]
        self.parts[-1] = Part(last.name, self._written, self._digest.hexdigest())
        self._handle = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            handle = self._handle
            if handle is None or (self.part_size and self._written >= self.part_size):
                handle = self._open_next()
            room = len(view) if not self.part_size else self.part_size - self._written
            chunk = view[:room]
            handle.write(chunk)
            self._digest.update(chunk)
            self.whole.update(chunk)
            self._written += len(chunk)
            self.total += len(chunk)
            view = view[room:]
        return len(data)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is None and not self.parts:
            self._open_next()  # an empty archive is still one (empty) part
        self._close_current()

    def __enter__(self) -> _PartWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The same inputs give the same archive bytes: no build user, time or umask in it.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def write_archive(
    root: Path, members: list[str], out_dir: Path, part_size: int, preset: int = 6
) -> Archive:
    """Pack root/members (relative paths, in this order) into out_dir/bundle.tar.xz.NNN."""
    for stale in out_dir.glob(f"{ARCHIVE}.*"):
        stale.unlink()
    unpacked = 0
    with (
        _PartWriter(out_dir, ARCHIVE, part_size) as sink,
        lzma.LZMAFile(sink, "w", preset=preset) as xz,  # type: ignore[arg-type]
        tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in members:
            unpacked += (root / member).stat().st_size
            tar.add(root / member, arcname=member, recursive=False, filter=_normalised)
    return Archive(
        name=ARCHIVE,
        size=sink.total,
        sha256=sink.whole.hexdigest(),
        unpacked_size=unpacked,
        parts=tuple(sink.parts),
    )


def parse_size(text: str) -> int:
    """`58M`, `1G`, `500k` or plain bytes (decimal units: transports count in MB)."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    value = text.strip().lower().removesuffix("b")
    factor = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        size = int(float(number) * factor)
    except ValueError:
        raise ValueError(f"--part-size {text!r}: want bytes or a size like 58M") from None
    if size < 0:
        raise ValueError(f"--part-size {text!r} must not be negative")
    return size


def write_sums(out: Path) -> str:
    """SHA256SUMS of bundle.json (which holds every part's hash) and install.py, in sha256sum's
    format; the lines to compare on the target over a channel other than the bundle's."""
    lines = "".join(
        f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}\n"
        for name in ("bundle.json", "install.py")
    )
    (out / SUMS).write_text(lines)
    return (
        f"{SUMS}: the hashes in bundle.json catch damage, not tampering; send these lines over "
        f"another channel (or sign {SUMS}) and run `sha256sum -c` on the target before "
        f"install.py:\n{lines}"
    )
