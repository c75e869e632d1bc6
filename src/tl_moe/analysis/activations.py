"""Keep per-token hooked activations (and their labels) for analyses that fit on them, e.g. probing.

:class:`TokenActivationStore` is an :class:`~tl_moe.collect.Accumulator`: it keeps, for every real
token of the stream (BOS and padding dropped) up to ``max_tokens``, the rows of the hooks it was
asked for, stored in float16, plus the token's id, document, domain and concept labels. Rows are ordered
by their stream-wide token index, so merging shards gives exactly the single-pass store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int

from tl_moe.collect.accumulator import Accumulator, Activations
from tl_moe.collect.meta import BatchMeta


@dataclass
class StoredTokens:
    """Rows kept by a :class:`TokenActivationStore`, one per token, in stream order.

    Attributes:
        token_index: stream-wide id of each token.
        input_ids: the token itself.
        domain: domain code of the token's document (names in ``domain_names``).
        labels: concept labels ``[token, concept]`` (None without a concept labeler).
        rows: hooked tensors by key, each ``[token, ...]`` (float16 for float hooks).
        doc_index: the dataset row (document) of each token: the cluster of document-level splits
            and bootstraps (None only for stores saved before it was kept).
    """

    token_index: Int[torch.Tensor, " token"]
    input_ids: Int[torch.Tensor, " token"]
    domain: Int[torch.Tensor, " token"]
    labels: Bool[torch.Tensor, "token concept"] | None
    rows: dict[str, torch.Tensor]
    domain_names: tuple[str, ...]
    concept_names: tuple[str, ...] | None
    doc_index: Int[torch.Tensor, " token"] | None = None

    def with_concepts(self, keep: Sequence[int]) -> StoredTokens:
        """The same tokens with only the concepts at positions ``keep`` (labels and names)."""
        return StoredTokens(
            token_index=self.token_index,
            input_ids=self.input_ids,
            domain=self.domain,
            labels=self.labels[:, keep],
            rows=self.rows,
            domain_names=self.domain_names,
            concept_names=tuple(self.concept_names[c] for c in keep),
            doc_index=self.doc_index,
        )

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, torch.Tensor],
        hook_keys: Sequence[str],
        names: tuple[tuple[str, ...], tuple[str, ...] | None],
        **extra: Any,
    ) -> StoredTokens:
        """The stored tokens of a store's merged ``columns`` (token fields and one tensor per hook key),
        with ``names`` = (domain names, concept names); ``extra`` fills a subclass's own fields."""
        return cls(
            token_index=columns["token_index"],
            input_ids=columns["input_ids"],
            domain=columns["domain"],
            labels=columns.get("labels"),
            rows={key: columns[key] for key in hook_keys},
            domain_names=names[0],
            concept_names=names[1],
            doc_index=columns.get("doc_index"),
            **extra,
        )


class TokenActivationStore(Accumulator):
    """Keep hooked rows of the first ``max_tokens`` real tokens (BOS excluded).

    Args:
        hooks: the hook names to keep (``finalize().rows[name]`` holds that hook's rows), or a
            mapping key -> hook name to store them under other keys.
        max_tokens: keep at most this many tokens (by stream order); None keeps all.
    """

    def __init__(self, hooks: Sequence[str] | Mapping[str, str], max_tokens: int | None = None) -> None:
        if isinstance(hooks, str):
            raise TypeError(f"hooks must be a list of hook names, got the single string {hooks!r}.")
        if not hooks:
            raise ValueError("TokenActivationStore needs at least one hook to keep.")
        self.hooks = dict(hooks) if isinstance(hooks, Mapping) else {name: name for name in hooks}
        self.max_tokens = max_tokens
        self._parts: list[dict[str, Any]] = []
        self._names: tuple[tuple[str, ...], tuple[str, ...] | None] = ((), None)

    def config(self) -> dict[str, Any]:
        # "doc_index": stores since it was kept do not resume from checkpoints without it.
        return {"hooks": self.hooks, "max_tokens": self.max_tokens, "doc_index": True}

    def hook_names(self, model: Any) -> list[str]:
        return sorted(set(self.hooks.values()))

    def _kept(self) -> int:
        return sum(int(part["token_index"].numel()) for part in self._parts)

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        if self.max_tokens is not None and self._kept() >= self.max_tokens:
            return
        not_bos = meta.tokens(meta.doc_position) >= 0  # real tokens only, BOS dropped

        def rows_of(values: torch.Tensor) -> torch.Tensor:
            return meta.tokens(values)[not_bos].cpu()

        part: dict[str, Any] = {
            "token_index": rows_of(meta.token_index),
            "input_ids": rows_of(meta.input_ids),
            "domain": rows_of(meta.domain),
            "doc_index": rows_of(meta.doc_index),
        }
        if meta.concept_labels is not None:
            part["labels"] = rows_of(meta.concept_labels)
        for key, name in self.hooks.items():
            rows = rows_of(acts[name])
            part[key] = rows.half() if rows.dtype.is_floating_point else rows
        self._parts.append(part)
        self._names = (meta.domain_names, meta.concept_names)

    def nbytes(self) -> int:
        """Bytes of the kept tensors right now (rows, ids, labels)."""
        return sum(value.numel() * value.element_size() for part in self._parts for value in part.values())

    def _concatenated(self) -> dict[str, Any]:
        if not self._parts:
            return {}
        merged = {key: torch.cat([part[key] for part in self._parts]) for key in self._parts[0]}
        order = merged["token_index"].argsort()
        merged = {key: value[order] for key, value in merged.items()}
        if self.max_tokens is not None:
            merged = {key: value[: self.max_tokens] for key, value in merged.items()}
        return merged

    def merge(self, other: TokenActivationStore) -> TokenActivationStore:
        self._check_mergeable(other)
        self._parts = [self._concatenated(), other._concatenated()]
        self._parts = [part for part in self._parts if part]
        self._names = self._names if self._names[0] else other._names
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "tensors": self._concatenated(),
            "domain_names": list(self._names[0]),
            "concept_names": None if self._names[1] is None else list(self._names[1]),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._parts = [dict(state["tensors"])] if state["tensors"] else []
        concept_names = state["concept_names"]
        self._names = (tuple(state["domain_names"]), None if concept_names is None else tuple(concept_names))

    def finalize(self) -> StoredTokens:
        merged = self._concatenated()
        if not merged:
            raise ValueError("TokenActivationStore saw no tokens.")
        return StoredTokens.from_columns(merged, list(self.hooks), self._names)
