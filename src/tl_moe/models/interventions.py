"""Interventions on experts, as TransformerLens hook functions.

Each function returns a list of ``(hook_name, hook_fn)`` pairs for ``run_with_hooks``
or ``hooks()``; lists compose by concatenation::

    hooks = remove_experts(model, layer=3, experts=[5]) + scale_expert_weights(model, 4, [1], 2.0)
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)

=========================  ==========================================================  ===========
function                   what changes                                                re-routes?
=========================  ==========================================================  ===========
``remove_experts``         the experts cannot be selected; tokens go to the next best  yes
``zero_expert_outputs``    the experts are selected as usual but contribute nothing    no
``scale_expert_weights``   the experts' mixing weights are multiplied by a factor      no
``force_routing``          every token is sent to the given experts                    yes (forced)
``ablate_expert_neurons``  chosen neurons of an expert are set to a value (0 default)  no
=========================  ==========================================================  ===========
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Int

from tl_moe.models.config import MoEConfig
from tl_moe.models.hook_names import get_act_name
from tl_moe.models.introspect import moe_config

FwdHooks = list[tuple[str, Callable]]


def _config(model) -> MoEConfig:
    return model if isinstance(model, MoEConfig) else getattr(model, "moe_cfg", None) or moe_config(model)


def _check_experts(cfg: MoEConfig, experts: Sequence[int]) -> list[int]:
    experts = [int(e) for e in experts]
    bad = [e for e in experts if not 0 <= e < cfg.num_experts]
    if not experts or bad:
        raise ValueError(
            f"Experts must be a non-empty list of indices in 0..{cfg.num_experts - 1}; got {experts}."
        )
    return experts


class _SlotSelection:
    """Remembers, within one forward, which slots hold the chosen experts.

    Its first hook (on ``hook_topk_indices``, which fires before the expert hooks of the same
    layer) records a ``[batch, pos, k]`` mask of slots routed to the chosen experts.
    """

    def __init__(self, experts: list[int]):
        self.experts = experts
        self.mask: torch.Tensor | None = None

    def record(self, indices, hook):
        chosen = torch.tensor(self.experts, device=indices.device)
        self.mask = torch.isin(indices, chosen)
        return indices


def remove_experts(model, layer: int, experts: Sequence[int]) -> FwdHooks:
    """Remove experts from routing: tokens re-route to the next best experts.

    The layer then computes what the model would with those experts deleted: a softmax
    router renormalizes over the remaining experts (their logits are set to ``-inf``). For
    routers that select with a per-expert bias (DeepSeek-V3, GLM-4-MoE, ERNIE) the experts'
    scores are set to ``-inf`` instead, which equals setting their selection bias to
    ``-inf``; the other experts' scores are unchanged.
    """
    cfg = _config(model)
    experts = _check_experts(cfg, experts)
    if len(experts) > cfg.num_experts - cfg.experts_per_token:
        raise ValueError(
            f"Cannot remove {len(experts)} of {cfg.num_experts} experts when each token needs "
            f"{cfg.experts_per_token}."
        )

    def mask(tensor, hook):
        tensor = tensor.clone()
        tensor[..., experts] = float("-inf")
        return tensor

    kind = "router_probs" if cfg.routing.selection_bias else "router_logits"
    return [(get_act_name(kind, layer, cfg), mask)]


def zero_expert_outputs(model, layer: int, experts: Sequence[int]) -> FwdHooks:
    """Zero the experts' outputs wherever they are selected, without re-routing."""
    cfg = _config(model)
    selection = _SlotSelection(_check_experts(cfg, experts))

    def zero(out, hook):
        return out * (~selection.mask).unsqueeze(-1).to(out.dtype)

    return [
        (get_act_name("topk_indices", layer, cfg), selection.record),
        (get_act_name("expert_out", layer, cfg), zero),
    ]


def scale_expert_weights(model, layer: int, experts: Sequence[int], factor: float) -> FwdHooks:
    """Multiply the experts' mixing weights by ``factor`` (no renormalization, no re-routing)."""
    cfg = _config(model)
    selection = _SlotSelection(_check_experts(cfg, experts))

    def scale(weights, hook):
        return torch.where(selection.mask, weights * factor, weights)

    return [
        (get_act_name("topk_indices", layer, cfg), selection.record),
        (get_act_name("topk_weights", layer, cfg), scale),
    ]


def force_routing(model, layer: int, experts: Sequence[int] | Int[torch.Tensor, "batch pos k"]) -> FwdHooks:
    """Route every token to ``experts`` (k of them, or a ``[batch, pos, k]`` tensor).

    Mixing weights are then computed by the model's own rule from its scores at the forced
    experts (renormalized and scaled where the model does so).
    """
    cfg = _config(model)
    if isinstance(experts, torch.Tensor):
        forced = experts.long()
        if forced.shape[-1] != cfg.experts_per_token:
            raise ValueError(
                f"Forced routing needs k={cfg.experts_per_token} experts per token, got {forced.shape[-1]}."
            )
        if forced.min() < 0 or forced.max() >= cfg.num_experts:
            raise ValueError(f"Forced experts must lie in 0..{cfg.num_experts - 1}.")
    else:
        listed = _check_experts(cfg, experts)
        if len(listed) != cfg.experts_per_token:
            raise ValueError(
                f"Forced routing needs exactly k={cfg.experts_per_token} experts per token, got {listed}."
            )
        forced = torch.tensor(listed)

    def force(indices, hook):
        return forced.to(indices.device, indices.dtype).expand_as(indices).clone()

    return [(get_act_name("topk_indices", layer, cfg), force)]


def ablate_expert_neurons(
    model, layer: int, expert: int, neurons: Sequence[int], value: float | torch.Tensor = 0.0
) -> FwdHooks:
    """Set neurons of one expert to ``value`` (0: zero-ablation; a ``[len(neurons)]`` tensor,
    e.g. their mean activation: mean-ablation) wherever the expert is selected."""
    cfg = _config(model)
    selection = _SlotSelection(_check_experts(cfg, [expert]))
    neurons = [int(n) for n in neurons]
    if not neurons or min(neurons) < 0 or max(neurons) >= cfg.d_expert:
        raise ValueError(
            f"Neurons must be a non-empty list of indices in 0..{cfg.d_expert - 1}; got {neurons}."
        )

    def ablate(post, hook):
        replacement = torch.as_tensor(value, dtype=post.dtype, device=post.device).expand(len(neurons))
        edited = post.clone()
        slots = selection.mask  # [batch, pos, k]
        current = edited[..., neurons]
        edited[..., neurons] = torch.where(slots.unsqueeze(-1), replacement, current)
        return edited

    return [
        (get_act_name("topk_indices", layer, cfg), selection.record),
        (get_act_name("expert_post", layer, cfg), ablate),
    ]
