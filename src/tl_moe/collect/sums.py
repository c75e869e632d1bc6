"""Running per-group sums, counts (and optionally sums of squares) of a per-token quantity."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int

from tl_moe.collect.accumulator import Activations, HookedAccumulator, HookSpec, same_device
from tl_moe.collect.meta import BatchMeta


class GroupedValues(NamedTuple):
    """What a :class:`SumAccumulator` extract function returns for one batch.

    Attributes:
        values: one row of values per item (usually per real token).
        groups: the group of each row (e.g. its domain code), in ``[0, n_groups)``;
            None puts every row in group 0.
    """

    values: Float[torch.Tensor, " n_items *feature"]
    groups: Int[torch.Tensor, " n_items"] | None = None


@dataclass(frozen=True)
class SumResult:
    """Per-group totals of a per-item quantity.

    Attributes:
        sums: sum of the values of each group's items.
        counts: number of items in each group.
        means: ``sums / counts``; NaN for a group that saw no item.
        variances: population variance of each group's values (None unless squares
            were tracked); NaN for a group that saw no item.
    """

    sums: Float[torch.Tensor, " n_groups *feature"]
    counts: Int[torch.Tensor, " n_groups"]
    means: Float[torch.Tensor, " n_groups *feature"]
    variances: Float[torch.Tensor, " n_groups *feature"] | None


class SumAccumulator(HookedAccumulator):
    """Sums a per-item quantity by group, e.g. the mean MLP output per domain.

    Args:
        hooks: hook names the extract function reads (or ``model -> names``).
        extract: ``(acts, meta) -> GroupedValues``; the feature shape is fixed by
            the first batch.
        n_groups: number of groups.
        squares: also accumulate sums of squares, for variances.
        dtype: accumulation dtype (float64 keeps long sums accurate).

    Example — mean residual stream per domain::

        SumAccumulator(
            ["blocks.3.hook_resid_post"],
            lambda acts, meta: GroupedValues(
                meta.tokens(acts["blocks.3.hook_resid_post"]), meta.tokens(meta.domain)
            ),
            n_groups=len(meta_domain_names),
        )
    """

    def __init__(
        self,
        hooks: HookSpec,
        extract: Callable[[Activations, BatchMeta], GroupedValues],
        *,
        n_groups: int = 1,
        squares: bool = False,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(hooks, extract)
        if n_groups < 1:
            raise ValueError(f"n_groups must be at least 1, got {n_groups}.")
        self.n_groups = n_groups
        self.squares = squares
        self.dtype = dtype
        self.sums: torch.Tensor | None = None
        self.square_sums: torch.Tensor | None = None
        self.counts: Int[torch.Tensor, " n_groups"] = torch.zeros(n_groups, dtype=torch.long)

    def config(self) -> dict[str, Any]:
        return {"n_groups": self.n_groups, "squares": self.squares, "dtype": str(self.dtype)}

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        values, groups = self.extract(acts, meta)
        self.add(values, groups)

    def add(
        self,
        values: Float[torch.Tensor, " n_items *feature"],
        groups: Int[torch.Tensor, " n_items"] | None = None,
    ) -> None:
        """Fold in rows of values directly (what ``update`` does after extracting)."""
        values = values.to(self.dtype)
        if groups is None:
            groups = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
        groups = groups.to(device=values.device, dtype=torch.long)
        if groups.shape != values.shape[:1]:
            raise ValueError(
                f"groups must hold one group per row of values: got {tuple(groups.shape)} "
                f"groups for values of shape {tuple(values.shape)}."
            )
        if groups.numel() and bool(((groups < 0) | (groups >= self.n_groups)).any()):
            raise ValueError(f"group codes must lie in [0, {self.n_groups}).")
        if self.sums is None:
            self.sums = values.new_zeros((self.n_groups, *values.shape[1:]))
            self.square_sums = self.sums.clone() if self.squares else None
        elif self.sums.shape[1:] != values.shape[1:]:
            raise ValueError(
                f"values changed feature shape from {tuple(self.sums.shape[1:])} "
                f"to {tuple(values.shape[1:])}."
            )
        self.sums = same_device(self.sums, values).index_add(0, groups, values)
        if self.square_sums is not None:
            self.square_sums = same_device(self.square_sums, values).index_add(0, groups, values * values)
        counts = torch.bincount(groups, minlength=self.n_groups)
        self.counts = same_device(self.counts, counts) + counts

    def merge(self, other: SumAccumulator) -> SumAccumulator:
        self._check_mergeable(other)
        if other.sums is not None:
            if self.sums is None:
                self.sums, self.square_sums = other.sums.clone(), other.square_sums
            else:
                self.sums = self.sums + other.sums.to(self.sums.device)
                if self.square_sums is not None:
                    self.square_sums = self.square_sums + other.square_sums.to(self.sums.device)
        self.counts = self.counts + other.counts.to(self.counts.device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "square_sums": self.square_sums, "counts": self.counts}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums, self.square_sums, self.counts = state["sums"], state["square_sums"], state["counts"]

    def finalize(self) -> SumResult:
        if self.sums is None:
            raise RuntimeError("SumAccumulator.finalize() called before any values were added.")
        per_item_shape = (self.n_groups,) + (1,) * (self.sums.ndim - 1)
        counts = self.counts.to(self.sums.device).reshape(per_item_shape).to(self.dtype)
        empty = counts == 0
        means = torch.where(empty, torch.nan, self.sums / counts.clamp(min=1))
        variances = None
        if self.square_sums is not None:
            variances = torch.where(empty, torch.nan, self.square_sums / counts.clamp(min=1) - means**2)
        return SumResult(sums=self.sums, counts=self.counts, means=means, variances=variances)
