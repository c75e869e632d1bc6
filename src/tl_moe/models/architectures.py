"""Where each supported architecture keeps its router, experts and shared experts.

One :class:`ArchitectureSpec` per Hugging Face ``model_type``: the attribute names tl_moe
needs to find the modules, how to read the routing rule from the HF config, and how to
write an :class:`~tl_moe.models.config.MoEConfig` back into HF config keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tl_moe.errors import InputError
from tl_moe.models.config import MoEConfig, RoutingRule


@dataclass(frozen=True)
class ArchitectureSpec:
    """Module layout and config vocabulary of one HF architecture.

    Attributes:
        model_type: HF ``config.model_type``.
        ffn: Attribute of a decoder layer holding its FFN (MoE block or dense MLP).
        router: Attribute of the MoE block holding the router (None for dense models).
        experts: Attribute of the MoE block holding the fused routed experts.
        shared: Attribute of the MoE block holding the fused shared-expert MLP, if any.
        shared_gate: Attribute of the MoE block holding the shared experts' gate, if any.
        selection_bias: Dotted path, from the router, to the per-expert selection bias.
        routing: Reads the routing rule from an HF config.
        to_hf: Writes the MoE-specific HF config keys for a :class:`MoEConfig`.
    """

    model_type: str
    ffn: str = "mlp"
    router: str | None = "gate"
    experts: str | None = "experts"
    shared: str | None = None
    shared_gate: str | None = None
    selection_bias: str | None = None
    routing: Callable[[object], RoutingRule] | None = None
    to_hf: Callable[[MoEConfig], dict] | None = None

    @property
    def is_moe(self) -> bool:
        """Whether this architecture has routed experts."""
        return self.routing is not None


def _first(config, *names, default=None):
    """The first attribute of ``config`` among ``names`` that is set."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _dense_width(cfg: MoEConfig) -> int:
    return cfg.d_mlp if cfg.d_mlp is not None else 4 * cfg.d_model


def _first_sparse(cfg: MoEConfig) -> int:
    return min(cfg.sparse_layers) if cfg.sparse_layers else cfg.n_layers


# --- routing rules read from HF configs ---------------------------------------------------


def _softmax_renorm_flag(config) -> RoutingRule:
    return RoutingRule(kind="softmax_topk", renormalize=bool(getattr(config, "norm_topk_prob", False)))


def _mixtral_routing(config) -> RoutingRule:
    return RoutingRule(kind="softmax_topk", renormalize=True)


def _topk_softmax_routing(config) -> RoutingRule:
    return RoutingRule(kind="topk_softmax")


def _ernie_routing(config) -> RoutingRule:
    return RoutingRule(
        kind="softmax_topk",
        renormalize=True,
        renormalize_eps=float(_first(config, "moe_norm_min", default=1e-12)),
        renormalize_clamp=True,
        selection_bias=True,
    )


def _deepseek_v2_routing(config) -> RoutingRule:
    grouped = getattr(config, "topk_method", "greedy") == "group_limited_greedy"
    return RoutingRule(
        kind="softmax_topk",
        n_groups=int(config.n_group) if grouped else 1,
        topk_groups=int(config.topk_group) if grouped else 1,
        group_score="max",
        scaling_factor=float(_first(config, "routed_scaling_factor", default=1.0)),
    )


def _sigmoid_grouped_routing(config) -> RoutingRule:
    return RoutingRule(
        kind="sigmoid_topk",
        renormalize=bool(getattr(config, "norm_topk_prob", False)),
        renormalize_eps=1e-20,
        selection_bias=True,
        n_groups=int(_first(config, "n_group", default=1)),
        topk_groups=int(_first(config, "topk_group", default=1)),
        group_score="top2_sum",
        scaling_factor=float(_first(config, "routed_scaling_factor", default=1.0)),
    )


# --- MoEConfig -> HF config keys -----------------------------------------------------------


def _olmoe_hf(cfg: MoEConfig) -> dict:
    return {
        "num_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.experts_per_token,
        "intermediate_size": cfg.d_expert,
        "norm_topk_prob": cfg.routing.renormalize,
    }


def _mixtral_hf(cfg: MoEConfig) -> dict:
    return {
        "num_local_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.experts_per_token,
        "intermediate_size": cfg.d_expert,
    }


def _qwen_moe_hf(cfg: MoEConfig) -> dict:
    out = {
        "num_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.experts_per_token,
        "moe_intermediate_size": cfg.d_expert,
        "intermediate_size": _dense_width(cfg),
        "norm_topk_prob": cfg.routing.renormalize,
        "decoder_sparse_step": 1,
        "mlp_only_layers": list(cfg.dense_layers),
    }
    if cfg.n_shared_experts:
        out["shared_expert_intermediate_size"] = cfg.d_shared
    return out


def _ernie_hf(cfg: MoEConfig) -> dict:
    return {
        "moe_num_experts": cfg.num_experts,
        "moe_k": cfg.experts_per_token,
        "moe_intermediate_size": cfg.d_expert,
        "moe_num_shared_experts": cfg.n_shared_experts,
        "moe_layer_start_index": _first_sparse(cfg),
        "moe_layer_end_index": cfg.n_layers - 1,
        "moe_layer_interval": 1,
        "intermediate_size": _dense_width(cfg),
    }


def _deepseek_hf(cfg: MoEConfig) -> dict:
    out = {
        "n_routed_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.experts_per_token,
        "moe_intermediate_size": cfg.d_expert,
        "n_shared_experts": cfg.n_shared_experts,
        "first_k_dense_replace": _first_sparse(cfg),
        "intermediate_size": _dense_width(cfg),
        "routed_scaling_factor": cfg.routing.scaling_factor,
        "n_group": cfg.routing.n_groups,
        "topk_group": cfg.routing.topk_groups,
    }
    if cfg.routing.kind == "sigmoid_topk":
        out["norm_topk_prob"] = cfg.routing.renormalize
    else:
        out["topk_method"] = "group_limited_greedy" if cfg.routing.n_groups > 1 else "greedy"
    return out


def _gpt_oss_hf(cfg: MoEConfig) -> dict:
    return {
        "num_local_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.experts_per_token,
        "intermediate_size": cfg.d_expert,
    }


def _dense_hf(cfg: MoEConfig) -> dict:
    return {"intermediate_size": _dense_width(cfg)}


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in [
        ArchitectureSpec("olmoe", routing=_softmax_renorm_flag, to_hf=_olmoe_hf),
        ArchitectureSpec("mixtral", routing=_mixtral_routing, to_hf=_mixtral_hf),
        ArchitectureSpec(
            "qwen2_moe",
            shared="shared_expert",
            shared_gate="shared_expert_gate",
            routing=_softmax_renorm_flag,
            to_hf=_qwen_moe_hf,
        ),
        ArchitectureSpec("qwen3_moe", routing=_softmax_renorm_flag, to_hf=_qwen_moe_hf),
        ArchitectureSpec(
            "ernie4_5_moe",
            shared="shared_experts",
            selection_bias="moe_statics.e_score_correction_bias",
            routing=_ernie_routing,
            to_hf=_ernie_hf,
        ),
        ArchitectureSpec(
            "deepseek_v2", shared="shared_experts", routing=_deepseek_v2_routing, to_hf=_deepseek_hf
        ),
        ArchitectureSpec(
            "deepseek_v3",
            shared="shared_experts",
            selection_bias="e_score_correction_bias",
            routing=_sigmoid_grouped_routing,
            to_hf=_deepseek_hf,
        ),
        ArchitectureSpec(
            "glm4_moe",
            shared="shared_experts",
            selection_bias="e_score_correction_bias",
            routing=_sigmoid_grouped_routing,
            to_hf=_deepseek_hf,
        ),
        ArchitectureSpec("gpt_oss", router="router", routing=_topk_softmax_routing, to_hf=_gpt_oss_hf),
        ArchitectureSpec(
            "granitemoe",
            ffn="block_sparse_moe",
            router="router",
            routing=_topk_softmax_routing,
            to_hf=_mixtral_hf,
        ),
        ArchitectureSpec("olmo", router=None, experts=None, to_hf=_dense_hf),
        ArchitectureSpec("olmo2", router=None, experts=None, to_hf=_dense_hf),
        ArchitectureSpec("qwen3", router=None, experts=None, to_hf=_dense_hf),
        ArchitectureSpec("llama", router=None, experts=None, to_hf=_dense_hf),
    ]
}


class UnsupportedArchitectureError(InputError):
    """Raised for a model whose architecture tl_moe does not know."""


def get_spec(model_type: str) -> ArchitectureSpec:
    """The declarative overrides of ``model_type``; a bare spec for an architecture without any.

    Module discovery and the routing rule do not need a spec (see
    :mod:`tl_moe.models.introspect` and :mod:`tl_moe.models.discovery`); building a model from
    a :class:`MoEConfig` does (:func:`require_spec`).
    """
    return ARCHITECTURES.get(model_type) or ArchitectureSpec(model_type)


def require_spec(model_type: str) -> ArchitectureSpec:
    """The spec of ``model_type`` with its ``to_hf`` writer, or a clear error listing those that have one."""
    spec = ARCHITECTURES.get(model_type)
    if spec is None or spec.to_hf is None:
        moe = sorted(t for t, s in ARCHITECTURES.items() if s.is_moe)
        dense = sorted(t for t, s in ARCHITECTURES.items() if not s.is_moe)
        raise UnsupportedArchitectureError(
            f"tl_moe cannot build a {model_type!r} model from a MoEConfig (no config writer). It can build MoE "
            f"architectures {', '.join(moe)} and dense baselines {', '.join(dense)}; any architecture can be "
            "loaded and hooked (build it with transformers and pass it to tl_moe.load)."
        )
    return spec


def selection_bias_of(router: nn.Module, path: str | ArchitectureSpec | None) -> torch.Tensor | None:
    """The router's per-expert selection bias tensor at ``path`` (dotted, from the router), if any.

    Read from the module each time it is asked for, so a reassigned buffer or a moved model is
    followed.
    """
    if isinstance(path, ArchitectureSpec):
        path = path.selection_bias
    if path is None:
        return None
    target = router
    for part in path.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target
