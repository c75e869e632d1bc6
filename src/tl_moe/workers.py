"""Independent pieces of an analysis's work in forked worker processes: :class:`WorkerPool`.

A run's finalize is CPU work in small torch operations whose Python overhead holds the GIL, so a
second thread gains little, while a second *process* can use another core
(``benchmarks/bench_main_job.py`` measures what that gains on the main job). :class:`WorkerPool` runs each
submitted callable in its own child process forked when a slot frees (at most ``workers`` at once),
so a callable needs no pickling: it sees the parent's memory (stored activations included) as it
was at the fork, copy-on-write. Only its return value travels back, pickled through a pipe.

Every child uses ``threads // workers`` torch threads, at least 1: with no more workers than threads
the pool holds no more threads than the run's budget (more workers than threads hold one each). The
values are the ones the callable returns in the parent: each piece must depend only on its inputs
(seeded draws, no shared state it mutates), which is how the held-out arms and the paper protocol
are written. A task's exception is raised again in the parent
when its result is asked, with the child's traceback attached.

A task must not wait for another task of its own pool (it raises: the other runs elsewhere); a pool
handed into a task computes what that task submits in place.

Where fork is not available (not Linux), in a child of a pool, after CUDA has started, or with
``workers=1``, tasks run one after another in this process on ``result()``: same values, no
speed-up.

Example::

    with WorkerPool(2) as pool:
        paper = pool.submit(lambda: paper_protocol(moe, dense))
        held_out = study(moe, dense, untrained, pool=pool)  # the arms go to the same pool
        paper_outcome = paper.result()
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["TaskFailed", "WorkerPool", "can_fork", "run_tasks"]

T = TypeVar("T")

_IN_WORKER = False  # True in a child of a pool: a nested pool runs its tasks in place


def can_fork() -> bool:
    """Whether tasks may go to forked children here: Linux, not inside a worker, CUDA not started."""
    if _IN_WORKER or not sys.platform.startswith("linux"):
        return False
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    torch = sys.modules.get("torch")
    return not (torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


class TaskFailed(RuntimeError):
    """A task's exception could not travel back from its worker; the message holds its traceback."""


class _Task(Generic[T]):
    """One submitted callable: its state (queued, running, done) and its value or error."""

    def __init__(self, pool: WorkerPool, compute: Callable[[], T], name: str):
        self.pool, self.compute, self.name = pool, compute, name
        self.done, self.value, self.error = False, None, None
        self.process: Any = None
        self.receiver: Any = None

    def result(self) -> T:
        """The callable's value (waits for it; runs it here when the pool does not fork)."""
        while not self.done:
            self.pool._advance(self)
        if self.error is not None:
            raise self.error
        return self.value


class WorkerPool:
    """At most ``workers`` submitted callables running at once, each in a forked child (see the module).

    Args:
        workers: processes at once; 1 runs every task in this process when its result is asked.
        threads: the thread budget the children share (default: torch's current thread count).
    """

    def __init__(self, workers: int = 1, threads: int | None = None):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer; got {workers!r}.")
        self.workers = workers if can_fork() else 1
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        self.threads_per_worker = max(1, threads // self.workers)
        self._queued: deque[_Task] = deque()
        self._running: list[_Task] = []
        self._closed = False

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def submit(self, compute: Callable[[], T], name: str = "task") -> _Task[T]:
        """Queue ``compute`` (no arguments); ``.result()`` on the returned handle gives its value."""
        if self._closed:
            raise RuntimeError(f"this WorkerPool is closed; {name} was not submitted.")
        task = _Task(self, compute, name)
        self._queued.append(task)
        self._start_ready()
        return task

    def close(self) -> None:
        """Stop the children still running and drop the queued tasks: asking their results raises."""
        self._closed = True
        for task in self._running:
            if task.process.is_alive():
                task.process.terminate()
            task.process.join()
            task.receiver.close()
        for task in [*self._running, *self._queued]:
            task.done, task.compute = True, None
            task.error = RuntimeError(f"the WorkerPool was closed before {task.name} finished.")
        self._running.clear()
        self._queued.clear()

    @property
    def forks(self) -> bool:
        """Whether tasks go to children: more than one worker, and this is not itself a worker (a
        pool handed into a task computes there, in place)."""
        return self.workers > 1 and not _IN_WORKER

    # -------------------------------------------------------------------------------- scheduling
    def _start_ready(self) -> None:
        if not self.forks:
            return  # run lazily, in order, in this process
        while self._queued and len(self._running) < self.workers:
            self._fork(self._queued.popleft())

    def _fork(self, task: _Task) -> None:
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        with warnings.catch_warnings():  # Python >= 3.12 warns on fork in a threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            siblings = [other.receiver for other in self._running]  # the child must not hold their pipes
            # The parent-death signal follows the forking *thread*: only the main thread's children use it.
            main = threading.current_thread() is threading.main_thread()
            process = context.Process(
                target=_child,
                args=(task.compute, sender, self.threads_per_worker, siblings, os.getpid(), main),
                daemon=True,
            )
            process.start()
        sender.close()
        task.process, task.receiver = process, receiver
        self._running.append(task)

    def _advance(self, wanted: _Task) -> None:
        """Make progress towards ``wanted``: run it here (no fork), or collect the next child to end."""
        if not self.forks:
            if wanted not in self._queued:  # a worker's copy of the pool: the task runs elsewhere
                raise RuntimeError(
                    f"{wanted.name} is not this process's to compute: a task cannot wait for another task "
                    "of the pool that runs it."
                )
            for task in list(self._queued):  # every earlier task first: the order of submission
                self._queued.popleft()
                _run_here(task)
                if task is wanted:
                    return
            return
        if not self._running:
            self._start_ready()
        ready = multiprocessing.connection.wait([task.receiver for task in self._running])
        for task in [t for t in self._running if t.receiver in ready]:
            self._collect(task)
        self._start_ready()

    def _collect(self, task: _Task) -> None:
        try:
            status, payload, text = pickle.loads(task.receiver.recv_bytes())
        except EOFError:
            status, payload, text = "lost", None, ""
        task.process.join()
        task.receiver.close()
        self._running.remove(task)
        task.done, task.compute = True, None
        if status == "ok":
            task.value = payload
            return
        code = task.process.exitcode
        if text:
            failure = TaskFailed(f"{task.name} failed in a worker process:\n{text}")
        elif code is not None and code < 0:
            failure = TaskFailed(
                f"the worker of {task.name} was killed by signal {-code} before it sent a result (out of "
                "memory? Run with one worker, --workers 1, to compute it in the main process)."
            )
        else:
            failure = TaskFailed(f"the worker of {task.name} ended without a result (exit code {code}).")
        if payload is None:
            task.error = failure
        else:
            payload.__cause__ = failure  # the child's traceback, printed above the re-raised error
            task.error = payload


def _run_here(task: _Task) -> None:
    try:
        task.value = task.compute()
    except Exception as error:  # noqa: BLE001 (kept for result(), as a child's would be)
        task.error = error
    task.done, task.compute = True, None


def _child(
    compute: Callable[[], Any], sender: Any, threads: int, siblings: list, parent: int, death_signal: bool
) -> None:
    """A worker's whole life: limit its threads, compute, send ``(status, value or error, traceback)``
    pickled as bytes (plain pickle: no shared-memory handles that would outlive this process), exit."""
    global _IN_WORKER
    _IN_WORKER = True
    # Ctrl-C reaches the whole process group: the parent stops the children (close()), so a child
    # ignores it rather than printing a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent, death_signal)
    for receiver in siblings:
        receiver.close()
    import torch

    torch.set_num_threads(threads)
    try:
        value = compute()
    except Exception as error:  # noqa: BLE001 (sent to the parent, raised there)
        text = traceback.format_exc()
        try:
            message = pickle.dumps(("error", error, text))
            pickle.loads(message)  # an exception that pickles but does not rebuild travels as text
        except Exception:  # noqa: BLE001
            message = pickle.dumps(("error", None, text))
    else:
        try:
            message = pickle.dumps(("ok", value, ""))
        except Exception as error:  # noqa: BLE001
            text = f"its value ({type(value).__name__}) cannot be sent back from the worker: {error}"
            message = pickle.dumps(("error", None, text))
    sender.send_bytes(message)
    sender.close()
    for stream in (sys.stdout, sys.stderr):  # what the task printed (progress bars) before os._exit
        stream.flush()
    os._exit(0)  # no atexit handlers or finalizers of the parent's objects in the child


def _die_with(parent: int, death_signal: bool) -> None:
    """End this child when its parent dies (SIGKILL, the out-of-memory killer), rather than wait forever
    on a pipe nobody reads: Linux's parent-death signal (only for a child of the main thread, since the
    signal comes when the forking thread ends), and a check that the parent is still there."""
    if death_signal:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the signal was set up
        os._exit(1)


def run_tasks(tasks: Sequence[Callable[[], T]], workers: int = 1, threads: int | None = None) -> list[T]:
    """The values of ``tasks`` (callables without arguments), in their order, computed by a
    :class:`WorkerPool` of ``workers`` processes."""
    with WorkerPool(workers, threads) as pool:
        handles = [pool.submit(task, f"task {i}") for i, task in enumerate(tasks)]
        return [handle.result() for handle in handles]
