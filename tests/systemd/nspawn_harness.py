"""Boot a throwaway Debian container with systemd as PID 1 and run commands inside it.

How it works (no machinectl/machined needed, so it runs on hosts whose PID 1 is not systemd):
- build_rootfs.sh debootstraps a bookworm rootfs once into a cache outside the checkout;
- each Container mounts an overlayfs (cached rootfs as lower layer, a temp dir as upper) so runs
  never modify the cache and start in seconds; without overlayfs it falls back to a reflink copy;
- `systemd-nspawn -D ROOT --register=no --keep-unit -b` boots it, sharing the host's network so
  pip inside can reach the package index;
- commands run through `nsenter -t <container PID 1> -a`, i.e. in all of the container's
  namespaces, with a clean environment, like a root shell on the container's console.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD_SCRIPT = HERE / "build_rootfs.sh"
# Outside the checkout, shared by clones and reused across runs.
CACHE_DIR = Path(os.environ.get("MIG_ORCH_CACHE", "/var/cache/mig-orchestrator"))
PIP_CACHE = CACHE_DIR / "pip-cache"
# host tool -> Debian package that provides it
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
}
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Host files that make pip inside behave like pip outside (CA bundle of an intercepting proxy,
# pip.conf, constraints, local wheel directories); each is bound read-only at the same path.
PIP_HOST_PATHS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf", "/etc/xdg/pip")

T = TypeVar("T")


class HarnessError(RuntimeError):
    """The container could not be prepared, booted or reached."""


def unavailable_reason() -> str | None:
    """Why these tests cannot run on this host, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "systemd-nspawn tests need Linux"
    if os.geteuid() != 0:
        return "systemd-nspawn tests need root (debootstrap, overlay mounts, booting a container)"
    return None


def ensure_host_tools() -> None:
    """Install debootstrap / systemd-container with apt when missing (one apt-get update)."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise HarnessError(f"missing {', '.join(missing)} and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
    still = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if still:
        raise HarnessError(f"still missing after apt-get install: {', '.join(still)}")


def ensure_rootfs(cache: Path = CACHE_DIR) -> Path:
    """The cached rootfs, built first if missing (a minute or two); returns its path."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(cache)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise HarnessError(f"building the rootfs failed:\n{result.stdout}{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll probe until it returns something other than None/False; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _pip_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_")}


def _pip_host_paths() -> list[str]:
    paths = [p for p in PIP_HOST_PATHS if os.path.exists(p)]
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    paths += [p for p in links if p.startswith("/") and os.path.isdir(p)]
    return paths


class Container:
    """A booted, throwaway systemd container; use as a context manager."""

    def __init__(
        self,
        rootfs: Path,
        binds_ro: Mapping[str, str] | None = None,
        binds_rw: Mapping[str, str] | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.binds_ro = {**{p: p for p in _pip_host_paths()}, **(binds_ro or {})}
        # pip's download cache survives the throwaway containers, so reruns don't refetch wheels.
        self.binds_rw = {str(PIP_CACHE): "/root/.cache/pip", **(binds_rw or {})}
        self.workdir = Path(tempfile.mkdtemp(prefix="mig-orch-nspawn."))
        self.root = self.workdir / "root"
        self.console_log = self.workdir / "console.log"
        self._overlay = False
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None

    def __enter__(self) -> Container:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, boot_timeout: float = 120) -> None:
        self._prepare_root()
        for host_dir in self.binds_rw:
            Path(host_dir).mkdir(parents=True, exist_ok=True)
        argv = [
            "systemd-nspawn",
            "--quiet",
            "-D",
            str(self.root),
            # No machined on the host: don't register, and stay in the caller's cgroup.
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            "--resolv-conf=copy-host",
            *(f"--bind={src}:{dst}" for src, dst in self.binds_rw.items()),
            *(f"--bind-ro={src}:{dst}" for src, dst in self.binds_ro.items()),
            "-b",
        ]
        with self.console_log.open("wb") as console:
            self._nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
            )
        self.leader = wait_for(self._find_leader, 30, "the container's PID 1")
        # The leader may still be nspawn's pre-exec child: retry until systemd answers.
        state = wait_for(self._system_state, boot_timeout, "systemd to finish booting", 0.5)
        if state not in ("running", "degraded"):
            raise HarnessError(f"container booted into state {state!r}\n{self.console_tail()}")

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv as root inside the container; check=True raises with its output on failure."""
        if self.leader is None:
            raise HarnessError("container is not running")
        environment = {
            "PATH": CONTAINER_PATH,
            "LANG": "C.UTF-8",
            "HOME": "/root",
            "TERM": "dumb",
            "SYSTEMD_PAGER": "",
            "SYSTEMD_COLORS": "0",
            **_pip_environment(),
            **(env or {}),
        }
        full = [
            "nsenter",
            "-t",
            str(self.leader),
            "-a",
            "--",
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in environment.items()),
            *argv,
        ]
        result = subprocess.run(
            full, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{' '.join(argv)}` exited {result.returncode} in the container\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a /bin/sh script inside the container."""
        return self.run(["/bin/sh", "-ec", script], **kwargs)  # type: ignore[arg-type]

    def path(self, inside: str) -> Path:
        """Host path of a file inside the container (the overlay is visible from the host)."""
        return self.root / inside.lstrip("/")

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 60) -> None:
        """Power the container off (SIGTERM to nspawn = clean shutdown), then drop its files."""
        proc, self._nspawn, self.leader = self._nspawn, None, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._overlay:
            umount = subprocess.run(["umount", str(self.root)], capture_output=True, check=False)
            if umount.returncode != 0:
                subprocess.run(["umount", "-l", str(self.root)], capture_output=True, check=False)
            self._overlay = False
        if not os.path.ismount(self.root):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _prepare_root(self) -> None:
        upper, work = self.workdir / "upper", self.workdir / "work"
        for d in (self.root, upper, work):
            d.mkdir()
        options = f"lowerdir={self.rootfs},upperdir={upper},workdir={work}"
        mount = ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)]
        if subprocess.run(mount, capture_output=True, check=False).returncode == 0:
            self._overlay = True
            return
        # No overlayfs (or the cache's filesystem can't be a lower layer): copy, cheap on CoW.
        self.root.rmdir()
        subprocess.run(["cp", "-a", "--reflink=auto", str(self.rootfs), str(self.root)], check=True)

    def _find_leader(self) -> int | None:
        """PID (host view) of the nspawn child that is PID 1 in the container's PID namespace."""
        proc = self._nspawn
        if proc is None or proc.poll() is not None:
            raise HarnessError(f"systemd-nspawn exited early\n{self.console_tail()}")
        for task in Path(f"/proc/{proc.pid}/task").glob("*/children"):
            for pid in task.read_text().split():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                nspid = [ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")]
                if nspid and len(nspid[0]) >= 2 and nspid[0][-1] == "1":
                    return int(pid)
        return None

    def _system_state(self) -> str | None:
        if self._nspawn is None or self._nspawn.poll() is not None:
            raise HarnessError(f"systemd-nspawn exited during boot\n{self.console_tail()}")
        try:
            result = self.run(["systemctl", "is-system-running", "--wait"], timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return None
        state = result.stdout.strip()
        return state if state and state not in ("initializing", "starting", "offline") else None
