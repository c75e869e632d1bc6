"""Interventions on experts as TransformerLens hook functions (see :mod:`tl_moe.models.interventions`)."""

from tl_moe.models.interventions import (
    INTERVENTION_KINDS,
    Intervention,
    ablate_expert_neurons,
    activate_experts,
    batched_hooks,
    force_routing,
    force_routing_per_row,
    remove_experts,
    remove_experts_per_row,
    scale_expert_weights,
    scale_expert_weights_per_row,
    zero_expert_outputs,
    zero_expert_outputs_per_row,
)

__all__ = [
    "INTERVENTION_KINDS",
    "Intervention",
    "ablate_expert_neurons",
    "activate_experts",
    "batched_hooks",
    "force_routing",
    "force_routing_per_row",
    "remove_experts",
    "remove_experts_per_row",
    "scale_expert_weights",
    "scale_expert_weights_per_row",
    "zero_expert_outputs",
    "zero_expert_outputs_per_row",
]
