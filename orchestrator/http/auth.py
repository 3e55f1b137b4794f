"""Who is calling the control plane: the admin, one student (their model only), the scrape-only
metrics token (/metrics only), or nobody."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config import Config, ConfigError, is_loopback
from orchestrator.secret_file import read_secret_file

# The monitoring system's credential: it reads /metrics, and every other path refuses it (403).
METRICS_ONLY = "the metrics token may read /metrics and nothing else"


@dataclass(frozen=True)
class Caller:
    admin: bool = False
    model: str | None = None  # set for a student
    metrics_only: bool = False  # the scrape-only metrics token

    @property
    def known(self) -> bool:
        """The admin or a student: someone who may use the API and the dashboard."""
        return self.admin or self.model is not None

    def may_manage(self, model: str) -> bool:
        return self.admin or self.model == model


ANONYMOUS = Caller()
ADMIN = Caller(admin=True)
SCRAPER = Caller(metrics_only=True)


@dataclass(frozen=True)
class Tokens:
    admin: str | None = None
    students: dict[str, str] = field(default_factory=dict)  # model -> token
    metrics: str | None = None  # reads /metrics only

    @property
    def enabled(self) -> bool:
        """Whether calls need a token; the metrics token alone never closes an open daemon."""
        return self.admin is not None or bool(self.students)

    @classmethod
    def load(cls, cfg: Config, source: str) -> Tokens:
        errors: list[str] = []
        o = cfg.orchestrator
        admin = _read(o.admin_token_file, "admin token file", "admin_token_file", errors)
        students = {}
        # identify() cannot tell two callers with one token apart, so each token has one owner.
        owner = {} if admin is None else {admin: "orchestrator.admin_token_file"}
        for name, m in cfg.models.items():
            for attr, what in (("token_file", "token file"), ("api_key_file", "API key file")):
                path = getattr(m, attr)
                if path is None:
                    continue
                try:
                    secret = read_secret_file(path, what)
                except ValueError as e:
                    errors.append(f"models.{name}.{attr}: {e}")
                    continue
                if attr != "token_file":
                    continue
                if secret in owner:
                    errors.append(
                        f"models.{name}.token_file: holds the same token as {owner[secret]}; "
                        "every student needs their own"
                    )
                    continue
                owner[secret] = f"models.{name}.token_file"
                students[name] = secret
        # 640: Prometheus' user reads it through the file's group (deploy/install.sh sets it up).
        metrics = _read(
            o.metrics_token_file, "metrics token file", "metrics_token_file", errors, "640"
        )
        if metrics is not None and metrics in owner:
            errors.append(
                f"orchestrator.metrics_token_file: holds the same token as {owner[metrics]}; "
                "the metrics token needs its own, or whoever scrapes could also stop engines"
            )
        elif metrics is not None and o.admin_token_file is None and not students:
            errors.append(
                "orchestrator.metrics_token_file: no admin_token_file or token_file is set, so "
                "every call is open and a metrics token guards nothing; set admin_token_file too"
            )
        if not is_loopback(o.listen_host) and admin is None:
            errors.append(
                f"orchestrator.listen: {o.listen} is reachable from other hosts; "
                "set admin_token_file first"
            )
        if errors:
            raise ConfigError(source, errors)
        return cls(admin=admin, students=students, metrics=metrics)

    def identify(self, authorization: str | None) -> Caller:
        if not authorization:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return ANONYMOUS
        given = token.strip().encode()
        # Compare against every token so timing reveals nothing about which one (if any) matched.
        caller = ANONYMOUS
        if self.admin is not None and hmac.compare_digest(given, self.admin.encode()):
            caller = ADMIN
        for model, secret in self.students.items():
            if hmac.compare_digest(given, secret.encode()) and not caller.admin:
                caller = Caller(model=model)
        if self.metrics is not None and hmac.compare_digest(given, self.metrics.encode()):
            caller = caller if caller.known else SCRAPER
        return caller


def _read(
    path: Path | None, what: str, setting: str, errors: list[str], fix_mode: str = "600"
) -> str | None:
    """The secret in orchestrator.<setting>'s file; None (and a line in `errors`) when unusable."""
    if path is None:
        return None
    try:
        return read_secret_file(path, what, fix_mode)
    except ValueError as e:
        errors.append(f"orchestrator.{setting}: {e}")
        return None
