"""The small wordings and roundings the drivers report shares: an interval read for its sign, its
diagnostic, the document gate in words."""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_moe.analysis.effect_estimate import WITHIN_LAYERS
from tl_moe.analysis.stats import RHO_MIN_EXPERT_DOCUMENTS, basic_interval, interval_position

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
    """One paired-table ρ with its interval, read for its sign: above (below) 0 when its percentile
    interval is and the basic interval of the same resamples (its bounds reflected about ρ) agrees; when the two
    disagree about excluding 0 the sign is not established (``disputed``)."""

    def __init__(self, row: Any) -> None:
        self.estimate = float(row["spearman with exact zeroing effect"])
        self.low, self.high = float(row["ci low"]), float(row["ci high"])
        self.why = row["interval unavailable"]
        self.bias = float(row.get("bootstrap bias", np.nan))
        if "basic ci low" in row.index and "basic ci high" in row.index:  # clipped to the statistic's range
            self.basic = (float(row["basic ci low"]), float(row["basic ci high"]))
        else:
            self.basic = basic_interval(self.estimate, self.low, self.high)

    def _sides(self) -> tuple[int, int | None]:
        """The side of 0 each interval lies on (+1 above, −1 below, 0 covering it; None without one)."""
        basic = _side(*self.basic) if all(np.isfinite(self.basic)) else None
        return _side(self.low, self.high), basic

    def disputed(self) -> bool:
        """Whether the percentile and basic intervals disagree about excluding 0 (or about its side)."""
        percentile, basic = self._sides()
        return bool(not self.why and basic is not None and basic != percentile)

    def above_zero(self) -> bool:
        return bool(not self.why and self._sides()[0] == 1 and not self.disputed())

    def below_zero(self) -> bool:
        return bool(not self.why and self._sides()[0] == -1 and not self.disputed())

    def diagnostics(self) -> str:
        """Its bootstrap bias, its position in the percentile interval and the basic interval, in words."""
        text = diagnostic(self.estimate, self.low, self.high, self.bias)
        if self.why or not all(np.isfinite(self.basic)):
            return text
        return f"{text}; basic interval (same resamples) [{self.basic[0]:+.2f}, {self.basic[1]:+.2f}]"

    def sign_text(self) -> str:
        """``is above 0``, ``is below 0``, ``covers 0`` or ``not established`` (the two intervals
        disagree about 0)."""
        if self.disputed():
            return "is not established (its percentile and basic intervals disagree about excluding 0)"
        return "is above 0" if self.above_zero() else "is below 0" if self.below_zero() else "covers 0"


def _side(low: float, high: float) -> int:
    return 1 if low > 0 else -1 if high < 0 else 0


WITHIN = WITHIN_LAYERS
"""The paired table's group of the mean of the per-layer ρ."""


def diagnostic(estimate: float, low: float, high: float, bias: float) -> str:
    """The interval's bootstrap bias and the estimate's position in it, a diagnostic (the interval is
    the pre-chosen method's whatever they are)."""
    position = interval_position(estimate, low, high)
    if not np.isfinite(position):
        if all(np.isfinite([estimate, low, high])) and low == high:
            return "an interval of zero width: every resample gave the same value, so no position or bias"
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
