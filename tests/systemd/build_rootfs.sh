#!/usr/bin/env bash
# Build (once) the cached Debian rootfs that the systemd tests boot with systemd-nspawn.
# Usage: build_rootfs.sh [DIR]   (default /var/cache/mig-orchestrator/rootfs-bookworm)
# The finished tree is renamed into place atomically, so a half-built one is never reused.
set -euo pipefail

dest=${1:-${MIG_ORCH_ROOTFS:-/var/cache/mig-orchestrator/rootfs-bookworm}}
suite=bookworm
packages=systemd,systemd-sysv,dbus,python3,python3-venv,python3-pip,procps,ca-certificates

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

# The stamp names what the tree was built with, so changing the package list rebuilds it.
stamp="$suite $packages"
is_current() { [[ -x $dest/usr/lib/systemd/systemd && "$(cat "$dest/.mig-orch-rootfs-ok" 2>/dev/null)" == "$stamp" ]]; }

if is_current; then
    echo "rootfs cached at $dest"
    exit 0
fi

mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
# Another run may have finished the build while this one waited for the lock.
if is_current; then
    echo "rootfs cached at $dest"
    exit 0
fi

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
# Units that only fail or slow the boot inside a container.
for unit in systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer getty@tty1.service console-getty.service; do
    ln -sf /dev/null "$partial/etc/systemd/system/$unit"
done
printf '%s\n' "$stamp" >"$partial/.mig-orch-rootfs-ok"
rm -rf "$dest"
mv "$partial" "$dest"
echo "rootfs built in $((SECONDS - start)) s at $dest"
