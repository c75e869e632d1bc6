"""The statistical standards every analysis shares: the seed, the one document split, resamples, permutations."""

from __future__ import annotations

from dataclasses import dataclass

from tl_moe.analysis.stats import MIN_DOCUMENTS
from tl_moe.errors import InputError
from tl_moe.settings import is_integer, is_real

__all__ = ["SEED_MAX", "Statistics"]

#: Largest seed: every seed (and the seed + 1, + 2 of derived streams) fits numpy's and torch's seeds.
SEED_MAX = 2**31 - 1

#: The integer settings and their least accepted value.
_LEAST_INTEGERS = {"bootstrap_resamples": 1, "min_documents": 2, "permutations": 1}

#: The settings that are fractions, accepted in the open interval (0, 1).
_FRACTIONS = ("fdr", "selection_fraction")


def _flag(name: str) -> str:
    """The command-line spelling of a setting (``--min-documents``), which every message names."""
    return f"--{name.replace('_', '-')}"


@dataclass(frozen=True)
class Statistics:
    """One value per run of each statistical setting the analyses share (the run's
    :class:`~tl_moe.pipeline.options.RunOptions` takes its defaults from here; a notebook passes one to
    an analysis directly).

    Attributes:
        seed: seed of every random choice (document split, resamples, permutations, control draws).
        selection_fraction: fraction of documents on the selection side of the one document split
            (:func:`~tl_moe.analysis.splits.document_split`); the rest report.
        bootstrap_resamples: document-level bootstrap resamples behind every interval.
        min_documents: fewest documents on each side of the split and behind each interval.
        fdr: false-discovery rate of the Benjamini–Hochberg tests.
        permutations: document-level permutations behind each permutation p-value.

    Which analysis reads which setting: every analysis reads ``seed``, ``bootstrap_resamples``,
    ``min_documents`` (and ``fdr`` / ``permutations`` where it tests). ``selection_fraction`` is read by
    the studies that draw their own seeded document split (held-out probing, the labels'
    selection/report split). The drivers, the token associations and the expert re-weighting do NOT read
    ``selection_fraction`` or ``seed`` for their split: they share one fixed 50/50 hash split of the
    documents (:data:`~tl_moe.analysis.splits.HALVES_KEY`), so their experts are chosen and tested on
    the same halves; :class:`~tl_moe.analysis.DriverStudy` refuses another ``selection_fraction``.

    Every value is checked when built (one-line :class:`~tl_moe.errors.InputError` naming the flag).
    """

    seed: int = 0
    selection_fraction: float = 0.5
    bootstrap_resamples: int = 2000
    min_documents: int = MIN_DOCUMENTS
    fdr: float = 0.05
    permutations: int = 999

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse values no analysis can use, each with one line naming its flag and what is accepted."""
        for name, least in _LEAST_INTEGERS.items():
            value = getattr(self, name)
            if not is_integer(value) or value < least:
                what = "a positive integer" if least == 1 else f"an integer of at least {least}"
                raise InputError(f"{_flag(name)} must be {what}, got {value!r}.")
        if not is_integer(self.seed) or not 0 <= self.seed <= SEED_MAX:
            raise InputError(f"--seed must be an integer from 0 to {SEED_MAX}, got {self.seed!r}.")
        for name in _FRACTIONS:
            value = getattr(self, name)
            if not is_real(value) or not 0 < value < 1:
                raise InputError(f"{_flag(name)} must be a number in (0, 1), got {value!r}.")
