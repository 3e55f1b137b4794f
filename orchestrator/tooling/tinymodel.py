"""Build a random-weight Llama with a locally trained tokenizer, fully offline.

Two shapes: `tiny` (a few MB, for CPU tests) and `llama-1b` (16 layers, hidden 2048, 16 heads of
128, 0.83 B parameters, 1.54 GiB in bf16: a realistic GPU workload, the shape the H200 numbers
in docs/gpu-results.md were measured with). Standalone on purpose: it runs under the engine's
python (torch, transformers, tokenizers), which lacks the orchestrator's dependencies. Module
level imports only the stdlib, so the daemon side can import it for `is_built` and the constants.
Usage: python tinymodel.py OUT_DIR [--shape tiny|llama-1b] [--seed N] [--layers N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Bump when the layout or the architecture changes so cached builds get rebuilt.
FORMAT_VERSION = 1
MARKER = "tinymodel.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

MAX_POSITIONS = 4096


@dataclass(frozen=True)
class Shape:
    hidden: int
    head_dim: int
    intermediate: int
    layers: int  # the default; --layers overrides it

    @property
    def heads(self) -> int:
        return self.hidden // self.head_dim


SHAPES = {
    # vLLM's CPU attention rejects small head sizes (16 crashes); 64 works everywhere.
    "tiny": Shape(hidden=128, head_dim=64, intermediate=256, layers=2),
    # TinyLlama-like widths: GEMMs and KV traffic of a real small model, with the tiny tokenizer
    # (vocab 2048) so detokenizing random ids stays cheap and valid.
    "llama-1b": Shape(hidden=2048, head_dim=128, intermediate=5632, layers=16),
}
TOKENIZER_TARGET_VOCAB = 2048

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOT = "<|eot_id|>"
PAD = "<|pad|>"
HEADER_START = "<|start_header_id|>"
HEADER_END = "<|end_header_id|>"
SPECIAL_TOKENS = (BOS, EOS, EOT, PAD, HEADER_START, HEADER_END)

# Llama-3-shaped template so chat requests exercise the same rendering path as real course models.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# Training text: plain English plus the code and agent-loop vocabulary the course prompts use, so
# prompts tokenize into word-sized pieces rather than single bytes.
CORPUS = """\
You are a helpful coding assistant. Read the task, plan the change, write the code, run the tests.
The student asks a question about the program and the assistant answers with a short explanation.
Summarize the following text in one sentence. Translate the sentence into French and German.
Explain what this function does, then suggest a better name for the variable and fix the bug.
You are an autonomous agent working in a loop: read PROMPT.md, pick the next item from the TODO
list, implement it, run the test suite, commit the result, update the plan and repeat until done.
The build failed. The test failed with an AssertionError. The error says the file is missing.
Fix the failing test without changing the expected output. Keep the change small and explain why.
def fibonacci(n: int) -> int:
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

class Stack:
    def __init__(self) -> None:
        self.items: list[int] = []

    def push(self, item: int) -> None:
        self.items.append(item)

    def pop(self) -> int:
        return self.items.pop()

import json
import os
from pathlib import Path

def load_config(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)

for index, value in enumerate(values):
    if value is None:
        continue
    print(f"{index}: {value}")

try:
    result = compute(data)
except ValueError as error:
    raise RuntimeError("compute failed") from error

async def fetch(client, url):
    response = await client.get(url, timeout=10)
    response.raise_for_status()
    return response.json()

#include <stdio.h>
int main(int argc, char **argv) { printf("hello, world\\n"); return 0; }
function add(a, b) { return a + b; }
const items = list.map((x) => x * 2).filter((x) => x > 10);
SELECT name, count(*) FROM students WHERE grade > 3 GROUP BY name ORDER BY name;
git status && git add src/main.py && git commit -m "Fix the parser" && git push
pip install -e . && pytest -q tests/unit && ruff check . && mypy src
GPU memory, MIG slice, prefix cache, KV cache, tokens per second, latency, throughput, batch size.
The model generates text one token at a time; the server streams each token back to the client.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 100 128 256 512 1000 1024 2048 4096.
Questions: what, why, how, when, where, which, who? Answers: yes, no, maybe, it depends.
"""


def is_built(out_dir: Path, seed: int, layers: int, shape: str = "tiny") -> bool:
    """True when out_dir holds a complete build made with these parameters."""
    try:
        marker = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    expected = {"format": FORMAT_VERSION, "seed": seed, "layers": layers}
    if not isinstance(marker, dict) or any(marker.get(k) != v for k, v in expected.items()):
        return False
    # Builds from before shapes existed carry no "shape": they are tiny.
    if marker.get("shape", "tiny") != shape:
        return False
    return all((out_dir / name).is_file() for name in REQUIRED_FILES)


def _train_tokenizer():  # -> tokenizers.Tokenizer (engine venv only)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    # Byte-level BPE encodes any text without unknown tokens, like the Llama 3 / GPT-2 tokenizers.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_TARGET_VOCAB,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tokenizer


def _write_tokenizer(tokenizer, out_dir: Path) -> None:
    tokenizer.save(str(out_dir / "tokenizer.json"))
    # Written by hand so the chat template lives in tokenizer_config.json whatever the
    # transformers version would choose (newer ones split it into chat_template.jinja).
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOT,
        "pad_token": PAD,
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": EOT, "pad_token": PAD}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _write_model(
    out_dir: Path,
    tokenizer_size: int,
    token_ids: dict[str, int],
    seed: int,
    layers: int,
    shape: Shape,
):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    # Padding the embedding to a multiple of 64 keeps vocab >= tokenizer size with tidy shapes.
    vocab_size = -(-tokenizer_size // 64) * 64
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        head_dim=shape.head_dim,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=token_ids[BOS],
        eos_token_id=token_ids[EOT],
        pad_token_id=token_ids[PAD],
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
        dtype="bfloat16",
    )
    torch.manual_seed(seed)
    # A GPU initialises 0.8 B random weights in a second; a CPU needs a minute.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids[BOS],
        eos_token_id=[token_ids[EOT], token_ids[EOS]],
        pad_token_id=token_ids[PAD],
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)


def _make_readable(directory: Path) -> None:
    # mkdtemp and the safetensors writer create owner-only entries; the engine may run as another
    # user (a systemd service account), so apply the usual umask-derived modes instead.
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for entry in directory.iterdir():
        entry.chmod(0o666 & ~umask)


def build(out_dir: Path, seed: int = 0, layers: int | None = None, shape: str = "tiny") -> Path:
    """Build into out_dir atomically (a temp sibling renamed into place); reuse a valid build."""
    dims = SHAPES[shape]
    layers = dims.layers if layers is None else layers
    if is_built(out_dir, seed, layers, shape):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise SystemExit(f"tinymodel: refusing to overwrite {out_dir}: not a tiny-model directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = _train_tokenizer()
        _write_tokenizer(tokenizer, staging)
        token_ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
        _write_model(staging, tokenizer.get_vocab_size(), token_ids, seed, layers, dims)
        marker = {"format": FORMAT_VERSION, "seed": seed, "layers": layers, "shape": shape}
        (staging / MARKER).write_text(json.dumps(marker) + "\n")
        _make_readable(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, help="default: the shape's (tiny 2, llama-1b 16)")
    args = parser.parse_args(argv)
    if args.layers is not None and args.layers < 1:
        parser.error("--layers must be at least 1")
    out = build(args.out_dir.resolve(), seed=args.seed, layers=args.layers, shape=args.shape)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
