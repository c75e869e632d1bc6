"""The config of the specialization analysis."""

from __future__ import annotations

from dataclasses import dataclass

from tl_moe.settings import check_least_integers, option

__all__ = ["SpecializationConfig"]


@dataclass(frozen=True)
class SpecializationConfig:
    """Which experts enter the layer means of the specialization scores."""

    min_expert_tokens: int = option(
        50,
        "experts with fewer routed tokens are listed, not averaged (specialization)",
        parse=int,
        legacy="min_expert_tokens",
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        check_least_integers(self, {"min_expert_tokens": 1})
