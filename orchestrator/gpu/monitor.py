"""`mig-orchestrator monitor`: sample GPU telemetry and per-slice memory, like `nvidia-smi dmon`.

One NVML session for the whole run; each sample is one Nvml.sample() call. On MIG-enabled GPUs
NVML reports no utilisation at all, so those columns say "n/a (MIG)", never a made-up 0.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from orchestrator.gpu.nvml import GpuSample, Nvml, NvmlError, SliceSample
from orchestrator.units import MIB

MIG_NA = "n/a (MIG)"
MIG_NOTE = (
    f"# {MIG_NA}: NVML gives no utilisation on MIG-enabled GPUs, for the GPU or per slice; "
    "power, temperature and clocks are the whole GPU's; --per-slice adds each slice's memory"
)

# (header, width, align) of the table; the last column (name) is left unpadded.
COLUMNS = (
    ("#time", 8, "<"),
    ("gpu", 3, ">"),
    ("mig", 3, "<"),
    ("sm%", len(MIG_NA), ">"),
    ("mem%", len(MIG_NA), ">"),
    ("pwr_W", 6, ">"),
    ("temp_C", 6, ">"),
    ("sm_MHz", 6, ">"),
    ("mem_MHz", 7, ">"),
    ("fb_used_MiB", 11, ">"),
    ("fb_total_MiB", 12, ">"),
    ("name", 0, "<"),
)
SEP = "  "

CSV_FIELDS = (
    "time",
    "kind",
    "gpu",
    "uuid",
    "name",
    "profile",
    "gi_id",
    "ci_id",
    "mig_enabled",
    "sm_util_pct",
    "mem_util_pct",
    "power_w",
    "temperature_c",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "memory_used_bytes",
    "memory_total_bytes",
)


def run(args: argparse.Namespace) -> int:
    """Sample until --count is reached or the user interrupts; exit code 1 if NVML fails."""
    try:
        with Nvml.open(args.topology) as nvml, _csv_writer(args.csv) as rows:
            _loop(nvml, args, sys.stdout, rows)
    except NvmlError as e:
        print(f"mig-orchestrator monitor: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(
            f"mig-orchestrator monitor: cannot write {args.csv}: {e.strerror or e}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _loop(nvml: Nvml, args: argparse.Namespace, out: IO[str], rows: Any) -> None:
    start = time.monotonic()
    n = 0
    while True:
        stamp = datetime.now().astimezone()
        samples = nvml.sample()
        if args.json:
            for s in samples:
                out.write(json.dumps({"time": stamp.isoformat(), **dataclasses.asdict(s)}) + "\n")
        else:
            if n == 0:
                out.write(header(mig=any(s.mig_enabled for s in samples)))
            out.write("".join(table_rows(stamp, s, args.per_slice) for s in samples))
        out.flush()
        if rows is not None:
            for s in samples:
                rows.writerows(csv_rows(stamp, s, args.per_slice))
        n += 1
        if args.count and n >= args.count:
            return
        # Ticks on a fixed schedule, so slow samples don't make the interval drift.
        time.sleep(max(0.0, start + n * args.interval - time.monotonic()))


@contextmanager
def _csv_writer(path: Path | None) -> Iterator[Any]:
    if path is None:
        yield None
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        yield _FlushingWriter(writer, f)


class _FlushingWriter:
    """Flush after each sample, so a monitor stopped with ^C leaves a complete CSV."""

    def __init__(self, writer: csv.DictWriter[str], f: IO[str]) -> None:
        self._writer, self._file = writer, f

    def writerows(self, rows: list[dict[str, Any]]) -> None:
        self._writer.writerows(rows)
        self._file.flush()


def header(mig: bool) -> str:
    """The table header, plus the note on utilisation when some GPU has MIG on."""
    line = SEP.join(f"{h:{a}{w}}" if w else h for h, w, a in COLUMNS)
    return line + "\n" + (MIG_NOTE + "\n" if mig else "")


def table_rows(stamp: datetime, s: GpuSample, per_slice: bool) -> str:
    """One GPU's row, then (with per_slice) one memory row per slice."""
    util = MIG_NA if s.mig_enabled else None
    cells = (
        stamp.strftime("%H:%M:%S"),
        s.index,
        "on" if s.mig_enabled else "off",
        util or _cell(s.sm_util_pct),
        util or _cell(s.mem_util_pct),
        _cell(s.power_w, "{:.1f}"),
        _cell(s.temperature_c),
        _cell(s.sm_clock_mhz),
        _cell(s.mem_clock_mhz),
        s.memory_used_bytes // MIB,
        s.memory_total_bytes // MIB,
        s.name,
    )
    lines = [
        SEP.join(
            f"{c:{a}{w}}" if w else str(c) for c, (_, w, a) in zip(cells, COLUMNS, strict=True)
        )
    ]
    if per_slice and s.mig_enabled:
        lines += [_slice_row(stamp, s.index, sl) for sl in s.slices]
    return "\n".join(lines) + "\n"


def _slice_row(stamp: datetime, gpu: int, sl: SliceSample) -> str:
    """A slice's memory under its GPU; its label spans the columns NVML can't fill per slice."""
    head = COLUMNS[:3]
    middle = COLUMNS[3:9]
    label_width = sum(w for _, w, _ in middle) + len(SEP) * (len(middle) - 1)
    label = f"└ {sl.profile} gi {sl.gi_id} ci {sl.ci_id}"
    cells = [
        f"{stamp:%H:%M:%S}",
        f"{gpu:>{head[1][1]}}",
        " " * head[2][1],
        f"{label:<{label_width}}",
    ]
    cells += [f"{sl.memory_used_bytes // MIB:>11}", f"{sl.memory_total_bytes // MIB:>12}", sl.uuid]
    return SEP.join(cells)


def _cell(value: float | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def csv_rows(stamp: datetime, s: GpuSample, per_slice: bool) -> list[dict[str, Any]]:
    """CSV rows for one GPU sample: the GPU, then (with per_slice) each slice; blanks = n/a."""
    gpu = {
        "time": stamp.isoformat(),
        "kind": "gpu",
        "gpu": s.index,
        "uuid": s.uuid,
        "name": s.name,
        "mig_enabled": s.mig_enabled,
        "sm_util_pct": s.sm_util_pct,
        "mem_util_pct": s.mem_util_pct,
        "power_w": s.power_w,
        "temperature_c": s.temperature_c,
        "sm_clock_mhz": s.sm_clock_mhz,
        "mem_clock_mhz": s.mem_clock_mhz,
        "memory_used_bytes": s.memory_used_bytes,
        "memory_total_bytes": s.memory_total_bytes,
    }
    rows = [gpu]
    if per_slice and s.mig_enabled:
        rows += [
            {
                "time": gpu["time"],
                "kind": "slice",
                "gpu": s.index,
                "uuid": sl.uuid,
                "name": s.name,
                "profile": sl.profile,
                "gi_id": sl.gi_id,
                "ci_id": sl.ci_id,
                "mig_enabled": True,
                "memory_used_bytes": sl.memory_used_bytes,
                "memory_total_bytes": sl.memory_total_bytes,
            }
            for sl in s.slices
        ]
    return rows
