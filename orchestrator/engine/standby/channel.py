"""The daemon's end of a standby engine: start it, learn that it is ready, trigger it."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.engine import process
from orchestrator.inengine import standby_launcher as launcher
from orchestrator.inengine.standby_plan import PLAIN, CommandPlan, plan_command

LAUNCHER = Path(launcher.__file__).resolve()


class StandbyError(Exception):
    """This standby cannot run the engine; the message says why (launch it plainly instead).

    `refused`: the standby itself found that it cannot be one with this command and environment
    (its imports initialised CUDA), so another one started the same way would refuse too.
    """

    def __init__(self, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused


# ProcessOps.spawn: (argv, env, pass_fds=...) -> (pid, fd of its output)
Spawner = Callable[..., tuple[int, int]]


@dataclass(frozen=True)
class StandbyReady:
    """The standby's report once its imports are done."""

    pid: int
    mode: str  # launcher.MODULE or SCRIPT; EXEC when nothing could be imported ahead
    target: str
    preloaded: tuple[str, ...]
    failed: tuple[str, ...]
    reason: str
    prepare_s: float
    rss_bytes: int
    libcuda_loaded: bool


def standby_argv(
    plan: CommandPlan,
    command: Sequence[str],
    channel_fd: int,
    preload: Sequence[str] | None = None,
    label: str = "",
) -> list[str]:
    """The launcher under the command's own interpreter; preload None = derived from the command."""
    argv = [*plan.interpreter, str(LAUNCHER), "--channel-fd", str(channel_fd)]
    if preload is not None:
        argv += ["--preload", ",".join(preload)]
    if label:
        argv += ["--label", label]
    return [*argv, "--", *command]


@dataclass
class Standby:
    """A started standby: `pid` leads its own session and `output_fd` is its stdout/stderr."""

    pid: int
    output_fd: int
    plan: CommandPlan
    command: tuple[str, ...]
    sock: socket.socket = field(repr=False)
    _streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = field(
        default=None, repr=False
    )

    @classmethod
    def spawn(
        cls,
        command: Sequence[str],
        env: Mapping[str, str],
        preload: Sequence[str] | None = None,
        label: str = "",
        cwd: Path | None = None,
        spawn: Spawner | None = None,
    ) -> Standby:
        """Start a standby for `command` in `env`; StandbyError when it cannot pre-import.

        `spawn` starts the process (the daemon's ProcessOps.spawn); by default process.spawn.
        """
        plan = plan_command(command, env.get("PATH"))
        if plan.kind == PLAIN:
            raise StandbyError(plan.reason)
        ours, theirs = socket.socketpair()
        try:
            argv = standby_argv(plan, command, theirs.fileno(), preload, label)
            run = spawn or functools.partial(process.spawn, cwd=cwd)
            pid, fd = run(argv, dict(env), pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the standby's copy is its only one: its exit is our EOF
        return cls(pid, fd, plan, tuple(command), ours)

    async def _receive(self) -> dict[str, Any]:
        if self._streams is None:
            self._streams = await asyncio.open_unix_connection(sock=self.sock)
        line = await self._streams[0].readline()
        if not line:
            raise StandbyError("the standby exited (its channel closed)")
        msg = json.loads(line)
        if msg.get("protocol") != launcher.PROTOCOL:
            raise StandbyError(f"the launcher speaks protocol {msg.get('protocol')}")
        if msg.get("event") in ("refused", "error"):
            raise StandbyError(str(msg.get("reason")), refused=msg["event"] == "refused")
        return dict(msg)

    async def ready(self) -> StandbyReady:
        """Wait until the standby has imported (callers bound it with asyncio.timeout)."""
        msg = await self._receive()
        return StandbyReady(
            pid=int(msg["pid"]),
            mode=str(msg["mode"]),
            target=str(msg["target"]),
            preloaded=tuple(msg["preloaded"]),
            failed=tuple(msg["failed"]),
            reason=str(msg["reason"]),
            prepare_s=float(msg["prepare_s"]),
            rss_bytes=int(msg["rss_bytes"]),
            libcuda_loaded=bool(msg["libcuda_loaded"]),
        )

    async def trigger(self, argv: Sequence[str], fork: bool = False) -> str:
        """Hand the engine its argv; return the mode it runs in once the standby confirms.

        It may be sent before ready(): the engine then runs as soon as its imports are done.
        """
        if self._streams is None:
            self._streams = await asyncio.open_unix_connection(sock=self.sock)
        writer = self._streams[1]
        writer.write(_trigger_line(argv, fork))
        await writer.drain()
        while (msg := await self._receive())["event"] != "running":
            pass  # a "ready" still on its way when the trigger went out early
        self.close()
        return str(msg["mode"])

    def hand_over(self, argv: Sequence[str], fork: bool = False) -> None:
        """Send the trigger and let go of the channel at once, without waiting for the standby to
        confirm: from here on it is the engine, watched through its pid and output like any other.
        OSError when the standby is gone. The launcher runs a trigger it has read even when the
        channel is closed by then, also one sent during its imports."""
        data = _trigger_line(argv, fork)
        try:
            # On the socket itself, not through the stream: a send to a standby that is gone
            # fails here and now (a stream would only note it later). Nothing else is ever
            # written to the channel, and its empty buffer takes a trigger whole.
            if self.sock.fileno() < 0:
                raise BrokenPipeError("the standby's channel is closed")
            if self.sock.send(data) != len(data):
                raise BlockingIOError("the trigger did not fit in the channel's buffer")
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the channel: a standby still waiting for its trigger then exits."""
        if self._streams is not None:
            self._streams[1].close()
        else:
            self.sock.close()


def _trigger_line(argv: Sequence[str], fork: bool) -> bytes:
    return json.dumps({"argv": list(argv), "fork": fork}).encode() + b"\n"
