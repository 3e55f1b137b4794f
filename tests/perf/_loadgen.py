"""HTTP load generator for the control plane, run as its own process so it never shares a core's
event loop with what it measures: N keep-alive HTTP/1.1 clients on raw asyncio streams.

    python -m tests.perf._loadgen URL PATH --clients 100 --duration 10 [--rate-per-client R]

Without --rate-per-client each client sends its next request as soon as the previous answer is
read (closed loop: the throughput limit). With it, each client sends on a Poisson schedule of R
requests/s and latency counts from the scheduled send time, so a slow answer that delays the
next request is charged to that request too (no coordinated omission). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from urllib.parse import urlsplit


async def _one_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, int]:
    """Send one request and read the whole answer; returns (status, body bytes)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next(
        (
            int(v)
            for k, _, v in (ln.partition(b":") for ln in lines[1:])
            if k.lower() == b"content-length"
        ),
        None,
    )
    if length is None:
        raise RuntimeError("answer without Content-Length: chunked answers are not measured")
    await reader.readexactly(length)
    return status, length


async def _client(
    host: str,
    port: int,
    request: bytes,
    rate: float | None,
    until: float,
    seed: int,
    latencies: list[float],
    failures: list[str],
) -> int:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection(host, port)
    size = 0
    scheduled = loop.time() + (rng.uniform(0, 1 / rate) if rate else 0.0)
    try:
        while True:
            if rate:
                if scheduled > until:
                    break
                await asyncio.sleep(max(0.0, scheduled - loop.time()))
                t0 = scheduled
                scheduled += rng.expovariate(rate)
            else:
                t0 = loop.time()
                if t0 > until:
                    break
            try:
                status, size = await _one_request(reader, writer, request)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                # The server closed a keep-alive connection idle past its timeout (uvicorn: 5 s);
                # a real client reconnects and pays for it, so this request does too.
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                status, size = await _one_request(reader, writer, request)
            latencies.append(loop.time() - t0)
            if status != 200:
                failures.append(f"HTTP {status}")
    except (OSError, asyncio.IncompleteReadError, RuntimeError) as e:
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        writer.close()
    return size


async def run(url: str, path: str, clients: int, duration: float, rate: float | None) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()
    latencies: list[float] = []
    failures: list[str] = []
    loop = asyncio.get_running_loop()
    cpu0, t0 = time.process_time(), loop.time()
    sizes = await asyncio.gather(
        *(
            _client(host, port, request, rate, t0 + duration, i, latencies, failures)
            for i in range(clients)
        )
    )
    wall = loop.time() - t0
    cpu = time.process_time() - cpu0
    return {
        "latencies_s": latencies,
        "failures": failures[:10],
        "failed": len(failures),
        "requests": len(latencies),
        "wall_s": round(wall, 3),
        "achieved_rps": round(len(latencies) / wall, 1),
        "offered_rps": round(rate * clients, 1) if rate else None,
        "loadgen_cpu_fraction": round(cpu / wall, 3),
        "response_bytes": max(sizes),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("path")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rate-per-client", type=float, default=None)
    a = p.parse_args(argv)
    result = asyncio.run(run(a.url, a.path, a.clients, a.duration, a.rate_per_client))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
