"""Versions of Python and the packages a run depends on, for the report's metadata."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib import metadata

__all__ = ["DEFAULT_PACKAGES", "package_versions"]

DEFAULT_PACKAGES = (
    "tl_moe",
    "torch",
    "transformer-lens",
    "transformers",
    "numpy",
    "pandas",
    "scikit-learn",
    "datasets",
    "matplotlib",
)


def package_versions(packages: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    """``{"python": ..., package: installed version or None if not installed}`` for each of ``packages``."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
