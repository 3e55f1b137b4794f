"""What a model is, read offline: its shapes from config.json and its exact weight bytes.

A model is a local directory, a Hugging Face hub id found in a local hub cache, or a
`size_hint` table in models.toml. Weight bytes come from the safetensors headers (each tensor's
byte range), so nothing is downloaded and no tensor is read. There is no network: a hub id that
is not cached is an error asking for a local path or a size hint.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import SizeHint
from orchestrator.gpu.inventory import GIB

# Tensors vLLM casts to the serving dtype; everything else (packed ints, fp8) loads as stored.
_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
_MAX_HEADER = 100 * 1024**2  # a larger header is a corrupt file, not a checkpoint
_MAX_JSON = 16 * 1024**2  # config.json and the shard index are KiBs; more is not a checkpoint
_MAX_REF = 256  # refs/main holds one commit hash
# Bounds that keep every figure finite and meaningful: a larger one is a broken file.
_MAX_CONFIG_INT = 1 << 31
_MAX_DIM = 1 << 40
_MAX_TENSOR_ELEMENTS = 1 << 50
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(Exception):
    """The model cannot be sized offline; the message says what is missing and what to do."""


@dataclass(frozen=True)
class ModelShape:
    """The figures of a decoder that decide its activation and KV-cache memory."""

    layers: int
    hidden: int
    intermediate: int  # MLP width one token passes through (MoE: active experts' sum)
    vocab: int
    kv_heads: int
    head_dim: int
    kv_latent: int | None = None  # MLA (DeepSeek-V2/V3): cached elements per layer and token
    max_position: int | None = None

    @property
    def kv_elements_per_token(self) -> int:
        """Cached elements per token over all layers: K and V, or MLA's one latent vector."""
        if self.kv_latent is not None:
            return self.layers * self.kv_latent
        return 2 * self.layers * self.kv_heads * self.head_dim


@dataclass(frozen=True)
class Checkpoint:
    """A model's shape and weights; `source` says where the figures came from."""

    shape: ModelShape
    float_elements: int  # elements of floating tensors, loaded in the serving dtype
    other_bytes: int  # packed integer / fp8 tensors, loaded as stored
    quantization: str | None  # quantization_config.quant_method ("awq", "gptq", "fp8", ...)
    source: str
    exact: bool  # False when the figures are a hint, an index total or .bin file sizes

    def weight_bytes(self, dtype_bytes: int) -> int:
        """Weight memory once loaded with floating tensors in a dtype of `dtype_bytes`."""
        return self.float_elements * dtype_bytes + self.other_bytes


def hub_cache_dirs(env: Mapping[str, str]) -> list[Path]:
    """Hugging Face hub caches to search: the engine's own environment first, then this one's."""
    found: list[Path] = []
    for source in (env, os.environ):
        if source.get("HF_HUB_CACHE"):
            found.append(Path(source["HF_HUB_CACHE"]))
        if source.get("HF_HOME"):
            found.append(Path(source["HF_HOME"]) / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    found.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    return list(dict.fromkeys(p.expanduser() for p in found))


def locate(model: str, env: Mapping[str, str]) -> Path:
    """The directory holding the model's config.json: the path itself or its hub-cache snapshot."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        raise CheckpointError(f"{model} does not exist on this host")
    caches = hub_cache_dirs(env)
    for cache in caches:
        snapshot = _snapshot(cache / f"models--{model.replace('/', '--')}")
        if snapshot is not None and (snapshot / "config.json").is_file():
            return snapshot
    where = ", ".join(str(c) for c in caches)
    raise CheckpointError(
        f"{model} is not on this host (not a directory, not in the Hugging Face cache: {where}) "
        "and there is no network to look it up: give a local path, download it "
        f"(`hf download {model}`; for a sharded checkpoint `--include '*.json'` is enough), "
        "or add a size_hint table (weights_gib and the shapes from its config.json)"
    )


def _snapshot(repo: Path) -> Path | None:
    """The snapshot `refs/main` names, else the only snapshot there is."""
    ref = repo / "refs" / "main"
    if ref.is_file():
        name = _read_regular(ref, _MAX_REF).decode("utf-8", "replace").strip()
        return repo / "snapshots" / name if name and "/" not in name else None
    snapshots = sorted(p for p in (repo / "snapshots").glob("*") if p.is_dir())
    return snapshots[0] if len(snapshots) == 1 else None


def read(directory: Path) -> Checkpoint:
    """Shapes from config.json and weights from the safetensors headers of `directory`."""
    config = _read_json(directory / "config.json")
    shape = shape_from_config(config, directory / "config.json")
    quant = config.get("quantization_config") or {}
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    floats, other, exact, how = _weights(directory, config)
    return Checkpoint(shape, floats, other, method, f"{directory} ({how})", exact)


def from_hint(hint: SizeHint) -> Checkpoint:
    """A checkpoint described by models.toml instead of files."""
    heads = hint.num_attention_heads
    shape = ModelShape(
        layers=hint.num_hidden_layers,
        hidden=hint.hidden_size,
        intermediate=hint.intermediate_size,
        vocab=hint.vocab_size,
        kv_heads=hint.num_key_value_heads or heads,
        head_dim=hint.head_dim or hint.hidden_size // heads,
        max_position=hint.max_position_embeddings,
    )
    weights = round(hint.weights_gib * GIB)
    return Checkpoint(shape, 0, weights, hint.quantization, "size_hint in models.toml", exact=False)


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file; a FIFO, device or larger file is refused unread."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before it can be refused.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise CheckpointError(f"{path}: larger than {limit} bytes; not part of a checkpoint")
        return f.read(limit)


def _read_json(path: Path) -> dict[str, Any]:
    raw = _read_regular(path, _MAX_JSON)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        # The parser's message quotes no content, but say only what kind of failure it was.
        raise CheckpointError(f"{path}: not valid UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


def shape_from_config(config: Mapping[str, Any], where: Path) -> ModelShape:
    """The decoder's shape; a multimodal model's text_config wins over the top level."""
    text = config.get("text_config")
    cfg: dict[str, Any] = {**config, **text} if isinstance(text, dict) else dict(config)

    def first(*keys: str, default: int | None = None) -> int:
        for key in keys:
            value = cfg.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                if value > _MAX_CONFIG_INT:
                    raise CheckpointError(f"{where}: {key} is larger than {_MAX_CONFIG_INT}")
                return value
        if default is not None:
            return default
        raise CheckpointError(f"{where}: no {' / '.join(keys)} (a positive integer) found")

    layers = first("num_hidden_layers", "n_layer", "num_layers")
    hidden = first("hidden_size", "n_embd", "d_model")
    heads = first("num_attention_heads", "n_head")
    dense = first("intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)
    active = cfg.get("num_experts_per_tok")
    if isinstance(active, int) and active > 0:
        expert = first("moe_intermediate_size", "intermediate_size")
        shared = first("shared_expert_intermediate_size", default=0) or expert * first(
            "n_shared_experts", default=0
        )
        intermediate = max(dense, first("num_experts_per_tok") * expert + shared)
    else:
        intermediate = dense
    latent = None
    if cfg.get("kv_lora_rank"):
        latent = first("kv_lora_rank") + first("qk_rope_head_dim", default=0)
    kv_heads = 1 if cfg.get("multi_query") else first("num_key_value_heads", default=heads)
    return ModelShape(
        layers=layers,
        hidden=hidden,
        intermediate=intermediate,
        vocab=first("vocab_size"),
        kv_heads=kv_heads,
        head_dim=first("head_dim", default=hidden // heads),
        kv_latent=latent,
        max_position=first(
            "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", default=0
        )
        or None,
    )


def _weights(directory: Path, config: Mapping[str, Any]) -> tuple[int, int, bool, str]:
    """(float elements, other bytes, exact, how) for the weights in `directory`."""
    index = directory / INDEX_FILE
    if index.is_file():
        data = _read_json(index)
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map")
        shards = sorted({directory / str(name) for name in weight_map.values()})
        missing = [s for s in shards if not s.is_file()]
        if not missing:
            floats, other = _headers(shards)
            return floats, other, True, f"headers of {len(shards)} safetensors shards"
        total = (data.get("metadata") or {}).get("total_size")
        if not isinstance(total, int) or total <= 0:
            raise CheckpointError(
                f"{directory}: {len(missing)} of {len(shards)} shards are missing and {INDEX_FILE} "
                "has no metadata.total_size"
            )
        # Shards not downloaded: the index's byte total, as stored. An fp32 checkpoint is served in
        # 16 bits, so it loads at half its stored size.
        stored_fp32 = str(config.get("torch_dtype") or config.get("dtype")) == "float32"
        elements = total // 4 if stored_fp32 else total // 2
        return elements, 0, False, f"{INDEX_FILE} total_size, shards not downloaded"
    files = sorted(directory.glob("*.safetensors"))
    if files:
        floats, other = _headers(files)
        return floats, other, True, f"safetensors headers of {len(files)} file(s)"
    pickles = sorted(directory.glob("pytorch_model*.bin"))
    if pickles:
        size = sum(p.stat().st_size for p in pickles)
        return size // 2, 0, False, f"size of {len(pickles)} .bin file(s), taken as 16-bit"
    raise CheckpointError(f"{directory}: no *.safetensors (or pytorch_model*.bin) weights")


def _headers(files: Iterable[Path]) -> tuple[int, int]:
    """Sum the tensors of safetensors files: floating elements, and bytes of the rest."""
    floats = other = 0
    for path in files:
        for name, tensor in _header(path).items():
            if name == "__metadata__":
                continue
            dtype, elements, size = _tensor(path, name, tensor)
            if dtype in _FLOAT_DTYPES:
                floats += elements
            else:  # packed integers, fp8, any future dtype: the stored bytes are what loads
                other += size
    return floats, other


def _tensor(path: Path, name: str, tensor: Any) -> tuple[str, int, int]:
    """(dtype, elements, stored bytes) of one header entry, every number checked and bounded."""
    bad = CheckpointError(f"{path}: tensor {name[:200]!r} has a malformed header")
    try:
        dtype, shape = tensor["dtype"], tensor["shape"]
        start, end = tensor["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise bad from None
    numbers = [*shape, start, end] if isinstance(shape, list) else None
    if (
        not isinstance(dtype, str)
        or numbers is None
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers)
        or not all(0 <= d <= _MAX_DIM for d in shape)
        or not 0 <= start <= end <= _MAX_TENSOR_ELEMENTS
    ):
        raise bad
    elements = math.prod(shape)
    if elements > _MAX_TENSOR_ELEMENTS:
        raise bad
    return dtype, elements, end - start


def _header(path: Path) -> dict[str, Any]:
    """The JSON header alone: 8 bytes of length, then at most _MAX_HEADER bytes, never a tensor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CheckpointError(f"{path}: not a regular file")
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            # The length is the file's first bytes: never echo them (the file may be a secret).
            raise CheckpointError(f"{path}: not a safetensors file (implausible header length)")
        try:
            header = json.loads(f.read(length))
        except (ValueError, RecursionError):
            raise CheckpointError(f"{path}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    return header
