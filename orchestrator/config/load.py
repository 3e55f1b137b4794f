"""Reading models.toml: size and type checks, validation, cross-table rules, relative paths."""

from __future__ import annotations

import difflib
import stat
import tomllib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator.config.errors import ConfigError
from orchestrator.config.gateway_checks import gateway_errors
from orchestrator.config.settings import (
    MAX_CONFIG_BYTES,
    VLLM_DEFAULT_UTILIZATION,
    Config,
)


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    where = _loc(loc)
    if loc and loc[-1] == "[key]" and err["type"] == "string_pattern_mismatch":
        # Pydantic would print the raw regex; a sysadmin needs the rule in words.
        if loc[0] == "kubernetes":
            return (
                f"{_loc(loc[:-1])}: invalid pool name: lowercase letters, digits and '-', "
                "starting with a letter, at most 58 characters (it names mig-parted configs, "
                "which are node label values)"
            )
        return (
            f"{_loc(loc[:-1])}: invalid model name: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 63 characters (it becomes a file name "
            "and a metric label)"
        )
    if err["type"] == "extra_forbidden":
        field = str(loc[-1])
        parent: type[BaseModel] = Config
        for part in loc[:-1]:
            field_info = parent.model_fields.get(str(part))
            if field_info is not None:
                parent = _table_model(field_info.annotation) or parent
            # else a dict key (a model's or a node pool's name): its table's model stays
        close = difflib.get_close_matches(field, list(parent.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: unknown setting{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in _TYPE_ERRORS:
        # Strict types: say what was given, since "19401" and 19401 look alike to a person.
        msg += f" (got {_TOML_TYPES.get(type(err['input']), 'another type')})"
    return f"{where}: {msg}" if where else msg


def _table_model(annotation: Any) -> type[BaseModel] | None:
    """The table model a field holds: itself, optional, or as the values of a dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in reversed(typing.get_args(annotation)):  # dict[str, X] | None: X is last
        found = _table_model(arg)
        if found is not None:
            return found
    return None


_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type", "list_type", "dict_type"}
_TOML_TYPES: dict[type, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    list: "an array",
    dict: "a table",
}


def _cross_checks(cfg: Config) -> list[str]:
    errors: list[str] = []
    o = cfg.orchestrator
    if not cfg.models and not o.allow_no_models:
        errors.append(
            "models: no [models.<name>] table, so every engine would stop; to run with no "
            "models on purpose, set allow_no_models = true under [orchestrator]"
        )
    if o.backoff_max_s < o.backoff_initial_s:
        errors.append(
            f"orchestrator.backoff_max_s: {o.backoff_max_s:g} is below "
            f"backoff_initial_s ({o.backoff_initial_s:g})"
        )
    by_port: dict[int, list[str]] = {}
    for name, m in cfg.models.items():
        by_port.setdefault(m.port, []).append(name)
    for port, names in sorted(by_port.items()):
        errors.extend(
            f"models.{other}.port: port {port} is also used by models.{names[0]}"
            for other in names[1:]
        )
    cp_port = cfg.orchestrator.listen_port
    for name, m in cfg.models.items():
        if m.port == cp_port:
            errors.append(
                f"models.{name}.port: {m.port} is the control plane's port (orchestrator.listen)"
            )
        try:
            util = cfg.effective_settings(name).gpu_memory_utilization
        except ValidationError as e:
            # Each layer is valid alone; merged with [defaults] they may not be.
            errors.extend(f"models.{name}: {_describe(err)}" for err in e.errors())
            continue
        if m.share_gpu and m.profile is not None:
            errors.append(
                f"models.{name}.share_gpu: sharing needs a whole GPU, not a {m.profile} MIG slice"
            )
        if m.share_gpu and util is None:
            errors.append(
                f"models.{name}.gpu_memory_utilization: required with share_gpu "
                f"(vLLM's default {VLLM_DEFAULT_UTILIZATION} leaves no room for a second engine)"
            )
    errors.extend(gateway_errors(cfg))
    return errors


def parse_config(text: str, source: str = "models.toml") -> Config:
    """Parse and validate TOML text; raise ConfigError naming every problem."""
    if not text.strip():
        raise ConfigError(source, ["the file is empty: it must list the models to run"])
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [f"not valid TOML: {e}"]) from None
    except RecursionError:
        raise ConfigError(source, ["not valid TOML: arrays or tables nested too deeply"]) from None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(source, [_describe(err) for err in e.errors()]) from None
    errors = _cross_checks(cfg)
    if errors:
        raise ConfigError(source, errors)
    return cfg


def load_config(path: Path) -> Config:
    """Read models.toml from disk; relative paths inside it are taken from the file's folder."""
    cfg = parse_config(read_config_text(path), str(path))
    return _resolve_paths(cfg, path.parent.resolve())


def read_config_text(path: Path) -> str:
    """The file as text, or a ConfigError saying why not (never a decoding traceback)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            # A FIFO or a device would block or never end.
            raise ConfigError(str(path), ["cannot read: not a regular file"])
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror or e}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), [f"larger than {MAX_CONFIG_BYTES} bytes: not a models.toml"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            str(path), [f"not UTF-8 text (byte {e.start}, line {line}): TOML files are UTF-8"]
        ) from None


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    topology = cfg.orchestrator.topology
    orch = cfg.orchestrator.model_copy(
        update={
            "state_dir": fix(cfg.orchestrator.state_dir),
            "log_dir": fix(cfg.orchestrator.log_dir),
            # A bare name ("a100-mixed") is a shipped topology, not a file beside the config.
            "topology": fix(topology)
            if topology and (topology.suffix or topology.parent != Path("."))
            else topology,
            "admin_token_file": fix(cfg.orchestrator.admin_token_file),
        }
    )
    models = {
        name: m.model_copy(
            update={"api_key_file": fix(m.api_key_file), "token_file": fix(m.token_file)}
        )
        for name, m in cfg.models.items()
    }
    return cfg.model_copy(update={"orchestrator": orch, "models": models})
