"""models.toml: the sysadmin's description of the daemon, its defaults and one table per student."""

from __future__ import annotations

import difflib
import errno
import ipaddress
import re
import socket
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.units import KIB, MIB

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
DEFAULT_LISTEN = "127.0.0.1:8700"
# vLLM sizes its memory from the device total, so two engines on one GPU must leave headroom.
SHARED_GPU_UTILIZATION_CAP = 0.95
VLLM_DEFAULT_UTILIZATION = 0.92
# Linux refuses one argv or environment string over 128 KiB (MAX_ARG_STRLEN) with E2BIG: half of
# it is far more than any vLLM flag or chat template needs.
MAX_ARG_BYTES = 64 * KIB
# What extra_args and env add to one engine's exec. ARG_MAX is usually 2 MiB and holds the
# daemon's own environment too; past this an engine would only ever fail with E2BIG.
MAX_EXEC_BYTES = 256 * KIB
# A models.toml for a whole course is a few KiB; a bigger file is a mistake (or /dev/zero).
MAX_CONFIG_BYTES = MIB
# Below this bound the daemon only probes and logs (the issue measured 60% CPU at 1 us).
MIN_HEALTH_INTERVAL_S = 0.5
DAY_S = 86400.0


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _module_names(v: list[str] | None) -> list[str] | None:
    """A standby's preload list travels comma-separated: each item must be a dotted module name."""
    for i, name in enumerate(v or []):
        if not _MODULE_NAME.match(name):
            raise ValueError(f"item {i}: {name!a} is not a Python module name (like 'a.b.c')")
    return v


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _exec_safe(text: str, where: str) -> int:
    """exec() cannot pass a NUL, a lone surrogate or a string over MAX_ARG_BYTES: such a value
    would wedge the engine's start. Returns the encoded size."""
    if "\0" in text:
        raise ValueError(f"{where}: contains a NUL character")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{where}: is not valid Unicode") from None
    if size > MAX_ARG_BYTES:
        raise ValueError(f"{where}: {size} bytes, more than the {MAX_ARG_BYTES} one value may hold")
    return size


def _plain(text: str) -> str:
    """Names and paths that end up in argv, logs and metric labels: one printable line."""
    if _CONTROL.search(text):
        raise ValueError("contains a control character (NUL, newline, tab, ...)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode") from None
    return text


def _ip_address(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address: use 0.0.0.0 (every interface), 127.0.0.1, :: "
            "or one address of this host"
        ) from None
    return text


# Checked in this order: length first, so a 1 MB name is not scanned for control characters.
Word = Annotated[
    str, StringConstraints(min_length=1, max_length=4096), AfterValidator(_plain)
]  # a path, a hub id, one argv item
Label = Annotated[
    str, StringConstraints(min_length=1, max_length=256), AfterValidator(_plain)
]  # a name shown to clients, in status and as a metric label
Seconds = Annotated[float, Field(gt=0, le=DAY_S)]
# Path fields stay lax: TOML and JSON give a path as a string.
FilePath = Annotated[Path, Field(strict=False)]


# vLLM's --kv-cache-dtype values for ordinary attention (MLA- and turboquant-only ones left out).
KvCacheDtype = Literal["auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"]


class ConfigError(Exception):
    """A configuration that cannot be used; `errors` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__("\n".join(f"{source}: {e}" for e in errors))


class _Strict(BaseModel):
    # strict: port = "19401" or autostart = "yes" is a mistake to report, not a value to guess.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class VllmSettings(_Strict):
    """vLLM serving settings; unset ones are left to vLLM's own defaults."""

    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    max_model_len: Annotated[int, Field(gt=0, lt=2**31)] | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    tensor_parallel_size: Annotated[int, Field(ge=1)] | None = None
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None
    max_num_seqs: Annotated[int, Field(gt=0, lt=2**31)] | None = None
    kv_cache_dtype: KvCacheDtype | None = None
    enforce_eager: bool | None = None
    extra_args: list[str] | None = None
    env: dict[str, str] | None = None
    # Not a vLLM flag: VLLM_WORKER_MULTIPROC_METHOD=fork at launch (docs/standby.md says what it
    # needs). A setting, not `env`, so that a runtime override or compare variant keeps the standby.
    engine_fork: bool | None = None
    # On a MIG slice, correct the NVML lookups vLLM makes for its device (README "MIG and vLLM");
    # unset means on. Not a vLLM flag: the daemon arms it through the engine's environment.
    mig_nvml_fix: bool | None = None

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
                raise ValueError(f"{key[:64]!a} is not a valid environment variable name")
            _exec_safe(f"{key}={value}", key)
        return v

    @model_validator(mode="after")
    def _exec_fits(self) -> VllmSettings:
        size = sum(len(a.encode()) + 1 for a in self.extra_args or [])
        size += sum(len(f"{k}={v}".encode()) + 1 for k, v in (self.env or {}).items())
        if size > MAX_EXEC_BYTES:
            raise ValueError(
                f"extra_args and env take {size} bytes, more than the {MAX_EXEC_BYTES} "
                "an engine's command line and environment may add"
            )
        return self

    def set_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


SETTING_NAMES = tuple(VllmSettings.model_fields)


# Every argv item must be a real word: exec() of "" fails only when the engine starts.
Command = Annotated[
    list[Word],
    Field(min_length=1, max_length=64),
]


class OrchestratorSettings(_Strict):
    # Upper bounds keep timers inside what asyncio accepts and every loop bounded; each is far
    # above a sensible value. Lower bounds keep the daemon from spinning.
    listen: str = DEFAULT_LISTEN
    state_dir: FilePath = Path("/var/lib/mig-orchestrator")
    log_dir: FilePath = Path("/var/log/mig-orchestrator")
    engine_command: Command = ["vllm", "serve"]
    topology: FilePath | None = None
    admin_token_file: FilePath | None = None
    # An empty or model-less file is refused (a truncated file would stop every engine on
    # reload) unless the sysadmin says so here.
    allow_no_models: bool = False
    health_interval_s: Annotated[float, Field(ge=MIN_HEALTH_INTERVAL_S, le=3600)] = 5.0
    health_timeout_s: Annotated[float, Field(ge=0.1, le=300)] = 5.0
    unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] = 3
    startup_timeout_s: Seconds = 900.0
    stop_grace_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    backoff_initial_s: Annotated[float, Field(ge=0.1, le=3600)] = 2.0
    backoff_max_s: Annotated[float, Field(ge=0.1, le=DAY_S)] = 120.0
    stable_after_s: Seconds = 300.0
    max_restarts: Annotated[int, Field(ge=0, le=1_000_000)] = 5
    restart_window_s: Annotated[float, Field(gt=0, le=7 * DAY_S)] = 900.0
    memory_release_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    log_max_bytes: Annotated[int, Field(ge=4096, le=2**40)] = 20 * MIB
    # Every rotation renames each backup while the engine's log waits: 3e6 froze it for 24 s.
    log_backups: Annotated[int, Field(ge=0, le=100)] = 3
    # Prometheus' scrape timeout is at most its interval, usually 10-60 s.
    metrics_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    # A control-plane client must send its request head, then its body, within this; an idle
    # or trickling socket is closed after it (each one holds a descriptor).
    client_timeout_s: Annotated[float, Field(ge=0.5, le=300)] = 10.0
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


class SizeHint(_Strict):
    """A model that is not on this host, described for the layout planner (config.json's keys)."""

    weights_gib: Annotated[float, Field(gt=0)]  # the checkpoint's weights as loaded
    num_hidden_layers: Annotated[int, Field(gt=0)]
    hidden_size: Annotated[int, Field(gt=0)]
    intermediate_size: Annotated[int, Field(gt=0)]
    vocab_size: Annotated[int, Field(gt=0)]
    num_attention_heads: Annotated[int, Field(gt=0)]
    num_key_value_heads: Annotated[int, Field(gt=0)] | None = None  # default: attention heads
    head_dim: Annotated[int, Field(gt=0)] | None = None  # default: hidden_size / attention heads
    max_position_embeddings: Annotated[int, Field(gt=0)] | None = None
    quantization: str | None = None  # quantization_config.quant_method: "awq", "gptq", "fp8", ...


class ModelConfig(VllmSettings):
    """One student's engine."""

    model: Word  # a path or a hub id
    # who this endpoint is for; shown in status and metric labels
    student: Label | None = None
    port: Annotated[int, Field(ge=1, le=65535)]
    # What clients send as "model"; vLLM also lists it in /v1/models.
    served_model_name: Label | None = None
    # The daemon probes and checks the port on this address: a host name would fail there.
    host: Annotated[str, AfterValidator(_ip_address)] = "0.0.0.0"
    profile: Label | None = None
    min_memory_gib: Annotated[float, Field(gt=0, le=2**20)] | None = None
    slice: Label | int | None = None
    share_gpu: bool = False
    autostart: bool = True
    api_key_file: FilePath | None = None
    token_file: FilePath | None = None
    command: Command | None = None
    startup_timeout_s: Seconds | None = None
    # Layout planning only: full-length sequences the KV cache must hold at once (vLLM itself
    # refuses to start below 1), and the model's figures when it is not on this host.
    guaranteed_seqs: Annotated[int, Field(gt=0, le=1_000_000)] = 1
    size_hint: SizeHint | None = None
    standby: bool | None = None  # None: [orchestrator] standby
    standby_preload: list[str] | None = None  # None: [orchestrator] standby_preload

    _preload_names = field_validator("standby_preload")(_module_names)

    @field_validator("slice")
    @classmethod
    def _gpu_index(cls, v: str | int | None) -> str | int | None:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"GPU index {v} is negative")
        return v

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
        # Overrides are checked on their own first: merging needs `env` to be a table already.
        layers = [
            self.models[name].vllm_settings().set_fields(),
            VllmSettings(**(overrides or {})).set_fields(),
        ]
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
        raise ValueError(f"listen must be HOST:PORT, got {value[:300]!r}")
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
    if loc and loc[-1] == "[key]" and err["type"] == "string_pattern_mismatch":
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
                "size_hint": SizeHint,
            }
            parent = tables.get(str(part), parent)
        close = difflib.get_close_matches(field, list(parent.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: unknown setting{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in _TYPE_ERRORS:
        # Strict types: say what was given, since "19401" and 19401 look alike to a person.
        msg += f" (got {_TOML_TYPES.get(type(err['input']), 'another type')})"
    return f"{where}: {msg}" if where else msg


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


def check_this_host(cfg: Config, source: str) -> None:
    """What only this host can tell: model paths exist, `host` addresses are its own."""
    errors = [
        f"models.{name}.model: {m.model} does not exist on this host"
        for name, m in cfg.models.items()
        # A path; vLLM would report a confusing hub error.
        if m.model.startswith(("/", "./", "../", "~")) and not Path(m.model).expanduser().exists()
    ]
    for name, m in cfg.models.items():
        # Without this, the engine's bind fails and the daemon reports "port already in use".
        if not _bindable(m.host):
            errors.append(f"models.{name}.host: {m.host} is not an address of this host")
    if errors:
        raise ConfigError(source, errors)


def _bindable(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError as e:
        return e.errno != errno.EADDRNOTAVAIL
    return True


def unprivileged_port_start() -> int:
    """The lowest port an unprivileged process may bind (net.ipv4.ip_unprivileged_port_start)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def config_warnings(cfg: Config, first_free_port: int = 1024) -> list[str]:
    """What is valid but likely to fail on this host; printed by check and logged by serve."""
    why = (
        f"ports below {first_free_port} need root or CAP_NET_BIND_SERVICE, which the daemon "
        "and its engines do not have (net.ipv4.ip_unprivileged_port_start)"
    )
    ports = [(f"models.{n}.port", m.port) for n, m in sorted(cfg.models.items())]
    ports.append(("orchestrator.listen", cfg.orchestrator.listen_port))
    return [
        f"{where}: {port} is a privileged port: {why}"
        for where, port in ports
        if port < first_free_port
    ]
