"""Find the Hugging Face modules behind a bridge, and read a :class:`MoEConfig` off a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tl_moe.models.architectures import ArchitectureSpec, get_spec
from tl_moe.models.config import MoEConfig


def unwrap(module: nn.Module) -> nn.Module:
    """The Hugging Face module under any TransformerBridge wrappers."""
    while isinstance(getattr(module, "original_component", None), nn.Module):
        module = module.original_component
    return module


def hf_model_of(model) -> nn.Module:
    """The Hugging Face ``PreTrainedModel`` inside a TransformerBridge (or the model itself)."""
    hf = getattr(model, "original_model", model)
    if not hasattr(hf, "config") or not hasattr(hf.config, "model_type"):
        raise TypeError(
            f"Expected a TransformerBridge or a Hugging Face PreTrainedModel, got {type(model).__name__}."
        )
    return hf


def decoder_layers(hf_model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a causal LM, unwrapped."""
    base = getattr(hf_model, "model", hf_model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise TypeError(f"Cannot find decoder layers (`model.layers`) on {type(hf_model).__name__}.")
    return [unwrap(layer) for layer in layers]


@dataclass
class LayerModules:
    """The (unwrapped) Hugging Face modules of one layer's FFN."""

    ffn: nn.Module
    router: nn.Module | None = None
    experts: nn.Module | None = None
    shared: nn.Module | None = None
    shared_gate: nn.Module | None = None

    @property
    def is_sparse(self) -> bool:
        """Whether this FFN routes tokens to experts."""
        return self.experts is not None and self.router is not None


def layer_modules(layer: nn.Module, spec: ArchitectureSpec) -> LayerModules:
    """Locate the FFN, router, experts and shared experts of a decoder layer."""
    ffn = unwrap(getattr(layer, spec.ffn))

    def child(name: str | None) -> nn.Module | None:
        if name is None or not hasattr(ffn, name):
            return None
        found = getattr(ffn, name)
        return unwrap(found) if isinstance(found, nn.Module) else None

    return LayerModules(
        ffn=ffn,
        router=child(spec.router),
        experts=child(spec.experts),
        shared=child(spec.shared),
        shared_gate=child(spec.shared_gate),
    )


def expert_width(experts: nn.Module) -> int:
    """Neurons per expert, read from the fused down-projection."""
    down = experts.down_proj
    return int(down.shape[1] if getattr(experts, "is_transposed", False) else down.shape[2])


def mlp_width(mlp: nn.Module) -> int:
    """Neurons of a dense (or shared-expert) MLP, read from its down-projection."""
    down = unwrap(mlp.down_proj)
    return int(down.in_features if hasattr(down, "in_features") else down.weight.shape[1])


def moe_config(model) -> MoEConfig:
    """The normalized :class:`MoEConfig` of a loaded model (TransformerBridge or HF model).

    Sparse layers, expert counts and widths are read from the modules themselves, so they
    are right whatever HF config keys the architecture uses.
    """
    hf = hf_model_of(model)
    config = hf.config
    spec = get_spec(config.model_type)
    layers = [layer_modules(layer, spec) for layer in decoder_layers(hf)]
    sparse = tuple(i for i, mods in enumerate(layers) if mods.is_sparse)
    dense = [mods.ffn for mods in layers if not mods.is_sparse]
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    common = dict(
        architecture=config.model_type,
        n_layers=len(layers),
        d_model=int(text_config.hidden_size),
        d_vocab=int(text_config.vocab_size),
        d_mlp=mlp_width(dense[0]) if dense and hasattr(dense[0], "down_proj") else None,
        activation=str(getattr(text_config, "hidden_act", "silu")),
        n_heads=int(text_config.num_attention_heads),
        n_kv_heads=getattr(text_config, "num_key_value_heads", None),
        max_position_embeddings=int(getattr(text_config, "max_position_embeddings", 2048)),
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    if not sparse:
        return MoEConfig(**common)
    first = layers[sparse[0]]
    shared = first.shared
    n_shared = 0
    if shared is not None:
        n_shared = int(
            getattr(text_config, "n_shared_experts", None)
            or getattr(text_config, "moe_num_shared_experts", None)
            or 1
        )
    return MoEConfig(
        **common,
        num_experts=int(first.experts.num_experts),
        experts_per_token=int(first.router.top_k),
        d_expert=expert_width(first.experts),
        sparse_layers=sparse,
        n_shared_experts=n_shared,
        d_shared=mlp_width(shared) if shared is not None else None,
        shared_gated=first.shared_gate is not None,
        routing=spec.routing(text_config),
    )


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
