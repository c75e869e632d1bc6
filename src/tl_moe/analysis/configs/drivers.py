"""The config of the drivers analysis (experts whose removal changes the next-token loss most)."""

from __future__ import annotations

from dataclasses import dataclass

from tl_moe.settings import DefaultInt, check_least_integers, option

__all__ = ["N_DRIVERS", "DriversConfig"]

#: Default of ``--drivers.count``: fitted to half a model's experts when left unset.
N_DRIVERS = DefaultInt(8)


@dataclass(frozen=True)
class DriversConfig:
    """How many tokens the edited forwards see and how many drivers are reported."""

    tokens: int = option(
        20_000,
        "tokens on which the drivers analysis runs its edited forwards",
        parse=int,
        legacy="driver_tokens",
    )
    count: int = option(
        N_DRIVERS,
        "driver experts reported (largest removal effects on the selection half); left unset, at most "
        "half the experts",
        parse=int,
        legacy="n_drivers",
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        check_least_integers(self, {"tokens": 1, "count": 1}, "drivers")
