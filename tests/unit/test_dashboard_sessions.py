"""Dashboard sessions: only known tokens log in, every lookup re-checks the token, bounded table."""

from __future__ import annotations

import pytest

from orchestrator.http.auth import ADMIN, Caller, Tokens
from orchestrator.http.dashboard import sessions as sessions_mod
from orchestrator.http.dashboard.sessions import Sessions

TOKENS = Tokens(admin="admin-t", students={"alice": "alice-t", "bob": "bob-t"})


def test_only_known_tokens_log_in_and_each_gets_its_role() -> None:
    s = Sessions()
    assert s.login(TOKENS, "nope") is None
    assert s.login(TOKENS, None) is None
    assert s.login(TOKENS, "") is None
    sid, session, caller = s.login(TOKENS, "alice-t") or pytest.fail("refused")
    assert caller == Caller(model="alice")
    assert s.lookup(TOKENS, sid) == (session, Caller(model="alice"))
    admin_sid, _, admin = s.login(TOKENS, "admin-t") or pytest.fail("refused")
    assert admin == ADMIN and admin_sid != sid
    assert len(s) == 2


def test_unknown_or_logged_out_sessions_are_refused() -> None:
    s = Sessions()
    sid, _, _ = s.login(TOKENS, "bob-t") or pytest.fail("refused")
    assert s.lookup(TOKENS, None) is None
    assert s.lookup(TOKENS, "forged") is None
    s.logout(sid)
    assert s.lookup(TOKENS, sid) is None


def test_a_changed_token_ends_the_session_at_its_next_request() -> None:
    s = Sessions()
    sid, _, _ = s.login(TOKENS, "bob-t") or pytest.fail("refused")
    rotated = Tokens(admin="admin-t", students={"alice": "alice-t", "bob": "bob-new"})
    assert s.lookup(rotated, sid) is None
    assert len(s) == 0  # forgotten, not only refused
    assert s.lookup(TOKENS, sid) is None


def test_open_mode_sessions_are_admin_until_tokens_are_configured() -> None:
    s = Sessions()
    sid, _, caller = s.login(Tokens(), "anything") or pytest.fail("refused")
    assert caller == ADMIN
    assert s.lookup(Tokens(), sid) is not None
    assert s.lookup(TOKENS, sid) is None


def test_idle_sessions_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(sessions_mod.time, "monotonic", lambda: now[0])
    s = Sessions(idle_timeout_s=60)
    sid, _, _ = s.login(TOKENS, "alice-t") or pytest.fail("refused")
    now[0] += 59
    assert s.lookup(TOKENS, sid) is not None  # and this use restarts the idle clock
    now[0] += 59
    assert s.lookup(TOKENS, sid) is not None
    now[0] += 61
    assert s.lookup(TOKENS, sid) is None


def test_a_token_past_its_cap_drops_its_own_least_recently_used() -> None:
    s = Sessions(max_per_token=3)
    sids = [(s.login(TOKENS, "alice-t") or pytest.fail("refused"))[0] for _ in range(3)]
    assert s.lookup(TOKENS, sids[0]) is not None  # now the most recently used
    newest, _, _ = s.login(TOKENS, "alice-t") or pytest.fail("refused")
    assert len(s) == 3
    assert s.lookup(TOKENS, sids[1]) is None
    assert all(s.lookup(TOKENS, x) is not None for x in (sids[0], sids[2], newest))


def test_a_login_flood_never_evicts_another_tokens_session() -> None:
    # 1,100 logins with a student's token within seconds, the admin's session idle all along.
    s = Sessions()
    admin, _, _ = s.login(TOKENS, "admin-t") or pytest.fail("refused")
    for _ in range(1100):
        assert s.login(TOKENS, "alice-t") is not None
    assert s.lookup(TOKENS, admin) is not None
    assert len(s) == 1 + s.max_per_token


def test_csrf_token_must_match_exactly() -> None:
    s = Sessions()
    _, session, _ = s.login(TOKENS, "admin-t") or pytest.fail("refused")
    assert Sessions.csrf_ok(session, session.csrf)
    assert not Sessions.csrf_ok(session, None)
    assert not Sessions.csrf_ok(session, "")
    assert not Sessions.csrf_ok(session, session.csrf[:-1])
    _, other, _ = s.login(TOKENS, "admin-t") or pytest.fail("refused")
    assert not Sessions.csrf_ok(session, other.csrf)
