"""Shared fixtures: tiny random models of every architecture, built once per test session."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))  # the README generator, tools/readme_results.py

from tiny_models import save_tiny_model  # noqa: E402

warnings.filterwarnings("ignore", message=".*eos_token_id.*")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(arch)`` -> directory of a saved tiny random model of ``arch``."""
    built: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in built:
            built[architecture] = save_tiny_model(architecture, tmp_path_factory.mktemp(architecture))
        return built[architecture]

    return get


@pytest.fixture(scope="session")
def tiny_bridge(tiny_model_dir):
    """``tiny_bridge(arch)`` -> a tl_moe-loaded TransformerBridge of the tiny ``arch`` model (cached)."""
    import tl_moe

    bridges = {}

    def get(architecture: str):
        if architecture not in bridges:
            bridges[architecture] = tl_moe.load(tiny_model_dir(architecture), device="cpu")
        return bridges[architecture]

    return get


@pytest.fixture
def tiny_run_options(tiny_model_dir, tmp_path):
    """``tiny_run_options(analyses, **changes)`` -> RunOptions of a small pipeline run on the tiny OLMoE:
    no dense baseline, short windows, small budgets, the report written to the test's ``tmp_path``."""
    from tl_moe.pipeline import RunOptions

    def make(analyses: tuple[str, ...], **changes) -> RunOptions:
        settings = dict(
            model=str(tiny_model_dir("olmoe")),
            dense_baseline=None,
            analyses=tuple(analyses),
            out=tmp_path,
            max_tokens=1000,
            driver_tokens=1000,
            n_drivers=3,
            seq_len=16,
            batch_size=8,
            n_token_groups=4,
            progress=False,
        )
        return RunOptions(**{**settings, **changes})

    return make


@pytest.fixture(scope="session")
def hybrid(tmp_path_factory):
    """A tiny DeepSeek-V3-like model: block 0 dense, block 1 sparse (sigmoid routing, a shared expert)."""
    import tl_moe
    from test_analysis_matrix import _tiny_model_dir

    path = _tiny_model_dir("deepseek_v3-sigmoid-shared", tmp_path_factory.mktemp("hybrid"))
    model = tl_moe.load(path, device="cpu")
    assert model.moe_cfg.sparse_layers == (1,)
    return model
