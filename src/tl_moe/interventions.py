"""Interventions on experts as TransformerLens hook functions (see :mod:`tl_moe.models.interventions`)."""

from tl_moe.models.interventions import (
    ablate_expert_neurons,
    force_routing,
    remove_experts,
    scale_expert_weights,
    zero_expert_outputs,
)

__all__ = [
    "ablate_expert_neurons",
    "force_routing",
    "remove_experts",
    "scale_expert_weights",
    "zero_expert_outputs",
]
