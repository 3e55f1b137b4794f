"""What a standby can import ahead for an engine command: which interpreter and module or script
it runs (plan_command), and the modules to import before the trigger (default_preload).

Part of the standby launcher (standby_launcher.py), so it runs inside the engine's interpreter
too: the standard library only, Python 3.10 syntax (vLLM's oldest).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MODULE = "module"  # PY [options] -m MODULE ...: import MODULE, later run it as __main__
SCRIPT = "script"  # a Python script (console scripts such as `vllm`): import what it imports
PLAIN = "plain"  # nothing can be imported ahead: the daemon launches plainly
EXEC = "exec"  # a standby that could not import: on the trigger it execs the argv unchanged

_MAX_SCRIPT_BYTES = 1 << 20
_PYTHON_NAME = re.compile(r"python[0-9.]*")
# Interpreter options (python --help, 3.10 to 3.13): flags, and those that take a value.
_FLAGS = frozenset("bBdEIOPqRsSuv")
_VALUED = frozenset("WX")
_LONG_VALUED = frozenset(("--check-hash-based-pycs",))
# pip/distlib's wrapper when the interpreter's path is too long for a #! line.
_SH_EXEC = re.compile(r"""'''exec' "?([^"\s]+)"? "\$0" "\$@"\s*$""")


@dataclass(frozen=True)
class CommandPlan:
    """How an engine command can run from a standby; `reason` says why when it cannot."""

    kind: str
    interpreter: tuple[str, ...] = ()  # starts the engine's Python, its options included
    target: str = ""  # the module's name or the script's path
    args_at: int = 0  # command[args_at:] are the engine's own arguments
    reason: str = ""


def _plain(reason: str) -> CommandPlan:
    return CommandPlan(PLAIN, reason=reason)


def is_python_name(program: str) -> bool:
    return _PYTHON_NAME.fullmatch(os.path.basename(program)) is not None


def plan_command(command: Sequence[str], path: str | None = None) -> CommandPlan:
    """Decide how `command` can be pre-imported; `path` is the engine environment's PATH."""
    if not command:
        return _plain("the engine command is empty")
    if is_python_name(command[0]):
        return _plan_interpreter(list(command), 1)
    exe = command[0] if "/" in command[0] else shutil.which(command[0], path=path)
    if exe is None or not os.path.isfile(exe):
        return _plain(f"{command[0]!r} is not found")
    return _plan_script_file(exe, list(command))


def _plan_interpreter(command: list[str], i: int) -> CommandPlan:
    """Read the options of a Python interpreter from command[i] on, up to its module or script."""
    while i < len(command):
        arg = command[i]
        if arg in _LONG_VALUED:
            i += 2
            continue
        if arg == "-":
            return _plain("the engine command reads its program from stdin")
        if not arg.startswith("-"):
            return _checked_script(command, i)
        if arg.startswith("--"):
            return _plain(f"interpreter option {arg!r} is not understood")
        j = 1
        while j < len(arg):
            flag = arg[j]
            if flag == "m":
                # -m ends the options; it may carry the module (-mpkg) or be clustered (-um).
                options = command[:i] + ([arg[:j]] if j > 1 else [])
                if arg[j + 1 :]:
                    return CommandPlan(MODULE, tuple(options), arg[j + 1 :], i + 1)
                if i + 1 < len(command):
                    return CommandPlan(MODULE, tuple(options), command[i + 1], i + 2)
                return _plain("-m is not followed by a module name")
            if flag in _VALUED:
                if j + 1 == len(arg):
                    i += 1  # the value is the next argument
                break
            if flag not in _FLAGS:
                return _plain(f"interpreter option -{flag} leaves no module to pre-import")
            j += 1
        i += 1
    return _plain("the engine command starts an interactive interpreter")


def _checked_script(command: list[str], i: int) -> CommandPlan:
    script = command[i]
    problem = _python_source_problem(script)
    if problem is not None:
        return _plain(problem)
    return CommandPlan(SCRIPT, tuple(command[:i]), script, i + 1)


def _read_head(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_SCRIPT_BYTES + 1)
    except OSError:
        return None


def _python_source_problem(path: str) -> str | None:
    data = _read_head(path)
    if data is None:
        return f"{path} cannot be read"
    if len(data) > _MAX_SCRIPT_BYTES:
        return f"{path} is larger than a script"
    try:
        ast.parse(data, filename=path)
    except (SyntaxError, ValueError) as e:
        return f"{path} is not Python source ({type(e).__name__}: {e})"
    return None


def _plan_script_file(exe: str, command: list[str]) -> CommandPlan:
    """A console script (or any #! file): find the Python that runs it from its first lines."""
    head = _read_head(exe)
    if head is None:
        return _plain(f"{exe} cannot be read")
    if not head.startswith(b"#!"):
        return _plain(f"{exe} is not a script (no #! line): a binary cannot be pre-imported")
    lines = head.decode("utf-8", "replace").splitlines()
    # Linux passes what follows the interpreter on the #! line as one argument.
    interp, _, arg = lines[0][2:].strip().partition(" ")
    arg = arg.strip()
    if os.path.basename(interp) == "env" and arg and " " not in arg and is_python_name(arg):
        interpreter, options_at = [interp, arg], 2
    elif is_python_name(interp):
        interpreter, options_at = [interp, *([arg] if arg else [])], 1
    elif len(lines) > 1 and (m := _SH_EXEC.match(lines[1])) and is_python_name(m.group(1)):
        interpreter, options_at = [m.group(1)], 1
    else:
        return _plain(f"{exe} is run by {lines[0][2:].strip()!r}, not by Python")
    planned = _plan_interpreter([*interpreter, exe, *command[1:]], options_at)
    if planned.kind == PLAIN:
        return planned
    if planned.kind != SCRIPT or planned.target != exe:
        return _plain(f"{exe}: the options on its #! line are not understood")
    return CommandPlan(SCRIPT, tuple(interpreter), exe, 1)


# ----- what to import ahead (runs in the engine's interpreter) -----


@dataclass(frozen=True)
class _Import:
    """One import statement: the module, and for `from M import x as y` {"y": "x"}."""

    module: str
    names: dict[str, str]


@dataclass(frozen=True)
class Preload:
    own: list[str]  # the command's module itself, when importing it runs nothing
    extras: list[str]  # what it imports on the way to its work
    optional: frozenset[str]  # `from P import x` candidates: P.x may be a name, not a module
    note: str = ""  # why the derivation fell short, if it did


def _parse_file(path: str) -> ast.Module:
    with open(path, "rb") as f:
        return ast.parse(f.read(), filename=path)


def _is_main_test(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _main_block(tree: ast.Module) -> list[ast.stmt]:
    """The body of the file's top-level `if __name__ == "__main__":`, or []."""
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test):
            return list(node.body)
    return []


def _imports(body: Iterable[ast.stmt], package: str | None) -> list[_Import]:
    """The import statements of `body` that run whatever happens (not those under an if)."""
    found: list[_Import] = []
    for node in body:
        if isinstance(node, ast.Import):
            found += [_Import(alias.name, {}) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            try:
                module = importlib.util.resolve_name(
                    "." * node.level + (node.module or ""), package
                )
            except (ImportError, ValueError):
                continue
            found.append(_Import(module, {a.asname or a.name: a.name for a in node.names}))
    return found


def _module_source(module: str) -> tuple[ast.Module, str | None] | None:
    """A module's parsed source and the package its relative imports start from."""
    try:
        spec = importlib.util.find_spec(module)  # imports the parent packages, nothing more
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            return None  # missing, compiled or frozen: no source to read
        package = module if spec.submodule_search_locations is not None else None
        return _parse_file(spec.origin), package or module.rpartition(".")[0] or None
    except Exception:  # a parent package that fails to import: no preload can help there
        return None


def _function_imports(tree: ast.Module, name: str, package: str | None) -> list[_Import]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return _imports(node.body, package)
    return []


def _entry_imports(tree: ast.Module, package: str | None, own: bool) -> list[_Import]:
    """What a file run as __main__ imports: at its top (when `own`), in its main block, and in
    the functions that block calls (console scripts' entry points import lazily).

    Those imports then happen before the code that precedes them in the function; a module
    that reads the environment as the function left it needs an explicit --preload instead.
    """
    main = _main_block(tree)
    top = _imports(tree.body, package)
    inner = _imports(main, package)
    found = top + inner if own else inner
    bound = {b: (i.module, n) for i in top + inner for b, n in i.names.items()}
    calls = {
        node.func.id
        for node in ast.walk(ast.Module(body=main or list(tree.body), type_ignores=[]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    for called in sorted(calls):
        if called not in bound:
            found += _function_imports(tree, called, package)
            continue
        module, name = bound[called]
        source = _module_source(module)
        if source is not None:
            found += _function_imports(source[0], name, source[1])
    return found


def _flatten(imports: list[_Import]) -> tuple[list[str], frozenset[str]]:
    names: list[str] = []
    optional = []
    for i in imports:
        names.append(i.module)
        for name in i.names.values():
            names.append(f"{i.module}.{name}")
            optional.append(f"{i.module}.{name}")
    return list(dict.fromkeys(names)), frozenset(optional)


def module_runs_only_as_main(tree: ast.Module) -> bool:
    """Importing a module is safe when its work sits under `if __name__ == "__main__":`."""
    return bool(_main_block(tree))


def default_preload(plan: CommandPlan) -> Preload:
    """What a MODULE or SCRIPT plan can import ahead, read from the sources without running them."""
    if plan.kind == SCRIPT:
        try:
            tree = _parse_file(plan.target)
        except (OSError, SyntaxError, ValueError) as e:
            return Preload([], [], frozenset(), f"cannot read {plan.target} ({e})")
        return Preload([], *_flatten(_entry_imports(tree, None, own=True)))
    try:
        spec = importlib.util.find_spec(plan.target)
    except Exception as e:
        spec, error = None, f"{type(e).__name__}: {e}"
    else:
        error = f"no module named {plan.target!r}"
    if spec is None:
        # Importing it fails again below, and the standby then runs the command plainly.
        return Preload([plan.target], [], frozenset(), error)
    if spec.submodule_search_locations is not None:  # a package: `-m PKG` runs PKG.__main__
        source = _module_source(f"{plan.target}.__main__")
        imports = _entry_imports(source[0], plan.target, own=True) if source else []
        return Preload([plan.target], *_flatten(imports))
    source = _module_source(plan.target)
    if source is None:
        note = f"cannot read the source of {plan.target}; only it is imported ahead"
        return Preload([plan.target], [], frozenset(), note)
    tree, package = source
    if module_runs_only_as_main(tree):
        return Preload([plan.target], *_flatten(_entry_imports(tree, package, own=False)))
    note = f"{plan.target} does its work at import, so only what it imports is imported ahead"
    return Preload([], *_flatten(_entry_imports(tree, package, own=True)), note)
