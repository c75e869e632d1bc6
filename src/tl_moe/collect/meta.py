"""Per-token metadata that travels with every batch of the collection pass."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from jaxtyping import Bool, Int


@dataclass(frozen=True)
class BatchMeta:
    """What each position of a batch of fixed-length token windows is.

    Every per-token field is laid out ``[batch, pos]`` like the model input. Padding
    positions carry filler values; they are excluded everywhere by ``attention_mask``,
    so reduce with :meth:`tokens`, which keeps only real tokens.

    Attributes:
        input_ids: token id fed to the model at each position (``pad`` on padding).
        attention_mask: True on real tokens (BOS included), False on padding.
        position: index of the position inside its window; 0 is the window's first
            token (the BOS token when the tokenizer has one).
        doc_index: row of the source dataset the token comes from.
        doc_position: index of the token in its document's own token list (the
            tokenizer's output without special tokens); -1 on a prepended BOS.
        domain: integer domain code of the token's document, an index into
            ``domain_names``.
        token_index: a stream-wide unique id of the position,
            ``window_index * seq_len + position``; it does not depend on how the
            stream is sharded or resumed, so it identifies a token across processes.
        window_index: stream-wide index of each row's window.
        batch_index: stream-wide index of this batch.
        domain_names: names of the domain codes.
        concept_labels: True where a token belongs to a concept, from the concept
            labeler passed to ``collect``; False on BOS and padding. None without one.
        concept_names: names of the concept columns, when the labeler has them.
    """

    input_ids: Int[torch.Tensor, "batch pos"]
    attention_mask: Bool[torch.Tensor, "batch pos"]
    position: Int[torch.Tensor, "batch pos"]
    doc_index: Int[torch.Tensor, "batch pos"]
    doc_position: Int[torch.Tensor, "batch pos"]
    domain: Int[torch.Tensor, "batch pos"]
    token_index: Int[torch.Tensor, "batch pos"]
    window_index: Int[torch.Tensor, " batch"]
    batch_index: int
    domain_names: tuple[str, ...]
    concept_labels: Bool[torch.Tensor, "batch pos concept"] | None = None
    concept_names: tuple[str, ...] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_tokens(self) -> int:
        """Number of real (non-padding) tokens in the batch."""
        return int(self.attention_mask.sum())

    def tokens(self, values: torch.Tensor) -> torch.Tensor:
        """Keep the rows of ``values`` that belong to real tokens, in row-major order.

        Accepts both layouts hooks produce: ``[batch, pos, *rest]`` (residual
        stream, MLP output) and ``[batch * pos, *rest]`` (router tensors that
        flatten the batch). Returns ``[n_tokens, *rest]``.
        """
        batch, pos = self.attention_mask.shape
        if values.ndim >= 2 and values.shape[0] == batch and values.shape[1] == pos:
            return values[self.attention_mask]
        if values.ndim >= 1 and values.shape[0] == batch * pos:
            return values[self.attention_mask.reshape(-1)]
        raise ValueError(
            f"cannot align a tensor of shape {tuple(values.shape)} with a batch of "
            f"{batch} windows x {pos} positions: expected a leading [batch, pos] = "
            f"[{batch}, {pos}] or a flattened [batch * pos] = [{batch * pos}]."
        )

    def to(self, device: torch.device | str) -> BatchMeta:
        """A copy with every tensor field on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)
