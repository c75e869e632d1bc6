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

from tl_moe.errors import InputError
from tl_moe.pipeline.protocol import Analysis

__all__ = ["analysis_names", "default_analyses", "get_analysis", "register", "resolve"]

_REGISTRY: dict[str, type[Analysis]] = {}


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
    taken = _REGISTRY.get(analysis.name)
    if taken is not None and taken.__qualname__ != analysis.__qualname__:
        raise ValueError(f"an analysis named {analysis.name!r} is already registered ({taken.__qualname__}).")
    _REGISTRY[analysis.name] = analysis
    return analysis


def unregister(name: str) -> None:
    """Remove the analysis ``name`` from the registry (tests, notebooks)."""
    _REGISTRY.pop(name, None)


def analysis_names() -> tuple[str, ...]:
    """Every registered analysis, in registration order."""
    return tuple(_REGISTRY)


def default_analyses() -> tuple[str, ...]:
    """The analyses a run includes when none are named."""
    return tuple(name for name, analysis in _REGISTRY.items() if analysis.default)


def get_analysis(name: str) -> type[Analysis]:
    """The analysis class registered as ``name``."""
    if name not in _REGISTRY:
        raise InputError(f"Unknown analysis {name!r}; choose from {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def resolve(names: tuple[str, ...] | None) -> list[Analysis]:
    """Instances of the named analyses (default: the default ones), with their dependencies first.

    A dependency that was not named is added (e.g. ``sparsity`` brings ``probing``).
    """
    requested = default_analyses() if names is None else tuple(names)
    if not requested:
        raise InputError(f"--analyses names no analysis; choose from {', '.join(_REGISTRY)}.")
    for name in requested:
        get_analysis(name)  # unknown names are refused before anything runs
    requested = sorted(set(requested), key=list(_REGISTRY).index)  # report order = registry order
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
    return [get_analysis(name)() for name in ordered]


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
