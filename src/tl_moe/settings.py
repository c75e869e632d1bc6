"""How a setting is declared, parsed and checked: the field helper every config dataclass uses.

Each analysis owns a frozen config dataclass (``tl_moe/analysis/configs/``) and the run its run-wide
:class:`~tl_moe.pipeline.options.RunOptions`; both declare their fields with :func:`option`, whose
metadata carries the help text, the command-line parser and the flag the setting had before it was
namespaced (``legacy``, e.g. ``probe_ks`` for ``--probing.ks``). The command line, the README's
options table and :func:`~tl_moe.pipeline.analyze` are generated from that metadata, so a default is
written exactly once: in its dataclass. This module sits below ``analysis/`` and ``pipeline/`` (it
imports only :mod:`tl_moe.errors`), so both may use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from tl_moe.errors import InputError

__all__ = [
    "ModelDefault",
    "check_keys",
    "check_least_integers",
    "config_from",
    "flag_of",
    "float_list",
    "int_list",
    "is_integer",
    "is_real",
    "name_list",
    "option",
    "optional_int",
]


def option(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
    legacy: str | None = None,
    **extra: Any,
):
    """A config field: its default, its ``--help`` text, how the CLI parses it and, for a field of an
    analysis's config, the flat name it had in ``RunOptions`` (``legacy``: still accepted as a flag,
    as a ``RunOptions`` / ``analyze`` keyword, and used in ``results.json``'s ``metadata.options``)."""
    metadata = {"help": help, "parse": parse, "cli": cli, "legacy": legacy, **extra}
    return field(default=default, metadata=metadata)


def flag_of(spec: dataclasses.Field, analysis: str | None = None) -> str:
    """The flag a field's messages name: under its analysis's namespace when ``analysis`` names it
    (``--specialization.untrained-inits``), with its legacy alias beside it when it has one
    (``--drivers.tokens (--driver-tokens)``: the user may have typed either); else its own or legacy flag."""
    legacy = spec.metadata.get("legacy")
    if analysis is None:
        return "--" + (legacy or spec.name).replace("_", "-")
    namespaced = f"--{analysis.replace('_', '-')}.{spec.name.replace('_', '-')}"
    return f"{namespaced} (--{legacy.replace('_', '-')})" if legacy else namespaced


def int_list(flag: str) -> Callable[[str], tuple[int, ...]]:
    """Parser of comma-separated integers for ``flag`` (refuses text that is not, in one line)."""
    return _number_list(flag, int, "integers (e.g. 1,3)", "integer")


def float_list(flag: str) -> Callable[[str], tuple[float, ...]]:
    """Parser of comma-separated numbers for ``flag``."""
    return _number_list(flag, float, "numbers (e.g. 0.5,2)", "number")


def _number_list(flag: str, kind: Callable[[str], Any], accepted: str, one: str) -> Callable[[str], tuple]:
    """Parser of comma-separated values of ``kind`` for ``flag``; bad or empty text is refused in one line."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise InputError(f"{flag} takes comma-separated {accepted}, got {text!r}.") from None
        if not values:
            raise InputError(f"{flag} needs at least one {one}, got {text!r}.")
        return values

    return parse


def name_list(text: str) -> tuple[str, ...]:
    """Comma-separated names (blanks dropped)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def optional_int(text: str) -> int | None:
    """An integer, or None for ``none``."""
    return None if text.lower() == "none" else int(text)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def check_least_integers(config: Any, least: Mapping[str, int], analysis: str | None = None) -> None:
    """Refuse, in one line naming the flag (of ``analysis``'s namespace, :func:`flag_of`), a field of
    ``config`` that is not an integer of at least ``least[field]``."""
    specs = {spec.name: spec for spec in dataclasses.fields(config)}
    for name, most_little in least.items():
        value = getattr(config, name)
        if not is_integer(value) or value < most_little:
            what = "a positive integer" if most_little == 1 else f"an integer of at least {most_little}"
            raise InputError(f"{flag_of(specs[name], analysis)} must be {what}, got {value!r}.")


class ModelDefault:
    """Marks a setting the user left at its default (see :func:`is_default`): a run fits such a value
    to a model too small for it (fewer probe sizes, fewer drivers) and says so; a value given
    explicitly, even an equal one, is never changed (a model too small for it is refused)."""


class DefaultInt(int, ModelDefault):
    pass


class DefaultInts(tuple, ModelDefault):
    pass


def config_from(config_class: type, value: Any, owner: str) -> Any:
    """``value`` as a ``config_class``: an instance as it is, a mapping of field -> value (its other
    fields at their defaults), None for the defaults. A key that is no field is refused in one line
    naming it and the accepted ones (``owner`` names what the settings are of, e.g. ``probing``)."""
    if value is None:
        return config_class()
    if isinstance(value, config_class):
        return value
    check_keys(config_class, value, owner)
    return config_class(**value)


def check_keys(config_class: type, value: Any, owner: str) -> None:
    """Refuse, in one line, settings for ``config_class`` that are not a mapping of its field names."""
    accepted = [spec.name for spec in dataclasses.fields(config_class)]
    if not isinstance(value, Mapping):
        raise InputError(
            f"{owner} settings must be a {config_class.__name__} or a dict of its fields, got "
            f"{value!r:.60}; accepted keys: {', '.join(accepted)}."
        )
    unknown = [key for key in value if key not in accepted]
    if unknown:
        raise InputError(
            f"{owner} has no setting {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted) or 'none'}."
        )
