"""The config of the specialization analysis."""

from __future__ import annotations

from dataclasses import dataclass

from tl_moe.settings import check_least_integers, option

__all__ = ["SpecializationConfig"]


@dataclass(frozen=True)
class SpecializationConfig:
    """Which experts enter the layer means of the specialization scores; how many random
    initializations of the untrained model its trained − untrained difference averages."""

    min_expert_tokens: int = option(
        50,
        "experts with fewer routed tokens are listed, not averaged (specialization)",
        parse=int,
        legacy="min_expert_tokens",
    )
    untrained_inits: int = option(
        5,
        "specialization: random initializations of the untrained model (seeds: the run's, then the run's "
        "+ 1, + 2, ...) whose mean the trained − untrained excess is taken against, with a draw-mean t "
        "interval (documents + between initializations); 1: the run's seed alone, the interval conditional "
        "on it. Each one past the first adds a routing-only pass of its own untrained copy. Used only when the "
        "untrained null's pass runs: probing in --analyses, without --skip-untrained-null (otherwise no "
        "trained − untrained comparison is made and this setting has no effect)",
        parse=int,
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        check_least_integers(self, {"min_expert_tokens": 1, "untrained_inits": 1}, "specialization")
