"""Dashboard log-ins: a random session id in an HttpOnly cookie, the token kept server-side.

The browser never holds the token after logging in (only the session id, which JavaScript cannot
read), and every request re-identifies the session's token against the tokens now loaded, so a
token removed or changed by a reload logs its sessions out. Sessions live in memory only: a
daemon restart means logging in again.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from orchestrator.http.auth import ADMIN, Caller, Tokens

COOKIE = "mig_orch_session"
CSRF_HEADER = "X-CSRF-Token"


@dataclass
class Session:
    token: str | None  # None: logged in while no token was configured (open, loopback-only)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # Looked up at each login, so one clock (and a test's stand-in for it) serves every session.
    last_used: float = field(default_factory=lambda: time.monotonic())


class Sessions:
    """Idle-expiring session table, bounded per token: a token's logins only ever displace that
    token's own oldest session, so a student's login flood cannot log the admin out."""

    def __init__(self, idle_timeout_s: float = 8 * 3600, max_per_token: int = 32) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_per_token = max_per_token
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def login(self, tokens: Tokens, token: str | None) -> tuple[str, Session, Caller] | None:
        """A new session for `token`, or None when it is not a token the daemon knows."""
        if tokens.enabled:
            caller = tokens.identify(f"Bearer {token}" if token else None)
            if not caller.known:
                return None
        else:
            caller, token = ADMIN, None
        self._expire()
        own = [sid for sid, s in self._by_id.items() if s.token == token]  # oldest use first
        for sid in own[: max(0, len(own) - self.max_per_token + 1)]:
            del self._by_id[sid]
        sid = secrets.token_urlsafe(32)
        session = Session(token)
        self._by_id[sid] = session
        return sid, session, caller

    def lookup(self, tokens: Tokens, sid: str | None) -> tuple[Session, Caller] | None:
        """The live session behind a cookie and who it is now; None (and forgotten) otherwise."""
        if not sid:
            return None
        session = self._by_id.get(sid)
        if session is None:
            return None
        now = time.monotonic()
        caller = self._identify(tokens, session)
        if caller is None or now - session.last_used > self.idle_timeout_s:
            del self._by_id[sid]
            return None
        session.last_used = now
        self._by_id.move_to_end(sid)
        return session, caller

    def logout(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())

    @staticmethod
    def _identify(tokens: Tokens, session: Session) -> Caller | None:
        if session.token is None:  # an open-mode session lasts only while the daemon stays open
            return None if tokens.enabled else ADMIN
        caller = tokens.identify(f"Bearer {session.token}")
        return caller if caller.known else None

    def _expire(self) -> None:
        limit = time.monotonic() - self.idle_timeout_s
        while self._by_id:
            sid, oldest = next(iter(self._by_id.items()))
            if oldest.last_used >= limit:
                return
            del self._by_id[sid]
