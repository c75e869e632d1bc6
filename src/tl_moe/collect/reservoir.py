"""Uniform fixed-size samples of per-item rows, exactly mergeable.

How the sample stays uniform: every candidate row gets a priority
``uniform_priority(id, seed)`` — a pseudo-random number in [0, 1) that is a pure
function of the row's id — and a group keeps the ``capacity`` rows with the smallest
priorities (ties: smaller id). Because priorities behave as i.i.d. uniform draws, every
subset of ``capacity`` rows is equally likely to hold the smallest ones: the kept set
is a uniform sample without replacement of all rows seen (all of them while fewer
than ``capacity`` were seen).

How merging keeps it uniform: the ``capacity`` smallest priorities of A ∪ B are among
the ``capacity`` smallest of A together with the ``capacity`` smallest of B, so
merging two samples gives *exactly* the sample a single pass over A ∪ B would have
kept — not only a sample with the same distribution. The result is therefore
identical whether the corpus is processed in one pass, resumed from a checkpoint, or
split across processes, and it is deterministic given the seed.

Ids must be unique per group (e.g. ``meta.token_index`` for per-token rows). Rows
that share an id share a priority, so the same tokens are sampled in every group;
mix the group into the id to sample groups independently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Int

from tl_moe.collect.accumulator import Activations, HookSpec
from tl_moe.collect.hashing import uniform_priority
from tl_moe.collect.meta import BatchMeta
from tl_moe.collect.topk import KeyedTopN, KeyedTopNAccumulator


class SampleCandidates(NamedTuple):
    """What a :class:`ReservoirSampler` extract function returns for one batch.

    Attributes:
        ids: a unique non-negative id per row, stable across runs (e.g.
            ``meta.tokens(meta.token_index)``); it fixes the row's priority.
        rows: the data to sample, one row per candidate (e.g. activations).
        groups: which sample each row competes for, in ``[0, n_groups)``; None
            puts every row in group 0.
    """

    ids: Int[torch.Tensor, " n_items"]
    rows: torch.Tensor
    groups: Int[torch.Tensor, " n_items"] | None = None


@dataclass(frozen=True)
class ReservoirSample:
    """A uniform sample of rows per group.

    Attributes:
        rows: sampled rows per group, ordered by priority; zeros in unfilled slots.
        ids: ids of the sampled rows; -1 in unfilled slots.
        n_kept: number of sampled rows per group (``min(capacity, n_seen)``).
        n_seen: number of candidate rows offered per group.
    """

    rows: torch.Tensor
    ids: Int[torch.Tensor, "n_groups capacity"]
    n_kept: Int[torch.Tensor, " n_groups"]
    n_seen: Int[torch.Tensor, " n_groups"]

    def group(self, index: int = 0) -> torch.Tensor:
        """The sampled rows of one group, without the unfilled slots."""
        return self.rows[index, : int(self.n_kept[index])]


class ReservoirSampler(KeyedTopNAccumulator):
    """Keeps a seeded uniform sample of ``capacity`` rows per group (see the module docstring).

    Args:
        hooks: hook names the extract function reads (or ``model -> names``).
        extract: ``(acts, meta) -> SampleCandidates``.
        capacity: rows kept per group.
        seed: selects the pseudo-random priorities; same seed, same sample.
        n_groups: number of independent samples (e.g. one per expert).
    """

    def __init__(
        self,
        hooks: HookSpec,
        extract: Callable[[Activations, BatchMeta], SampleCandidates],
        *,
        capacity: int,
        seed: int = 0,
        n_groups: int = 1,
    ) -> None:
        super().__init__(hooks, extract)
        self.capacity, self.seed, self.n_groups = capacity, seed, n_groups
        self.store = KeyedTopN(n_groups, capacity)

    def config(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "seed": self.seed, "n_groups": self.n_groups}

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        ids, rows, groups = self.extract(acts, meta)
        self.add(ids, rows, groups)

    def add(
        self,
        ids: Int[torch.Tensor, " n_items"],
        rows: torch.Tensor,
        groups: Int[torch.Tensor, " n_items"] | None = None,
    ) -> None:
        """Offer candidate rows directly (what ``update`` does after extracting)."""
        ids = ids.to(device=rows.device, dtype=torch.long).reshape(-1)
        if groups is None:
            groups = torch.zeros_like(ids)
        priority = uniform_priority(ids, self.seed)
        self.store.offer(groups.to(ids.device), -priority, ids, rows)

    def finalize(self) -> ReservoirSample:
        store = self.store
        rows = store.payload
        if rows is None:
            raise RuntimeError("ReservoirSampler.finalize() called before any rows were offered.")
        return ReservoirSample(rows=rows, ids=store.ids, n_kept=store.n_kept, n_seen=store.n_seen)
