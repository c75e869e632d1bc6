"""`MoEConfig`: one normalized description of any supported MoE (or dense) model.

Hugging Face spells the same idea a dozen ways (``num_experts``, ``num_local_experts``,
``n_routed_experts``, ``moe_num_experts``; ``first_k_dense_replace``,
``moe_layer_start_index``, ``decoder_sparse_step`` ...). Everything in tl_moe reads this
dataclass instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

RoutingKind = Literal["softmax_topk", "topk_softmax", "sigmoid_topk"]


@dataclass(frozen=True)
class RoutingRule:
    """How a router turns logits into a top-k selection and mixing weights.

    Attributes:
        kind: ``"softmax_topk"``: softmax over all experts, then top-k of the probabilities
            (OLMoE, Mixtral, Qwen-MoE, ERNIE, DeepSeek-V2). ``"topk_softmax"``: top-k of the
            logits, then softmax over the k selected logits (GPT-OSS, GraniteMoE).
            ``"sigmoid_topk"``: sigmoid scores, top-k (DeepSeek-V3, GLM-4-MoE).
        renormalize: Whether the k selected scores are divided by their sum.
        renormalize_eps: Added to (sigmoid) or clamped under (ERNIE) the renormalization sum.
        renormalize_clamp: If True the sum is clamped from below by ``renormalize_eps``
            (ERNIE's ``moe_norm_min``); otherwise ``renormalize_eps`` is added to it.
        selection_bias: Whether a per-expert bias (``e_score_correction_bias``) is added to
            the scores used to *choose* experts, but not to the mixing weights.
        n_groups: Expert groups for group-limited routing (1 = no grouping).
        topk_groups: How many groups a token may use.
        group_score: ``"max"`` (DeepSeek-V2) or ``"top2_sum"`` (DeepSeek-V3, GLM) score of a group.
        scaling_factor: Mixing weights are multiplied by this (``routed_scaling_factor``).
    """

    kind: RoutingKind = "softmax_topk"
    renormalize: bool = False
    renormalize_eps: float = 0.0
    renormalize_clamp: bool = False
    selection_bias: bool = False
    n_groups: int = 1
    topk_groups: int = 1
    group_score: Literal["max", "top2_sum"] = "max"
    scaling_factor: float = 1.0

    @property
    def has_scores(self) -> bool:
        """Whether the router computes scores over all experts before selection."""
        return self.kind != "topk_softmax"

    def replace(self, **changes) -> RoutingRule:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class MoEConfig:
    """Normalized configuration of a (possibly) Mixture-of-Experts causal language model.

    Attributes:
        architecture: Hugging Face ``model_type`` (``"olmoe"``, ``"mixtral"``, ``"llama"``, ...).
        n_layers: Number of transformer blocks.
        d_model: Residual stream width.
        d_vocab: Vocabulary size.
        num_experts: Routed experts per sparse layer (0 for a dense model).
        experts_per_token: Experts selected per token (top-k); 0 for a dense model.
        d_expert: Neurons per routed expert (the input width of its down-projection).
        sparse_layers: Indices of the layers whose FFN is a routed MoE block.
        d_mlp: Neurons of a dense FFN layer (dense models, and dense layers of MoE models).
        n_shared_experts: Shared experts every token passes through (0 if none). HF fuses
            them into one MLP of width ``d_shared``.
        d_shared: Neurons of the fused shared-expert MLP.
        shared_gated: Whether the shared experts' output is scaled by a learned sigmoid gate.
        routing: The routing rule.
        activation: The expert activation function (HF ``hidden_act`` name).
        n_heads: Attention heads (used when building models).
        n_kv_heads: Key/value heads (used when building models).
        max_position_embeddings: Context length (used when building models).
        tie_word_embeddings: Whether unembedding and embedding share weights.
        extra_hf_config: Further Hugging Face config keys to pass when building a model.
    """

    architecture: str
    n_layers: int
    d_model: int
    d_vocab: int
    num_experts: int = 0
    experts_per_token: int = 0
    d_expert: int = 0
    sparse_layers: tuple[int, ...] = ()
    d_mlp: int | None = None
    n_shared_experts: int = 0
    d_shared: int | None = None
    shared_gated: bool = False
    routing: RoutingRule = field(default_factory=RoutingRule)
    activation: str = "silu"
    n_heads: int = 4
    n_kv_heads: int | None = None
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = False
    extra_hf_config: dict = field(default_factory=dict)

    @property
    def is_moe(self) -> bool:
        """Whether any layer routes tokens to experts."""
        return self.num_experts > 0 and len(self.sparse_layers) > 0

    @property
    def dense_layers(self) -> tuple[int, ...]:
        """Indices of layers with a dense FFN."""
        return tuple(layer for layer in range(self.n_layers) if layer not in self.sparse_layers)

    @property
    def active_ratio(self) -> float:
        """Fraction of routed experts active per token (k / E); 1.0 for a dense model."""
        return self.experts_per_token / self.num_experts if self.is_moe else 1.0

    def replace(self, **changes) -> MoEConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """A JSON-serializable dict (inverse of :meth:`from_dict`)."""
        out = dataclasses.asdict(self)
        out["sparse_layers"] = list(self.sparse_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> MoEConfig:
        """Rebuild from :meth:`to_dict` output."""
        data = dict(data)
        data["routing"] = RoutingRule(**data.get("routing", {}))
        data["sparse_layers"] = tuple(data.get("sparse_layers", ()))
        return cls(**data)
