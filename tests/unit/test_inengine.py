"""Everything under orchestrator/inengine/ runs inside the engine's Python: the standard library
only, and nothing newer than Python 3.10, the oldest vLLM supports (vLLM's pyproject.toml:
requires-python = ">=3.10")."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INENGINE = Path(__file__).resolve().parents[2] / "orchestrator" / "inengine"
FILES = sorted(INENGINE.rglob("*.py"))
OLDEST = (3, 10)
# Standard-library modules and names that came after 3.10 (the "What's New in Python 3.11" page).
NEWER_MODULES = {"tomllib"}
NEWER_NAMES = {
    ("enum", "StrEnum"),
    ("datetime", "UTC"),
    ("asyncio", "timeout"),
    ("asyncio", "TaskGroup"),
    ("typing", "Self"),
    ("typing", "LiteralString"),
    ("typing", "assert_never"),
}


def _python_3_10() -> str | None:
    """A Python 3.10 on this host (on PATH, or one pyenv installed), else None."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which("python3.10"), *map(str, pyenv.glob("3.10*/bin/python3.10"))]
    for python in filter(None, candidates):
        probe = [python, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"]
        result = subprocess.run(probe, capture_output=True, text=True, check=False)
        if result.stdout.strip() == "True":
            return python
    return None


PYTHON_3_10 = _python_3_10()


def _ids(files: list[Path]) -> list[str]:
    return [str(f.relative_to(INENGINE)) for f in files]


def _siblings(path: Path) -> set[str]:
    """Modules of the same folder: the folder itself goes on the engine's sys.path."""
    return {p.stem for p in path.parent.glob("*.py")}


def _imports(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _newer_names(tree: ast.AST) -> set[str]:
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            used.add((node.value.id, node.attr))
        elif isinstance(node, ast.ImportFrom) and node.module:
            used |= {(node.module, alias.name) for alias in node.names}
    return {f"{module}.{name}" for module, name in used & NEWER_NAMES}


def test_there_is_something_to_check() -> None:
    assert {"standby_launcher.py", "sitecustomize.py"} <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_parses_as_python_3_10_and_imports_only_the_standard_library(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source, filename=str(path), feature_version=OLDEST)
    allowed = (set(sys.stdlib_module_names) - NEWER_MODULES) | {"__future__"} | _siblings(path)
    assert _imports(tree) - allowed == set()
    assert _newer_names(tree) == set()


def _import_alone(python: str, path: Path) -> None:
    # -I -S: no site-packages, no user site, no PYTHONPATH; only its own folder on sys.path.
    code = f"import sys; sys.path.insert(0, {str(path.parent)!r}); import {path.stem}"
    argv = [python, "-I", "-S", "-c", code]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{python}: {result.stderr}"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_imports_with_no_site_packages(path: Path) -> None:
    _import_alone(sys.executable, path)


@pytest.mark.skipif(PYTHON_3_10 is None, reason="no Python 3.10 on this host")
@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_imports_under_python_3_10(path: Path) -> None:
    assert PYTHON_3_10 is not None
    _import_alone(PYTHON_3_10, path)
