"""Read a wheel's metadata, and rewrite a wheel without some of its files.

Rewritten wheels are stored uncompressed: the bundle compresses everything together with xz,
which packs far better than each wheel's own deflate.
"""

from __future__ import annotations

import csv
import email.parser
import fnmatch
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.bundle.target import (
    InvalidWheelFilename,
    Requirement,
    Target,
    Version,
    canonicalize_name,
    parse_wheel_filename,
)

CHUNK = 1 << 20


class WheelError(ValueError):
    """A wheel file is unusable or a rewrite of it is wrong; the message names the file."""


@dataclass(frozen=True)
class Wheel:
    """One wheel file and what its METADATA says."""

    path: Path
    name: str  # canonical
    version: Version
    requires: tuple[Requirement, ...]
    requires_python: str | None

    @property
    def filename(self) -> str:
        return self.path.name

    def fits(self, target: Target) -> bool:
        """True when the target's interpreter and platform accept this wheel's tags."""
        _, _, _, tags = parse_wheel_filename(self.path.name)
        return not tags.isdisjoint(target.tags())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _dist_info(names: list[str], path: Path) -> str:
    dirs = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    if len(dirs) != 1:
        raise WheelError(f"{path.name}: expected one .dist-info directory, found {sorted(dirs)}")
    return dirs.pop()


def read_wheel(path: Path) -> Wheel:
    """Name, version and Requires-Dist from the wheel's own METADATA (not its file name)."""
    try:
        parse_wheel_filename(path.name)
        with zipfile.ZipFile(path) as archive:
            info = _dist_info(archive.namelist(), path)
            raw = archive.read(f"{info}/METADATA")
    except (OSError, KeyError, zipfile.BadZipFile, InvalidWheelFilename) as exc:
        raise WheelError(f"{path}: not a readable wheel: {exc}") from None
    meta = email.parser.BytesParser().parsebytes(raw, headersonly=True)
    name, version = meta.get("Name"), meta.get("Version")
    if not name or not version:
        raise WheelError(f"{path.name}: METADATA lacks Name or Version")
    try:
        requires = tuple(Requirement(r) for r in meta.get_all("Requires-Dist") or [])
        return Wheel(
            path=path,
            name=canonicalize_name(name),
            version=Version(version),
            requires=requires,
            requires_python=meta.get("Requires-Python"),
        )
    except ValueError as exc:  # InvalidRequirement / InvalidVersion
        raise WheelError(f"{path.name}: bad METADATA: {exc}") from None


def repack(source: Path, dest: Path, drop: list[str]) -> list[str]:
    """Copy a wheel to dest uncompressed, leaving out files matching the `drop` globs.

    Returns the files left out. A glob that matches nothing is an error: it is a typo or a
    wheel that changed, and either way the bundle would not be what the sysadmin asked for.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    dropped: list[str] = []
    unused = set(drop)
    with zipfile.ZipFile(source) as src:
        names = src.namelist()
        record_name = f"{_dist_info(names, source)}/RECORD"
        for name in names:
            hits = [g for g in drop if fnmatch.fnmatchcase(name, g)]
            if hits and name != record_name:
                dropped.append(name)
                unused.difference_update(hits)
        if unused:
            raise WheelError(f"{source.name}: --drop-file {sorted(unused)} matches no file in it")
        gone = set(dropped)
        tmp = dest.with_name(dest.name + ".part")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out:
            for info in src.infolist():
                if info.filename in gone:
                    continue
                if info.filename == record_name:
                    out.writestr(info, _without(src.read(info), gone), zipfile.ZIP_STORED)
                    continue
                with src.open(info) as reader, out.open(_stored(info), "w") as writer:
                    while chunk := reader.read(CHUNK):
                        writer.write(chunk)
        tmp.replace(dest)
    return dropped


def _stored(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    copy = zipfile.ZipInfo(info.filename, info.date_time)
    copy.external_attr = info.external_attr  # keeps executable bits of scripts and .so files
    copy.compress_type = zipfile.ZIP_STORED
    copy.file_size = info.file_size
    return copy


def _without(record: bytes, gone: set[str]) -> bytes:
    """RECORD with the dropped files' rows removed (pip checks every listed file on uninstall)."""
    rows = [r for r in csv.reader(io.StringIO(record.decode("utf-8"))) if r and r[0] not in gone]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8")
