"""Per-key top-n tracking: the n highest-scoring events seen for each key.

The selection rule is total — highest score first, ties broken by the smaller event
id — so the kept set depends only on the set of events offered, never on their order
or on how they were split between accumulators. Merging is "top-n of the union".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int

from tl_moe.collect.accumulator import Activations, HookedAccumulator, HookSpec
from tl_moe.collect.meta import BatchMeta


def _order_within_keys(
    keys: Int[torch.Tensor, " n"], scores: Float[torch.Tensor, " n"], ids: Int[torch.Tensor, " n"]
) -> Int[torch.Tensor, " n"]:
    """Permutation sorting by key ascending, then score descending, then id ascending."""
    order = torch.argsort(ids, stable=True)
    order = order[torch.argsort(scores[order], descending=True, stable=True)]
    return order[torch.argsort(keys[order], stable=True)]


class KeyedTopN:
    """For each of ``n_keys`` keys, the ``n`` best (score, id, payload) triples offered so far.

    Attributes:
        scores: kept scores per key, best first; ``-inf`` in unfilled slots.
        ids: kept event ids per key, aligned with ``scores``; -1 in unfilled slots.
        payload: what was stored with each kept event (None until one is offered
            with a payload); zeros in unfilled slots.
        n_seen: how many events were offered per key.
    """

    def __init__(self, n_keys: int, n: int) -> None:
        if n_keys < 1 or n < 1:
            raise ValueError(f"n_keys and n must be positive, got n_keys={n_keys}, n={n}.")
        self.n_keys, self.n = n_keys, n
        self.scores: Float[torch.Tensor, "n_keys n"] = torch.full(
            (n_keys, n), -torch.inf, dtype=torch.float64
        )
        self.ids: Int[torch.Tensor, "n_keys n"] = torch.full((n_keys, n), -1, dtype=torch.long)
        self.payload: torch.Tensor | None = None
        self.n_seen: Int[torch.Tensor, " n_keys"] = torch.zeros(n_keys, dtype=torch.long)

    @property
    def n_kept(self) -> Int[torch.Tensor, " n_keys"]:
        return (self.ids >= 0).sum(dim=1)

    def offer(
        self,
        keys: Int[torch.Tensor, " n_events"],
        scores: Float[torch.Tensor, " n_events"],
        ids: Int[torch.Tensor, " n_events"],
        payload: torch.Tensor | None = None,
    ) -> None:
        """Consider new events; each key keeps its n best of old and new."""
        device = keys.device
        keys, ids = keys.to(torch.long).reshape(-1), ids.to(device=device, dtype=torch.long).reshape(-1)
        scores = scores.to(device=device, dtype=torch.float64).reshape(-1)
        if not keys.shape == scores.shape == ids.shape:
            raise ValueError(
                f"keys, scores and ids must have one entry per event, got shapes "
                f"{tuple(keys.shape)}, {tuple(scores.shape)}, {tuple(ids.shape)}."
            )
        if payload is not None and payload.shape[0] != keys.shape[0]:
            raise ValueError(f"payload has {payload.shape[0]} rows for {keys.shape[0]} events.")
        if keys.numel() and bool(((keys < 0) | (keys >= self.n_keys)).any()):
            raise ValueError(f"keys must lie in [0, {self.n_keys}).")
        if bool(torch.isnan(scores).any()):
            raise ValueError("scores contain NaN; every event needs a comparable score.")
        if bool((ids < 0).any()):
            raise ValueError("event ids must be non-negative.")
        self._move_to(device)
        self.n_seen = self.n_seen + torch.bincount(keys, minlength=self.n_keys)
        worst_kept = self.scores[:, -1]
        could_enter = scores >= worst_kept[keys]
        if payload is not None:
            payload = payload.to(device)[could_enter]
        self._select(keys[could_enter], scores[could_enter], ids[could_enter], payload)

    def merge(self, other: KeyedTopN) -> None:
        """Keep, per key, the n best of both stores."""
        if (other.n_keys, other.n) != (self.n_keys, self.n):
            raise ValueError(
                f"cannot merge a top-{other.n} over {other.n_keys} keys into a top-{self.n} "
                f"over {self.n_keys} keys."
            )
        device = self.scores.device
        filled = other.ids.to(device) >= 0
        keys = torch.arange(self.n_keys, device=device)[:, None].expand(-1, self.n)[filled]
        payload = None if other.payload is None else other.payload.to(device)[filled]
        self._select(keys, other.scores.to(device)[filled], other.ids.to(device)[filled], payload)
        self.n_seen = self.n_seen + other.n_seen.to(device)

    def _select(
        self,
        keys: Int[torch.Tensor, " m"],
        scores: Float[torch.Tensor, " m"],
        ids: Int[torch.Tensor, " m"],
        payload: torch.Tensor | None,
    ) -> None:
        if keys.numel() == 0:
            return
        if payload is not None and self.payload is None:
            self.payload = payload.new_zeros((self.n_keys, self.n, *payload.shape[1:]))
        if (payload is None) != (self.payload is None):
            raise ValueError("either every event carries a payload or none does.")
        filled = self.ids >= 0
        old_keys = torch.arange(self.n_keys, device=keys.device)[:, None].expand(-1, self.n)[filled]
        all_keys = torch.cat([old_keys, keys])
        all_scores = torch.cat([self.scores[filled], scores])
        all_ids = torch.cat([self.ids[filled], ids])
        order = _order_within_keys(all_keys, all_scores, all_ids)
        sorted_keys = all_keys[order]
        per_key = torch.bincount(sorted_keys, minlength=self.n_keys)
        first_of_key = torch.cumsum(per_key, 0) - per_key
        rank = torch.arange(order.numel(), device=keys.device) - first_of_key[sorted_keys]
        kept = rank < self.n
        rows, cols, source = sorted_keys[kept], rank[kept], order[kept]
        self.scores = torch.full_like(self.scores, -torch.inf).index_put((rows, cols), all_scores[source])
        self.ids = torch.full_like(self.ids, -1).index_put((rows, cols), all_ids[source])
        if payload is not None:
            all_payload = torch.cat([self.payload[filled], payload.to(self.payload.dtype)])
            self.payload = torch.zeros_like(self.payload).index_put((rows, cols), all_payload[source])

    def _move_to(self, device: torch.device) -> None:
        if self.scores.device != device:
            self.scores, self.ids, self.n_seen = (t.to(device) for t in (self.scores, self.ids, self.n_seen))
            if self.payload is not None:
                self.payload = self.payload.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "ids": self.ids, "payload": self.payload, "n_seen": self.n_seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scores, self.ids = state["scores"], state["ids"]
        self.payload, self.n_seen = state["payload"], state["n_seen"]


class ScoredEvents(NamedTuple):
    """What a :class:`TopKTracker` extract function returns for one batch.

    Attributes:
        keys: which list each event competes in (e.g. ``layer * n_experts + expert``).
        scores: higher is better.
        ids: a unique non-negative id per event, stable across runs (e.g.
            ``meta.tokens(meta.token_index)``); breaks ties and locates the event later.
        payload: optional rows stored with each kept event (e.g. the window's token ids).
    """

    keys: Int[torch.Tensor, " n_events"]
    scores: Float[torch.Tensor, " n_events"]
    ids: Int[torch.Tensor, " n_events"]
    payload: torch.Tensor | None = None


@dataclass(frozen=True)
class TopKResult:
    """Each key's best events, best first.

    Attributes:
        scores: scores of the kept events; ``-inf`` where a key kept fewer than k.
        ids: ids of the kept events; -1 in unfilled slots.
        payload: payloads of the kept events (None if none were given).
        n_kept: number of filled slots per key.
        n_seen: number of events offered per key.
    """

    scores: Float[torch.Tensor, "n_keys k"]
    ids: Int[torch.Tensor, "n_keys k"]
    payload: torch.Tensor | None
    n_kept: Int[torch.Tensor, " n_keys"]
    n_seen: Int[torch.Tensor, " n_keys"]


class KeyedTopNAccumulator(HookedAccumulator):
    """An accumulator whose whole state is one :class:`KeyedTopN` (``self.store``): merging and
    saving it is merging and saving the store."""

    store: KeyedTopN

    def merge(self, other: KeyedTopNAccumulator) -> KeyedTopNAccumulator:
        self._check_mergeable(other)
        self.store.merge(other.store)
        return self

    def state_dict(self) -> dict[str, Any]:
        return self.store.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.store.load_state_dict(state)


class TopKTracker(KeyedTopNAccumulator):
    """Keeps the top-k (score, payload) per key, e.g. each expert's 40 strongest contexts.

    Args:
        hooks: hook names the extract function reads (or ``model -> names``).
        extract: ``(acts, meta) -> ScoredEvents``.
        n_keys: number of keys.
        k: events kept per key.
    """

    def __init__(
        self,
        hooks: HookSpec,
        extract: Callable[[Activations, BatchMeta], ScoredEvents],
        *,
        n_keys: int,
        k: int,
    ) -> None:
        super().__init__(hooks, extract)
        self.n_keys, self.k = n_keys, k
        self.store = KeyedTopN(n_keys, k)

    def config(self) -> dict[str, Any]:
        return {"n_keys": self.n_keys, "k": self.k}

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        self.store.offer(*self.extract(acts, meta))

    def finalize(self) -> TopKResult:
        store = self.store
        return TopKResult(store.scores, store.ids, store.payload, store.n_kept, store.n_seen)
