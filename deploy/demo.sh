#!/usr/bin/env bash
# One command on a fresh machine without a GPU: set up what is missing, then run the daemon with
# real vLLM CPU engines (tiny local models) on a simulated MIG topology. Ctrl-C stops everything.
#   bash deploy/demo.sh [demo options]     e.g. --students 3, --exit-when-ready
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e . 2>&1 \
    | grep -v '^WARNING: Location' || true
exec .venv/bin/mig-orchestrator demo "$@"
