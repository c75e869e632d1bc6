"""Every option default the docs write out ("`--name` (default X") is the CLI's default.

Defaults are written once, in code; the docs quote them. A quoted default that drifted from the
code (e.g. ``--min-examples`` said 30 after the estimators moved to 50) fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tl_moe.pipeline.options import _cli_specs, _flags

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: "`--option` (default VALUE" possibly with "documents" or similar words between; VALUE up to ; ) or ,
QUOTED = re.compile(r"`(--[a-z][a-z-]*)`[^`(]{0,20}\(default (?:`[^`]*` = )?([^;),]+)")


def _cli_defaults() -> dict[str, object]:
    """flag -> the default of the setting behind it (run-wide fields and every analysis's config)."""
    return {flag: spec.default for analysis, spec in _cli_specs() for flag in _flags(analysis, spec)}


def _same(quoted: str, default: object) -> bool:
    """Whether the docs' text names the default: the first number or word of the quote."""
    first = quoted.strip().split()[0]
    values = default if isinstance(default, (list, tuple)) else [default]
    return any(
        first == str(v) or (_number(first) is not None and _number(first) == _number(str(v))) for v in values
    )


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _quotes() -> list[tuple[str, str, str]]:
    found = []
    for path in DOCS:
        for match in QUOTED.finditer(path.read_text()):
            if not match.group(2).startswith("`"):  # names the constant in code, not a value
                found.append((path.name, match.group(1), match.group(2)))
    return found


def test_the_docs_quote_some_defaults() -> None:
    """The pattern finds the quotes it is meant to check (else the test below checks nothing)."""
    options = {option for _, option, _ in _quotes()}
    assert {"--min-documents", "--min-examples", "--permutations"} <= options


@pytest.mark.parametrize("where,option,quoted", _quotes())
def test_a_quoted_default_is_the_cli_default(where: str, option: str, quoted: str) -> None:
    defaults = _cli_defaults()
    assert option in defaults, f"{where} quotes a default for {option}, which the CLI does not have"
    assert _same(quoted, defaults[option]), (
        f"{where}: {option} (default {quoted}) but the CLI's is {defaults[option]!r}"
    )


@pytest.mark.parametrize(
    "analysis,field,value",
    [("specialization", "untrained_inits", 0), ("explain", "concurrency", 0), ("drivers", "tokens", 0)],
)
def test_a_refused_setting_names_a_flag_the_command_line_accepts(
    analysis: str, field: str, value: int
) -> None:
    """The one-line refusal of a bad analysis setting names a flag that exists (the namespaced flag where
    the field has no older flat one), so a user can act on it."""
    from tl_moe.errors import InputError
    from tl_moe.pipeline.options import _config_class_of

    flags = {
        flag for a, spec in _cli_specs() if a == analysis and spec.name == field for flag in _flags(a, spec)
    }
    with pytest.raises(InputError) as refused:
        _config_class_of(analysis)(**{field: value})
    named = str(refused.value).split()[0]
    assert named in flags, f"{named} is not one of {sorted(flags)}"
