"""`bench` against `vllm bench serve`, A B pairs on one engine: orchestrator/bench/vs_vllm.py.

    .venv/bin/python tests/perf/bench_vs_vllm.py --start-engine   # launches a tiny CPU engine
    .venv/bin/python tests/perf/bench_vs_vllm.py --target http://127.0.0.1:8000 \
        --served-model-name tiny --tokenizer ~/.cache/mig-orchestrator/models/tiny-llama-l2-s0
"""

from __future__ import annotations

import sys

from orchestrator.bench.vs_vllm import main

if __name__ == "__main__":
    sys.exit(main())
