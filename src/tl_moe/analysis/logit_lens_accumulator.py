"""Corpus-level logit lens of every expert, as an accumulator for the collection pass.

Over all tokens routed to each (layer, expert), :class:`ExpertLogitLensAccumulator` gathers:

- **top-n counts**: how often each vocabulary token (or vocabulary *group*, given a
  ``token_groups`` map) is among the ``top_n`` tokens of the expert's raw logit lens on a routed
  token — the output distribution of functional specialization. Stored sparsely (only the
  (layer, expert, bin) cells that occur), so a 150k vocabulary costs what the corpus touches.
- **direct logit attribution on the actual next token**: the sum, over routed tokens that have a
  next token in their window, of routing weight × residual multiplier × expert output × γ / RMS
  of the final residual · W_U[next token] (window-relative positions throughout: the target of
  position ``p`` is ``input_ids[p + 1]`` of the same window, never a flattened index).
- **mean raw lens**: the sum of expert outputs per expert; the mean raw-lens logit over routed
  tokens is the lens of the mean output (the lens is linear), so its top tokens are exact.
- **per-document output sums** (while they fit in a fixed memory bound): the same sums split by
  document, so the mean lens, and what it ranks first, can be recomputed on resampled documents.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_moe.analysis._vocab_top import vocab_topk
from tl_moe.analysis.logit_lens import expert_logit_lens
from tl_moe.analysis.readout import LogitReadout
from tl_moe.collect.accumulator import Accumulator, Activations, same_device
from tl_moe.collect.meta import BatchMeta
from tl_moe.models.hook_names import get_act_name
from tl_moe.models.introspect import config_of

__all__ = ["ExpertLogitLensAccumulator", "ExpertLogitLensResult", "top_n_vocab"]

# Largest number of logits materialised at once when ranking the whole vocabulary (16 MB in float32):
# small enough that the screen of :func:`~tl_moe.analysis._vocab_top.vocab_topk` reads them from cache
# (1,024 rows of a 4,096-token vocabulary rank 15% faster than 4,096), large enough that re-reading the
# unembedding for every chunk costs little (83 rows of a 50,304-token vocabulary rank as fast as 333).
_LOGITS_PER_CHUNK = 1 << 22
# Most per-document output-sum elements kept (document x layer x expert x d_model); past it they are
# dropped and the document bootstrap of the lens is unavailable.
_DOCUMENT_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class ExpertLogitLensResult:
    """What the experts of the accumulated layers write into the vocabulary over a corpus.

    Attributes:
        layers: The block index of each row of the ``layer`` axis.
        top_n: Rank cut-off of the top-n counts.
        token_groups: Vocabulary token -> group map the counts were binned by (None: by token).
        topn_counts: Sparse ``[layer, expert, bin]`` counts of routed tokens on which a token of
            ``bin`` was among the expert's top-n raw-lens tokens (``bin`` = token id, or group).
        n_routed: Routed (token, slot) events per expert.
        dla_sum: Sum of the direct logit attribution on the next token over routed tokens that
            have one.
        n_dla: Number of those routed tokens.
        top_token_ids: Tokens with the highest mean raw-lens logit over routed tokens, best first
            (-1 for an expert that received no token).
        top_token_logits: Those mean logits (NaN for an expert that received no token).
        doc_ids: Sorted ids of the documents of the per-document sums (None when they did not fit).
        doc_out_sum: ``[document, layer, expert, d_model]`` sum of expert outputs per document.
        doc_n_routed: ``[document, layer, expert]`` routed (token, slot) events per document.
    """

    layers: tuple[int, ...]
    top_n: int
    token_groups: Int[torch.Tensor, " vocab"] | None
    topn_counts: Int[torch.Tensor, "layer expert bin"]
    n_routed: Int[torch.Tensor, "layer expert"]
    dla_sum: Float[torch.Tensor, "layer expert"]
    n_dla: Int[torch.Tensor, "layer expert"]
    top_token_ids: Int[torch.Tensor, "layer expert k"]
    top_token_logits: Float[torch.Tensor, "layer expert k"]
    doc_ids: Int[torch.Tensor, " document"] | None = None
    doc_out_sum: Float[torch.Tensor, "document layer expert d_model"] | None = None
    doc_n_routed: Int[torch.Tensor, "document layer expert"] | None = None

    @property
    def dla_mean(self) -> Float[torch.Tensor, "layer expert"]:
        """Mean next-token DLA per routed token (NaN where no routed token had a next token)."""
        return torch.where(self.n_dla > 0, self.dla_sum / self.n_dla.clamp(min=1), torch.nan)

    def dense_counts(self) -> Int[torch.Tensor, "layer expert bin"]:
        """:attr:`topn_counts` as a dense tensor (mind the size for a full vocabulary)."""
        return self.topn_counts.to_dense()

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, expert): routed count, DLA sum and mean, top mean-lens token ids."""
        n_layers, n_experts = self.n_routed.shape
        layer_of = torch.tensor(self.layers).repeat_interleave(n_experts)
        return pd.DataFrame(
            {
                "layer": layer_of.tolist(),
                "expert": torch.arange(n_experts).repeat(n_layers).tolist(),
                "n_routed": self.n_routed.reshape(-1).tolist(),
                "n_dla": self.n_dla.reshape(-1).tolist(),
                "dla_sum": self.dla_sum.reshape(-1).tolist(),
                "dla_mean": self.dla_mean.reshape(-1).tolist(),
                "top_token_ids": self.top_token_ids.reshape(n_layers * n_experts, -1).tolist(),
            }
        )

    def top_tokens(self, tokenizer) -> pd.DataFrame:
        """Long table of each expert's top mean-lens tokens: layer, expert, rank, token id, text, logit."""
        n_layers, n_experts, k = self.top_token_ids.shape
        ids = self.top_token_ids.reshape(-1).tolist()
        return pd.DataFrame(
            {
                "layer": torch.tensor(self.layers).repeat_interleave(n_experts * k).tolist(),
                "expert": torch.arange(n_experts).repeat_interleave(k).repeat(n_layers).tolist(),
                "rank": torch.arange(k).repeat(n_layers * n_experts).tolist(),
                "token_id": ids,
                "token": [tokenizer.decode([token]) if token >= 0 else None for token in ids],
                "mean_logit": self.top_token_logits.reshape(-1).tolist(),
            }
        )


class _SparseCounts:
    """Counts over a huge flat key space, keeping only keys that occurred (sorted, unique)."""

    def __init__(self) -> None:
        self.keys = torch.zeros(0, dtype=torch.long)
        self.counts = torch.zeros(0, dtype=torch.long)

    def add(self, keys: Int[torch.Tensor, " n"], counts: Int[torch.Tensor, " n"] | None = None) -> None:
        counts = torch.ones_like(keys) if counts is None else counts.to(device=keys.device, dtype=torch.long)
        all_keys = torch.cat([same_device(self.keys, keys), keys])
        all_counts = torch.cat([same_device(self.counts, keys), counts])
        self.keys, inverse = torch.unique(all_keys, sorted=True, return_inverse=True)
        self.counts = torch.zeros_like(self.keys).index_add(0, inverse, all_counts)


class ExpertLogitLensAccumulator(Accumulator):
    """Accumulates each expert's logit lens over a corpus (see the module docstring).

    Args:
        model: The tl_moe-loaded bridge the corpus runs through (its final norm and unembedding
            are read once; they are not part of the saved state).
        layers: Sparse layers to accumulate (default: all of them).
        top_n: A token counts for an expert on a routed token when it is among the ``top_n``
            highest raw-lens logits of that expert's output there (3 in the reference method).
        token_groups: Optional ``[vocab]`` map of token id -> group in ``[0, n_groups)``; counts
            are then kept per group (e.g. spherical k-means clusters of the unembedding).
        n_top_tokens: How many top mean-lens tokens the result lists per expert.
    """

    def __init__(
        self,
        model,
        layers: Sequence[int] | None = None,
        top_n: int = 3,
        token_groups: Int[torch.Tensor, " vocab"] | None = None,
        n_top_tokens: int = 10,
    ) -> None:
        cfg = config_of(model)
        if not cfg.is_moe:
            raise ValueError(
                f"{cfg.architecture} is a dense model; the expert logit lens needs routed experts."
            )
        self.layers = tuple(cfg.sparse_layers if layers is None else (int(layer) for layer in layers))
        unknown = [layer for layer in self.layers if layer not in cfg.sparse_layers]
        if not self.layers or unknown:
            raise ValueError(
                f"layers must be a non-empty subset of the sparse layers {list(cfg.sparse_layers)}; got {layers!r}."
            )
        self.readout = LogitReadout.from_model(model)
        vocab = self.readout.d_vocab
        if not 1 <= top_n <= vocab or not 1 <= n_top_tokens <= vocab:
            raise ValueError(
                f"top_n and n_top_tokens must lie in [1, {vocab}]; got {top_n} and {n_top_tokens}."
            )
        self.top_n, self.n_top_tokens = int(top_n), int(n_top_tokens)
        self.n_experts, self.final_layer = cfg.num_experts, cfg.n_layers - 1
        self.token_groups = None if token_groups is None else _checked_groups(token_groups, vocab)
        self.n_bins = vocab if self.token_groups is None else int(self.token_groups.max()) + 1
        n_layers = len(self.layers)
        self.counts = _SparseCounts()
        self.n_routed = torch.zeros(n_layers, self.n_experts, dtype=torch.long)
        self.out_sum = torch.zeros(n_layers, self.n_experts, self.readout.d_model, dtype=torch.float64)
        self.dla_sum = torch.zeros(n_layers, self.n_experts, dtype=torch.float64)
        self.n_dla = torch.zeros(n_layers, self.n_experts, dtype=torch.long)
        self.doc_ids: torch.Tensor | None = torch.zeros(0, dtype=torch.long)
        self.doc_out = torch.zeros(0, n_layers, self.n_experts, self.readout.d_model)
        self.doc_n = torch.zeros(0, n_layers, self.n_experts, dtype=torch.long)

    def _add_documents(
        self,
        ids: Int[torch.Tensor, " d"],
        out: Float[torch.Tensor, "d layer expert d_model"],
        n: Int[torch.Tensor, "d layer expert"],
    ) -> None:
        """Add per-document sums into the kept ones; drop them all once they outgrow the bound."""
        if self.doc_ids is None:
            return
        all_ids, inverse = torch.unique(
            torch.cat([self.doc_ids, ids.cpu()]), sorted=True, return_inverse=True
        )
        if len(all_ids) * math.prod(self.doc_out.shape[1:]) > _DOCUMENT_ELEMENTS:
            self.doc_ids, self.doc_out, self.doc_n = None, self.doc_out[:0], self.doc_n[:0]
            return
        merged_out = self.doc_out.new_zeros((len(all_ids), *self.doc_out.shape[1:]))
        merged_n = self.doc_n.new_zeros((len(all_ids), *self.doc_n.shape[1:]))
        merged_out.index_add_(0, inverse, torch.cat([self.doc_out, out.cpu().float()]))
        merged_n.index_add_(0, inverse, torch.cat([self.doc_n, n.cpu().long()]))
        self.doc_ids, self.doc_out, self.doc_n = all_ids, merged_out, merged_n

    def config(self) -> dict[str, Any]:
        groups = None
        if self.token_groups is not None:
            groups = hashlib.sha1(self.token_groups.cpu().numpy().tobytes()).hexdigest()[:16]
        return {
            "layers": list(self.layers),
            "top_n": self.top_n,
            "n_top_tokens": self.n_top_tokens,
            "n_experts": self.n_experts,
            "n_bins": self.n_bins,
            "token_groups": groups,
        }

    def hook_names(self, model: Any) -> list[str]:
        names = [
            get_act_name(kind, layer)
            for layer in self.layers
            for kind in ("expert_out", "topk_weights", "topk_indices")
        ]
        return names + [f"blocks.{self.final_layer}.hook_resid_post"]

    def _top_n_bins(self, rows: Float[torch.Tensor, "rows d_model"]) -> Int[torch.Tensor, "rows top_n"]:
        """The bins of the ``top_n`` raw-lens tokens of each row, ranked in chunks of rows."""
        top = top_n_vocab(self.readout, rows, self.top_n)
        return top if self.token_groups is None else same_device(self.token_groups, top)[top]

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        final = acts[f"blocks.{self.final_layer}.hook_resid_post"]
        device = final.device
        real = meta.attention_mask.to(device)
        has_next = torch.zeros_like(real)
        has_next[:, :-1] = real[:, :-1] & real[:, 1:]
        next_ids = meta.input_ids.to(device).roll(-1, dims=1)[has_next]  # window-relative: p -> p + 1
        inverse_rms = self.readout.inverse_rms(final)[has_next]
        n_routed, out_sum, dla_sum, n_dla, keys = [], [], [], [], []
        batch_docs, doc_of_real = torch.unique(meta.doc_index.to(device)[real], return_inverse=True)
        doc_out = torch.zeros(
            len(batch_docs) * len(self.layers) * self.n_experts, self.readout.d_model, device=device
        )
        doc_n = torch.zeros(
            len(batch_docs) * len(self.layers) * self.n_experts, dtype=torch.long, device=device
        )
        for row, layer in enumerate(self.layers):
            out = acts[get_act_name("expert_out", layer)]
            weights = acts[get_act_name("topk_weights", layer)]
            experts = acts[get_act_name("topk_indices", layer)].to(torch.long)
            routed_out, routed_experts = out[real], experts[real].reshape(-1)
            n_routed.append(torch.bincount(routed_experts, minlength=self.n_experts))
            rows = routed_out.reshape(-1, out.shape[-1])
            out_sum.append(
                rows.new_zeros((self.n_experts, rows.shape[-1]), dtype=torch.float64).index_add(
                    0, routed_experts, rows.to(torch.float64)
                )
            )
            slots = experts.shape[-1]
            cell = (
                doc_of_real.repeat_interleave(slots) * len(self.layers) + row
            ) * self.n_experts + routed_experts
            doc_out.index_add_(0, cell, rows.float())
            doc_n += torch.bincount(cell, minlength=len(doc_n))
            bins = self._top_n_bins(rows)
            keys.append((((row * self.n_experts + routed_experts) * self.n_bins)[:, None] + bins).reshape(-1))
            lens = expert_logit_lens(
                self.readout, out[has_next][None], weights[has_next][None], inverse_rms[None], next_ids[None]
            )
            next_experts = experts[has_next].reshape(-1)
            dla = lens.dla[0, :, :, 0].reshape(-1).to(torch.float64)
            dla_sum.append(dla.new_zeros(self.n_experts).index_add(0, next_experts, dla))
            n_dla.append(torch.bincount(next_experts, minlength=self.n_experts))
        self.counts.add(torch.cat(keys))
        shape = (len(batch_docs), len(self.layers), self.n_experts)
        self._add_documents(batch_docs, doc_out.reshape(*shape, -1), doc_n.reshape(shape))
        self.n_routed = same_device(self.n_routed, final) + torch.stack(n_routed)
        self.out_sum = same_device(self.out_sum, final) + torch.stack(out_sum)
        self.dla_sum = same_device(self.dla_sum, final) + torch.stack(dla_sum)
        self.n_dla = same_device(self.n_dla, final) + torch.stack(n_dla)

    def merge(self, other: ExpertLogitLensAccumulator) -> ExpertLogitLensAccumulator:
        self._check_mergeable(other)
        self.counts.add(other.counts.keys.to(self.counts.keys.device), other.counts.counts)
        if other.doc_ids is None:
            self.doc_ids, self.doc_out, self.doc_n = None, self.doc_out[:0], self.doc_n[:0]
        else:
            self._add_documents(other.doc_ids, other.doc_out, other.doc_n)
        for name in ("n_routed", "out_sum", "dla_sum", "n_dla"):
            mine = getattr(self, name)
            setattr(self, name, mine + getattr(other, name).to(mine.device))
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "count_keys": self.counts.keys,
            "counts": self.counts.counts,
            "n_routed": self.n_routed,
            "out_sum": self.out_sum,
            "dla_sum": self.dla_sum,
            "n_dla": self.n_dla,
            "doc_kept": self.doc_ids is not None,
            "doc_ids": self.doc_ids if self.doc_ids is not None else torch.zeros(0, dtype=torch.long),
            "doc_out": self.doc_out,
            "doc_n": self.doc_n,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counts.keys, self.counts.counts = state["count_keys"], state["counts"]
        self.n_routed, self.out_sum = state["n_routed"], state["out_sum"]
        self.dla_sum, self.n_dla = state["dla_sum"], state["n_dla"]
        if "doc_out" in state:
            self.doc_ids = state["doc_ids"] if state["doc_kept"] else None
            self.doc_out, self.doc_n = state["doc_out"], state["doc_n"]
        else:  # a checkpoint written before per-document sums were kept
            self.doc_ids, self.doc_out, self.doc_n = None, self.doc_out[:0], self.doc_n[:0]

    def finalize(self) -> ExpertLogitLensResult:
        n_layers, n_experts, n_bins = len(self.layers), self.n_experts, self.n_bins
        keys = self.counts.keys.cpu()
        index = torch.stack([keys // (n_experts * n_bins), (keys // n_bins) % n_experts, keys % n_bins])
        counts = torch.sparse_coo_tensor(
            index,
            self.counts.counts.cpu(),
            (n_layers, n_experts, n_bins),
            is_coalesced=True,
            check_invariants=True,
        )
        mean_out = self.out_sum / self.n_routed.clamp(min=1)[..., None].to(self.out_sum)
        top = [
            self.readout.vocab_logits(mean_out[row]).topk(self.n_top_tokens, dim=-1)
            for row in range(n_layers)
        ]
        empty = (self.n_routed == 0)[..., None].cpu()
        top_ids = torch.stack([t.indices for t in top]).cpu().masked_fill(empty, -1)
        top_logits = (
            torch.stack([t.values for t in top]).cpu().to(torch.float64).masked_fill(empty, torch.nan)
        )
        return ExpertLogitLensResult(
            layers=self.layers,
            top_n=self.top_n,
            token_groups=self.token_groups,
            topn_counts=counts.coalesce(),
            n_routed=self.n_routed.cpu(),
            dla_sum=self.dla_sum.cpu(),
            n_dla=self.n_dla.cpu(),
            top_token_ids=top_ids,
            top_token_logits=top_logits,
            doc_ids=self.doc_ids,
            doc_out_sum=None if self.doc_ids is None else self.doc_out,
            doc_n_routed=None if self.doc_ids is None else self.doc_n,
        )


def top_n_vocab(
    readout: LogitReadout,
    rows: Float[torch.Tensor, "rows d_model"],
    top_n: int,
    logits_per_chunk: int | None = None,
) -> Int[torch.Tensor, "rows top_n"]:
    """Token ids of the ``top_n`` highest raw-lens logits of each row, in decreasing order.

    The ``[rows, vocab]`` logits are never materialised at once: rows are ranked in chunks of at most
    ``logits_per_chunk`` logits (default 2^22), each by :func:`~tl_moe.analysis._vocab_top.vocab_topk` (the
    tokens ``topk`` gives, without ranking every logit). Each row is ranked on its own, so the result
    does not depend on the chunking.
    """
    logits_per_chunk = _LOGITS_PER_CHUNK if logits_per_chunk is None else logits_per_chunk
    chunk = max(1, logits_per_chunk // readout.d_vocab)
    parts = [vocab_topk(_vocab_logits(readout, part), top_n)[1] for part in rows.split(chunk)]
    return torch.cat(parts) if parts else rows.new_zeros((0, top_n), dtype=torch.long)


def _vocab_logits(
    readout: LogitReadout, x: Float[torch.Tensor, "rows d_model"]
) -> Float[torch.Tensor, "rows vocab"]:
    """:meth:`LogitReadout.vocab_logits` without a second pass over the logits for a scale of 1.

    Multiplying by 1.0 leaves every value as it is, so the logits are the same; other scales are
    applied in place.
    """
    x = readout._prepare(x, through_final_norm=True)
    logits = x @ readout.unembed.to(device=x.device, dtype=x.dtype).T
    return logits if readout.logit_scale == 1.0 else logits.mul_(readout.logit_scale)


def _checked_groups(token_groups: torch.Tensor, vocab: int) -> Int[torch.Tensor, " vocab"]:
    groups = torch.as_tensor(token_groups)
    if groups.dtype.is_floating_point or groups.dtype == torch.bool or groups.shape != (vocab,):
        raise ValueError(
            f"token_groups must be an integer tensor with one group per vocabulary token, shape ({vocab},); "
            f"got dtype {groups.dtype} and shape {tuple(groups.shape)}."
        )
    if int(groups.min()) < 0:
        raise ValueError("token_groups must hold non-negative group ids.")
    return groups.to(torch.long)
