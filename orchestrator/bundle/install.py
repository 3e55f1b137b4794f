"""Install an offline bundle made by `mig-orchestrator engine bundle`; needs no index.

Shipped inside every bundle as install.py and run with the target's own Python:
    python3 install.py --prefix /opt/mig-orchestrator [--base-python /opt/torch/.venv/bin/python3]
Each environment (the vLLM engine's, the daemon's) is a venv LAYERED over the base Python's
environment: its own site-packages first, then the base's through a .pth file, so vLLM runs on
the torch, CUDA libraries and numpy the host already has, and the bundle carries only the rest.
Standalone on purpose (stdlib, plus `packaging` for the version check when the base has it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

MANIFEST = "bundle.json"
STAMP = ".mig-bundle.json"
LAYER_PTH = "_mig_orchestrator_base.pth"
FORMAT = 1
CHUNK = 1 << 20
# The base's sys.path entries that are package directories, user site excluded: a service must
# not depend on whoever ran the installer.
_BASE_SITES = (
    "import json, site, sys; user = site.getusersitepackages(); "
    "print(json.dumps([p for p in sys.path if p.rstrip('/').endswith(('site-packages', "
    "'dist-packages')) and p != user]))"
)


# Python >= 3.12 (and 3.11.4+) filters archive members itself (PEP 706); older ones (Debian 12's
# 3.11.2) rely on the member check in unpack() and on _without_filter.
_SAFE: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class InstallError(RuntimeError):
    """The bundle cannot be installed; the message says what to fix."""


def say(text: str) -> None:
    print(f"bundle-install: {text}", file=sys.stderr, flush=True)


def load_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InstallError(
            f"{path}: {exc.strerror or exc}; is --bundle the bundle folder?"
        ) from None
    except ValueError as exc:
        raise InstallError(f"{path}: not JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise InstallError(f"{path}: bundle format {manifest.get('format')!r}, want {FORMAT}")
    return dict(manifest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_parts(bundle: Path, manifest: dict[str, Any]) -> list[Path]:
    """Every part present with its recorded size and sha256; all problems named at once."""
    problems, paths = [], []
    for part in manifest["archive"]["parts"]:
        path = bundle / part["name"]
        paths.append(path)
        if not path.is_file():
            problems.append(f"{part['name']}: missing")
        elif path.stat().st_size != part["size"]:
            problems.append(f"{part['name']}: {path.stat().st_size} bytes, want {part['size']}")
        elif _sha256(path) != part["sha256"]:
            # Damage, not tampering: whoever can change a part can change bundle.json too.
            problems.append(f"{part['name']}: sha256 differs (damaged in transfer?)")
    if problems:
        raise InstallError(f"bundle {bundle} is incomplete:\n  " + "\n  ".join(problems))
    return paths


class _Joined(io.RawIOBase):
    """The parts read back to back as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._current: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._current is None:
                if not self._paths:
                    return 0
                self._current = self._paths.pop(0).open("rb")
            got = self._current.readinto(buffer)
            if got:
                return got
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
        super().close()


def unpack(paths: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with (
        _Joined(paths) as raw,
        lzma.open(io.BufferedReader(raw, CHUNK)) as xz,
        tarfile.open(fileobj=xz, mode="r|") as tar,
    ):
        for member in tar:
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                raise InstallError(f"refusing archive member {member.name!r}")
            tar.extract(member if _SAFE else _without_filter(member), dest, **_SAFE)


def _without_filter(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """What tarfile's `data` filter does to a plain file or folder, for Pythons without it: no
    set-id or sticky bit, no write for group or others, owned by whoever installs."""
    member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
    member.uid, member.gid = os.geteuid(), os.getegid()
    member.uname = member.gname = ""
    return member


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise InstallError(f"{what}: cannot run {argv[0]}: {exc}") from None
    if done.returncode != 0:
        tail = "\n  ".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise InstallError(f"{what} failed (exit {done.returncode}):\n  {tail}")
    return done.stdout


def _offline_env() -> dict[str, str]:
    # The bundle is the only source: the host's pip configuration (an index, constraints,
    # find-links) must neither be contacted nor narrow what the bundle pins.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return env


def create_layered_venv(venv: Path, base_python: str, fresh: bool) -> Path:
    """A venv whose site-packages come first and the base environment's after them."""
    if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
        raise InstallError(f"{venv} exists and is not a virtual environment; choose another path")
    sites = json.loads(_run([base_python, "-c", _BASE_SITES], f"ask {base_python} for its sites"))
    clear = ["--clear"] if fresh and venv.exists() else []
    # --without-pip: ensurepip is often missing (Debian's python3-venv) and pip comes from the
    # bundle or the base anyway.
    _run([base_python, "-m", "venv", "--without-pip", *clear, str(venv)], f"create venv {venv}")
    python = venv / "bin" / "python"
    own = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        "find the venv's site-packages",
    ).strip()
    # addsitedir (not a bare path line) so the base's own .pth files are processed as well.
    lines = [f"import site; site.addsitedir({site!r})" for site in sites if site != own]
    (Path(own) / LAYER_PTH).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return python


def pip_install(python: Path, pip_wheel: Path | None, wheels: list[Path]) -> None:
    pip = [str(python), str(pip_wheel / "pip")] if pip_wheel else [str(python), "-m", "pip"]
    argv = [
        *pip,
        "install",
        "--no-index",
        "--no-deps",
        "--ignore-installed",
        "--no-compile",
        "--no-warn-script-location",
        "--no-warn-conflicts",
        *map(str, wheels),
    ]
    _run(argv, f"pip install into {python.parent.parent}", _offline_env())


def compile_all(python: Path) -> None:
    # pip compiles one file at a time; vLLM has thousands. -j 0 uses every core.
    site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        "find site-packages",
    ).strip()
    # Not checked: a file that fails to compile fails at import, where the check finds it.
    subprocess.run(
        [str(python), "-m", "compileall", "-q", "-j", "0", site],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def _installed_versions(python: Path, names: list[str]) -> dict[str, str | None]:
    code = (
        "import json, sys\nfrom importlib import metadata\nout = {}\n"
        "for n in json.loads(sys.argv[1]):\n"
        "    try: out[n] = metadata.version(n)\n"
        "    except metadata.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))"
    )
    return dict(json.loads(_run([str(python), "-c", code, json.dumps(names)], "read versions")))


def _contains(spec: str, version: str) -> bool | None:
    """Whether version satisfies spec; None when this Python has no `packaging` to tell."""
    for base in ("packaging", "pip._vendor.packaging"):
        try:
            specifiers = importlib.import_module(f"{base}.specifiers")
        except ImportError:
            continue
        return bool(specifiers.SpecifierSet(spec).contains(version, prereleases=True))
    return None


def check_provided(python: Path, provided: dict[str, dict[str, Any]]) -> list[str]:
    """What the bundle assumed the target has, as the new venv sees it: warnings, if any."""
    found = _installed_versions(python, sorted(provided))
    warnings = []
    for name, info in sorted(provided.items()):
        have, wants = found.get(name), info.get("wants") or ""
        if have is None:
            warnings.append(
                f"{name}: the bundle assumed the target has it ({wants or 'any'}), "
                f"but {python} finds none; wanted by {', '.join(info['required_by'])}"
            )
        elif wants and _contains(wants, have) is False:
            warnings.append(
                f"{name} {have} here, but {wants} is wanted by {', '.join(info['required_by'])}"
            )
    return warnings


def check_imports(python: Path, modules: list[str]) -> float:
    started = time.monotonic()
    if modules:
        code = "; ".join(f"import {m}" for m in modules)
        _run([str(python), "-c", code], f"`{code}` in {python.parent.parent}")
    return time.monotonic() - started


def install_env(
    name: str, spec: dict[str, Any], venv: Path, args: argparse.Namespace, ctx: dict[str, Any]
) -> dict[str, Any]:
    stamp = venv / STAMP
    bundle_id = ctx["bundle_id"]
    if not args.force and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("bundle_id") == bundle_id:
                say(f"{name}: {venv} already has this bundle (use --force to reinstall)")
                return {"venv": str(venv), "skipped": True}
        except ValueError:
            pass
    timings: dict[str, float] = {}
    started = time.monotonic()
    python = create_layered_venv(venv, args.base_python, fresh=True)
    wheels = [ctx["unpacked"] / w for w in spec["wheels"]]
    if wheels:  # none when the target already has everything (e.g. vLLM itself)
        pip_install(python, ctx["pip"], wheels)
    timings["install_s"] = time.monotonic() - started
    mark = time.monotonic()
    compile_all(python)
    timings["compile_s"] = time.monotonic() - mark
    warnings = check_provided(python, spec.get("provided", {}))
    for warning in warnings:
        say(f"{name}: warning: {warning}")
    if not args.no_check_import:
        timings["import_check_s"] = check_imports(python, spec.get("check_imports", []))
    command = [c.replace("{python}", str(python)) for c in spec.get("engine_command", [])]
    result = {
        "venv": str(venv),
        "python": str(python),
        "packages": len(wheels),
        "warnings": warnings,
        "timings": {k: round(v, 1) for k, v in timings.items()},
        **({"engine_command": command} if command else {}),
    }
    stamp.write_text(json.dumps({"bundle_id": bundle_id, **result}, indent=2) + "\n")
    say(
        f"{name}: {len(wheels)} packages into {venv} "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )
    return result


def install(args: argparse.Namespace) -> dict[str, Any]:
    bundle = Path(args.bundle).resolve()
    manifest = load_manifest(bundle)
    started = time.monotonic()
    paths = verify_parts(bundle, manifest)
    say(
        f"verified {len(paths)} part(s), {manifest['archive']['size'] / 1e6:.0f} MB "
        f"in {time.monotonic() - started:.1f} s"
    )
    if args.verify_only:
        return {"verified": [p.name for p in paths]}
    envs = {name: manifest["environments"][name] for name in args.only or manifest["environments"]}
    prefix = Path(args.prefix)
    venvs = {
        "engine": Path(args.engine_venv) if args.engine_venv else prefix / "vllm-venv",
        "daemon": Path(args.daemon_venv) if args.daemon_venv else prefix / "venv",
    }
    work = Path(args.work) if args.work else prefix / ".bundle-unpacked"
    if work.exists():
        shutil.rmtree(work)
    mark = time.monotonic()
    unpack(paths, work)
    say(
        f"unpacked {manifest['archive']['unpacked_size'] / 1e6:.0f} MB into {work} "
        f"in {time.monotonic() - mark:.1f} s"
    )
    pip = manifest.get("pip")
    ctx = {
        "bundle_id": manifest["bundle_id"],
        "unpacked": work,
        "pip": work / pip if pip else None,
    }
    try:
        results = {n: install_env(n, s, venvs[n], args, ctx) for n, s in envs.items()}
    finally:
        if not args.keep_unpacked:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "bundle_id": manifest["bundle_id"],
        "environments": results,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="install.py", description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--bundle", default=str(here), help="bundle folder (default: this one)")
    parser.add_argument(
        "--prefix",
        default="/opt/mig-orchestrator",
        help="where the venvs go: PREFIX/vllm-venv, PREFIX/venv (%(default)s)",
    )
    parser.add_argument("--engine-venv", help="engine venv path (default PREFIX/vllm-venv)")
    parser.add_argument("--daemon-venv", help="daemon venv path (default PREFIX/venv)")
    parser.add_argument(
        "--base-python",
        default=sys.executable,
        help="interpreter whose packages the venvs build on (default: this one)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=("engine", "daemon"),
        help="install only this environment (repeatable)",
    )
    parser.add_argument("--work", help="unpack here (default PREFIX/.bundle-unpacked)")
    parser.add_argument("--force", action="store_true", help="reinstall an up-to-date venv")
    parser.add_argument(
        "--no-check-import",
        action="store_true",
        help="skip importing the engine (slow on a cold host: ~30 s for vLLM)",
    )
    parser.add_argument("--verify-only", action="store_true", help="check the parts and stop")
    parser.add_argument("--keep-unpacked", action="store_true", help="keep the unpacked wheels")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = install(args)
    except InstallError as exc:
        say(f"error: {exc}")
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    for name, env in result.get("environments", {}).items():
        if "engine_command" in env:  # on stderr, so --json output stays JSON
            say(f"for models.toml, [orchestrator] ({name} environment):")
            print(f"engine_command = {json.dumps(env['engine_command'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
