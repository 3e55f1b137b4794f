"""Who is calling the control plane: the admin, one student (their model only), or nobody."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from orchestrator.config import Config, ConfigError, is_loopback
from orchestrator.secret_file import read_secret_file


@dataclass(frozen=True)
class Caller:
    admin: bool = False
    model: str | None = None  # set for a student

    @property
    def known(self) -> bool:
        return self.admin or self.model is not None

    def may_manage(self, model: str) -> bool:
        return self.admin or self.model == model


ANONYMOUS = Caller()
ADMIN = Caller(admin=True)


@dataclass(frozen=True)
class Tokens:
    admin: str | None = None
    students: dict[str, str] = field(default_factory=dict)  # model -> token

    @property
    def enabled(self) -> bool:
        return self.admin is not None or bool(self.students)

    @classmethod
    def load(cls, cfg: Config, source: str) -> Tokens:
        errors: list[str] = []
        admin = None
        if cfg.orchestrator.admin_token_file is not None:
            try:
                admin = read_secret_file(cfg.orchestrator.admin_token_file, "admin token file")
            except ValueError as e:
                errors.append(f"orchestrator.admin_token_file: {e}")
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
        if not is_loopback(cfg.orchestrator.listen_host) and admin is None:
            errors.append(
                f"orchestrator.listen: {cfg.orchestrator.listen} is reachable from other hosts; "
                "set admin_token_file first"
            )
        if errors:
            raise ConfigError(source, errors)
        return cls(admin=admin, students=students)

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
        return caller
