"""The routing rules of every supported MoE, written once, stage by stage.

A router maps its logits to (a) scores over all experts, (b) the selected experts and (c)
their mixing weights. tl_moe recomputes (a)–(c) from the logits with these functions so that
each stage is a hook point and editing an earlier stage re-routes the later ones (see
``docs/HOOKS.md``). Tests check every architecture against Hugging Face's own router.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int

from tl_moe.errors import InputError
from tl_moe.models.config import RoutingRule


class ExpertIndicesError(InputError):
    """Top-k expert indices (edited by a hook) that are not k distinct experts of the layer."""


def check_expert_indices(indices: Int[torch.Tensor, "... k"], n_experts: int, name: str) -> None:
    """Refuse, in one line naming the hook point ``name``, top-k indices that are not integers in
    ``0..n_experts-1``, distinct within each token. One device sync (min, max and a duplicate flag
    read together); call it on edited indices only."""
    k = indices.shape[-1] if indices.ndim else 0
    accepted = f"accepted: k={k} distinct integer expert indices in 0..{n_experts - 1} per token"
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ExpertIndicesError(f"a hook on {name} returned {indices.dtype} expert indices; {accepted}.")
    if indices.numel() == 0:
        return
    ordered = indices.sort(dim=-1).values
    repeated = (ordered[..., 1:] == ordered[..., :-1]).any()
    low, high, repeats = torch.stack([indices.min().long(), indices.max().long(), repeated.long()]).tolist()
    if low < 0 or high >= n_experts:
        raise ExpertIndicesError(
            f"a hook on {name} returned expert indices from {low} to {high} for {n_experts} experts; {accepted}."
        )
    if repeats:
        token = (ordered[..., 1:] == ordered[..., :-1]).any(-1).nonzero()[0].tolist()
        raise ExpertIndicesError(
            f"a hook on {name} returned indices that repeat an expert within a token (at token "
            f"{token}: {indices[tuple(token)].tolist()}); {accepted}."
        )


def routing_scores(
    logits: Float[torch.Tensor, "... n_experts"], rule: RoutingRule
) -> Float[torch.Tensor, "... n_experts"] | None:
    """Scores over all experts before selection (softmax or sigmoid of the router logits).

    Returns None for routers that select on the raw logits (``topk_softmax``).
    """
    if rule.kind == "softmax_topk":
        return torch.softmax(logits.float(), dim=-1)
    if rule.kind == "sigmoid_topk":
        return torch.sigmoid(logits.float())
    return None


def select_experts(
    logits: Float[torch.Tensor, "... n_experts"],
    scores: Float[torch.Tensor, "... n_experts"] | None,
    rule: RoutingRule,
    k: int,
    selection_bias: Float[torch.Tensor, " n_experts"] | None = None,
) -> Int[torch.Tensor, "... k"]:
    """Indices of the k experts each token is routed to, best first.

    Selection ranks ``scores`` (or the logits when the rule has no scores), plus the
    per-expert ``selection_bias`` where the rule uses one, restricted to the best
    ``rule.topk_groups`` expert groups when the rule is group-limited.
    """
    choice = (scores if scores is not None else logits).float()
    if rule.selection_bias and selection_bias is not None:
        choice = choice + selection_bias.to(choice.dtype).reshape(-1)
    if rule.n_groups > 1:
        choice = _mask_to_best_groups(choice, rule)
    return torch.topk(choice, k, dim=-1).indices


def _mask_to_best_groups(
    choice: Float[torch.Tensor, "... n_experts"], rule: RoutingRule
) -> Float[torch.Tensor, "... n_experts"]:
    """Set the scores of experts outside each token's best ``topk_groups`` groups to -inf."""
    *lead, n_experts = choice.shape
    grouped = choice.reshape(*lead, rule.n_groups, n_experts // rule.n_groups)
    if rule.group_score == "top2_sum":
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
    else:
        group_scores = grouped.max(dim=-1).values
    best_groups = group_scores.topk(rule.topk_groups, dim=-1).indices
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(-1, best_groups, True)
    return grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).reshape(choice.shape)


def mixing_weights(
    logits: Float[torch.Tensor, "... n_experts"],
    scores: Float[torch.Tensor, "... n_experts"] | None,
    indices: Int[torch.Tensor, "... k"],
    rule: RoutingRule,
) -> Float[torch.Tensor, "... k"]:
    """Weights by which the selected experts' outputs are mixed (float32)."""
    indices = indices.long()
    if scores is None:
        weights = torch.softmax(logits.float().gather(-1, indices), dim=-1)
    else:
        weights = scores.gather(-1, indices)
    if rule.renormalize:
        total = weights.sum(dim=-1, keepdim=True)
        if rule.renormalize_clamp:
            total = total.clamp(min=rule.renormalize_eps)
        else:
            total = total + rule.renormalize_eps
        weights = weights / total
    if rule.scaling_factor != 1.0:
        weights = weights * rule.scaling_factor
    return weights
