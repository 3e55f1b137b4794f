"""A rendered course as files: YAML text, the directory on disk, and what differs from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.k8s.render import Rendered, kustomizations

HEADER = "# Rendered by `mig-orchestrator k8s render` from {source}: edit that, not this file.\n"
README = "README.md"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the NVML fix's files, models.toml) as literal blocks people can read;
    no YAML anchors, which kubectl reads but people and diff tools do not."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, width=100)


def texts(rendered: Rendered, source: str) -> dict[str, str]:
    """Every file of the directory, by relative path."""
    header = HEADER.format(source=Path(source).name)
    out = {path: header + to_yaml(objs) for path, objs in rendered.files.items()}
    out.update({path: header + to_yaml([k]) for path, k in kustomizations(rendered).items()})
    out[README] = rendered.readme
    return dict(sorted(out.items()))


def _ours(path: Path) -> bool:
    """A file an earlier render wrote: it starts with HEADER's words."""
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().startswith(HEADER.split("{")[0])
    except (OSError, UnicodeDecodeError):
        return False


def stale(out: Path, files: dict[str, str]) -> list[Path]:
    """Files an earlier render wrote that this one no longer has (a model that was removed)."""
    if not out.is_dir():
        return []
    return sorted(
        p for p in out.rglob("*.yaml") if str(p.relative_to(out)) not in files and _ours(p)
    )


def write(out: Path, files: dict[str, str]) -> list[Path]:
    """Write the directory; returns the stale files it removed."""
    removed = stale(out, files)
    for path, text in files.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    for p in removed:
        p.unlink()
    return removed


def differences(out: Path, files: dict[str, str]) -> list[str]:
    """Where the directory on disk is not what rendering gives now, one line per file."""
    lines = []
    for path, text in files.items():
        target = out / path
        if not target.is_file():
            lines.append(f"{path}: missing")
        elif target.read_text(encoding="utf-8") != text:
            lines.append(f"{path}: out of date")
    lines += [f"{p.relative_to(out)}: no longer rendered" for p in stale(out, files)]
    return lines
