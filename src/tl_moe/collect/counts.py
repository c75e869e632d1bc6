"""Histograms: scatter-add events into a fixed-shape count tensor."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int

from tl_moe.collect.accumulator import Activations, HookedAccumulator, HookSpec, same_device
from tl_moe.collect.meta import BatchMeta


class BinEvents(NamedTuple):
    """What a :class:`CountAccumulator` extract function returns for one batch.

    Attributes:
        index: the bin of each event — one coordinate per dimension of the count
            tensor (``[n_events, n_dims]``), or ``[n_events]`` for a 1-D tensor.
        weights: what each event adds to its bin; None adds 1.
    """

    index: Int[torch.Tensor, " n_events *n_dims"]
    weights: Float[torch.Tensor, " n_events"] | None = None


class CountAccumulator(HookedAccumulator):
    """Counts events into bins, e.g. routed tokens per (domain, layer, expert).

    Args:
        hooks: hook names the extract function reads (or ``model -> names``).
        extract: ``(acts, meta) -> BinEvents``.
        shape: shape of the count tensor; the last dimension is usually the bins.
        weighted: events carry weights (float64 totals) instead of counting 1 (int64).

    ``finalize()`` returns the count tensor of shape ``shape``.
    """

    def __init__(
        self,
        hooks: HookSpec,
        extract: Callable[[Activations, BatchMeta], BinEvents],
        *,
        shape: Sequence[int],
        weighted: bool = False,
    ) -> None:
        super().__init__(hooks, extract)
        self.shape = tuple(int(size) for size in shape)
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {tuple(shape)}.")
        self.weighted = weighted
        dtype = torch.float64 if weighted else torch.long
        self.counts: torch.Tensor = torch.zeros(self.shape, dtype=dtype)

    def config(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "weighted": self.weighted}

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        index, weights = self.extract(acts, meta)
        self.add(index, weights)

    def add(
        self,
        index: Int[torch.Tensor, " n_events *n_dims"],
        weights: Float[torch.Tensor, " n_events"] | None = None,
    ) -> None:
        """Fold in events directly (what ``update`` does after extracting)."""
        index = index.to(torch.long)
        if index.ndim == 1:
            index = index[:, None]
        if index.ndim != 2 or index.shape[1] != len(self.shape):
            raise ValueError(
                f"index must be [n_events, {len(self.shape)}] for counts of shape {self.shape}, "
                f"got {tuple(index.shape)}."
            )
        sizes = torch.tensor(self.shape, device=index.device)
        if index.numel() and bool(((index < 0) | (index >= sizes)).any()):
            raise ValueError(f"event coordinates must lie inside the count shape {self.shape}.")
        if (weights is None) == self.weighted:
            raise ValueError(
                "weights must be given exactly when the accumulator is weighted "
                f"(weighted={self.weighted}, weights given: {weights is not None})."
            )
        strides = torch.tensor(
            [math.prod(self.shape[d + 1 :]) for d in range(len(self.shape))], device=index.device
        )
        flat = (index * strides).sum(dim=1)
        if weights is not None:
            weights = weights.to(device=index.device, dtype=torch.float64).reshape(-1)
        added = torch.bincount(flat, weights=weights, minlength=math.prod(self.shape))
        self.counts = same_device(self.counts, added) + added.reshape(self.shape).to(self.counts.dtype)

    def merge(self, other: CountAccumulator) -> CountAccumulator:
        self._check_mergeable(other)
        self.counts = self.counts + other.counts.to(self.counts.device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counts = state["counts"]

    def finalize(self) -> torch.Tensor:
        return self.counts
