"""The config of the probing analysis (held-out protocol, paper protocol and their controls)."""

from __future__ import annotations

from dataclasses import dataclass

from tl_moe.defaults import MIN_EXAMPLES
from tl_moe.errors import InputError
from tl_moe.settings import DefaultInts, check_least_integers, int_list, is_integer, option, optional_int

__all__ = ["PROBE_KS", "PROBE_ROWS_PER_CLASS", "ProbingConfig"]

#: Default of ``--probing.ks``: fitted to the neurons of a model's experts when left unset.
PROBE_KS = DefaultInts((1, 2, 4, 8, 16, 32, 64))
#: Default of ``--probing.rows-per-class`` (see docs/METHODS.md, "Bounded probing store").
PROBE_ROWS_PER_CLASS = 65_536


@dataclass(frozen=True)
class ProbingConfig:
    """How experts are probed for concepts."""

    ks: tuple[int, ...] = option(
        PROBE_KS,
        "neurons per probe (comma-separated); left unset, sizes above an expert's neurons are dropped",
        parse=int_list("--probe-ks"),
        legacy="probe_ks",
    )
    min_examples: int = option(
        MIN_EXAMPLES,
        "paper protocol: least positives / negatives a unit needs to be probed",
        parse=int,
        legacy="min_examples",
    )
    held_out_min_examples: int = option(
        MIN_EXAMPLES,
        "held-out protocol: least positives / negatives a unit needs on each side of the document split",
        parse=int,
        legacy="held_out_min_examples",
    )
    skip_untrained_null: bool = option(
        False,
        "leave out the untrained-model null of probing (saves one collection pass)",
        legacy="skip_untrained_null",
    )
    layers: tuple[int, ...] | None = option(
        None,
        "comma-separated sparse layers to probe (default: all; bounds memory)",
        parse=int_list("--probe-layers"),
        legacy="probe_layers",
    )
    rows_per_class: int | None = option(
        PROBE_ROWS_PER_CLASS,
        "probing store: tokens kept per (unit, concept, class, document side), so its memory does not grow "
        "with --max-tokens; 'none' keeps every token",
        parse=optional_int,
        legacy="probe_rows_per_class",
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse settings no probe can use, each in one line naming the flag."""
        check_least_integers(self, {"min_examples": 1, "held_out_min_examples": 1}, "probing")
        ks = self.ks
        if not isinstance(ks, (tuple, list)) or not ks or not all(is_integer(k) and k >= 1 for k in ks):
            raise InputError(f"--probe-ks must be one or more positive integers (e.g. 1,2,4), got {ks!r}.")
        rows = self.rows_per_class
        needed = max(self.min_examples, self.held_out_min_examples)
        if rows is not None and (not is_integer(rows) or rows < needed):
            raise InputError(
                f"--probe-rows-per-class must be 'none' or an integer of at least --min-examples and "
                f"--held-out-min-examples ({needed}), got {rows!r}."
            )
        if self.layers is not None and not self.layers:
            raise InputError("--probe-layers needs at least one layer.")
