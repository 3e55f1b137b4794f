"""Memory estimates: a generated model of known shapes gives exactly the formula's bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, VllmSettings, parse_config
from orchestrator.layout import checkpoint
from orchestrator.layout.advice import changes_to_fit, longest_max_model_len
from orchestrator.layout.checkpoint import Checkpoint, CheckpointError, ModelShape
from orchestrator.layout.estimate import estimate
from orchestrator.layout.subject import Subject, load_subject
from tests.safetensors_model import write_llama, write_safetensors

GIB = 1024**3
MIB = 1024**2
A100 = ("NVIDIA A100-SXM4-80GB", 81920 * MIB)
H100 = ("NVIDIA H100 80GB HBM3", 81559 * MIB)
H200 = ("NVIDIA H200", 143771 * MIB)
# The generated model: write_llama's defaults.
L, H, FF, V, KV, HD = 3, 256, 640, 1000, 2, 64
ELEMENTS = V * H * 2 + H + L * (2 * H * H + 2 * KV * HD * H + 3 * FF * H + 2 * H)


def settings(**kw: object) -> VllmSettings:
    return VllmSettings(**{"max_model_len": 1000, "gpu_memory_utilization": 0.9, **kw})


def test_generated_model_gives_exactly_the_formula(tmp_path: Path) -> None:
    ck = checkpoint.read(write_llama(tmp_path / "m"))
    assert ck.exact and ck.quantization is None
    e = estimate(ck, settings(), 1, *A100)
    # A100: vLLM's defaults are max_num_batched_tokens 2048 and max_num_seqs 256.
    assert (e.batch.max_num_batched_tokens, e.batch.max_num_seqs) == (2048, 256)
    assert e.weights == ELEMENTS * 2 == 5_156_352
    width = 3 * FF + 2 * H
    assert e.activation == 2048 * width * 2 + 256 * V * 27 == 16_873_472
    assert e.overhead == 96 * MIB
    # Capture sizes 1, 2, 4, 8..248, 256..512: 51 piecewise graphs, 35 full ones (<= 256); the
    # largest size's activations once, then 1 MiB a graph (3 layers x 334 KiB is less).
    assert e.cuda_graphs == 512 * width * 2 + (50 + 34) * MIB == 90_570_752
    assert e.kv_bytes_per_token == 2 * L * KV * HD * 2 == 1536
    assert e.kv_cache == 1536 * 1008  # 1000 tokens fill 63 blocks of 16
    assert e.total == 5_156_352 + 16_873_472 + 96 * MIB + 90_570_752 + 1536 * 1008


def test_terms_follow_the_settings(tmp_path: Path) -> None:
    ck = checkpoint.read(write_llama(tmp_path / "m"))
    base = estimate(ck, settings(), 1, *A100)
    assert estimate(ck, settings(), 3, *A100).kv_cache == 3 * base.kv_cache
    assert estimate(ck, settings(kv_cache_dtype="fp8"), 1, *A100).kv_bytes_per_token == 768
    assert estimate(ck, settings(enforce_eager=True), 1, *A100).cuda_graphs == 0
    eager_f32 = estimate(ck, settings(dtype="float32"), 1, *A100)
    assert eager_f32.weights == ELEMENTS * 4 and eager_f32.kv_bytes_per_token == 3072
    long = settings(max_model_len=8192, enable_chunked_prefill=False)
    assert estimate(ck, long, 1, *A100).batch.max_num_batched_tokens == 8192
    capped = settings(extra_args=["--max-num-batched-tokens=4096"])
    assert estimate(ck, capped, 1, *A100).batch.max_num_batched_tokens == 4096
    few = estimate(ck, settings(max_num_seqs=64), 1, *A100)
    assert few.activation == 2048 * (3 * FF + 2 * H) * 2 + 64 * V * 27


@pytest.mark.parametrize(
    ("gpu", "tokens", "seqs"), [(A100, 2048, 256), (H100, 8192, 1024), (H200, 8192, 1024)]
)
def test_vllm_batch_defaults_follow_the_parent_gpu(
    tmp_path: Path, gpu: tuple[str, int], tokens: int, seqs: int
) -> None:
    ck = checkpoint.read(write_llama(tmp_path / "m"))
    e = estimate(ck, settings(), 1, *gpu)
    assert (e.batch.max_num_batched_tokens, e.batch.max_num_seqs) == (tokens, seqs)
    assert e.batch.defaulted
    assert any("max_num_seqs unset" in n for n in e.notes) == (seqs > 256)


def test_calibration_reproduces_the_h200_run() -> None:
    """gpu-vllm.md: 16 layers, hidden 2048, intermediate 5632, max_model_len 4096, util 0.40."""
    layers, hidden, inter, vocab = 16, 2048, 5632, 960
    elements = layers * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) + 2 * vocab * hidden
    shape = ModelShape(layers, hidden, inter, vocab, kv_heads=16, head_dim=128, max_position=4096)
    ck = Checkpoint(shape, elements + hidden, 0, None, "gpu-vllm.md", exact=True)
    e = estimate(ck, VllmSettings(max_model_len=4096, gpu_memory_utilization=0.4), 1, *H200)
    logged = {"weights": 1.54, "activation+overhead": 0.44, "cuda_graphs": 0.53}
    got = {
        "weights": round(e.weights / GIB, 2),
        "activation+overhead": round((e.activation + e.overhead) / GIB, 2),
        "cuda_graphs": round(e.cuda_graphs / GIB, 2),
    }
    assert got == logged
    # That run got 53.71 GiB of KV cache; the estimate leaves a little less, on the safe side.
    kv_room = (e.usable(H200[1]) - e.non_kv) / GIB
    assert 53.6 < kv_room < 53.71


def test_sharded_checkpoint_and_missing_shards(tmp_path: Path) -> None:
    directory = write_llama(tmp_path / "m", shards=3)
    ck = checkpoint.read(directory)
    assert ck.exact and ck.weight_bytes(2) == ELEMENTS * 2
    (directory / "model-00002-of-00003.safetensors").unlink()
    partial = checkpoint.read(directory)
    # Without the shards, the index's total_size (bytes as stored, bf16) is taken.
    assert not partial.exact and partial.weight_bytes(2) == ELEMENTS * 2
    assert "total_size" in partial.source


def test_fp32_checkpoint_is_served_in_16_bits(tmp_path: Path) -> None:
    ck = checkpoint.read(write_llama(tmp_path / "m", dtype="F32"))
    assert estimate(ck, settings(), 1, *A100).weights == ELEMENTS * 2


def test_quantized_checkpoint_counts_packed_tensors_as_stored(tmp_path: Path) -> None:
    directory = tmp_path / "awq"
    directory.mkdir()
    config = {
        "num_hidden_layers": 1,
        "hidden_size": 256,
        "intermediate_size": 512,
        "vocab_size": 100,
        "num_attention_heads": 4,
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128},
    }
    (directory / "config.json").write_text(json.dumps(config))
    packed = write_safetensors(
        directory / "model.safetensors",
        {
            "q.qweight": ("I32", [256, 32]),  # 256 x 256 4-bit weights, 8 per int32
            "q.qzeros": ("I32", [2, 32]),
            "q.scales": ("F16", [2, 256]),
            "embed.weight": ("BF16", [100, 256]),
        },
    )
    ck = checkpoint.read(directory)
    assert ck.quantization == "awq"
    assert packed == 256 * 32 * 4 + 2 * 32 * 4 + 2 * 256 * 2 + 100 * 256 * 2
    assert ck.weight_bytes(2) == packed


def test_hub_id_is_found_in_the_engines_hf_home(tmp_path: Path) -> None:
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny"
    write_llama(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    cfg = parse_config(
        f'[defaults]\nenv = {{ HF_HOME = "{tmp_path / "hf"}" }}\n'
        '[models.a]\nmodel = "acme/tiny"\nport = 8001\nmax_model_len = 1000\n'
    )
    subject = load_subject(cfg, "a", *A100)
    assert str(repo / "snapshots" / "abc123") in subject.checkpoint.source
    assert subject.estimate().weights == ELEMENTS * 2


def test_hub_id_not_on_disk_asks_for_a_path_or_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError) as err:
        checkpoint.locate("acme/absent-7b", {})
    text = str(err.value)
    for part in ("acme/absent-7b is not on this host", "hf download acme/absent-7b", "size_hint"):
        assert part in text
    with pytest.raises(CheckpointError, match="does not exist on this host"):
        checkpoint.locate(str(tmp_path / "no-such-dir"), {})


HINT = """
[models.a]
model = "acme/absent-7b"
port = 8001
max_model_len = 1000
[models.a.size_hint]
weights_gib = 2.5
num_hidden_layers = 3
hidden_size = 256
intermediate_size = 640
vocab_size = 1000
num_attention_heads = 4
num_key_value_heads = 2
"""


def test_size_hint_when_absent_and_files_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    hinted = load_subject(parse_config(HINT), "a", *A100).estimate()
    assert hinted.weights == int(2.5 * GIB) and not hinted.exact_weights
    assert hinted.kv_bytes_per_token == 1536
    local = write_llama(tmp_path / "m")
    on_disk = load_subject(parse_config(HINT.replace("acme/absent-7b", str(local))), "a", *A100)
    assert on_disk.estimate().weights == ELEMENTS * 2


def test_size_hint_and_planning_settings_are_validated() -> None:
    bad = HINT.replace("num_hidden_layers", "num_hidden_layer")
    bad = bad.replace("max_model_len = 1000", "max_model_len = 1000\nguaranteed_seqs = 0")
    with pytest.raises(ConfigError) as err:
        parse_config(bad)
    assert err.value.errors == [
        "models.a.guaranteed_seqs: Input should be greater than 0",
        "models.a.size_hint.num_hidden_layers: Field required",
        "models.a.size_hint.num_hidden_layer: unknown setting (did you mean 'num_hidden_layers'?)",
    ]


def test_malformed_safetensors_names_the_file(tmp_path: Path) -> None:
    directory = write_llama(tmp_path / "m")
    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: the safetensors header"):
        checkpoint.read(directory)


def test_advice_max_model_len_is_the_exact_boundary(tmp_path: Path) -> None:
    ck = checkpoint.read(write_llama(tmp_path / "m", max_positions=1 << 20))
    subject = Subject(ck, settings(max_model_len=1_000_000), 1, *A100)
    slice_bytes = 1 * GIB
    assert not subject.estimate().fits(slice_bytes)
    longest = longest_max_model_len(subject, slice_bytes)
    assert longest is not None and longest % 16 == 0
    assert subject.with_settings(max_model_len=longest).estimate().fits(slice_bytes)
    assert not subject.with_settings(max_model_len=longest + 16).estimate().fits(slice_bytes)
    changes = changes_to_fit(subject, slice_bytes)
    assert changes[0] == f"max_model_len = {longest}"
    assert 'kv_cache_dtype = "fp8" (halves the KV cache)' not in changes  # not enough alone
