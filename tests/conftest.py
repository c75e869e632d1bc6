"""Shared fixtures: tiny random models of every architecture, built once per test session."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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
