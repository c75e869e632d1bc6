"""The config of the re-weighting / steering analysis."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tl_moe.errors import InputError
from tl_moe.settings import check_least_integers, float_list, is_real, name_list, option

__all__ = ["ReweightingConfig"]


@dataclass(frozen=True)
class ReweightingConfig:
    """The tokens, mixing-weight factors and random controls of re-weighting and steering."""

    tokens: int = option(
        6000,
        "re-weighting / steering: tokens of each domain on each document half (selection, held out)",
        parse=int,
        legacy="reweight_tokens",
    )
    factors: tuple[float, ...] = option(
        (0.5, 0.8, 1.25, 1.5, 2.0),
        "re-weighting: mixing-weight factors tried on the selection half (comma-separated)",
        parse=float_list("--reweight-factors"),
        legacy="reweight_factors",
    )
    draws: int = option(
        20,
        "re-weighting / steering: random routing-rate-matched expert sets behind each control",
        parse=int,
        legacy="reweight_draws",
    )
    steer_contrast: tuple[str, ...] | None = option(
        None,
        "steering: two domains to contrast (A,B), or two languages of one domain (DOMAIN:A,B); "
        "default: the two domains with the most documents among those whose held-out half can reach 30 "
        "(fewer than two such: the two largest, reported as untestable)",
        parse=name_list,
        legacy="steer_contrast",
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        check_least_integers(self, {"tokens": 1, "draws": 1}, "reweighting")
        self._check_factors()
        if self.steer_contrast is not None and (
            len(self.steer_contrast) != 2 or len(set(self.steer_contrast)) != 2
        ):
            raise InputError(
                f"--steer-contrast takes two different names (A,B or DOMAIN:A,B), got {self.steer_contrast!r}."
            )

    def _check_factors(self) -> None:
        factors = self.factors
        accepted = "accepted: positive numbers other than 1 (1 leaves the weights unchanged), each once"
        if not isinstance(factors, (tuple, list)) or not factors:
            raise InputError(f"--reweight-factors needs at least one factor, got {factors!r}; {accepted}.")
        bad = [f for f in factors if not is_real(f) or not 0 < f < math.inf or f == 1]
        if bad:
            raise InputError(f"--reweight-factors {bad} are not usable factors; {accepted}.")
        repeated = sorted({f for f in factors if list(factors).count(f) > 1})
        if repeated:
            raise InputError(f"--reweight-factors repeats {repeated}; {accepted}.")
