"""The sizes of a model that the memory estimate and the position check read, from whatever describes it.

A loaded bridge, a Hugging Face model or config, a :class:`~tl_moe.models.config.MoEConfig` or a plain
dict of config keys all give the same :class:`ModelSizes`; a size the object does not state is None
(or the neutral value its field says).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tl_moe.models.config import MoEConfig

__all__ = ["ModelSizes", "model_sizes"]


@dataclass(frozen=True)
class ModelSizes:
    """What a forward pass's memory grows with.

    Attributes:
        positions: the context length (``max_position_embeddings`` / ``n_ctx``), None if not stated.
        d_model: residual stream width (0 if not stated).
        n_heads: attention heads (1 if not stated).
        d_vocab: vocabulary size (0 if not stated).
        ffn_width: FFN neurons one token activates in one layer: ``k x d_expert`` for an MoE (its k
            routed experts), the MLP width for a dense model (0 if not stated).
        hooked_layers: layers whose FFN activations a run hooks: the sparse layers of an MoE, every
            layer of a dense model (at least 1).
        attention: the attention implementation (``"eager"``, ``"sdpa"``, ...), None if not stated.
    """

    positions: int | None
    d_model: int
    n_heads: int
    d_vocab: int
    ffn_width: int
    hooked_layers: int
    attention: str | None


def _sources(model_or_config: Any) -> list[Any]:
    """The object and the configs it carries (``cfg``, ``config``, ``moe_cfg``, the wrapped HF model's)."""
    sources = [model_or_config]
    for attribute in ("cfg", "config", "moe_cfg"):
        inner = getattr(model_or_config, attribute, None)
        if inner is not None and not callable(inner):
            sources.append(inner)
    original = getattr(model_or_config, "original_model", None)
    if original is not None and getattr(original, "config", None) is not None:
        sources.append(original.config)
    return sources


def _value(source: Any, name: str) -> Any:
    return source.get(name) if isinstance(source, dict) else getattr(source, name, None)


def _first_size(sources: list[Any], *names: str) -> int | None:
    """The first positive integer any source states under any of ``names``, in that order."""
    for source in sources:
        for name in names:
            value = _value(source, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return int(value)
    return None


def _ffn_sizes(sources: list[Any]) -> tuple[int, int]:
    """(FFN neurons a token activates per layer, hooked layers): from a MoEConfig when one is among
    the sources, else from Hugging Face / TransformerLens config keys."""
    moe = next((source for source in sources if isinstance(source, MoEConfig)), None)
    if moe is not None:
        if moe.is_moe:
            return moe.d_expert * moe.experts_per_token, len(moe.sparse_layers)
        return moe.d_mlp or 0, max(1, moe.n_layers)
    k = _first_size(sources, "experts_per_token", "num_experts_per_tok", "top_k") or 1
    width = _first_size(sources, "d_mlp", "intermediate_size", "d_expert", "moe_intermediate_size") or 0
    layers = _first_size(sources, "n_layers", "num_hidden_layers") or 1
    return k * width, layers


def model_sizes(model_or_config: Any) -> ModelSizes:
    """The :class:`ModelSizes` of a bridge, an HF model/config, a MoEConfig or a dict of config keys."""
    sources = _sources(model_or_config)
    attention = next(
        (value for source in sources if isinstance(value := _value(source, "_attn_implementation"), str)),
        None,
    )
    ffn_width, hooked_layers = _ffn_sizes(sources)
    return ModelSizes(
        positions=_first_size(
            sources, "max_position_embeddings", "n_ctx", "n_positions", "max_sequence_length"
        ),
        d_model=_first_size(sources, "d_model", "hidden_size") or 0,
        n_heads=_first_size(sources, "n_heads", "num_attention_heads") or 1,
        d_vocab=_first_size(sources, "d_vocab", "vocab_size") or 0,
        ffn_width=ffn_width,
        hooked_layers=hooked_layers,
        attention=attention,
    )
