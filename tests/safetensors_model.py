"""Write model directories with known shapes (config.json + safetensors) without torch.

The tensor data is a sparse hole, so a "model" of any size costs no disk: only the headers,
which are all the layout planner reads, are real.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "U8": 1, "F8_E4M3": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A safetensors file of `name -> (dtype, shape)`; returns the bytes of tensor data."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    return offset


def llama_tensors(
    layers: int, hidden: int, intermediate: int, vocab: int, kv: int, dtype: str
) -> dict[str, tuple[str, list[int]]]:
    """A Llama's tensors, untied embeddings; `kv` is key/value heads x head_dim."""
    out = {"model.embed_tokens.weight": (dtype, [vocab, hidden])}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (dtype, [hidden, hidden]),
            p + "self_attn.k_proj.weight": (dtype, [kv, hidden]),
            p + "self_attn.v_proj.weight": (dtype, [kv, hidden]),
            p + "self_attn.o_proj.weight": (dtype, [hidden, hidden]),
            p + "mlp.gate_proj.weight": (dtype, [intermediate, hidden]),
            p + "mlp.up_proj.weight": (dtype, [intermediate, hidden]),
            p + "mlp.down_proj.weight": (dtype, [hidden, intermediate]),
            p + "input_layernorm.weight": (dtype, [hidden]),
            p + "post_attention_layernorm.weight": (dtype, [hidden]),
        }
    out["model.norm.weight"] = (dtype, [hidden])
    out["lm_head.weight"] = (dtype, [vocab, hidden])
    return out


def write_llama(
    directory: Path,
    layers: int = 3,
    hidden: int = 256,
    intermediate: int = 640,
    vocab: int = 1000,
    heads: int = 4,
    kv_heads: int = 2,
    dtype: str = "BF16",
    max_positions: int = 4096,
    shards: int = 1,
) -> Path:
    """A Llama directory; with shards > 1 the tensors are split and indexed like the Hub does."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_positions,
        "torch_dtype": {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype],
    }
    (directory / "config.json").write_text(json.dumps(config))
    kv = kv_heads * (hidden // heads)
    tensors = llama_tensors(layers, hidden, intermediate, vocab, kv, dtype)
    if shards == 1:
        write_safetensors(directory / "model.safetensors", tensors)
        return directory
    names = list(tensors)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(shards):
        part = names[s::shards]
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        total += write_safetensors(directory / file, {n: tensors[n] for n in part})
        weight_map |= dict.fromkeys(part, file)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory
