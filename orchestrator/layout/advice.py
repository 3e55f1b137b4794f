"""What would make a model fit a slice it does not fit: each change alone, re-estimated."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.layout.estimate import BLOCK_TOKENS, gib
from orchestrator.layout.subject import Subject

MAX_UTILIZATION = 0.95  # above it a slice has no room left for the CUDA context
# Weights of a variant relative to this 16-bit checkpoint. 4-bit AWQ / GPTQ packs the linear layers
# to a quarter (plus group scales) while embeddings and lm_head stay 16-bit: the course's
# Qwen2.5-Coder-32B is 61 GiB in bf16 and 18.0 GiB as AWQ (0.295). FP8 halves the linear layers.
VARIANTS = (("4-bit (AWQ/GPTQ)", 0.30), ("FP8", 0.52))


def changes_to_fit(subject: Subject, memory_bytes: int) -> list[str]:
    """Single changes in models.toml (or of checkpoint) after which the model fits the slice."""
    now = subject.estimate()
    if now.fits(memory_bytes):
        return []
    out: list[str] = []
    length = longest_max_model_len(subject, memory_bytes)
    limit = subject.checkpoint.shape.max_position
    if length is not None and limit is not None:
        length = min(length, limit)  # beyond the model's own length vLLM refuses to start
    if length is not None and length < now.max_model_len:
        out.append(f"max_model_len = {length}")
    settings: list[tuple[bool, dict[str, object], str]] = [
        (
            not (subject.settings.kv_cache_dtype or "").startswith("fp8"),
            {"kv_cache_dtype": "fp8"},
            'kv_cache_dtype = "fp8" (halves the KV cache)',
        ),
        (
            now.batch.defaulted and now.batch.max_num_seqs > 256,
            {"max_num_seqs": 256},
            "max_num_seqs = 256",
        ),
        (
            now.utilization < MAX_UTILIZATION,
            {"gpu_memory_utilization": MAX_UTILIZATION},
            f"gpu_memory_utilization = {MAX_UTILIZATION}",
        ),
    ]
    out += [
        text
        for applies, update, text in settings
        if applies and subject.with_settings(**update).estimate().fits(memory_bytes)
    ]
    seqs = subject.guaranteed_seqs - 1
    while seqs >= 1 and not replace(subject, guaranteed_seqs=seqs).estimate().fits(memory_bytes):
        seqs -= 1
    if seqs >= 1:
        out.append(f"guaranteed_seqs = {seqs}")
    if subject.checkpoint.quantization is None:
        for label, ratio in VARIANTS:
            ck = subject.checkpoint
            smaller = replace(
                ck,
                float_elements=int(ck.float_elements * ratio),
                other_bytes=int(ck.other_bytes * ratio),
            )
            e = replace(subject, checkpoint=smaller).estimate()
            if e.fits(memory_bytes):
                out.append(f"a {label} variant of the model (weights about {gib(e.weights)} GiB)")
                break
    return out


def longest_max_model_len(subject: Subject, memory_bytes: int) -> int | None:
    """The longest max_model_len (whole 16-token blocks) that fits; None if not even one block."""

    def fits(blocks: int) -> bool:
        longer = subject.with_settings(max_model_len=blocks * BLOCK_TOKENS)
        return longer.estimate().fits(memory_bytes)

    if not fits(1):
        return None
    low, high = 1, 1 << 24  # 268M tokens: beyond any model
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low * BLOCK_TOKENS
