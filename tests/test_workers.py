"""WorkerPool: tasks in forked children give the values computed in this process, in order; errors come
back with the child's traceback; a nested pool and workers=1 compute in place; and the held-out study's
arms and records are the same with a pool of two workers as without one."""

from __future__ import annotations

import functools
import os
import time

import numpy as np
import pytest
import torch

from tl_moe.workers import TaskFailed, WorkerPool, can_fork, run_tasks

forks = pytest.mark.skipif(not can_fork(), reason="worker processes are forked on Linux only")


def _square(i: int) -> int:
    return i * i


@forks
def test_two_workers_return_each_tasks_value_in_submission_order_from_child_processes():
    tasks = [lambda i=i: (_square(i), os.getpid()) for i in range(7)]
    values = run_tasks(tasks, workers=2)
    assert [v for v, _ in values] == [i * i for i in range(7)]
    assert all(pid != os.getpid() for _, pid in values)  # computed in children, not here


def test_one_worker_computes_in_this_process_in_submission_order():
    order: list[int] = []
    with WorkerPool(1) as pool:
        handles = [pool.submit(lambda i=i: order.append(i) or i) for i in range(4)]
        assert order == []  # nothing runs before a result is asked
        assert handles[2].result() == 2 and order == [0, 1, 2]  # the earlier tasks first
        assert [h.result() for h in handles] == [0, 1, 2, 3] and order == [0, 1, 2, 3]


@forks
def test_a_childs_tensor_value_and_its_thread_share_come_back():
    value = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    [(copy, threads)] = run_tasks([lambda: (value * 2, torch.get_num_threads())], workers=2, threads=4)
    assert torch.equal(copy, value * 2)
    assert threads == 2  # 4 threads shared by 2 workers


@forks
def test_a_tasks_error_is_raised_again_with_its_type_and_the_childs_traceback():
    def fails():
        raise KeyError("no such concept: planted_42")

    with WorkerPool(2) as pool:
        ok, bad = pool.submit(lambda: 1), pool.submit(fails, "the failing task")
        assert ok.result() == 1
        with pytest.raises(KeyError, match="planted_42") as raised:
            bad.result()
    assert isinstance(raised.value.__cause__, TaskFailed)
    assert "in fails" in str(raised.value.__cause__)  # the child's traceback, down to the raising line


@forks
def test_an_unpicklable_value_a_killed_and_an_exited_worker_name_the_task():
    with WorkerPool(2) as pool:
        unpicklable = pool.submit(lambda: lambda: None, "task returning a lambda")
        killed = pool.submit(lambda: os.kill(os.getpid(), 9), "task killed")
        exited = pool.submit(lambda: os._exit(3), "task that exits")
        with pytest.raises(
            TaskFailed, match=r"task returning a lambda failed in a worker process:\n.*cannot be sent back"
        ):
            unpicklable.result()
        with pytest.raises(
            TaskFailed, match=r"the worker of task killed was killed by signal 9 .*out of memory"
        ):
            killed.result()
        with pytest.raises(
            TaskFailed, match=r"the worker of task that exits ended without a result \(exit code 3\)\.$"
        ):
            exited.result()


def test_a_closed_pool_refuses_new_tasks_and_its_unfinished_tasks_raise():
    for workers in (1, 2):
        with WorkerPool(workers) as pool:
            handle = pool.submit(lambda: 1, "the unasked task")
        with pytest.raises(RuntimeError, match="closed before the unasked task finished"):
            handle.result()
        with pytest.raises(RuntimeError, match="is closed; late task was not submitted"):
            pool.submit(lambda: 2, "late task")


@forks
def test_the_parents_pool_used_inside_a_task_computes_there():
    with WorkerPool(2) as pool:
        inner = pool.submit(lambda: pool.submit(os.getpid).result())
        assert inner.result() != os.getpid()  # computed in the worker, in place


@forks
def test_workers_end_when_their_parent_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            import torch
            from tl_moe.workers import WorkerPool

            def big():
                time.sleep(1.0)
                return torch.zeros(1_000_000)  # 8 MB: more than a pipe holds

            pool = WorkerPool(2)
            handles = [pool.submit(big, f"task {i}") for i in range(2)]
            print(" ".join(str(h.process.pid) for h in handles), flush=True)
            time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    children = [int(pid) for pid in parent.stdout.readline().split()]
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 60  # generous on a busy machine: it waits only while one is alive
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in children if _running(pid)]
    assert not alive, f"workers {alive} outlived their killed parent"


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@forks
def test_a_pool_inside_a_worker_computes_in_place():
    def nested() -> tuple[int, int]:
        with WorkerPool(2) as inner:
            return inner.workers, inner.submit(os.getpid).result()

    [(workers, pid)] = run_tasks([nested], workers=2)
    assert workers == 1 and pid != os.getpid()


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_worker_counts_are_refused_in_one_line(workers):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        WorkerPool(workers)


@forks
def test_the_held_out_study_gives_the_same_arms_and_records_with_two_workers():
    from test_held_out_study import STUDY, planted

    stored = planted(carried=True, concepts=2)
    study = STUDY.replace(by_group=True)
    alone = study(*stored)
    with WorkerPool(2) as pool:
        pooled = study(*stored, pool=pool)
    assert list(pooled.arms) == list(alone.arms)  # the outcome lists the arms in one order
    for name, arm in alone.arms.items():
        other = pooled.arms[name]
        assert arm.chosen.equals(other.chosen) and arm.units.equals(other.units), name
        assert np.array_equal(arm.doc_counts, other.doc_counts), name
    assert len(alone.comparisons) and pooled.comparisons.equals(alone.comparisons)
    assert len(alone.group_table) and pooled.group_table.equals(alone.group_table)


@forks
def test_ctrl_c_stops_the_parent_once_and_leaves_no_child_running(tmp_path):
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "interrupted.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, sys, threading, time
            from tl_moe.workers import WorkerPool

            READY = sys.argv[1]
            # A shell that starts the test suite in the background (no job control) leaves SIGINT ignored,
            # and Python keeps an ignored SIGINT: restore Ctrl-C, the case under test.
            signal.signal(signal.SIGINT, signal.default_int_handler)

            def slow():
                open(READY, "w").close()  # the task runs: the child has set up its signals
                time.sleep(3600)

            def interrupt():
                while not os.path.exists(READY):
                    time.sleep(0.05)
                os.killpg(os.getpgid(0), signal.SIGINT)

            pool = WorkerPool(2)
            handle = pool.submit(slow, "slow task")
            child = handle.process.pid
            try:
                with pool:
                    threading.Thread(target=interrupt, daemon=True).start()  # inside: it may fire at once
                    handle.result()
            except KeyboardInterrupt:
                print("interrupted")
            try:
                os.kill(child, 0)
                print("child alive")
            except ProcessLookupError:
                print("child gone")
            """
        )
    )
    # The child sleeps an hour: a parent that waited for it instead of stopping it would hit the timeout,
    # which is long only so that a slow import on a busy machine does not.
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ready")],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert done.stdout.split() == ["interrupted", "child", "gone"], (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr  # the child ignored Ctrl-C: no traceback of its own


@forks
def test_a_task_submitted_from_a_thread_that_ends_still_finishes():
    import threading
    import time

    handles = []
    with WorkerPool(2) as pool:
        thread = threading.Thread(target=lambda: handles.append(pool.submit(lambda: time.sleep(1.0) or 7)))
        thread.start()
        thread.join()  # the submitting thread ends while its task runs
        assert handles[0].result() == 7


@forks
def test_a_task_waiting_for_another_task_of_its_pool_raises_at_once():
    import time

    with WorkerPool(2) as pool:
        first = pool.submit(lambda: time.sleep(0.5) or 1, "first task")
        waits = pool.submit(lambda: first.result(), "waiting task")
        with pytest.raises(RuntimeError, match="first task is not this process's to compute"):
            waits.result()
        assert first.result() == 1


def _burn(seconds: float) -> float:
    """Busy CPU work for about ``seconds`` of this process's CPU time; the CPU time it measured."""
    start = time.process_time()
    total = 0
    while time.process_time() - start < seconds:
        total += sum(range(1000))
    return time.process_time() - start


@forks
def test_cpu_seconds_counts_a_workers_cpu_time_once_its_task_is_collected():
    from tl_moe.pipeline.machine import cpu_seconds

    before = cpu_seconds()
    with WorkerPool(2) as pool:
        burnt = [pool.submit(functools.partial(_burn, 0.3)) for _ in range(2)]
        child_cpu = sum(task.result() for task in burnt)
    counted = cpu_seconds() - before
    assert child_cpu >= 0.6
    # the children's own CPU time is in the reading (the parent waited on its tasks, it did not burn)
    assert counted >= child_cpu
