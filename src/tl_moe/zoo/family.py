"""The toy model family: MoE models of increasing routing sparsity, and their dense twin.

Every member has the same attention, width, depth, vocabulary and data, and the same number
of *active* FFN neurons per token: each MoE routes every token to k = 2 experts of 128 neurons,
the dense twin has d_mlp = 2 × 128 = 256. The number of experts changes (4, 8, 16, 32), so the
active ratio k / E goes 0.5, 0.25, 0.125, 0.0625 — and the total parameters grow with it, and each
member is one seed: differences between members cannot be told apart from model size.
"""

from __future__ import annotations

from tl_moe.errors import InputError
from tl_moe.models.config import MoEConfig, RoutingRule


class UnknownToyModelError(InputError, KeyError):
    """A ``toy/...`` name that is not in the toy family (the message lists the toy models)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


ACTIVE_NEURONS = 256
_SHARED = dict(
    n_layers=4,
    d_model=128,
    d_vocab=4096,  # the shipped tokenizer's vocabulary (tl_moe.zoo.tokenizer.SHIPPED_VOCAB_SIZE)
    n_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


def _moe(num_experts: int, k: int = 2) -> MoEConfig:
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
    "toy/moe-4x2": _moe(4),
    "toy/moe-8x2": _moe(8),
    "toy/moe-16x2": _moe(16),
    "toy/moe-32x2": _moe(32),
    "toy/dense": MoEConfig("olmo", **_SHARED, d_mlp=ACTIVE_NEURONS),
}


def family_config(name: str) -> MoEConfig:
    """The :class:`MoEConfig` of a toy model, or a clear error listing the toy models."""
    try:
        return TOY_FAMILY[name]
    except KeyError:
        raise UnknownToyModelError(
            f"Unknown toy model {name!r}. Toy models: {', '.join(TOY_FAMILY)}."
        ) from None
