"""Find the Hugging Face modules behind a bridge, and read a :class:`MoEConfig` off a model.

Discovery is generic: a layer's routed experts are the modules transformers dispatches
through its experts-implementation registry (``@use_experts_implementation``); their MoE
block is the module that holds them; the router is the block's child that holds an
``[n_experts, d_model]`` weight; shared experts are the block's other MLP children, and a
shared-expert gate is its ``[1, d_model]`` linear. The routing rule comes from
:mod:`tl_moe.models.discovery`, read from config keys and verified against the router.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

from tl_moe.models.architectures import (
    ArchitectureSpec,
    UnsupportedArchitectureError,
    get_spec,
    selection_bias_of,
)
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


def config_of(model_or_cfg) -> MoEConfig:
    """The :class:`MoEConfig` of a bridge, a Hugging Face model, or a :class:`MoEConfig` itself.

    The one resolution everything uses: a config is returned as is, an attached bridge gives its
    ``moe_cfg``, anything else is read with :func:`moe_config`.
    """
    if isinstance(model_or_cfg, MoEConfig):
        return model_or_cfg
    cfg = getattr(model_or_cfg, "moe_cfg", None)
    return cfg if isinstance(cfg, MoEConfig) else moe_config(model_or_cfg)


def text_config_of(config):
    """The text (decoder) config of a possibly multimodal HF config."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def decoder_layers(hf_model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a causal LM (or a multimodal model's text tower), unwrapped."""
    base = getattr(hf_model, "model", hf_model)
    layers = getattr(base, "layers", None)
    if layers is None:
        layers = getattr(getattr(base, "language_model", None), "layers", None)
    if layers is None:
        from tl_moe.models.architectures import ARCHITECTURES

        model_type = getattr(getattr(hf_model, "config", None), "model_type", "?")
        raise UnsupportedArchitectureError(
            f"tl_moe does not support model_type {model_type!r}: it cannot find the decoder layers "
            f"(`model.layers`) of {type(hf_model).__name__}. tl_moe hooks any MoE whose experts transformers "
            "dispatches through its experts registry (see tl_moe.models.registry_architectures()) and dense "
            f"decoders with `model.layers`; declared architectures: {', '.join(sorted(ARCHITECTURES))}."
        )
    return [unwrap(layer) for layer in layers]


_REGISTRY_FORWARD_CODE = None


def _registry_forward_code():
    """The code object of the forward that ``@use_experts_implementation`` installs."""
    global _REGISTRY_FORWARD_CODE
    if _REGISTRY_FORWARD_CODE is None:
        from transformers.integrations.moe import use_experts_implementation

        class _Probe(nn.Module):
            def __init__(self, config):
                super().__init__()

            def forward(self, hidden_states, top_k_index, top_k_weights):  # pragma: no cover
                return hidden_states

        _REGISTRY_FORWARD_CODE = use_experts_implementation(_Probe).forward.__code__
    return _REGISTRY_FORWARD_CODE


def is_registry_experts(module: nn.Module) -> bool:
    """Whether ``module`` is a fused experts module dispatched through transformers' registry."""
    forward = getattr(type(module), "forward", None)
    return getattr(forward, "__code__", None) is _registry_forward_code()


@dataclass
class LayerModules:
    """The (unwrapped) Hugging Face modules of one layer's FFN.

    Attributes:
        ffn: The MoE block of a sparse layer (the module holding the experts), or the dense MLP.
        router: The router (returns ``(logits, weights, indices)``).
        experts: The fused routed experts.
        shared: The fused shared-expert MLP, if any.
        shared_gate: The shared experts' gate, if any.
        ffn_path: Attribute path from the decoder layer to ``ffn`` (``"mlp"``, ``"feed_forward"``...).
        shared_name: Attribute of ``ffn`` holding the shared experts.
        bias_path: Dotted path from the router to its per-expert selection bias, if it holds one.
        bias_argument: Whether the block passes the selection bias to the router as an argument.
    """

    ffn: nn.Module | None
    router: nn.Module | None = None
    experts: nn.Module | None = None
    shared: nn.Module | None = None
    shared_gate: nn.Module | None = None
    ffn_path: str | None = None
    shared_name: str | None = None
    bias_path: str | None = None
    bias_argument: bool = False

    @property
    def is_sparse(self) -> bool:
        """Whether this FFN routes tokens to experts."""
        return self.experts is not None and self.router is not None


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, unwrap(child))
        for name, child in module.named_children()
        if name not in ("original_component", "_original_component")
    ]


def _find_experts(layer: nn.Module) -> tuple[str, nn.Module, nn.Module] | None:
    """``(path of the block, block, experts)`` for the registry experts module inside ``layer``."""

    def walk(module: nn.Module, path: str):
        for name, child in _children(module):
            if is_registry_experts(child):
                return path, module, child
            found = walk(child, f"{path}.{name}" if path else name)
            if found is not None:
                return found
        return None

    return walk(layer, "")


def _has_weight(module: nn.Module, rows: int, cols: int) -> bool:
    return any(tuple(p.shape) == (rows, cols) for p in module.parameters())


def _selection_bias_path(router: nn.Module, n_experts: int) -> str | None:
    for name, tensor in [*router.named_buffers(), *router.named_parameters()]:
        if name.split(".")[-1] in ("e_score_correction_bias", "expert_bias") and tensor.numel() == n_experts:
            return name
    return None


def _router_takes_bias(router: nn.Module) -> bool:
    params = list(inspect.signature(router.forward).parameters.values())
    return len(params) >= 2 and any(word in params[1].name for word in ("bias",))


def layer_modules(layer: nn.Module, spec: ArchitectureSpec | None = None) -> LayerModules:
    """Locate the FFN, router, experts and shared experts of a decoder layer.

    ``spec`` is accepted for backward compatibility; discovery does not need it.
    """
    found = _find_experts(layer)
    if found is None:
        for name in (spec.ffn if spec is not None else "mlp", "mlp", "feed_forward"):
            ffn = getattr(layer, name, None)
            if isinstance(ffn, nn.Module):
                return LayerModules(ffn=unwrap(ffn), ffn_path=name)
        return LayerModules(ffn=None)
    path, block, experts = found
    n_experts, d_model = int(experts.num_experts), _d_model_of(experts)
    router = shared = shared_gate = None
    shared_name = None
    for name, child in _children(block):
        if child is experts:
            continue
        if router is None and not hasattr(child, "down_proj") and _has_weight(child, n_experts, d_model):
            router = child
        elif shared_gate is None and _has_weight(child, 1, d_model) and len(list(child.parameters())) <= 2:
            shared_gate = child
        elif shared is None and hasattr(child, "down_proj"):
            shared, shared_name = child, name
    bias_path = _selection_bias_path(router, n_experts) if router is not None else None
    return LayerModules(
        ffn=block,
        router=router,
        experts=experts,
        shared=shared,
        shared_gate=shared_gate,
        ffn_path=path,
        shared_name=shared_name,
        bias_path=bias_path,
        bias_argument=router is not None and bias_path is None and _router_takes_bias(router),
    )


def _d_model_of(experts: nn.Module) -> int:
    down = experts.down_proj
    return int(down.shape[2] if getattr(experts, "is_transposed", False) else down.shape[1])


def expert_width(experts: nn.Module) -> int:
    """Neurons per expert, read from the fused down-projection."""
    down = experts.down_proj
    return int(down.shape[1] if getattr(experts, "is_transposed", False) else down.shape[2])


def mlp_width(mlp: nn.Module) -> int:
    """Neurons of a dense (or shared-expert) MLP, read from its down-projection."""
    down = unwrap(mlp.down_proj)
    return int(down.in_features if hasattr(down, "in_features") else down.weight.shape[1])


def sparse_layer_modules(hf: nn.Module) -> list[LayerModules]:
    """:func:`layer_modules` of every decoder layer, refusing layers tl_moe cannot hook."""
    layers = [layer_modules(layer) for layer in decoder_layers(hf)]
    for index, mods in enumerate(layers):
        if mods.experts is None:
            continue
        where = f"{hf.config.model_type} layer {index} ({type(mods.experts).__name__})"
        if mods.router is None:
            raise UnsupportedArchitectureError(
                f"{where}: found the registry experts module but no router (a child of its block holding an "
                "[n_experts, d_model] weight)."
            )
        if mods.ffn_path == "":
            raise UnsupportedArchitectureError(
                f"{where}: the experts are called by the decoder layer itself (next to a dense MLP), not by an "
                "MoE block, so there is no block output that is the weighted sum of expert outputs to hook."
            )
    return layers


def moe_config(model) -> MoEConfig:
    """The normalized :class:`MoEConfig` of a loaded model (TransformerBridge or HF model).

    Sparse layers, expert counts and widths are read from the modules themselves, and the
    routing rule is verified against the model's own router, so they are right whatever HF
    config keys the architecture uses.
    """
    from tl_moe.models.discovery import routing_rule_of

    hf = hf_model_of(model)
    config = hf.config
    layers = sparse_layer_modules(hf)
    sparse = tuple(i for i, mods in enumerate(layers) if mods.is_sparse)
    dense = [mods.ffn for mods in layers if not mods.is_sparse and mods.ffn is not None]
    text_config = text_config_of(config)
    common = dict(
        architecture=config.model_type,
        n_layers=len(layers),
        d_model=int(text_config.hidden_size),
        d_vocab=int(text_config.vocab_size),
        d_mlp=mlp_width(dense[0]) if dense and hasattr(dense[0], "down_proj") else None,
        activation=str(getattr(text_config, "hidden_act", "silu")),
        n_heads=int(getattr(text_config, "num_attention_heads", 0) or 0),
        n_kv_heads=getattr(text_config, "num_key_value_heads", None),
        max_position_embeddings=int(getattr(text_config, "max_position_embeddings", 2048) or 2048),
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
            or getattr(text_config, "num_shared_experts", None)
            or 1
        )
    rule, k = routing_rule_of(hf, [layers[i] for i in sparse], text_config)
    return MoEConfig(
        **common,
        num_experts=int(first.experts.num_experts),
        experts_per_token=k,
        d_expert=expert_width(first.experts),
        sparse_layers=sparse,
        n_shared_experts=n_shared,
        d_shared=mlp_width(shared) if shared is not None else None,
        shared_gated=first.shared_gate is not None,
        routing=rule,
    )


__all__ = [
    "LayerModules",
    "config_of",
    "decoder_layers",
    "expert_width",
    "get_spec",
    "hf_model_of",
    "is_registry_experts",
    "layer_modules",
    "mlp_width",
    "moe_config",
    "selection_bias_of",
    "sparse_layer_modules",
    "unwrap",
]
