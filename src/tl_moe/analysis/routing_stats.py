"""Routing counts over a corpus: which experts each domain's tokens, and each vocabulary group's
tokens, are routed to. The inputs of routing specialization and of domain experts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int

from tl_moe.collect.counts import BinEvents, CountAccumulator
from tl_moe.models.config import MoEConfig
from tl_moe.models.hook_names import get_act_name


def _routed_events(layers: Sequence[int], token_bins, acts, meta) -> BinEvents:
    """Events (layer position, expert, bin of the routed token) for every real, non-BOS token."""
    not_bos = meta.tokens(meta.doc_position) >= 0
    bins = token_bins(meta)[not_bos]
    events = []
    for position, layer in enumerate(layers):
        indices = meta.tokens(acts[get_act_name("topk_indices", layer)])[not_bos]  # [n, k]
        k = indices.shape[-1]
        events.append(
            torch.stack(
                [
                    torch.full((indices.numel(),), position, device=indices.device),
                    indices.reshape(-1).long(),
                    bins.to(indices.device).repeat_interleave(k),
                ],
                dim=1,
            )
        )
    return BinEvents(torch.cat(events))


def routed_tokens_by_domain(cfg: MoEConfig, n_domains: int) -> CountAccumulator:
    """Counts ``[sparse layer, expert, domain]`` of routed (token, slot) pairs."""
    layers = list(cfg.sparse_layers)
    return CountAccumulator(
        [get_act_name("topk_indices", layer) for layer in layers],
        lambda acts, meta: _routed_events(layers, lambda m: m.tokens(m.domain), acts, meta),
        shape=(len(layers), cfg.num_experts, n_domains),
    )


def routed_tokens_by_group(cfg: MoEConfig, token_groups: Int[torch.Tensor, " vocab"]) -> CountAccumulator:
    """Counts ``[sparse layer, expert, vocabulary group]`` of routed tokens (group of the input token)."""
    layers = list(cfg.sparse_layers)
    groups = token_groups.long().cpu()
    n_groups = int(groups.max()) + 1
    return CountAccumulator(
        [get_act_name("topk_indices", layer) for layer in layers],
        lambda acts, meta: _routed_events(
            layers, lambda m: groups.to(m.input_ids.device)[m.tokens(m.input_ids)], acts, meta
        ),
        shape=(len(layers), cfg.num_experts, n_groups),
    )


def tokens_by_domain(n_domains: int) -> CountAccumulator:
    """Counts ``[domain]`` of real, non-BOS tokens."""

    def events(acts, meta) -> BinEvents:
        not_bos = meta.tokens(meta.doc_position) >= 0
        return BinEvents(meta.tokens(meta.domain)[not_bos].long())

    return CountAccumulator([], events, shape=(n_domains,))
