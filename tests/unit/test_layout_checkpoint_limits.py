"""The model reader under hostile model directories: FIFOs, devices, secrets, absurd numbers."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, parse_config
from orchestrator.layout import checkpoint
from orchestrator.layout.checkpoint import CheckpointError
from tests.safetensors_model import write_llama, write_safetensors


def _read_in_thread(directory: Path) -> BaseException | None:
    """checkpoint.read in a thread: a hang fails the test instead of blocking the suite."""
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            checkpoint.read(directory)
            result.append(None)
        except BaseException as e:  # the test inspects whatever came out
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the reader hung"
    return result[0]


def test_a_fifo_as_config_json_is_refused_without_waiting(tmp_path: Path) -> None:
    model = write_llama(tmp_path / "m")
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    err = _read_in_thread(model)
    assert isinstance(err, CheckpointError) and "not a regular file" in str(err)


def test_a_fifo_as_safetensors_is_refused_without_waiting(tmp_path: Path) -> None:
    model = write_llama(tmp_path / "m")
    for f in model.glob("*.safetensors"):
        f.unlink()
    os.mkfifo(model / "model.safetensors")
    err = _read_in_thread(model)
    assert isinstance(err, CheckpointError) and "not a regular file" in str(err)


def test_config_json_pointing_at_dev_zero_is_refused(tmp_path: Path) -> None:
    model = write_llama(tmp_path / "m")
    (model / "config.json").unlink()
    (model / "config.json").symlink_to("/dev/zero")
    err = _read_in_thread(model)
    assert isinstance(err, CheckpointError) and "not a regular file" in str(err)


def test_an_oversized_config_json_is_refused_unread(tmp_path: Path) -> None:
    model = write_llama(tmp_path / "m")
    with (model / "config.json").open("r+b") as f:
        f.truncate(64 * 1024**2)
    with pytest.raises(CheckpointError, match="larger than"):
        checkpoint.read(model)


def test_a_secret_linked_as_weights_never_reaches_the_message(tmp_path: Path) -> None:
    secret = tmp_path / "admin.token"
    secret.write_text("s3cr3t-admin-token-value\n")
    model = write_llama(tmp_path / "m")
    for f in model.glob("*.safetensors"):
        f.unlink()
    (model / "model.safetensors").symlink_to(secret)
    with pytest.raises(CheckpointError) as e:
        checkpoint.read(model)
    as_int = str(struct.unpack("<Q", secret.read_bytes()[:8])[0])
    assert as_int not in str(e.value) and "s3cr3t" not in str(e.value)


@pytest.mark.parametrize(
    "tensor",
    [
        {"dtype": "BF16", "shape": [-1, 1862 * 1024**3], "data_offsets": [0, 2]},
        {"dtype": "BF16", "shape": [4, "x"], "data_offsets": [0, 2]},
        {"dtype": "I8", "shape": [4], "data_offsets": [10, 2]},
        {"dtype": "BF16", "shape": [1 << 41, 1 << 41], "data_offsets": [0, 2]},
        {"dtype": "BF16", "shape": [True], "data_offsets": [0, 2]},
    ],
)
def test_absurd_tensor_numbers_are_refused(tmp_path: Path, tensor: dict[str, object]) -> None:
    model = write_llama(tmp_path / "m")
    for f in model.glob("*.safetensors"):
        f.unlink()
    header = json.dumps({"w": tensor}).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError, match="malformed header"):
        checkpoint.read(model)


def test_an_absurd_config_number_is_refused(tmp_path: Path) -> None:
    model = write_llama(tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg["num_hidden_layers"] = 10**30
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_hidden_layers is larger than"):
        checkpoint.read(model)


def test_a_huge_size_hint_is_a_config_error_not_an_overflow() -> None:
    text = """
[models.a]
model = "org/absent"
port = 19401
[models.a.size_hint]
weights_gib = 1e308
num_hidden_layers = 2
hidden_size = 64
intermediate_size = 128
vocab_size = 100
num_attention_heads = 2
"""
    with pytest.raises(ConfigError, match="weights_gib"):
        parse_config(text)


def test_a_well_formed_model_still_reads(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {"w": ("BF16", [4, 4])})
    (model / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 1,
                "hidden_size": 4,
                "num_attention_heads": 1,
                "vocab_size": 4,
            }
        )
    )
    assert checkpoint.read(model).float_elements == 16
