"""The toy model family: MoE models that differ only in routing sparsity, and their dense twin.

Every member has the same attention, width, depth, vocabulary and data, and the same number
of *active* FFN neurons per token (k × d_expert = d_mlp = 256), so differences between them
come from routing alone.
"""

from __future__ import annotations

from tl_moe.models.config import MoEConfig, RoutingRule

ACTIVE_NEURONS = 256
_SHARED = dict(
    n_layers=4,
    d_model=128,
    d_vocab=8192,
    n_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


def _moe(num_experts: int, k: int) -> MoEConfig:
    return MoEConfig(
        "olmoe",
        **_SHARED,
        num_experts=num_experts,
        experts_per_token=k,
        d_expert=ACTIVE_NEURONS // k,
        sparse_layers=tuple(range(_SHARED["n_layers"])),
        routing=RoutingRule(kind="softmax_topk", renormalize=False),
    )


TOY_FAMILY: dict[str, MoEConfig] = {
    "toy/moe-8x1": _moe(8, 1),
    "toy/moe-8x2": _moe(8, 2),
    "toy/moe-16x2": _moe(16, 2),
    "toy/moe-32x4": _moe(32, 4),
    "toy/dense": MoEConfig("olmo", **_SHARED, d_mlp=ACTIVE_NEURONS),
}

DEFAULT_MOE = "toy/moe-16x2"
DEFAULT_DENSE = "toy/dense"


def family_config(name: str) -> MoEConfig:
    """The :class:`MoEConfig` of a toy model, or a clear error listing the toy models."""
    try:
        return TOY_FAMILY[name]
    except KeyError:
        raise KeyError(f"Unknown toy model {name!r}. Toy models: {', '.join(TOY_FAMILY)}.") from None
