"""How long `mig-orchestrator layout` takes to plan classes of 8 to 56 students on 8 GPUs.

Students cycle through four model sizes (size hints, so no files are read); each run plans from
scratch in a fresh process-level cache state as far as the planner's caches allow (the per GPU
model layout tables are built once per process and reported apart). Asserts nothing.

    .venv/bin/python -m tests.perf.layout_search
"""

from __future__ import annotations

import os
import time

from orchestrator.config import parse_config
from orchestrator.gpu.mig_profiles import GPU_MODELS
from orchestrator.layout import geometry
from orchestrator.layout.pack import plan_layout
from orchestrator.layout.targets import synthetic

# weights GiB, layers, hidden, intermediate, kv heads: a 3B, 8B, 9B and 32B-AWQ-like model.
SIZES = ((3.0, 28, 3584, 18944, 4), (8.0, 32, 4096, 14336, 8), (16.5, 48, 4096, 11008, 4),
         (30.0, 64, 5120, 27648, 8))  # fmt: skip


def class_config(students: int) -> str:
    text = "[defaults]\ngpu_memory_utilization = 0.9\nmax_model_len = 8192\nmax_num_seqs = 32\n"
    for i in range(students):
        weights, layers, hidden, inter, kv = SIZES[i % len(SIZES)]
        text += (
            f'[models.s{i:02d}]\nmodel = "org/size{i % len(SIZES)}"\nport = {8001 + i}\n'
            f"[models.s{i:02d}.size_hint]\nweights_gib = {weights}\nnum_hidden_layers = {layers}\n"
            f"hidden_size = {hidden}\nintermediate_size = {inter}\nvocab_size = 128256\n"
            f"num_attention_heads = 32\nnum_key_value_heads = {kv}\n"
        )
    return text


def main() -> None:
    print(f"load: {os.getloadavg()}")
    gpu = GPU_MODELS["h100-80gb"]
    started = time.perf_counter()
    geometry.best_layouts(gpu)
    tables = time.perf_counter() - started
    print(f"layout tables for {gpu.label}: {tables:.3f} s (built once per process)")
    for students in (8, 16, 32, 40, 56):
        cfg = parse_config(class_config(students))
        started = time.perf_counter()
        plan = plan_layout(cfg, synthetic(gpu, 8))
        seconds = time.perf_counter() - started
        used = sum(1 for g in plan.gpus if g.used)
        print(f"{students:3d} students: {seconds:6.2f} s, {used} GPUs used, fits: {plan.feasible}")
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
