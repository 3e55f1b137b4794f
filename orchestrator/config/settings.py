"""models.toml's tables as typed settings: the daemon, its defaults and one table per student."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from orchestrator.config.kubernetes import KubernetesSettings
from orchestrator.units import KIB, MIB

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
DEFAULT_LISTEN = "127.0.0.1:8700"
# Students reach the gateway from their machines; it only listens when [gateway] enabled = true.
DEFAULT_GATEWAY_LISTEN = "0.0.0.0:8701"
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


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text[:300]!r} is not an http:// or https:// URL with a host")
    return text


# An OTLP endpoint: one printable line, http(s)://host[:port][/path].
HttpUrlText = Annotated[
    str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_plain),
    AfterValidator(_http_url),
]  # fmt: skip
# Path fields stay lax: TOML and JSON give a path as a string.
FilePath = Annotated[Path, Field(strict=False)]


# vLLM's --kv-cache-dtype values for ordinary attention (MLA- and turboquant-only ones left out).
KvCacheDtype = Literal["auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"]


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
    # vLLM's --otlp-traces-endpoint: the engine sends a span per request there, joined to the
    # gateway's through the traceparent it passes on (docs/telemetry.md). vLLM exports by gRPC
    # unless env sets OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = "http/protobuf".
    otlp_traces_endpoint: HttpUrlText | None = None

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
    # The database `mig-orchestrator eval --db` writes; the dashboard shows its latest leaderboard.
    eval_db: FilePath | None = None
    # Scrape-only: the monitoring system's token reads /metrics and nothing else.
    metrics_token_file: FilePath | None = None
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


class GatewaySettings(_Strict):
    """[gateway]: one OpenAI endpoint for every model, routed by the request's `model`
    (docs/gateway.md). Off by default: each student keeps their own port, and nothing else
    listens until the sysadmin chooses the gateway's address."""

    enabled: bool = False
    listen: str = DEFAULT_GATEWAY_LISTEN
    # Default for every model: bind the engine to 127.0.0.1, reachable only through the gateway.
    gateway_only: bool = False
    max_body_bytes: Annotated[int, Field(ge=1024, le=2**30)] = 16 * MIB
    # A client must send its whole request body within this.
    body_timeout_s: Annotated[float, Field(ge=0.5, le=3600)] = 30.0
    # How often the gateway reads the engines' states from the control plane.
    refresh_s: Annotated[float, Field(ge=0.1, le=60)] = 1.0
    # Every request needs an API key (`mig-orchestrator keys`): per-key models and limits, and
    # usage counted in state_dir (docs/keys-and-usage.md). Off: anyone may use every model.
    keys: bool = False
    # With keys: days a request stays in the request log (state_dir's accounting database);
    # older rows are deleted hourly. Daily usage totals are kept regardless.
    request_log_days: Annotated[int, Field(ge=1, le=36500)] = 30
    # OTLP/HTTP traces endpoint (e.g. http://127.0.0.1:4318/v1/traces): the gateway sends a
    # span per request there and passes its W3C traceparent to the engine (docs/telemetry.md).
    otlp_endpoint: HttpUrlText | None = None

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, v: str) -> str:
        parse_listen(v)
        return v


class SizeHint(_Strict):
    """A model that is not on this host, described for the layout planner (config.json's keys)."""

    # Bounded so every figure derived from it stays finite (1e308 GiB would overflow to inf).
    weights_gib: Annotated[float, Field(gt=0, le=1_000_000)]  # the weights as loaded
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
    gateway_only: bool | None = None  # None: [gateway] gateway_only

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
    # Read only by `k8s render`: the same models deployed on a cluster.
    kubernetes: KubernetesSettings | None = None

    gateway: GatewaySettings = GatewaySettings()

    def gateway_only(self, name: str) -> bool:
        m = self.models[name]
        return self.gateway.gateway_only if m.gateway_only is None else m.gateway_only

    def engine_host(self, name: str) -> str:
        """The address model `name`'s engine binds: loopback when only the gateway may reach it."""
        return "127.0.0.1" if self.gateway_only(name) else self.models[name].host

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
