"""Prometheus scrape: what one GET /metrics costs the daemon with 56 ready engines.

Run: .venv/bin/python -m tests.perf.daemon_metrics_scrape [--scrapes 20]
Each scrape makes the daemon fetch all 56 engines' /metrics, relabel their series and add its own
model, slice and GPU series. Reported per scrape: wall time and the daemon's CPU (psutil). The
stand-in's /metrics page is short (~26 lines; vLLM's runs to ~400), so the relabelling share is
smaller here than with real engines. No target was set; a scrape should not stall the API.
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx
import psutil

from tests.perf._fleet import ENGINES, Fleet, load_avg, report, stats_ms

PAUSE_S = 0.3  # between scrapes, so each one finds an idle daemon


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scrapes", type=int, default=20)
    args = p.parse_args(argv)
    load_start = load_avg()
    walls, cpus = [], []
    with Fleet() as fleet:
        fleet.start()
        fleet.wait_control_plane()
        fleet.wait_all("ready", timeout=90)
        daemon = psutil.Process(fleet.pid)
        with httpx.Client(base_url=fleet.url, trust_env=False, timeout=30) as client:
            for _ in range(args.scrapes):
                time.sleep(PAUSE_S)
                cpu0, t0 = sum(daemon.cpu_times()[:2]), time.perf_counter()
                page = client.get("/metrics")
                walls.append(time.perf_counter() - t0)
                cpus.append(sum(daemon.cpu_times()[:2]) - cpu0)
                page.raise_for_status()
    answered = sum(
        1
        for line in page.text.splitlines()
        if line.startswith("mig_orchestrator_engine_scrape_up{") and line.endswith(" 1")
    )
    wall, cpu = stats_ms(walls), stats_ms(cpus)
    lines = page.text.count("\n")
    result = {
        "engines": ENGINES,
        "engines_scraped": answered,
        "page_lines": lines,
        "wall": wall,
        "daemon_cpu": cpu,
        "load_avg_start": load_start,
    }
    report(
        "daemon_metrics_scrape",
        result,
        f"GET /metrics with {ENGINES} engines ({answered} answered, {lines} lines): wall median "
        f"{wall['median_ms']} ms (p90 {wall['p90_ms']}), daemon CPU median {cpu['median_ms']} ms "
        "per scrape; no target set",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
