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

if [[ -x $dest/usr/lib/systemd/systemd && -f $dest/.mig-orch-rootfs-ok ]]; then
    echo "rootfs cached at $dest"
    exit 0
fi

mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
# Another run may have finished the build while this one waited for the lock.
if [[ -f $dest/.mig-orch-rootfs-ok ]]; then
    echo "rootfs cached at $dest"
    exit 0
fi

mirror=${MIG_ORCH_DEBIAN_MIRROR:-$(mirror_from_host)}
partial="$dest.partial"
rm -rf "$partial"
echo "building $suite rootfs in $partial from $mirror (takes a few minutes)"
start=$SECONDS
debootstrap --variant=minbase --include="$packages" "$suite" "$partial" "$mirror"
# A machine-id makes journald and systemd behave like on a real host; an empty securetty-free root is fine.
rm -f "$partial/etc/machine-id"
systemd-machine-id-setup --root="$partial" >/dev/null
echo "mig-orch-test" >"$partial/etc/hostname"
# Units that only fail or slow the boot inside a container.
for unit in systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer getty@tty1.service; do
    ln -sf /dev/null "$partial/etc/systemd/system/$unit"
done
touch "$partial/.mig-orch-rootfs-ok"
rm -rf "$dest"
mv "$partial" "$dest"
echo "rootfs built in $((SECONDS - start)) s at $dest"
