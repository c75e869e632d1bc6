"""A probing store whose memory does not grow with the stream: at most N rows per probing key.

:class:`BoundedTokenStore` is the bounded counterpart of
:class:`~tl_moe.analysis.activations.TokenActivationStore`. A *key* is one
``(unit, concept, class, document side)``:

- *unit*: an expert of a probed layer (its routed tokens), or — for a dense model — every token
  (a dense layer sees them all, so all its layers share one unit);
- *concept*: a concept column of the labeler, plus one catch-all column ("any token") so every
  token belongs to some key; a token is a member of a concept's keys only if its document's domain
  is one the concept is defined on (the same populations as
  :func:`~tl_moe.analysis.concept_probing.concept_populations`);
- *class*: positive or negative for the concept;
- *side*: the selection or test side of the held-out protocol's document split
  (:func:`~tl_moe.analysis.splits.document_split`, a pure function of the document id), so both
  sides of the split keep ``N`` rows per class.

Every key keeps the ``N`` members with the smallest seeded priority
``uniform_priority(token_index, seed)`` (ties: smaller token index) — a bottom-N sketch. The kept
set of a key is therefore a uniform sample of its members, it depends only on the set of tokens
streamed (not on batch order, sharding or checkpoints), and merging two shards' stores gives
exactly the single-pass store: the N smallest of A ∪ B are among the N smallest of A and of B.
Rows are stored once per token, however many keys keep it; ``finalize`` returns every kept token,
in stream order, as a :class:`BoundedStoredTokens`. While no key has more than N members, nothing
is dropped and the result equals the unbounded store's.

Every key uses the same priority of a token, so the keys' samples overlap as much as possible and
the number of distinct tokens kept stays small; a unit's probe sees its own keys' samples plus the
tokens other keys kept that were routed to it (see docs/METHODS.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.splits import document_split
from tl_moe.collect.accumulator import Accumulator, Activations
from tl_moe.collect.hashing import uniform_priority
from tl_moe.collect.meta import BatchMeta

__all__ = ["BoundedStoredTokens", "BoundedTokenStore", "concept_domain_mask"]

#: The pool is pruned back to the exact bottom-N union when it has grown to this multiple of its
#: last pruned size (amortizes the pruning cost; the result does not depend on when it happens).
_GROWTH_BEFORE_PRUNE = 1.25
_MIN_PRUNE_TOKENS = 4096
#: Member entries (token x unit slot x concept) handled at once while pruning or filtering.
_ENTRIES_PER_STEP = 1 << 24


@dataclass
class BoundedStoredTokens(StoredTokens):
    """Rows kept by a :class:`BoundedTokenStore`: a :class:`StoredTokens` plus the sketch's counts.

    Attributes:
        rows_per_class: N, the rows each key keeps at most.
        n_seen: ``[unit, concept + 1, class, side]`` members streamed per key (class 0 negative,
            1 positive; side 0 test, 1 selection; the last concept column is the catch-all).
    """

    rows_per_class: int = 0
    n_seen: Int[torch.Tensor, "unit concept_any 2 2"] | None = None

    @property
    def n_capped(self) -> int:
        """How many keys had more than N members (where rows were dropped)."""
        return 0 if self.n_seen is None else int((self.n_seen > self.rows_per_class).sum())


def concept_domain_mask(
    concept_names: Sequence[str] | None, domain_names: Sequence[str]
) -> Bool[torch.Tensor, "concept domain"]:
    """Whether each concept is defined on each domain (its ``applies_to``; unknown concepts: all)."""
    from tl_moe.data.concepts import CONCEPTS

    names = list(concept_names or ())
    mask = torch.ones(len(names), len(domain_names), dtype=torch.bool)
    for c, name in enumerate(names):
        concept = CONCEPTS.get(name)
        if concept is not None and concept.applies_to:
            mask[c] = torch.tensor([d in concept.applies_to for d in domain_names], dtype=torch.bool)
    return mask


class BoundedTokenStore(Accumulator):
    """Keep hooked rows of at most ``rows_per_class`` tokens per (unit, concept, class, side).

    Args:
        hooks: hook names to keep, or a mapping key -> hook name (as in ``TokenActivationStore``).
        rows_per_class: N, the rows each key keeps (>= 1).
        routing: ``topk_indices`` hook names whose experts are the units (one layer each); empty:
            one unit that sees every token (a dense model).
        num_experts: experts per routing layer.
        seed: seed of the token priorities (same seed, same kept set).
        selection_fraction: the held-out split's fraction of selection documents; None: no sides.
        split_seed: seed of that document split (the run's seed, as the held-out protocol uses).
    """

    def __init__(
        self,
        hooks: Sequence[str] | Mapping[str, str],
        *,
        rows_per_class: int,
        routing: Sequence[str] = (),
        num_experts: int = 1,
        seed: int = 0,
        selection_fraction: float | None = 0.5,
        split_seed: int = 0,
    ) -> None:
        if isinstance(hooks, str):
            raise TypeError(f"hooks must be a list of hook names, got the single string {hooks!r}.")
        if not hooks:
            raise ValueError("BoundedTokenStore needs at least one hook to keep.")
        if isinstance(rows_per_class, bool) or not isinstance(rows_per_class, int) or rows_per_class < 1:
            raise ValueError(f"rows_per_class must be a positive integer, got {rows_per_class!r}.")
        self.hooks = dict(hooks) if isinstance(hooks, Mapping) else {name: name for name in hooks}
        self.rows_per_class = rows_per_class
        self.routing = tuple(routing)
        self.num_experts = num_experts if self.routing else 1
        self.seed, self.selection_fraction, self.split_seed = seed, selection_fraction, split_seed
        self.n_units = len(self.routing) * self.num_experts if self.routing else 1
        self._parts: list[dict[str, torch.Tensor]] = []
        self._names: tuple[tuple[str, ...], tuple[str, ...] | None] = ((), None)
        self._n_seen: Int[torch.Tensor, " key"] | None = None
        self._threshold: Float[torch.Tensor, " key"] | None = None
        self._applies: Bool[torch.Tensor, "concept domain"] | None = None
        self._pruned_size = 0
        self.peak_nbytes = 0

    # ------------------------------------------------------------------ the Accumulator contract
    def config(self) -> dict[str, Any]:
        return {
            "store": "bounded",
            "hooks": self.hooks,
            "rows_per_class": self.rows_per_class,
            "routing": list(self.routing),
            "num_experts": self.num_experts,
            "seed": self.seed,
            "selection_fraction": self.selection_fraction,
            "split_seed": self.split_seed,
        }

    def hook_names(self, model: Any) -> list[str]:
        return sorted(set(self.hooks.values()) | set(self.routing))

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        not_bos = meta.tokens(meta.doc_position) >= 0  # real tokens only, BOS dropped

        def rows_of(values: torch.Tensor) -> torch.Tensor:
            return meta.tokens(values)[not_bos].cpu()

        token_index = rows_of(meta.token_index).long()
        if not token_index.numel():
            return
        batch: dict[str, torch.Tensor] = {
            "token_index": token_index,
            "input_ids": rows_of(meta.input_ids),
            "domain": rows_of(meta.domain),
            "doc_index": rows_of(meta.doc_index),
        }
        if meta.concept_labels is not None:
            batch["labels"] = rows_of(meta.concept_labels)
        if self._n_seen is None:
            self._start(meta.domain_names, meta.concept_names, batch.get("labels"))
        elif (meta.domain_names, meta.concept_names) != self._names:
            raise ValueError("BoundedTokenStore saw batches with different domain or concept names.")
        batch["units"] = self._units_of(
            {name: rows_of(acts[name]) for name in self.routing}, len(token_index)
        )
        batch["side"] = self._sides(batch["doc_index"])
        priority = uniform_priority(token_index, self.seed)
        n_keys = self._n_seen.numel()
        any_full = bool(torch.isfinite(self._threshold).any())
        candidate = torch.zeros(len(token_index), dtype=torch.bool) if any_full else None
        # thresholds of the keys, and -inf for the "no key" sentinel (never a candidate through it)
        limits = torch.cat([self._threshold, torch.tensor([-torch.inf], dtype=torch.float64)])
        for keys in self._member_keys(batch):
            self._n_seen = self._n_seen + torch.bincount(keys.reshape(-1), minlength=n_keys + 1)[:n_keys]
            if any_full:
                below = priority.view(-1, 1, 1) <= limits[keys]
                candidate |= below.flatten(1).any(1)
        if candidate is None:  # no key is full yet: every token is kept
            candidate = torch.ones(len(token_index), dtype=torch.bool)
        if not bool(candidate.any()):
            return
        part = {key: value[candidate] for key, value in batch.items()}
        for key, name in self.hooks.items():
            rows = rows_of(acts[name])[candidate]
            part[key] = rows.half() if rows.dtype.is_floating_point else rows
        self._parts.append(part)
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes())
        if self._pool_size() > max(_GROWTH_BEFORE_PRUNE * self._pruned_size, _MIN_PRUNE_TOKENS):
            self._prune()

    def merge(self, other: BoundedTokenStore) -> BoundedTokenStore:
        self._check_mergeable(other)
        if other._n_seen is None:
            return self
        if self._n_seen is None:
            self._start(*other._names, None)
            self._n_seen = torch.zeros_like(other._n_seen)
        elif other._names != self._names:
            raise ValueError("cannot merge BoundedTokenStores that saw different domain or concept names.")
        self._n_seen = self._n_seen + other._n_seen
        self._parts = [part for part in (self._concatenated(), other._concatenated()) if part]
        self._prune()
        self.peak_nbytes = max(self.peak_nbytes, other.peak_nbytes, self.nbytes())
        return self

    def state_dict(self) -> dict[str, Any]:
        self._prune()
        return {
            "tensors": self._concatenated(),
            "n_seen": self._n_seen,
            "domain_names": list(self._names[0]),
            "concept_names": None if self._names[1] is None else list(self._names[1]),
            "peak_nbytes": self.peak_nbytes,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        concept_names = state["concept_names"]
        names = (tuple(state["domain_names"]), None if concept_names is None else tuple(concept_names))
        self._parts, self._n_seen, self._threshold = [], None, None
        if state["n_seen"] is not None:
            self._start(*names, None)
            self._n_seen = state["n_seen"].clone()
            self._parts = [dict(state["tensors"])] if state["tensors"] else []
            self._prune()  # recomputes the thresholds
        self._names = names
        self.peak_nbytes = int(state.get("peak_nbytes", 0))

    def finalize(self) -> BoundedStoredTokens:
        self._prune()
        merged = self._concatenated()
        if not merged:
            raise ValueError("BoundedTokenStore saw no tokens.")
        order = merged["token_index"].argsort()
        merged = {key: value[order] for key, value in merged.items()}
        n_concepts = 0 if self._names[1] is None else len(self._names[1])
        return BoundedStoredTokens.from_columns(
            merged,
            list(self.hooks),
            self._names,
            rows_per_class=self.rows_per_class,
            n_seen=self._n_seen.view(self.n_units, n_concepts + 1, 2, 2).clone(),
        )

    # ------------------------------------------------------------------ introspection
    def nbytes(self) -> int:
        """Bytes of the kept tensors (rows, labels, ids, per-key counts) right now."""
        tensors = [value for part in self._parts for value in part.values()]
        tensors += [t for t in (self._n_seen, self._threshold) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def kept_per_key(self) -> Int[torch.Tensor, "unit concept_any 2 2"]:
        """Members of each key among the kept tokens (``min(N, n_seen)`` for every key)."""
        self._prune()
        counts = torch.zeros_like(self._n_seen)
        merged = self._concatenated()
        if merged:
            for keys in self._member_keys(merged):
                counts = counts + torch.bincount(keys.reshape(-1), minlength=counts.numel() + 1)[:-1]
        n_concepts = 0 if self._names[1] is None else len(self._names[1])
        return counts.view(self.n_units, n_concepts + 1, 2, 2)

    # ------------------------------------------------------------------ the sketch
    def _start(self, domain_names, concept_names, labels) -> None:
        n_concepts = 0 if concept_names is None else len(concept_names)
        if labels is not None and concept_names is None:
            n_concepts = int(labels.shape[1])
            concept_names = tuple(str(c) for c in range(n_concepts))
        self._names = (tuple(domain_names), None if concept_names is None else tuple(concept_names))
        n_keys = self.n_units * (n_concepts + 1) * 4
        self._n_seen = torch.zeros(n_keys, dtype=torch.long)
        self._threshold = torch.full((n_keys,), torch.inf, dtype=torch.float64)
        applies = concept_domain_mask(self._names[1], self._names[0])
        self._applies = torch.cat([applies, torch.ones(1, len(self._names[0]), dtype=torch.bool)])

    def _units_of(
        self, routing_rows: dict[str, torch.Tensor], n_tokens: int
    ) -> Int[torch.Tensor, "token slot"]:
        """Global unit id of each token's slots: ``layer_position * num_experts + expert``."""
        if not self.routing:
            return torch.zeros(n_tokens, 1, dtype=torch.int32)
        columns = [
            routing_rows[name].long().reshape(n_tokens, -1) + i * self.num_experts
            for i, name in enumerate(self.routing)
        ]
        return torch.cat(columns, dim=1).int()

    def _sides(self, doc_index: Int[torch.Tensor, " token"]) -> Bool[torch.Tensor, " token"]:
        """True on the held-out split's selection documents."""
        if self.selection_fraction is None or not doc_index.numel():
            return torch.zeros_like(doc_index, dtype=torch.bool)
        fractions = (self.selection_fraction, 1 - self.selection_fraction)
        return torch.from_numpy(document_split(doc_index.numpy(), fractions, seed=self.split_seed) == 0)

    def _classes(self, part: Mapping[str, torch.Tensor]) -> Int[torch.Tensor, "token concept_any"]:
        """Per token and concept (catch-all last): 1 positive, 0 negative, -1 not in the population."""
        n_tokens = part["token_index"].numel()
        labels = part.get("labels")
        labels = torch.zeros(n_tokens, 0, dtype=torch.bool) if labels is None else labels.bool()
        labels = torch.cat([labels, torch.zeros(n_tokens, 1, dtype=torch.bool)], dim=1)
        inside = self._applies.T[part["domain"].long()]  # [token, concept_any]
        return torch.where(inside, labels.long(), torch.full_like(labels, -1, dtype=torch.long))

    def _member_keys(self, part: Mapping[str, torch.Tensor]):
        """Yield ``[token, slots, concept_any]`` key ids of every membership, by chunks of slots.

        Key id: ``((unit * (concepts + 1) + concept) * 2 + class) * 2 + side``; a pair that is no
        membership (the token's domain is outside the concept's) gets the sentinel id ``n_keys``.
        A chunk holds whole layers, so every key's members lie in one chunk.
        """
        classes = self._classes(part)
        n_tokens, n_concepts = classes.shape
        n_keys = self._n_seen.numel()
        units, side = part["units"].long(), part["side"].long()
        # per (token, concept): offset of the concept and class; the sentinel where not a member
        concept_part = torch.arange(n_concepts) * 4 + classes.clamp(min=0) * 2
        unit_part = units * (n_concepts * 4) + side[:, None]
        per_layer = max(1, units.shape[1] // max(1, len(self.routing)))
        layers_per_step = max(1, _ENTRIES_PER_STEP // max(1, n_tokens * per_layer * n_concepts))
        step = per_layer * layers_per_step
        outside = (classes < 0)[:, None, :]
        for start in range(0, units.shape[1], step):
            keys = unit_part[:, start : start + step, None] + concept_part[:, None, :]
            yield keys.masked_fill_(outside, n_keys) if bool(outside.any()) else keys

    def _pool_size(self) -> int:
        return sum(int(part["token_index"].numel()) for part in self._parts)

    def _concatenated(self) -> dict[str, torch.Tensor]:
        if not self._parts:
            return {}
        if len(self._parts) == 1:
            return self._parts[0]
        return {key: torch.cat([part[key] for part in self._parts]) for key in self._parts[0]}

    def _prune(self) -> None:
        """Keep exactly the union of every key's N smallest (priority, token index); reset thresholds.

        Only keys with more than N members streamed can drop anything: the members of the others are
        all kept, so only full keys' members are ranked (and only those at or below the key's last
        threshold, an upper bound of its N-th smallest: thresholds only fall, and one store's bound
        holds for any union with it).
        """
        if self._n_seen is None:
            return
        pool = self._concatenated()
        n = self.rows_per_class
        full_keys = self._n_seen > n
        if not pool or not bool(full_keys.any()):
            self._parts = [pool] if pool else []
            self._pruned_size = self._pool_size()
            return
        threshold = torch.full_like(self._threshold, torch.inf)
        priority = uniform_priority(pool["token_index"], self.seed)
        order = pool["token_index"].argsort(stable=True)
        order = order[priority[order].argsort(stable=True)]
        pool = {key: value[order] for key, value in pool.items()}
        priority = priority[order]
        kept = torch.zeros(len(priority), dtype=torch.bool)
        # per key: 0 not full (its members are all kept), 1 full (members ranked), 2 the sentinel
        state = torch.cat([full_keys.to(torch.int8), torch.tensor([2], dtype=torch.int8)])
        for keys in self._member_keys(pool):
            per_token = keys[0].numel()
            key_state = state[keys]
            kept |= (key_state == 0).flatten(1).any(1)  # a member of a key that is not full
            members = (key_state == 1).reshape(-1).nonzero().flatten()  # token-major: priority order
            member_keys = keys.reshape(-1)[members]
            member_priority = priority[members // per_token]
            low = member_priority <= self._threshold[member_keys]
            members, member_keys, member_priority = members[low], member_keys[low], member_priority[low]
            sorted_keys, perm = member_keys.sort(stable=True)
            position = torch.arange(len(sorted_keys))
            starts = torch.ones_like(sorted_keys, dtype=torch.bool)
            starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
            rank = position - torch.where(starts, position, 0).cummax(0).values
            kept[members[perm[rank < n]] // per_token] = True
            last = rank == n - 1  # the N-th smallest of a full key: its threshold
            threshold[sorted_keys[last]] = member_priority[perm[last]]
        self._parts = [{key: value[kept] for key, value in pool.items()}]
        self._threshold = threshold
        self._pruned_size = int(kept.sum())
