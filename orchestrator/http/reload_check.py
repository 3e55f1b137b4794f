"""What a reload may not change: who may use the open socket, and where the daemon keeps state.

The listening socket is bound once, at start. A reload that moved `listen` would leave it on
the old address while the rules for the new one applied (a loopback `listen` needs no token),
and one that dropped the admin token would open every call to anyone who reaches the socket.
Such changes are refused with "restart needed": a restart binds the new socket and loads the
new tokens together. Rotating a token (new contents, same file) and adding or removing a
student's token_file apply on reload, as long as some token still guards the control plane.
`state_dir` is refused too: the daemon holds its lock and state file there, and every engine it
starts is marked with it, so engines started after such a reload would be strangers to the next
daemon's search for leftovers.
"""

from __future__ import annotations

from orchestrator.config import Config
from orchestrator.http.auth import Tokens

RESTART = "restart the daemon to apply it (systemctl restart mig-orchestrator)"


def refused_changes(old: Config, new: Config, old_tokens: Tokens, new_tokens: Tokens) -> list[str]:
    """One line per change a reload may not make; empty when the reload may go ahead."""
    o, n = old.orchestrator, new.orchestrator
    problems = []
    if n.listen != o.listen:
        problems.append(
            f"orchestrator.listen: changed from {o.listen} to {n.listen}, but the control plane "
            f"stays on {o.listen} until the daemon restarts; {RESTART}"
        )
    if n.admin_token_file != o.admin_token_file:
        problems.append(
            f"orchestrator.admin_token_file: changed from {o.admin_token_file or 'none'} to "
            f"{n.admin_token_file or 'none'}; the admin token is only replaced on restart; "
            f"{RESTART} (to rotate the token, change the file's contents and reload)"
        )
    elif old_tokens.enabled and not new_tokens.enabled:
        problems.append(
            "models: the last token_file is gone, which would open every call of the control "
            f"plane to anyone who can reach {o.listen}; {RESTART}"
        )
    if n.state_dir != o.state_dir:
        problems.append(
            f"orchestrator.state_dir: changed from {o.state_dir} to {n.state_dir}; the daemon's "
            f"lock, state file and the mark on its engines stay with the old one; {RESTART}"
        )
    return problems
