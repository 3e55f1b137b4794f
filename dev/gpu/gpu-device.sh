#!/usr/bin/env bash
# Development tooling (dev/gpu/README.md), not part of the product: our own GPU runs on a machine
# reached one short remote call at a time, its state kept under $MIG_ORCH_DEVICE_HOME between
# calls. Every step leaves in $OUT: gpu-device.log and results-STEP.tar.gz (all results so far).
#
#   bash dev/gpu/gpu-device.sh receive          each call: keep the bundle parts carried in
#   bash dev/gpu/gpu-device.sh install          once all parts are here: venvs + model check
#   bash dev/gpu/gpu-device.sh up               practicum up: coder + chat (first start: cold)
#   bash dev/gpu/gpu-device.sh serve            practicum serve: sweep, monitor, Ralph, vs vllm
#   bash dev/gpu/gpu-device.sh compare          practicum compare: gpu_memory_utilization
#   bash dev/gpu/gpu-device.sh versus           only serve's bench vs vllm bench serve, on coder
#   bash dev/gpu/gpu-device.sh restarts ARGS    practicum restarts (mig-orchestrator practicum -h)
#   bash dev/gpu/gpu-device.sh tests            tests/gpu on the running daemon; ends it
#   bash dev/gpu/gpu-device.sh down             stop the daemon (if tests did not)
#   bash dev/gpu/gpu-device.sh report           the practicum's report.md into the results
# Steps may be chained in one call: `bash dev/gpu/gpu-device.sh receive install up`.
# Rehearse here: MIG_ORCH_DEVICE_HOME, MIG_ORCH_DEVICE_PYTHON (base Python), MIG_ORCH_DEVICE_MODEL,
# MIG_ORCH_PRACTICUM_ARGS (e.g. "--cpu"), MIG_ORCH_DEVICE_TEST_PYTHON and MIG_ORCH_GPU_REHEARSAL=cpu
# (tests) point it at a CPU set-up.
set -uo pipefail

readonly H5=${MIG_ORCH_DEVICE_HOME:-/root/h5}
readonly BUNDLE_IN=${MIG_ORCH_BUNDLE_IN:-.gpu/bundle}
readonly RESULTS=$H5/results
readonly OPT=$H5/opt
readonly MODEL=${MIG_ORCH_DEVICE_MODEL:-$H5/models/llama-1b-l16-s0}
OUT_DIR=${OUT:-$H5/out}

say() { printf '[gpu-device %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

base_python() {
    local candidate
    for candidate in ${MIG_ORCH_DEVICE_PYTHON:-} /opt/torch/.venv/bin/python3 python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    say "no python3 with torch here"
    return 1
}

# The checkout this call carried, when it has this code; else the snapshot carried in .gpu/.
source_dir() {
    if [[ -f orchestrator/practicum/run.py ]]; then
        pwd
    elif [[ -f $H5/src/orchestrator/practicum/run.py ]]; then
        echo "$H5/src"
    elif [[ -f .gpu/src.tar.gz ]]; then
        mkdir -p "$H5/src" && tar -C "$H5/src" -xzf .gpu/src.tar.gz && echo "$H5/src"
    else
        say "this checkout lacks orchestrator/practicum/run.py and no .gpu/src.tar.gz came"
        return 1
    fi
}

pack() {
    mkdir -p "$OUT_DIR" "$RESULTS"
    tar -C "$H5" -czf "$OUT_DIR/results-$1.tar.gz" --exclude=results/session/state results
    say "results so far: $OUT_DIR/results-$1.tar.gz ($(du -h "$OUT_DIR/results-$1.tar.gz" | cut -f1))"
}

step_receive() {
    mkdir -p "$H5/bundle" "$RESULTS/system"
    local f
    for f in "$BUNDLE_IN"/*; do
        [[ -f $f ]] || continue
        if ! cmp -s "$f" "$H5/bundle/$(basename "$f")"; then
            cp "$f" "$H5/bundle/" && say "kept $(basename "$f") ($(du -h "$f" | cut -f1))"
        fi
    done
    local py
    py=$(base_python) || return 1
    if [[ ! -s $RESULTS/system/target-freeze.txt ]]; then
        # What the next bundle should be built against, and what this machine is.
        "$py" -m pip freeze >"$RESULTS/system/target-freeze.txt" 2>&1
        { "$py" -VV; uname -a; nvidia-smi; nproc; free -g; } >"$RESULTS/system/machine.txt" 2>&1
    fi
    if [[ ! -f $MODEL/tinymodel.json && ! -f $H5/model-build.pid ]]; then
        local src
        src=$(source_dir) || return 1
        mkdir -p "$H5/models"
        # setsid: it goes on building on the GPU while the next parts travel.
        setsid nohup "$py" "$src/orchestrator/tooling/tinymodel.py" "$MODEL" --shape llama-1b \
            >"$H5/model-build.log" 2>&1 < /dev/null &
        echo $! >"$H5/model-build.pid"
        say "building the llama-1b model in the background (pid $!)"
    fi
    if [[ -f $H5/bundle/bundle.json ]]; then
        "$py" "$H5/bundle/install.py" --bundle "$H5/bundle" --verify-only 2>&1 | tail -3
    fi
}

step_install() {
    local py
    py=$(base_python) || return 1
    say "installing (estimate 1.5 min: unpack, pip, byte-compile, import check)"
    "$py" "$H5/bundle/install.py" --bundle "$H5/bundle" --prefix "$OPT" --base-python "$py" \
        --json >"$RESULTS/install.json" || return 1
    cat "$RESULTS/install.json"
    local waited=0
    while [[ ! -f $MODEL/tinymodel.json ]] && ((waited < 180)); do
        sleep 2
        waited=$((waited + 2))
    done
    cp "$H5/model-build.log" "$RESULTS/system/" 2>/dev/null && tail -3 "$H5/model-build.log"
    [[ -f $MODEL/tinymodel.json ]] || { say "the model is not built: $H5/model-build.log"; return 1; }
    du -sh "$MODEL"
    # The MIG NVML fix's lookups against the real driver, for every GPU here.
    local src
    src=$(source_dir) || return 1
    (cd "$src" && "$OPT/venv/bin/python" -m orchestrator nvml-check --json \
        >"$RESULTS/system/nvml-check.json" && "$OPT/venv/bin/python" -m orchestrator nvml-check) \
        | tee "$RESULTS/system/nvml-check.txt"
}

daemon_env() {
    export MIG_ORCH_RESULTS=$RESULTS MIG_ORCH_CUDA_VENV=$OPT/vllm-venv MIG_ORCH_GPU_MODEL=$MODEL
    export PYTHONUNBUFFERED=1
}

step_practicum() {
    local phase=$1
    shift
    local src
    src=$(source_dir) || return 1
    daemon_env
    # shellcheck disable=SC2086  # the extra options are words
    (cd "$src" && "$OPT/venv/bin/python" -m orchestrator practicum "$phase" \
        --results "$RESULTS" --engine-venv "$OPT/vllm-venv" --model "$MODEL" \
        ${MIG_ORCH_PRACTICUM_ARGS:-} "$@")
}

# serve's last part alone, for a lease too short for the sweep and Ralph before it; same output.
step_versus() {
    local src port
    src=$(source_dir) || return 1
    daemon_env
    mkdir -p "$RESULTS/serve"
    port=$("$OPT/venv/bin/python" -c "
import json; print(json.load(open('$RESULTS/session/session.json'))['ports']['coder'])") || return 1
    (cd "$src" && "$OPT/venv/bin/python" -m orchestrator.bench.vs_vllm \
        --target "http://127.0.0.1:$port" --served-model-name coder --tokenizer "$MODEL" \
        --engine-venv "$OPT/vllm-venv" --input-len 512 --output-len 128 --concurrency 32 \
        --num-prompts "${MIG_ORCH_VS_PROMPTS:-1000}" --pairs "${MIG_ORCH_VS_PAIRS:-3}" \
        --json "$RESULTS/serve/bench-vs-vllm.json" | tee "$RESULTS/serve/bench-vs-vllm.txt")
}

step_tests() {
    local src
    src=$(source_dir) || return 1
    daemon_env
    local session=$RESULTS/session/session.json
    if [[ -f $session ]] && "$OPT/venv/bin/python" -c "
import json, os, sys; os.kill(json.load(open('$session'))['pid'], 0)" 2>/dev/null; then
        export MIG_ORCH_GPU_SESSION_FILE=$session
        say "tests adopt the running daemon (its two engines are reused; test_d stops it)"
    fi
    # The daemon venv sees the base's pytest (the GPU image has it); a rehearsal may bring one.
    (cd "$src" && "${MIG_ORCH_DEVICE_TEST_PYTHON:-$OPT/venv/bin/python}" -m pytest tests/gpu \
        -v -rA -p no:cacheprovider \
        --junitxml "$RESULTS/gpu-tests.xml" 2>&1 | tee "$RESULTS/gpu-tests.log")
}

main() {
    [[ $# -gt 0 ]] || { sed -n '2,20p' "$0"; return 2; }
    mkdir -p "$RESULTS"
    local step=$1 rc=0
    shift
    case $step in
        receive) step_receive || rc=$? ;;
        install) step_install || rc=$? ;;
        up | serve | compare | down | report) step_practicum "$step" || rc=$? ;;
        # restarts takes the rest of the line as practicum options, so it comes last
        restarts) step_practicum restarts "$@" || rc=$?; set -- ;;
        versus) step_versus || rc=$? ;;
        tests) step_tests || rc=$? ;;
        *) say "unknown step $step"; return 2 ;;
    esac
    pack "$step"
    say "$step: exit $rc"
    if ((rc == 0)) && [[ $# -gt 0 ]]; then
        main "$@"  # steps chain: `receive install up`
    else
        return "$rc"
    fi
}

mkdir -p "$OUT_DIR"
main "$@" 2>&1 | tee -a "$OUT_DIR/gpu-device.log"
