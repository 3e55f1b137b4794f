"""Control-plane tokens: private files only, admin required off loopback, who a header is."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import Config, ConfigError, parse_config
from orchestrator.http.auth import ADMIN, ANONYMOUS, SCRAPER, Caller, Tokens

SRC = "/etc/mig-orchestrator/models.toml"


def secret(folder: Path, name: str, text: str, mode: int = 0o600) -> Path:
    path = folder / name
    path.write_text(text)
    path.chmod(mode)
    return path


def cfg_of(
    listen: str = "127.0.0.1:8700",
    admin: Path | None = None,
    models: dict[str, str] | None = None,
    metrics: Path | None = None,
) -> Config:
    text = f'[orchestrator]\nlisten = "{listen}"\nallow_no_models = true\n'
    if admin is not None:
        text += f'admin_token_file = "{admin}"\n'
    if metrics is not None:
        text += f'metrics_token_file = "{metrics}"\n'
    for i, (name, extra) in enumerate((models or {}).items()):
        text += f'[models.{name}]\nmodel = "m"\nport = {8001 + i}\n{extra}\n'
    return parse_config(text, SRC)


def load_errors(cfg: Config) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Tokens.load(cfg, SRC)
    assert info.value.source == SRC
    assert all(line.startswith(f"{SRC}: ") for line in str(info.value).splitlines())
    return info.value.errors


def test_no_tokens_on_loopback_means_auth_is_off() -> None:
    tokens = Tokens.load(cfg_of(models={"alice": ""}), SRC)
    assert not tokens.enabled
    assert tokens.identify("Bearer anything") == ANONYMOUS


def test_private_token_files_are_read_and_stripped(tmp_path: Path) -> None:
    admin = secret(tmp_path, "admin.token", "  admin-secret\n")
    alice = secret(tmp_path, "alice.token", "alice-secret\n", 0o640)  # group-readable is fine
    key = secret(tmp_path, "alice.key", "sk-alice\n", 0o400)
    cfg = cfg_of(admin=admin, models={"alice": f'token_file = "{alice}"\napi_key_file = "{key}"'})
    tokens = Tokens.load(cfg, SRC)
    assert tokens.enabled
    assert tokens.admin == "admin-secret"
    # The API key guards vLLM itself; it is not a control-plane token.
    assert tokens.students == {"alice": "alice-secret"}


def test_world_readable_admin_token_is_refused_with_a_chmod_hint(tmp_path: Path) -> None:
    admin = secret(tmp_path, "admin.token", "admin-secret\n", 0o644)
    assert load_errors(cfg_of(admin=admin)) == [
        f"orchestrator.admin_token_file: admin token file {admin} is readable by every user "
        f"(mode 0644); run: chmod 600 {admin}"
    ]


def test_world_readable_student_files_are_refused(tmp_path: Path) -> None:
    tok = secret(tmp_path, "alice.token", "t\n", 0o604)
    key = secret(tmp_path, "bob.key", "k\n", 0o644)
    cfg = cfg_of(models={"alice": f'token_file = "{tok}"', "bob": f'api_key_file = "{key}"'})
    errs = load_errors(cfg)
    assert errs == [
        f"models.alice.token_file: token file {tok} is readable by every user (mode 0604); "
        f"run: chmod 600 {tok}",
        f"models.bob.api_key_file: API key file {key} is readable by every user (mode 0644); "
        f"run: chmod 600 {key}",
    ]


@pytest.mark.parametrize("content", ["", "\n", "   \n\t\n"])
def test_empty_token_file_is_refused(tmp_path: Path, content: str) -> None:
    admin = secret(tmp_path, "admin.token", content)
    assert load_errors(cfg_of(admin=admin)) == [
        f"orchestrator.admin_token_file: admin token file {admin} is empty"
    ]


def test_missing_token_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.token"
    errs = load_errors(cfg_of(models={"alice": f'token_file = "{missing}"'}))
    assert errs == [
        f"models.alice.token_file: token file {missing}: cannot read (No such file or directory)"
    ]


@pytest.mark.parametrize("listen", ["0.0.0.0:8700", "192.168.1.10:8700", "[::]:8700", "gpu01:8700"])
def test_non_loopback_listen_needs_an_admin_token(listen: str) -> None:
    assert load_errors(cfg_of(listen=listen)) == [
        f"orchestrator.listen: {listen} is reachable from other hosts; set admin_token_file first"
    ]


def test_non_loopback_listen_with_student_tokens_only_still_needs_admin(tmp_path: Path) -> None:
    tok = secret(tmp_path, "alice.token", "t\n")
    errs = load_errors(cfg_of(listen="0.0.0.0:8700", models={"alice": f'token_file = "{tok}"'}))
    assert [e.split(":")[0] for e in errs] == ["orchestrator.listen"]


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:8700", "127.0.0.2:8700", "localhost:8700", "[::1]:8700"]
)
def test_loopback_listen_needs_no_token(listen: str) -> None:
    assert not Tokens.load(cfg_of(listen=listen), SRC).enabled


def test_non_loopback_listen_with_admin_token_is_accepted(tmp_path: Path) -> None:
    admin = secret(tmp_path, "admin.token", "admin-secret")
    assert Tokens.load(cfg_of(listen="0.0.0.0:8700", admin=admin), SRC).admin == "admin-secret"


def test_every_problem_is_reported_together(tmp_path: Path) -> None:
    admin = secret(tmp_path, "admin.token", "")
    tok = secret(tmp_path, "alice.token", "t", 0o666)
    errs = load_errors(cfg_of("0.0.0.0:1", admin, {"alice": f'token_file = "{tok}"'}))
    assert [e.split(":")[0] for e in errs] == [
        "orchestrator.admin_token_file",
        "models.alice.token_file",
        "orchestrator.listen",
    ]


TOKENS = Tokens(admin="admin-secret", students={"alice": "alice-secret", "bob": "bob-secret"})


@pytest.mark.parametrize(
    ("header", "caller"),
    [
        ("Bearer admin-secret", ADMIN),
        ("bearer admin-secret", ADMIN),
        ("BEARER admin-secret ", ADMIN),
        ("Bearer alice-secret", Caller(model="alice")),
        ("Bearer bob-secret", Caller(model="bob")),
        ("Bearer wrong", ANONYMOUS),
        ("Bearer admin-secretX", ANONYMOUS),
        ("Bearer admin", ANONYMOUS),
        ("Basic admin-secret", ANONYMOUS),
        ("admin-secret", ANONYMOUS),
        ("Bearer", ANONYMOUS),
        ("Bearer ", ANONYMOUS),
        ("Bearer    ", ANONYMOUS),
        ("Bearer tök€n", ANONYMOUS),
        ("", ANONYMOUS),
        (None, ANONYMOUS),
    ],
)
def test_identify(header: str | None, caller: Caller) -> None:
    assert TOKENS.identify(header) == caller


def test_student_may_manage_only_their_model() -> None:
    alice = TOKENS.identify("Bearer alice-secret")
    assert alice.known and not alice.admin
    assert alice.may_manage("alice")
    assert not alice.may_manage("bob")
    admin = TOKENS.identify("Bearer admin-secret")
    assert admin.may_manage("alice") and admin.may_manage("bob")
    nobody = TOKENS.identify("Bearer wrong")
    assert not nobody.known
    assert not nobody.may_manage("alice")


def test_admin_token_wins_over_a_student_with_the_same_token() -> None:
    tokens = Tokens(admin="same", students={"alice": "same"})
    assert tokens.identify("Bearer same") == ADMIN


def test_a_token_shared_by_two_callers_is_refused(tmp_path: Path) -> None:
    # identify() could not tell them apart: bob would manage alice's engine, or be the admin.
    admin = secret(tmp_path, "admin.token", "same-admin")
    a = secret(tmp_path, "a.token", "shared\n")
    b = secret(tmp_path, "b.token", "shared")
    c = secret(tmp_path, "c.token", "same-admin\n")
    cfg = cfg_of(
        admin=admin,
        models={
            "alice": f'token_file = "{a}"',
            "bob": f'token_file = "{b}"',
            "carol": f'token_file = "{c}"',
        },
    )
    assert load_errors(cfg) == [
        "models.bob.token_file: holds the same token as models.alice.token_file; "
        "every student needs their own",
        "models.carol.token_file: holds the same token as orchestrator.admin_token_file; "
        "every student needs their own",
    ]


def test_the_metrics_token_reads_metrics_only(tmp_path: Path) -> None:
    admin = secret(tmp_path, "admin.token", "admin-secret")
    # 0640 root:<group>: the group Prometheus' user is in may read it.
    metrics = secret(tmp_path, "metrics.token", "scrape-secret\n", 0o640)
    tokens = Tokens.load(cfg_of(admin=admin, metrics=metrics), SRC)
    assert tokens.metrics == "scrape-secret"
    scraper = tokens.identify("Bearer scrape-secret")
    assert scraper == SCRAPER and scraper.metrics_only
    # Not someone who may use the API or the dashboard, nor manage any model.
    assert not scraper.known and not scraper.admin and not scraper.may_manage("alice")
    assert tokens.identify("Bearer admin-secret") == ADMIN


def test_a_metrics_token_shared_with_another_caller_is_refused(tmp_path: Path) -> None:
    admin = secret(tmp_path, "admin.token", "same")
    alice = secret(tmp_path, "alice.token", "alice-secret")
    for shared, owner in (
        ("same", "orchestrator.admin_token_file"),
        ("alice-secret", "models.alice.token_file"),
    ):
        metrics = secret(tmp_path, "metrics.token", shared, 0o640)
        cfg = cfg_of(admin=admin, metrics=metrics, models={"alice": f'token_file = "{alice}"'})
        assert load_errors(cfg) == [
            f"orchestrator.metrics_token_file: holds the same token as {owner}; the metrics "
            "token needs its own, or whoever scrapes could also stop engines"
        ]


def test_a_world_readable_or_lonely_metrics_token_is_refused(tmp_path: Path) -> None:
    admin = secret(tmp_path, "admin.token", "admin-secret")
    metrics = secret(tmp_path, "metrics.token", "scrape-secret", 0o644)
    assert load_errors(cfg_of(admin=admin, metrics=metrics)) == [
        f"orchestrator.metrics_token_file: metrics token file {metrics} is readable by every "
        f"user (mode 0644); run: chmod 640 {metrics}"
    ]
    metrics.chmod(0o640)
    assert load_errors(cfg_of(metrics=metrics)) == [
        "orchestrator.metrics_token_file: no admin_token_file or token_file is set, so every "
        "call is open and a metrics token guards nothing; set admin_token_file too"
    ]
