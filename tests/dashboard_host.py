"""A daemon for the dashboard tests: four stand-in engines on a MIG A100 plus a whole H100.

alice (3g.40gb) and bob (2g.20gb) serve, each with a student token; carol (1g.10gb) fails at start
with a vLLM-like error; dave has the whole H100, the one GPU whose utilisation NVML reports.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.daemon_harness import TOPOLOGIES, Daemon, free_ports, write_secret

ADMIN_TOKEN = "dash-admin-token"
STUDENT_TOKENS = {"alice": "dash-alice-token", "bob": "dash-bob-token"}
CAROL_ERROR = (
    "ValueError: The model's max seq len (32768) is larger than the maximum number of tokens "
    "that can be stored in KV cache (9456). Try increasing `gpu_memory_utilization` or "
    "decreasing `max_model_len` when initializing the engine."
)
PROMPT = "You are a helpful coding tutor. " * 6 + "Explain quicksort in Python."


def mixed_topology(path: Path) -> Path:
    """The shipped a100-mixed GPU, then the shipped whole H100 as GPU 1."""
    h100 = (TOPOLOGIES / "h100-whole.toml").read_text().split("[[gpu]]", 1)[1]
    path.write_text((TOPOLOGIES / "a100-mixed.toml").read_text() + "\n[[gpu]]" + h100)
    return path


def dashboard_daemon(root: Path) -> Daemon:
    """Not yet started; engine ports are free ones, the control plane needs the admin token."""
    admin = write_secret(root / "admin.token", ADMIN_TOKEN + "\n")
    tokens = {n: write_secret(root / f"{n}.token", t + "\n") for n, t in STUDENT_TOKENS.items()}
    ports = dict(zip(("alice", "bob", "carol", "dave"), free_ports(4), strict=True))

    def model(name: str, **kw: object) -> dict[str, object]:
        return {"model": "stand-in", "port": ports[name], "host": "127.0.0.1", **kw}

    d = Daemon(
        root,
        {
            "alice": model(
                "alice",
                student="alice",
                profile="3g.40gb",
                token_file=str(tokens["alice"]),
                served_model_name="qwen-coder",
                env={"STANDIN_TOKEN_DELAY": "0.004"},
            ),
            "bob": model("bob", student="bob", profile="2g.20gb", token_file=str(tokens["bob"])),
            "carol": model(
                "carol", student="carol", profile="1g.10gb", env={"STANDIN_FAIL_START": CAROL_ERROR}
            ),
            "dave": model("dave", student="dave", slice="1"),
        },
        orchestrator={
            "admin_token_file": str(admin),
            "max_restarts": 1,
            "backoff_initial_s": 0.2,
        },
        topology=mixed_topology(root / "dashboard-host.toml"),
    )
    d.token = ADMIN_TOKEN
    return d


def send_traffic(d: Daemon, name: str, requests: int = 6) -> None:
    """A few completions that share a prefix, so throughput, TTFT and hit rate have values."""
    port = d.status(name)["port"]
    served = d.status(name)["served_model_name"]
    for i in range(requests):
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": served, "prompt": f"{PROMPT} variant {i}", "max_tokens": 24},
            timeout=10,
        )
        r.raise_for_status()
