"""models.toml: the sysadmin's description of the daemon, its defaults and one table per student."""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
DEFAULT_LISTEN = "127.0.0.1:8700"
# vLLM sizes its memory from the device total, so two engines on one GPU must leave headroom.
SHARED_GPU_UTILIZATION_CAP = 0.95
VLLM_DEFAULT_UTILIZATION = 0.92


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _module_names(v: list[str] | None) -> list[str] | None:
    """A standby's preload list travels comma-separated: each item must be a dotted module name."""
    for i, name in enumerate(v or []):
        if not _MODULE_NAME.match(name):
            raise ValueError(f"item {i}: {name!a} is not a Python module name (like 'a.b.c')")
    return v


def _exec_safe(text: str, where: str) -> None:
    """exec() cannot pass a NUL or a lone surrogate; such a value would wedge the engine's start."""
    if "\0" in text:
        raise ValueError(f"{where}: contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: is not valid Unicode") from None


class ConfigError(Exception):
    """A configuration that cannot be used; `errors` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__("\n".join(f"{source}: {e}" for e in errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VllmSettings(_Strict):
    """vLLM serving settings; unset ones are left to vLLM's own defaults."""

    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    max_model_len: Annotated[int, Field(gt=0)] | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    tensor_parallel_size: Annotated[int, Field(ge=1)] | None = None
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None
    max_num_seqs: Annotated[int, Field(gt=0)] | None = None
    enforce_eager: bool | None = None
    extra_args: list[str] | None = None
    env: dict[str, str] | None = None
    # Not a vLLM flag: VLLM_WORKER_MULTIPROC_METHOD=fork at launch (docs/standby.md says what it
    # needs). A setting, not `env`, so that a runtime override or compare variant keeps the standby.
    engine_fork: bool | None = None

    # Checked on the field so [defaults] and runtime overrides are refused too, not only models.
    @field_validator("tensor_parallel_size")
    @classmethod
    def _one_slice(cls, v: int | None) -> int | None:
        if v is not None and v > 1:
            raise ValueError(
                "tensor_parallel_size > 1 is not possible: each model runs on one slice "
                "(a MIG device has no peer-to-peer link, and one CUDA process sees one MIG device)"
            )
        return v

    @field_validator("extra_args")
    @classmethod
    def _args_can_be_passed(cls, v: list[str] | None) -> list[str] | None:
        for i, arg in enumerate(v or []):
            _exec_safe(arg, f"item {i}")
        return v

    @field_validator("env")
    @classmethod
    def _env_can_be_passed(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (v or {}).items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!a} is not a valid environment variable name")
            _exec_safe(value, key)
        return v

    def set_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


SETTING_NAMES = tuple(VllmSettings.model_fields)


class OrchestratorSettings(_Strict):
    listen: str = DEFAULT_LISTEN
    state_dir: Path = Path("/var/lib/mig-orchestrator")
    log_dir: Path = Path("/var/log/mig-orchestrator")
    engine_command: Annotated[list[str], Field(min_length=1)] = ["vllm", "serve"]
    topology: Path | None = None
    admin_token_file: Path | None = None
    health_interval_s: Annotated[float, Field(gt=0)] = 5.0
    health_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    unhealthy_threshold: Annotated[int, Field(ge=1)] = 3
    startup_timeout_s: Annotated[float, Field(gt=0)] = 900.0
    stop_grace_s: Annotated[float, Field(ge=0)] = 30.0
    backoff_initial_s: Annotated[float, Field(gt=0)] = 2.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 120.0
    stable_after_s: Annotated[float, Field(gt=0)] = 300.0
    max_restarts: Annotated[int, Field(ge=0)] = 5
    restart_window_s: Annotated[float, Field(gt=0)] = 900.0
    memory_release_timeout_s: Annotated[float, Field(ge=0)] = 60.0
    log_max_bytes: Annotated[int, Field(ge=4096)] = 20 * 1024 * 1024
    log_backups: Annotated[int, Field(ge=0)] = 3
    metrics_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    # Default for every model: a standby engine waits with the engine's imports done, so that a
    # restart skips them (docs/standby.md). About 0.6 GiB of host RAM per model, no GPU memory.
    standby: bool = True
    # Modules a standby imports besides the engine command's own; None = derived from the command.
    standby_preload: list[str] | None = None

    _preload_names = field_validator("standby_preload")(_module_names)

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, v: str) -> str:
        parse_listen(v)
        return v

    @property
    def listen_host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_listen(self.listen)[1]


class ModelConfig(VllmSettings):
    """One student's engine."""

    model: Annotated[str, Field(min_length=1)]
    student: str | None = None  # who this endpoint is for; shown in status and metric labels
    port: Annotated[int, Field(ge=1, le=65535)]
    served_model_name: str | None = None
    host: str = "0.0.0.0"
    profile: str | None = None
    min_memory_gib: Annotated[float, Field(gt=0)] | None = None
    slice: str | int | None = None
    share_gpu: bool = False
    autostart: bool = True
    api_key_file: Path | None = None
    token_file: Path | None = None
    command: Annotated[list[str], Field(min_length=1)] | None = None
    startup_timeout_s: Annotated[float, Field(gt=0)] | None = None
    standby: bool | None = None  # None: [orchestrator] standby
    standby_preload: list[str] | None = None  # None: [orchestrator] standby_preload

    _preload_names = field_validator("standby_preload")(_module_names)

    @model_validator(mode="after")
    def _one_selector(self) -> ModelConfig:
        chosen = [k for k in ("profile", "min_memory_gib", "slice") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one slice selector, not {' and '.join(chosen)}")
        return self

    def vllm_settings(self) -> VllmSettings:
        return VllmSettings(**{k: getattr(self, k) for k in SETTING_NAMES})


class Config(_Strict):
    orchestrator: OrchestratorSettings = OrchestratorSettings()
    defaults: VllmSettings = VllmSettings()
    models: dict[Annotated[str, Field(pattern=NAME_PATTERN)], ModelConfig] = {}

    def effective_settings(
        self, name: str, overrides: dict[str, Any] | None = None
    ) -> VllmSettings:
        """Defaults, then the model's own settings, then runtime overrides; env tables merge."""
        merged = self.defaults.set_fields()
        layers = [self.models[name].vllm_settings().set_fields(), overrides or {}]
        for layer in layers:
            env = {**(merged.get("env") or {}), **(layer.get("env") or {})}
            merged.update(layer)
            if env:
                merged["env"] = env
        return VllmSettings(**merged)

    def standby_of(self, name: str) -> tuple[bool, list[str] | None]:
        """Whether model `name` keeps a standby, and its preload list (None: derived)."""
        m, o = self.models[name], self.orchestrator
        enabled = o.standby if m.standby is None else m.standby
        return enabled, o.standby_preload if m.standby_preload is None else m.standby_preload


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    where = _loc(loc)
    if loc[-1] == "[key]" and err["type"] == "string_pattern_mismatch":
        # Pydantic would print the raw regex; a sysadmin needs the rule in words.
        return (
            f"{_loc(loc[:-1])}: invalid model name: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 63 characters (it becomes a file name "
            "and a metric label)"
        )
    if err["type"] == "extra_forbidden":
        field = str(loc[-1])
        parent: type[BaseModel] = Config
        for part in loc[:-1]:
            ann = parent.model_fields.get(str(part))
            if ann is None:  # a dict key (model name)
                parent = ModelConfig
                continue
            tables: dict[str, type[BaseModel]] = {
                "orchestrator": OrchestratorSettings,
                "defaults": VllmSettings,
                "models": ModelConfig,
            }
            parent = tables.get(str(part), parent)
        close = difflib.get_close_matches(field, list(parent.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: unknown setting{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def _cross_checks(cfg: Config) -> list[str]:
    errors: list[str] = []
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
        util = cfg.effective_settings(name).gpu_memory_utilization
        if m.share_gpu and m.profile is not None:
            errors.append(
                f"models.{name}.share_gpu: sharing needs a whole GPU, not a {m.profile} MIG slice"
            )
        if m.share_gpu and util is None:
            errors.append(
                f"models.{name}.gpu_memory_utilization: required with share_gpu "
                f"(vLLM's default {VLLM_DEFAULT_UTILIZATION} leaves no room for a second engine)"
            )
    return errors


def parse_config(text: str, source: str = "models.toml") -> Config:
    """Parse and validate TOML text; raise ConfigError naming every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [f"not valid TOML: {e}"]) from None
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
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror or e}"]) from None
    cfg = parse_config(text, str(path))
    return _resolve_paths(cfg, path.parent.resolve())


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


def check_local_models(cfg: Config, source: str) -> None:
    """A model given as a path must exist here; vLLM would report a confusing hub error."""
    errors = [
        f"models.{name}.model: {m.model} does not exist on this host"
        for name, m in cfg.models.items()
        if m.model.startswith(("/", "./", "../", "~")) and not Path(m.model).expanduser().exists()
    ]
    if errors:
        raise ConfigError(source, errors)
