"""The small wordings and roundings the drivers report shares: an interval read for its sign, its
diagnostic, the document gate in words."""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_moe.analysis.effect_estimate import WITHIN_LAYERS
from tl_moe.analysis.stats import RHO_MIN_EXPERT_DOCUMENTS, interval_position

__all__ = [
    "EDITED_FORWARDS",
    "WITHIN",
    "Signed",
    "diagnostic",
    "gate_text",
    "interval_position",
    "left_out_key",
    "left_out_text",
    "rounded",
]

EDITED_FORWARDS = {
    True: "resumed from the edited layer",
    False: "whole model (a resumed forward did not reproduce the clean one)",
}
"""How the exact effects' edited forwards ran, by ``DriversResult.resumed``."""


class Signed:
    """One paired-table ρ with its interval, read for its sign: above (below) 0 when its interval is."""

    def __init__(self, row: Any) -> None:
        self.estimate = float(row["spearman with exact zeroing effect"])
        self.low, self.high = float(row["ci low"]), float(row["ci high"])
        self.why = row["interval unavailable"]

    def above_zero(self) -> bool:
        return bool(not self.why and self.low > 0)

    def below_zero(self) -> bool:
        return bool(not self.why and self.high < 0)


WITHIN = WITHIN_LAYERS
"""The paired table's group of the mean of the per-layer ρ."""


def diagnostic(estimate: float, low: float, high: float, bias: float) -> str:
    """The interval's bootstrap bias and the estimate's position in it, a diagnostic (the interval is
    the pre-chosen method's whatever they are)."""
    position = interval_position(estimate, low, high)
    if not np.isfinite(position):
        return "no interval"
    return f"bootstrap bias {bias:+.2f}, the estimate at {position:.2f} of its interval from the lower end"


def left_out_key(key: str) -> str:
    return f"{key} | experts left out (routed on fewer than {RHO_MIN_EXPERT_DOCUMENTS} documents)"


def left_out_text(left_out: list[str]) -> str:
    """The experts the document gate left out, in words."""
    if not left_out:
        return "none left out"
    return f"{len(left_out)} left out, routed on fewer: {', '.join(left_out)}"


def gate_text(gate: tuple[int, list[str]] | None) -> str:
    """The split ρ's experts and the document gate, in words."""
    if gate is None:
        return "every expert with a saliency"
    experts, left_out = gate
    return (
        f"over the {experts} experts routed on at least {RHO_MIN_EXPERT_DOCUMENTS} documents of each half, "
        + left_out_text(left_out)
    )


def rounded(value: Any, digits: int = 4) -> float | None:
    value = float(value)
    return round(value, digits) if value == value else None
