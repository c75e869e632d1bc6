"""Thread budget: explicit, environment and load-aware choices; torch and native pools agree."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from tl_moe import runtime


@pytest.fixture
def clean_env(monkeypatch):
    for variable in (runtime.THREADS_ENV, *runtime.POOL_ENV_VARS):
        monkeypatch.setenv(variable, "unset")  # recorded, so the original value comes back after the test
        monkeypatch.delenv(variable)
    previous = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(previous)


def test_explicit_then_tl_moe_threads_then_omp_num_threads(clean_env):
    clean_env.setattr(runtime, "available_cpus", lambda: 8)
    clean_env.setattr(runtime, "_busy_cores", lambda: 0)
    assert runtime.resolve_threads() == 8
    clean_env.setenv("OMP_NUM_THREADS", "3,1")
    assert runtime.resolve_threads() == 3
    clean_env.setenv(runtime.THREADS_ENV, "2")
    assert runtime.resolve_threads() == 2
    assert runtime.resolve_threads("auto") == 2
    assert runtime.resolve_threads(5) == 5
    assert runtime.resolve_threads("4") == 4


def test_auto_leaves_the_cores_other_processes_keep_busy(clean_env):
    clean_env.setattr(runtime, "available_cpus", lambda: 2)
    for busy, expected in [(0, 2), (1, 1), (2, 1), (9, 1)]:
        clean_env.setattr(runtime, "_busy_cores", lambda busy=busy: busy)
        assert runtime.default_threads() == expected


@pytest.mark.parametrize("bad", [0, -1, "banana", "1.5", 2.0, True])
def test_a_bad_thread_count_is_one_clear_line(bad):
    with pytest.raises(runtime.ThreadsError, match="accepted: a positive integer or 'auto'") as refused:
        runtime.resolve_threads(bad)
    assert "\n" not in str(refused.value) and isinstance(refused.value, ValueError)


def test_a_bad_environment_value_names_the_variable(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "lots")
    with pytest.raises(runtime.ThreadsError, match=r"\$OMP_NUM_THREADS="):
        runtime.resolve_threads()


def blas_threads() -> set[int]:
    np.ones((4, 4)) @ np.ones((4, 4))  # make sure NumPy's BLAS is loaded
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_limited_threads_caps_torch_and_blas_and_restores(clean_env):
    torch.set_num_threads(2)
    before_blas = blas_threads()
    with runtime.limited_threads(1) as count:
        assert count == 1
        assert torch.get_num_threads() == 1
        assert blas_threads() <= {1}
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == 2
    assert blas_threads() == before_blas
    assert "OMP_NUM_THREADS" not in os.environ


def test_set_threads_applies_to_every_pool(clean_env):
    from threadpoolctl import threadpool_limits

    with threadpool_limits():  # restore native pools after the test
        assert runtime.set_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert blas_threads() <= {1}
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
        report = runtime.thread_report()
        assert report["torch_intra_op"] == 1 and report["available_cpus"] >= 1
