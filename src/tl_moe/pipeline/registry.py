"""The registry of analyses: name -> :class:`~tl_moe.pipeline.protocol.Analysis` class.

``tl-moe analyze --analyses``, its help text and the report's sections all come from here. The
built-in analyses register when :mod:`tl_moe.pipeline` is imported; register your own with::

    from tl_moe.pipeline import Analysis, register

    @register
    class MyAnalysis(Analysis):
        name = "my_analysis"
        ...
"""

from __future__ import annotations

import dataclasses

from tl_moe.pipeline.catalog import TABLE as _REGISTRY
from tl_moe.pipeline.catalog import analysis_names, default_analyses, get_analysis, ordered_names
from tl_moe.pipeline.protocol import Analysis

__all__ = ["analysis_names", "default_analyses", "get_analysis", "register", "resolve"]


def register(analysis: type[Analysis]) -> type[Analysis]:
    """Add an analysis class to the registry (usable as a class decorator); returns it.

    Registering again under a taken name replaces the earlier class only if it is the same class
    (re-imports); a different class under a taken name is refused.
    """
    if not (isinstance(analysis, type) and issubclass(analysis, Analysis)):
        raise TypeError(f"register() takes an Analysis subclass, got {analysis!r}.")
    for attribute in ("name", "title", "summary"):
        if not isinstance(getattr(analysis, attribute, None), str):
            raise TypeError(f"{analysis.__name__} must set the class attribute {attribute!r} (a str).")
    if not analysis.name.isidentifier():
        raise ValueError(f"analysis names are identifiers (letters, digits, _), got {analysis.name!r}.")
    _check_config_class(analysis)
    taken = _REGISTRY.get(analysis.name)
    if taken is not None and taken.__qualname__ != analysis.__qualname__:
        raise ValueError(f"an analysis named {analysis.name!r} is already registered ({taken.__qualname__}).")
    _REGISTRY[analysis.name] = analysis
    return analysis


def _check_config_class(analysis: type[Analysis]) -> None:
    """An analysis's ``config_class`` is None or a frozen dataclass; its name is no run-wide option."""
    from tl_moe.pipeline.options import RunOptions

    config = analysis.config_class
    if config is not None and not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
        raise TypeError(f"{analysis.__name__}.config_class must be a frozen dataclass, got {config!r}.")
    if analysis.name in {spec.name for spec in dataclasses.fields(RunOptions)}:
        raise ValueError(f"an analysis cannot be named {analysis.name!r}: that is a run-wide option.")


def unregister(name: str) -> None:
    """Remove the analysis ``name`` from the registry (tests, notebooks)."""
    _REGISTRY.pop(name, None)


def resolve(names: tuple[str, ...] | None) -> list[Analysis]:
    """Instances of the named analyses (default: the default ones), with their dependencies first.

    A dependency that was not named is added (e.g. ``sparsity`` brings ``probing``).
    """
    return [get_analysis(name)() for name in ordered_names(None if names is None else tuple(names))]


def help_text() -> str:
    """One line per registered analysis, for ``--help``."""
    return "; ".join(
        f"{name}{'' if analysis.default else ' (not by default)'}: {analysis.summary}"
        for name, analysis in _REGISTRY.items()
    )


def analyses_table_markdown() -> str:
    """The README's table of registered analyses (name, default or not, what it computes)."""
    rows = ["| `--analyses` name | by default | what it computes |", "|---|---|---|"]
    for name, analysis in _REGISTRY.items():
        after = f" (runs after {', '.join(analysis.depends_on)})" if analysis.depends_on else ""
        rows.append(f"| `{name}` | {'yes' if analysis.default else 'no'} | {analysis.summary}{after} |")
    return "\n".join(rows)
