"""Thread use: one budget shared by torch and every native thread pool, sized for a shared machine.

A run does two kinds of CPU work: torch's intra-op pool (the forward passes) and the BLAS /
OpenMP pools of NumPy, SciPy and scikit-learn (probing, statistics). Each pool defaults to one
thread per core and they do not know about each other or about other users of the machine; on a
busy machine that oversubscribes the cores and threads spin-wait on each other (issue 13
measured a 68 s run take 23 min at load 4-9 on 2 cores). :func:`set_threads` gives every pool the
same number, chosen by :func:`resolve_threads`:

1. the explicit ``threads`` argument (``--threads``), a positive integer, or ``"auto"``/None;
2. else ``TL_MOE_THREADS``, else ``OMP_NUM_THREADS`` (the first number of a nested list);
3. else the CPUs this process may use (affinity mask and cgroup CPU quota) minus the cores other
   processes keep busy (the integer part of the 1-minute load average), at least 1.

Call :func:`set_threads` once at the start of a job (the CLI does, from ``--threads``), or wrap
a block in :func:`limited_threads` to cap it and restore the previous settings afterwards.
See docs/RUNS.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tl_moe.errors import InputError

THREADS_ENV = "TL_MOE_THREADS"
"""Environment variable naming the thread budget of tl_moe runs (before ``OMP_NUM_THREADS``)."""

POOL_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
"""Variables read by native pools loaded later and by child processes (joblib workers)."""


class ThreadsError(InputError):
    """A thread count that is not a positive integer or ``"auto"``."""


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cfs_quota_us``) quota, if any."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def _busy_cores() -> int:
    try:
        return int(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def _parse(value: object, source: str) -> int | None:
    """A positive thread count from ``value``; None for ``"auto"`` / None / empty."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    count = None
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif isinstance(value, str) and value.strip().split(",")[0].strip().isdigit():
        count = int(value.strip().split(",")[0])
    if count is None or count < 1:
        raise ThreadsError(
            f"{source} {value!r} is not a thread count; accepted: a positive integer or 'auto'."
        )
    return count


def check_threads(threads: object) -> None:
    """Refuse a ``--threads`` value :func:`resolve_threads` would refuse (one rule for the CLI and API).

    Raises:
        ThreadsError: ``threads`` is not a positive integer, ``"auto"`` or None.
    """
    _parse(threads, "--threads")


def default_threads() -> int:
    """The thread budget when none is given: ``TL_MOE_THREADS``, ``OMP_NUM_THREADS``, else load-aware.

    The load-aware choice is :func:`available_cpus` minus the integer part of the 1-minute load
    average (cores other processes keep busy), at least 1: all cores on an idle machine, one
    thread on a saturated one, where more threads only wait on each other.
    """
    for variable in (THREADS_ENV, "OMP_NUM_THREADS"):
        count = _parse(os.environ.get(variable), f"${variable}=")
        if count is not None:
            return count
    cpus = available_cpus()
    return max(1, min(cpus, cpus - _busy_cores()))


def resolve_threads(threads: int | str | None = None) -> int:
    """The thread count to use: ``threads`` (a positive integer) or, for None / ``"auto"``, :func:`default_threads`.

    Raises:
        ThreadsError: ``threads`` is not a positive integer, ``"auto"`` or None.
    """
    count = _parse(threads, "--threads")
    return count if count is not None else default_threads()


def _limit_native_pools(count: int):
    """Limit the BLAS / OpenMP pools already loaded; returns a threadpoolctl handle (None if unavailable)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings threadpoolctl; without it only torch and env are set
        return None
    return threadpool_limits(limits=count)


def set_threads(threads: int | str | None = None) -> int:
    """Give torch, every loaded BLAS / OpenMP pool and later child processes the same thread budget.

    Sets ``torch.set_num_threads``, the inter-op pool when it has not started yet, the limits of
    the native pools loaded so far (threadpoolctl), and :data:`POOL_ENV_VARS` (for pools loaded
    later and for worker processes). Lasts for the process; see :func:`limited_threads` for a block.

    Returns:
        The number of threads applied.
    """
    import torch

    count = resolve_threads(threads)
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(count)
    except RuntimeError:  # only settable before the first inter-op parallel work
        pass
    _limit_native_pools(count)
    for variable in POOL_ENV_VARS:
        os.environ[variable] = str(count)
    return count


@contextmanager
def limited_threads(threads: int | str | None = None) -> Iterator[int]:
    """Within the block, torch and the native pools use ``threads`` (resolved as in :func:`set_threads`).

    Restores torch's thread count, the native pools' limits and the environment on exit. Yields
    the number of threads applied.
    """
    import torch

    count = resolve_threads(threads)
    previous_torch = torch.get_num_threads()
    previous_env = {variable: os.environ.get(variable) for variable in POOL_ENV_VARS}
    limits = _limit_native_pools(count)
    torch.set_num_threads(count)
    for variable in POOL_ENV_VARS:
        os.environ[variable] = str(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous_torch)
        if limits is not None:
            limits.restore_original_limits()
        for variable, value in previous_env.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


def thread_report() -> dict[str, object]:
    """What each pool uses now: torch intra-/inter-op threads and every native pool (for run metadata)."""
    import torch

    report: dict[str, object] = {
        "torch_intra_op": torch.get_num_threads(),
        "torch_inter_op": torch.get_num_interop_threads(),
        "available_cpus": available_cpus(),
    }
    try:
        from threadpoolctl import threadpool_info

        report["native_pools"] = [
            {
                "api": pool.get("internal_api"),
                "library": Path(pool.get("filepath", "")).name,
                "threads": pool.get("num_threads"),
            }
            for pool in threadpool_info()
        ]
    except ImportError:
        pass
    return report
