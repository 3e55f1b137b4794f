"""`mig-orchestrator engine bundle`: everything an offline host lacks, in parts of a fixed size.

Runs where a package index is reachable. For a target described by its Python version, its
glibc/architecture and a list of what it already has (`pip freeze` or `pip list` output), it
resolves vLLM's dependency closure from the wheels' own metadata, with markers evaluated for
the target, and keeps only what the target lacks; then the same for the daemon. The result:
bundle.json (manifest with hashes), install.py (the offline installer), and bundle.tar.xz.NNN.
Stdlib and pip only, so `python -m orchestrator.cli.engine bundle` works without the daemon's
dependencies.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from orchestrator.bundle import install as bundle_install
from orchestrator.bundle.pack import Archive, write_archive, write_sums
from orchestrator.bundle.resolve import Policy, Resolution, ResolveError, Resolver
from orchestrator.bundle.target import (
    Requirement,
    Target,
    canonicalize_name,
)
from orchestrator.bundle.wheel import Wheel, read_wheel, repack, sha256

REPO = Path(__file__).resolve().parents[2]
ENGINE_MODULE = "vllm.entrypoints.openai.api_server"
DAEMON_DIST = "mig-orchestrator"
# pip's lines naming the file it put in (or found in) the download directory.
_PIP_SAVED = re.compile(r"^\s*(?:Saved|File was already downloaded)\s+(?P<path>\S+\.whl)\s*$")
# What the daemon's wheel build must not pick up from a checkout.
_SOURCE_IGNORE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".gpu")


class BundleError(RuntimeError):
    """The bundle cannot be built; the message says why."""


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mig-orchestrator" / "bundle-wheels"


@dataclass
class PipFetcher:
    """Download the best wheel for each requirement for the target, with the host's pip."""

    target: Target
    cache: Path
    pip_args: list[str] = field(default_factory=list)
    log: TextIO = sys.stderr

    def __call__(self, requirements: list[str]) -> list[Wheel]:
        self.cache.mkdir(parents=True, exist_ok=True)
        platforms = [arg for p in self.target.platforms() for arg in ("--platform", p)]
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--python-version",
            self.target.python_short,
            "--implementation",
            "cp",
            "--abi",
            self.target.python_tag,
            *platforms,
            "--dest",
            str(self.cache),
            *self.pip_args,
            *requirements,
        ]
        self.log.write(f"bundle: fetching {len(requirements)}: {' '.join(requirements)}\n")
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        output = done.stdout + done.stderr
        if done.returncode != 0:
            tail = "\n  ".join(
                ln for ln in output.splitlines()[-15:] if "is ignored: it is neither" not in ln
            )
            raise ResolveError(f"pip download failed (exit {done.returncode}):\n  {tail}")
        saved = {}
        for line in output.splitlines():
            match = _PIP_SAVED.match(line)
            if match:
                wheel = read_wheel(self.cache / Path(match["path"]).name)
                saved[wheel.name] = wheel
        wanted = [canonicalize_name(Requirement(r).name) for r in requirements]
        missing = [n for n in wanted if n not in saved]
        if missing:
            raise ResolveError(f"pip download reported no wheel for {', '.join(missing)}")
        return [saved[n] for n in wanted]


def build_daemon_wheel(source: Path, out: Path, log: TextIO) -> Wheel:
    """The daemon as a wheel, built from a scratch copy so the checkout stays untouched."""
    if not (source / "pyproject.toml").is_file():
        raise BundleError(f"--source {source} has no pyproject.toml")
    with tempfile.TemporaryDirectory(prefix="mig-bundle-src-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(*_SOURCE_IGNORE))
        out.mkdir(parents=True, exist_ok=True)
        log.write(f"bundle: building the daemon wheel from {source}\n")
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
        done = subprocess.run([*argv, str(copy)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BundleError(f"building the daemon wheel failed:\n{done.stderr[-3000:]}")
    built = sorted(out.glob("mig_orchestrator-*.whl"), key=lambda p: p.stat().st_mtime)
    if not built:
        raise BundleError(f"pip wheel wrote no mig_orchestrator wheel into {out}")
    return read_wheel(built[-1])


@dataclass
class Options:
    out: Path
    target: Target
    target_file: Path
    engine: list[Requirement]
    policy: Policy
    drop: dict[str, list[str]]  # package -> globs of files left out of its wheel
    part_size: int
    cache: Path
    pip_args: list[str]
    daemon_source: Path | None
    daemon_extras: list[str]
    check_imports: list[str]
    with_pip: bool
    strict: bool
    xz_preset: int
    dry_run: bool = False


def _env_manifest(
    res: Resolution, files: dict[str, str], command: list[str], imports: list[str]
) -> dict[str, Any]:
    provided = {
        name: {
            "target_version": str(v) if v is not None else None,
            "wants": res.wants(name),
            "required_by": res.required_by(name),
        }
        for name, v in res.provided.items()
    }
    return {
        "roots": [str(r) for r in res.roots],
        "wheels": sorted(files[name] for name in res.ship),
        "provided": provided,
        "excluded": {
            n: {"why": why, "required_by": res.required_by(n)} for n, why in res.excluded.items()
        },
        "mismatches": [m.describe() for m in res.mismatches],
        "check_imports": imports,
        **({"engine_command": command} if command else {}),
    }


class Builder:
    def __init__(self, opts: Options, log: TextIO = sys.stderr) -> None:
        self.opts = opts
        self.log = log
        self.fetch = PipFetcher(opts.target, opts.cache, opts.pip_args, log)

    def say(self, text: str) -> None:
        self.log.write(f"bundle: {text}\n")
        self.log.flush()

    def resolve(self) -> dict[str, Resolution]:
        opts = self.opts
        out: dict[str, Resolution] = {}
        self.say(f"target: {opts.target.describe()}, {len(opts.target.installed)} packages")
        if opts.engine:
            engine = Resolver(opts.target, opts.policy, self.fetch)
            out["engine"] = res = engine.resolve(opts.engine)
            self.say(f"engine: {len(res.ship)} packages to ship ({res.rounds} rounds)")
        if opts.daemon_source is not None:
            wheel = build_daemon_wheel(opts.daemon_source, opts.cache / "local", self.log)
            extras = f"[{','.join(opts.daemon_extras)}]" if opts.daemon_extras else ""
            daemon = Resolver(
                opts.target,
                opts.policy,
                self.fetch,
                local=[wheel],
                prefer=out["engine"].ship.values() if "engine" in out else (),
            )
            out["daemon"] = daemon.resolve([Requirement(f"{DAEMON_DIST}{extras}")])
            self.say(f"daemon: {len(out['daemon'].ship)} packages to ship")
        for name, res in out.items():
            for m in res.mismatches:
                self.say(f"{name}: version differs on the target: {m.describe()}")
        if opts.strict and any(res.mismatches for res in out.values()):
            raise BundleError("--strict: the target's versions above do not satisfy the bundle")
        return out

    def stage(self, staging: Path, resolved: dict[str, Resolution]) -> dict[str, Any]:
        """Repack every shipped wheel into staging/wheels; return the per-wheel manifest."""
        opts = self.opts
        wheels: dict[str, Wheel] = {}
        for res in resolved.values():
            wheels.update(res.ship)
        if opts.with_pip:
            (pip_wheel,) = self.fetch(["pip"])
            wheels.setdefault("pip", pip_wheel)
        unused = set(opts.drop) - set(wheels)
        if unused:
            raise BundleError(f"--drop-file names packages the bundle does not ship: {unused}")
        entries: dict[str, Any] = {}
        for name, wheel in sorted(wheels.items()):
            member = f"wheels/{wheel.filename}"
            dropped = repack(wheel.path, staging / member, opts.drop.get(name, []))
            entries[member] = {
                "name": name,
                "version": str(wheel.version),
                "size": (staging / member).stat().st_size,
                "sha256": sha256(staging / member),
                "upstream_sha256": sha256(wheel.path),
                "upstream_size": wheel.path.stat().st_size,
                "dropped": dropped,
                "required_by": sorted(
                    {p for res in resolved.values() for p in res.required_by(name)}
                ),
            }
        return entries

    def build(self) -> dict[str, Any]:
        opts = self.opts
        resolved = self.resolve()
        if opts.dry_run:
            self.say(plan(resolved))
            return {"bundle_id": None, "archive": {"parts": []}}
        opts.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=opts.out) as tmp:
            staging = Path(tmp)
            entries = self.stage(staging, resolved)
            # Small wheels first: a damaged tail then costs the big one, not everything.
            members = sorted(entries, key=lambda m: (entries[m]["size"], m))
            self.say(
                f"compressing {sum(e['size'] for e in entries.values()) / 1e6:.0f} MB "
                f"with xz -{opts.xz_preset} (minutes for vLLM)"
            )
            archive = write_archive(staging, members, opts.out, opts.part_size, opts.xz_preset)
        manifest = self.manifest(resolved, entries, archive)
        (opts.out / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.copyfile(bundle_install.__file__, opts.out / "install.py")
        self.say(summary(manifest))
        self.say(write_sums(opts.out))
        return manifest

    def manifest(
        self, resolved: dict[str, Resolution], entries: dict[str, Any], archive: Archive
    ) -> dict[str, Any]:
        opts = self.opts
        by_name = {e["name"]: member for member, e in entries.items()}
        envs = {}
        for name, res in resolved.items():
            command = ["{python}", "-m", ENGINE_MODULE] if name == "engine" else []
            imports = opts.check_imports if name == "engine" else ["orchestrator.cli"]
            envs[name] = _env_manifest(res, by_name, command, imports)
        body = {
            "format": bundle_install.FORMAT,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "target": {
                "python": ".".join(map(str, opts.target.python)),
                "platforms": opts.target.platforms(),
                "packages_file": opts.target_file.name,
                "packages": len(opts.target.installed),
            },
            "policy": {
                "overrides": {n: str(r) for n, r in opts.policy.overrides.items()},
                "exclude": dict(opts.policy.exclude),
                "replace": sorted(opts.policy.replace),
                "drop_files": opts.drop,
            },
            "pip": by_name.get("pip") if opts.with_pip else None,
            "environments": envs,
            "wheels": entries,
            "archive": {
                "name": archive.name,
                "size": archive.size,
                "sha256": archive.sha256,
                "unpacked_size": archive.unpacked_size,
                "parts": [vars(p) for p in archive.parts],
            },
        }
        # Content-derived, so an installer can tell an up-to-date venv from a stale one.
        digest = hashlib.sha256(json.dumps(body["wheels"], sort_keys=True).encode())
        return {"bundle_id": digest.hexdigest()[:16], **body}


def plan(resolved: dict[str, Resolution]) -> str:
    """What a bundle would hold, with each package's reason to be there (for --dry-run)."""
    lines = []
    for env, res in resolved.items():
        total = sum(w.path.stat().st_size for w in res.ship.values())
        lines.append(f"{env}: ship {len(res.ship)} wheels, {total / 1e6:.1f} MB as downloaded")
        for name, wheel in sorted(res.ship.items(), key=lambda kv: -kv[1].path.stat().st_size):
            size = wheel.path.stat().st_size / 1e6
            lines.append(
                f"  {size:7.1f} MB  {name} {wheel.version}  <- {', '.join(res.required_by(name))}"
            )
        lines.append(
            f"{env}: the target provides {len(res.provided)}: "
            + ", ".join(f"{n} {v or '(version unknown)'}" for n, v in sorted(res.provided.items()))
        )
        lines += [f"{env}: excluded {n}: {why}" for n, why in sorted(res.excluded.items())]
    return "\n".join(lines)


def summary(manifest: dict[str, Any]) -> str:
    archive = manifest["archive"]
    lines = [
        f"bundle {manifest['bundle_id']}: {len(manifest['wheels'])} wheels, "
        f"{archive['unpacked_size'] / 1e6:.0f} MB unpacked, "
        f"{archive['size'] / 1e6:.1f} MB as xz in {len(archive['parts'])} part(s):",
        *(f"  {p['name']}  {p['size'] / 1e6:.1f} MB" for p in archive["parts"]),
        "largest wheels (as stored, uncompressed):",
    ]
    biggest = sorted(manifest["wheels"].items(), key=lambda kv: -kv[1]["size"])[:8]
    lines += [f"  {e['size'] / 1e6:7.1f} MB  {m}" for m, e in biggest]
    for name, env in manifest["environments"].items():
        lines.append(
            f"{name}: ships {len(env['wheels'])}, target provides {len(env['provided'])}, "
            f"excluded {len(env['excluded'])}, version mismatches {len(env['mismatches'])}"
        )
    return "\n".join(lines)
