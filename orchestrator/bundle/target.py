"""What an offline target has: its Python, platform and installed packages.

Stdlib plus `packaging` (pip's own copy when the standalone one is missing), so the bundle
builder runs on any host with pip, without the daemon's dependencies.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

try:
    import packaging  # noqa: F401
except ImportError:  # a bare host: pip always carries its own copy, importable under this name
    import pip._vendor.packaging as _vendored

    sys.modules["packaging"] = _vendored

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

__all__ = [
    "InvalidWheelFilename",
    "Marker",
    "Requirement",
    "SpecifierSet",
    "Target",
    "TargetError",
    "Version",
    "canonicalize_name",
    "parse_installed",
    "parse_wheel_filename",
]

_PLATFORM = re.compile(r"manylinux_(?P<major>\d+)_(?P<minor>\d+)_(?P<arch>[a-z0-9_]+)")
_PYTHON = re.compile(r"(?P<major>3)\.(?P<minor>\d+)(?:\.(?P<micro>\d+))?")
# Oldest glibc a manylinux tag names (manylinux2014 = 2.17); older legacy tags add nothing useful.
_OLDEST_GLIBC_MINOR = 17
_LEGACY_ALIASES = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
# `pip freeze` lines: name==version, name @ url, -e ...#egg=name; `pip list`: name version [path].
_FREEZE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:===?\s*(?P<version>\S+)|@\s*\S+)")
_LIST = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\s+(?P<version>\S+))?(?:\s+\S.*)?$")
_EGG = re.compile(r"#egg=(?P<name>[A-Za-z0-9._-]+)")


class TargetError(ValueError):
    """A target description (file or flag) is not usable; the message names it."""


@dataclass(frozen=True)
class Target:
    """A Python environment on another machine, as far as wheels and markers are concerned."""

    python: tuple[int, int, int]
    glibc: tuple[int, int]
    arch: str
    # canonical name -> version, or None when the list gave no version
    installed: Mapping[str, Version | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, python: str, platform: str, installed: Mapping[str, Version | None]) -> Target:
        """From `--python-version 3.12.3` and `--platform manylinux_2_35_x86_64`."""
        py = _PYTHON.fullmatch(python.strip())
        if py is None:
            raise TargetError(f"--python-version {python!r}: want 3.X or 3.X.Y, e.g. 3.12.3")
        plat = _PLATFORM.fullmatch(platform.strip())
        if plat is None or plat["major"] != "2":
            raise TargetError(
                f"--platform {platform!r}: want manylinux_2_<glibc minor>_<arch>, "
                "e.g. manylinux_2_35_x86_64 for glibc 2.35 on x86-64"
            )
        version = (3, int(py["minor"]), int(py["micro"] or 0))
        return cls(version, (2, int(plat["minor"])), plat["arch"], dict(installed))

    @property
    def python_tag(self) -> str:
        return f"cp3{self.python[1]}"

    @property
    def python_short(self) -> str:
        return f"3.{self.python[1]}"

    def platforms(self) -> list[str]:
        """Every manylinux platform tag this glibc runs, newest first (pip matches exactly)."""
        tags = []
        for minor in range(self.glibc[1], _OLDEST_GLIBC_MINOR - 1, -1):
            tags.append(f"manylinux_2_{minor}_{self.arch}")
            if minor in _LEGACY_ALIASES:
                tags.append(f"{_LEGACY_ALIASES[minor]}_{self.arch}")
        return tags

    def tags(self) -> list[Tag]:
        """Wheel tags the target accepts, most specific first."""
        cp = cpython_tags(python_version=self.python[:2], platforms=self.platforms())
        pure = [Tag(f"py3{m}", "none", "any") for m in range(self.python[1], -1, -1)]
        return [*cp, *pure, Tag("py3", "none", "any")]

    def markers(self, extra: str = "") -> dict[str, str]:
        """PEP 508 marker variables as the target's interpreter would report them."""
        full = ".".join(map(str, self.python))
        return {
            "implementation_name": "cpython",
            "implementation_version": full,
            "os_name": "posix",
            "platform_machine": self.arch,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": full,
            "python_version": self.python_short,
            "sys_platform": "linux",
            "extra": extra,
        }

    def applies(self, marker: Marker | None, extra: str = "") -> bool:
        return marker is None or marker.evaluate(self.markers(extra))

    def describe(self) -> str:
        py = ".".join(map(str, self.python))
        return f"CPython {py}, glibc {self.glibc[0]}.{self.glibc[1]}, {self.arch}"


def parse_installed(lines: Iterable[str], source: str) -> dict[str, Version | None]:
    """Packages of `pip freeze`, `pip list` or a list of names; versions where given."""
    found: dict[str, Version | None] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("-e") else raw.strip()
        if not line or set(line) <= set("- ") or line.lower().startswith("package "):
            continue  # blank, comment, or `pip list`'s header and rule
        egg = _EGG.search(line)
        if line.startswith("-e"):
            if egg is None:
                raise TargetError(f"{source}:{number}: editable install without #egg=NAME")
            found[canonicalize_name(egg["name"])] = None
            continue
        match = _FREEZE.match(line) or _LIST.match(line)
        if match is None:
            raise TargetError(f"{source}:{number}: cannot read a package from {raw.strip()!r}")
        text = match["version"]
        try:
            version = Version(text) if text else None
        except InvalidVersion:
            raise TargetError(f"{source}:{number}: {text!r} is not a version") from None
        found[canonicalize_name(match["name"])] = version
    if not found:
        raise TargetError(f"{source}: lists no packages")
    return found


def read_installed(path: Path) -> dict[str, Version | None]:
    """parse_installed on a file; a clear error when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TargetError(f"--target-packages {path}: {exc.strerror or exc}") from None
    return parse_installed(text.splitlines(), str(path))
