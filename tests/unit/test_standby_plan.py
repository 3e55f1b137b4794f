"""How the standby launcher reads an engine command: what it can pre-import, and when it cannot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from orchestrator.inengine.standby_plan import (
    MODULE,
    PLAIN,
    SCRIPT,
    CommandPlan,
    default_preload,
    plan_command,
)

PY = "/opt/venv/bin/python3.11"


def script(path: Path, text: str, mode: int = 0o755) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


PIP_WRAPPER = (
    "# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom engine.cli.main import main\n"
    "if __name__ == '__main__':\n"
    "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
    "    sys.exit(main())\n"
)


API = "vllm.entrypoints.openai.api_server"
HASH = "--check-hash-based-pycs"


@pytest.mark.parametrize(
    ("command", "plan"),
    [
        ([PY, "-m", API], (MODULE, (PY,), API, 3)),
        ([PY, "-mpkg.mod", "--port", "1"], (MODULE, (PY,), "pkg.mod", 2)),
        (
            [PY, "-u", "-X", "importtime", "-m", "m"],
            (MODULE, (PY, "-u", "-X", "importtime"), "m", 6),
        ),
        ([PY, "-Wignore", "-OO", "-m", "m", "a"], (MODULE, (PY, "-Wignore", "-OO"), "m", 5)),
        ([PY, "-um", "m"], (MODULE, (PY, "-u"), "m", 3)),
        (["python", HASH, "never", "-m", "m"], (MODULE, ("python", HASH, "never"), "m", 5)),
    ],
)
def test_python_dash_m_pre_imports_the_module_with_the_interpreter_options(
    command: list[str], plan: tuple[object, ...]
) -> None:
    got = plan_command(command)
    assert (got.kind, got.interpreter, got.target, got.args_at) == plan
    assert got.reason == ""


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ([PY, "-c", "import vllm"], "option -c"),
        ([PY, "-"], "stdin"),
        ([PY, "-u"], "interactive"),
        ([PY, "-m"], "-m is not followed"),
        ([PY, "--version"], "'--version' is not understood"),
        ([], "empty"),
        (["no-such-engine-xyz", "serve"], "'no-such-engine-xyz' is not found"),
    ],
)
def test_commands_with_nothing_to_pre_import_fall_back_with_a_reason(
    command: list[str], why: str
) -> None:
    got = plan_command(command, path="/nonexistent")
    assert got.kind == PLAIN
    assert why in got.reason


def test_console_script_runs_under_its_shebang_python(tmp_path: Path) -> None:
    vllm = script(tmp_path / "vllm", f"#!{PY}\n{PIP_WRAPPER}")
    assert plan_command(["vllm", "serve"], path=str(tmp_path)) == CommandPlan(
        SCRIPT, (PY,), str(vllm), 1
    )
    assert plan_command([str(vllm), "serve"]).target == str(vllm)


def test_shebang_through_env_and_with_an_interpreter_option(tmp_path: Path) -> None:
    via_env = script(tmp_path / "a", f"#!/usr/bin/env python3\n{PIP_WRAPPER}")
    assert plan_command([str(via_env)]).interpreter == ("/usr/bin/env", "python3")
    with_flag = script(tmp_path / "b", f"#!{PY} -E\n{PIP_WRAPPER}")
    assert plan_command([str(with_flag)]).interpreter == (PY, "-E")


def test_pip_wrapper_for_interpreter_paths_too_long_for_a_shebang(tmp_path: Path) -> None:
    long_py = "/opt/" + "x" * 130 + "/bin/python"
    wrapper = script(
        tmp_path / "vllm", f"#!/bin/sh\n'''exec' \"{long_py}\" \"$0\" \"$@\"\n' '''\n{PIP_WRAPPER}"
    )
    assert plan_command([str(wrapper), "serve"]) == CommandPlan(SCRIPT, (long_py,), str(wrapper), 1)


def test_python_given_a_script_file(tmp_path: Path) -> None:
    engine = script(tmp_path / "engine.py", "import json\nprint(json.dumps(1))\n", 0o644)
    got = plan_command([PY, "-u", str(engine), "--port", "1"])
    assert (got.kind, got.interpreter, got.target, got.args_at) == (
        SCRIPT,
        (PY, "-u"),
        str(engine),
        3,
    )


@pytest.mark.parametrize(
    ("first_lines", "why"),
    [
        ("#!/bin/sh\nexec python -m vllm\n", "run by '/bin/sh', not by Python"),
        ("#!/usr/bin/env bash\necho\n", "not by Python"),
        ("#!/usr/bin/env -S python3 -u\nimport x\n", "not by Python"),
        (f"#!{PY}\ndef (:\n", "is not Python source (SyntaxError"),
        (f"#!{PY} -c\nimport x\n", "option -c"),
        ("\x7fELF\x02\x01\x01", "no #! line"),
    ],
)
def test_scripts_not_run_by_python_fall_back(tmp_path: Path, first_lines: str, why: str) -> None:
    engine = script(tmp_path / "engine", first_lines)
    got = plan_command([str(engine), "serve"])
    assert got.kind == PLAIN
    assert why in got.reason


def test_a_real_binary_falls_back() -> None:
    got = plan_command(["ls"], path=os.defpath)
    assert got.kind == PLAIN
    assert "binary" in got.reason


@pytest.fixture
def fake_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package `engine` on sys.path: guarded and unguarded modules, a lazy CLI entry point."""
    pkg = tmp_path / "engine"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "cli" / "main.py").write_text(
        "import json\n\ndef main():\n    import engine.serve\n    from engine import api\n"
        "    from .. import util as u\n    if json:\n        import engine.only_sometimes\n"
    )
    (pkg / "server.py").write_text(
        "import engine.heavy\n\ndef run():\n    from engine.api import build\n\n"
        "if __name__ == '__main__':\n    import engine.args\n    run()\n"
    )
    (pkg / "unguarded.py").write_text("import engine.heavy\nprint('serving')\n")
    for name in ("heavy", "serve", "api", "util", "args", "only_sometimes"):
        (pkg / f"{name}.py").write_text("")
    (pkg / "__main__.py").write_text("from engine.cli.main import main\nmain()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "engine" or m.startswith("engine.")]:
        del sys.modules[name]


def test_module_preload_adds_its_main_block_and_the_function_it_calls(fake_engine: Path) -> None:
    got = default_preload(plan_command([PY, "-m", "engine.server"]))
    assert got.own == ["engine.server"]
    assert got.extras == ["engine.args", "engine.api", "engine.api.build"]
    assert got.optional == {"engine.api.build"}
    assert got.note == ""


def test_console_script_preload_follows_the_entry_point_into_its_module(
    fake_engine: Path,
) -> None:
    wrapper = script(fake_engine / "engine-cli", f"#!{PY}\n{PIP_WRAPPER}")
    got = default_preload(plan_command([str(wrapper), "serve"]))
    assert got.own == []
    # The entry point's unconditional lazy imports, relative ones resolved; not the one under if.
    assert got.extras == [
        "re",
        "sys",
        "engine.cli.main",
        "engine.cli.main.main",
        "engine.serve",
        "engine",
        "engine.api",
        "engine.util",
    ]


def test_a_module_that_works_at_import_is_not_imported_ahead(fake_engine: Path) -> None:
    got = default_preload(plan_command([PY, "-m", "engine.unguarded"]))
    assert got.own == []
    assert got.extras == ["engine.heavy"]
    assert "does its work at import" in got.note


def test_package_preload_reads_its_dunder_main(fake_engine: Path) -> None:
    got = default_preload(plan_command([PY, "-m", "engine"]))
    assert got.own == ["engine"]
    assert "engine.serve" in got.extras
    assert "engine.__main__" not in got.extras + got.own


def test_missing_module_keeps_only_the_target_and_says_why(fake_engine: Path) -> None:
    got = default_preload(plan_command([PY, "-m", "engine.nope"]))
    assert got.own == ["engine.nope"]
    assert "no module named 'engine.nope'" in got.note
