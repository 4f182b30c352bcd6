"""The benchmark's machinery: rows and tables, round-robin timing, peak memory, the
machine's description. What the rows measure is in bench_cases.py and bench_dataset.py,
which tables exist in bench_tables.py; bench.py's docstring says how timing and memory
are measured, and why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

import torch
from compare_runner import cpu_peak_mb

if TYPE_CHECKING:  # only for the annotations: bench_cases imports nothing from here
    from bench_cases import Bench

#: bytes; glibc's mmap threshold in the memory subprocesses (see bench.py, "Peak memory")
MMAP_THRESHOLD = 64 * 1024
#: the script that the memory and data-set subprocesses start (with internal options)
BENCH_SCRIPT = Path(__file__).resolve().parent / "bench.py"


@dataclass
class Row:
    """One row of a table: ``make(bench)`` builds the call that is timed (once, before
    the rounds); ``timed=False`` rows only get a peak-memory figure."""

    key: str  # identifies the case, also in the memory subprocess
    label: str
    make: Callable[["Bench"], Callable[[], None]]
    timed: bool = True


@dataclass
class Table:
    """Rows timed together, round-robin, each against the ``reference`` row."""

    title: str
    reference: str  # key of the row the ratios are taken against
    reference_text: str
    rows: List[Row]


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ratio(values: List[float], references: List[float]) -> float:
    """The median over rounds of (value / reference of the same round).

    Raises:
        statistics.StatisticsError: when there is no round."""
    return statistics.median(v / r for v, r in zip(values, references))


def time_table(
    bench: "Bench", table: Table, repeats: int, warmup: int, clock: Callable[[], float] = time.perf_counter
) -> Dict[str, dict]:
    """Times (s) of each timed row over ``repeats`` round-robin rounds (the order rotates
    each round), and the ratios to the reference row of the same round: per row key,
    ``{"seconds": median, "ratio": median ratio, "all": every round's time}``."""
    rows = [row for row in table.rows if row.timed]
    calls = {row.key: row.make(bench) for row in rows}
    for call in calls.values():
        for _ in range(warmup):
            call()
    synchronize(bench.device)
    times: Dict[str, List[float]] = {row.key: [] for row in rows}
    for round_index in range(repeats):
        shift = round_index % len(rows)
        for row in rows[shift:] + rows[:shift]:
            synchronize(bench.device)
            start = clock()
            calls[row.key]()
            synchronize(bench.device)
            times[row.key].append(clock() - start)
    reference = times[table.reference]
    return {
        key: {"seconds": statistics.median(values), "ratio": median_ratio(values, reference), "all": values}
        for key, values in times.items()
    }


def cpu_memory_supported() -> bool:
    """Whether this machine lets a process reset its peak resident size (Linux, /proc)."""
    return platform.system() == "Linux" and os.access("/proc/self/clear_refs", os.W_OK)


def measure_row_memory(bench: "Bench", row: Row) -> float:
    """MB added at the peak of one call of ``row`` (see bench.py, "Peak memory"): on CUDA
    torch's allocator statistics, on the CPU :func:`compare_runner.cpu_peak_mb`.

    Raises:
        OSError: on the CPU, where /proc/self/clear_refs cannot be written."""
    call = row.make(bench)
    if bench.device.type == "cuda":
        synchronize(bench.device)
        before = torch.cuda.memory_allocated(bench.device)
        torch.cuda.reset_peak_memory_stats(bench.device)
        call()
        synchronize(bench.device)
        return (torch.cuda.max_memory_allocated(bench.device) - before) / 2**20
    return cpu_peak_mb(call)


def memory_in_subprocess(row_key: str, args: argparse.Namespace) -> Optional[float]:
    """The peak MB of one call of the row ``row_key``, measured by ``bench.py
    --memory-row`` in a fresh process with glibc's mmap threshold fixed; None (and a
    note on stderr) when that process fails."""
    command = [
        sys.executable,
        str(BENCH_SCRIPT),
        "--memory-row",
        row_key,
        "--device",
        args.device,
        "--scorecam-channels",
        str(args.scorecam_channels),
        "--detection-size",
        str(args.detection_size),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        print(f"  (memory of {row_key} failed: {done.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def describe_machine(device: torch.device) -> str:
    """One line: the GPU and torch version, or the CPU, its cores, torch's threads and
    the load average."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, load average {load}; torch {torch.__version__}"
    )
