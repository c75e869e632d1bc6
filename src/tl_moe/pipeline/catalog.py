"""The table of registered analyses (name -> class) and what follows from it alone: the default
analyses, the order a run takes them in, each one's config class.

It imports nothing of the pipeline, so the options (:mod:`tl_moe.pipeline.options`) and the run's
context can read it; :mod:`tl_moe.pipeline.registry` fills it (with its checks) and builds instances.
"""

from __future__ import annotations

from typing import Any

from tl_moe.errors import InputError

__all__ = ["analysis_names", "config_class", "default_analyses", "get_analysis", "ordered_names"]

#: Registered analyses by name, in registration order (= report order).
TABLE: dict[str, Any] = {}


def analysis_names() -> tuple[str, ...]:
    """Every registered analysis, in registration order."""
    return tuple(TABLE)


def default_analyses() -> tuple[str, ...]:
    """The analyses a run includes when none are named."""
    return tuple(name for name, analysis in TABLE.items() if analysis.default)


def get_analysis(name: str) -> Any:
    """The analysis class registered as ``name``."""
    if name not in TABLE:
        raise InputError(
            f"Unknown analysis {name!r}; choose from {', '.join(TABLE)} (an analysis of your own exists once "
            "its module is imported: tl-moe --plugin MODULE analyze ..., or TL_MOE_PLUGINS=MODULE)."
        )
    return TABLE[name]


def config_class(name: str) -> type | None:
    """The config dataclass of the analysis ``name`` (None: it takes no settings)."""
    return get_analysis(name).config_class


def ordered_names(names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The named analyses (default: the default ones) with their dependencies (``depends_on``) added,
    each after what it depends on, otherwise in registry order."""
    requested = default_analyses() if names is None else tuple(names)
    if not requested:
        raise InputError(f"--analyses names no analysis; choose from {', '.join(TABLE)}.")
    for name in requested:
        get_analysis(name)  # unknown names are refused before anything runs
    requested = sorted(set(requested), key=list(TABLE).index)  # report order = registry order
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"analyses depend on each other in a cycle: {' -> '.join((*path, name))}.")
        if name in ordered:
            return
        for dependency in get_analysis(name).depends_on:
            visit(dependency, (*path, name))
        ordered.append(name)

    for name in requested:
        visit(name, ())
    return tuple(ordered)
