"""How a benchmark reports: the machine it ran on first, its figures last, in one block."""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import sys
from collections.abc import Sequence


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model, core count and the load averages (other processes share the CPU)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, load {load} (1/5/15 min)"


def start(title: str) -> None:
    """Print what runs where, before any measurement."""
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"# {title}", flush=True)
    print(f"# {now} · python {platform.python_version()} · {machine()}", flush=True)
    print("# command: python " + " ".join(sys.argv), flush=True)


def figures(title: str, lines: Sequence[tuple[str, str]]) -> None:
    """The benchmark's results, printed last: ``name: value`` lines under a title."""
    width = max(len(name) for name, _ in lines)
    print(f"\n== {title} ==")
    print(f"machine: {machine()}")
    for name, value in lines:
        print(f"{name.ljust(width)}  {value}")
    sys.stdout.flush()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"
