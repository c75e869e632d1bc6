"""``benchmarks/planted_studies.py`` as a module, for the tests that run its planted cases."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "planted_studies.py"


def planted_studies() -> ModuleType:
    """The script loaded once per session (registered first: its dataclasses need it)."""
    if "planted_studies" in sys.modules:
        return sys.modules["planted_studies"]
    spec = importlib.util.spec_from_file_location("planted_studies", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
