"""The machine a measurement ran on, recorded beside every timing the project reports.

Used by the main job (``results.json`` ``metadata.machine``) and by the benchmarks' results files, so
the README quotes each time with the CPUs, threads and load it was measured under.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_seconds() -> float:
    """CPU time (user + system), in seconds, of this process's threads and of its child processes that
    have ended and been waited for (a run's worker processes are, once their task is collected): the
    difference of two readings is a phase's CPU time, workers included."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def machine(threads: int | None, load_at_start: float | None) -> dict[str, Any]:
    """CPUs (``os.cpu_count()``), torch threads used, the load average at the start and now, torch's
    version, the device and the platform."""
    return {
        "cpus": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "load average (1 min) at the start": load_at_start,
        "load average (1 min) at the end": load_average(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
    }
