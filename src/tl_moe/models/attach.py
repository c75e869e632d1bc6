"""Install tl_moe's hook points on a TransformerBridge: ``load``, ``attach``, ``detach``.

Per sparse layer the hook points live on the bridge's MoE component ``blocks.{L}.mlp``
(next to TransformerLens's own ``hook_in``/``hook_out``/``hook_expert_weights``). They are
driven by three mechanisms, none of which rewrites a model's ``forward``:

1. a forward pre-hook on the HF MoE block records the ``[batch, pos]`` layout of the tokens;
2. a forward hook on the HF router recomputes routing from its logits with
   :mod:`tl_moe.models.routing`, firing ``hook_router_logits`` -> ``hook_router_probs`` ->
   ``hook_topk_indices`` -> ``hook_topk_weights``, so an edit at one stage re-routes the
   later ones;
3. the ``"tl_moe"`` experts implementation (:mod:`tl_moe.models.experts`) fires
   ``hook_expert_pre``/``hook_expert_post``/``hook_expert_out``; shared experts get torch
   hooks on their down-projection (``hook_shared_post``), output (``hook_shared_out``) and
   gate (``hook_shared_gate``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from tl_moe.models.architectures import ArchitectureSpec, get_spec
from tl_moe.models.config import MoEConfig, RoutingRule
from tl_moe.models.experts import (
    IMPLEMENTATION_NAME,
    ExpertHookPoints,
    bind_expert_hooks,
    register_experts_implementation,
    unbind_expert_hooks,
)
from tl_moe.models.introspect import (
    LayerModules,
    decoder_layers,
    hf_model_of,
    layer_modules,
    moe_config,
    selection_bias_of,
    unwrap,
)
from tl_moe.models.routing import mixing_weights, routing_scores, select_experts


@dataclass
class _Attachment:
    """What :func:`attach` installed on one bridge, so :func:`detach` can undo it."""

    config: MoEConfig
    previous_experts_implementation: str | None
    handles: list = field(default_factory=list)
    hook_owners: list = field(default_factory=list)  # (component, attribute name)
    experts_modules: list = field(default_factory=list)


def _new_hook(component: nn.Module, attachment: _Attachment, name: str) -> HookPoint:
    hook = HookPoint()
    setattr(component, name, hook)
    attachment.hook_owners.append((component, name))
    return hook


class _TokenShape:
    """Records the ``[batch, pos]`` layout of the tokens entering an MoE block."""

    def __init__(self, expert_hooks: ExpertHookPoints):
        self.expert_hooks = expert_hooks

    def __call__(self, module, args, kwargs):
        hidden = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        self.expert_hooks.token_shape = tuple(hidden.shape[:-1])


class _RouterHook:
    """Forward hook on an HF router: recompute routing from the logits, firing hook points."""

    def __init__(
        self,
        rule: RoutingRule,
        k: int,
        token_shape: ExpertHookPoints,
        selection_bias: torch.Tensor | None,
        logits_hook: HookPoint,
        probs_hook: HookPoint | None,
        indices_hook: HookPoint,
        weights_hook: HookPoint,
    ):
        self.rule = rule
        self.k = k
        self.token_shape = token_shape
        self.selection_bias = selection_bias
        self.logits_hook = logits_hook
        self.probs_hook = probs_hook
        self.indices_hook = indices_hook
        self.weights_hook = weights_hook

    def __call__(self, module, args, output):
        logits, weights, indices = output[0], output[1], output[2]
        shape = self.token_shape.token_shape or logits.shape[:-1]
        if int(torch.tensor(shape).prod()) != logits.shape[:-1].numel():
            shape = logits.shape[:-1]
        router_logits = self.logits_hook(logits.reshape(*shape, logits.shape[-1]))
        scores = routing_scores(router_logits, self.rule)
        if scores is not None and self.probs_hook is not None:
            scores = self.probs_hook(scores)
        chosen = self.indices_hook(
            select_experts(router_logits, scores, self.rule, self.k, self.selection_bias)
        )
        mix = self.weights_hook(mixing_weights(router_logits, scores, chosen, self.rule))
        return (
            router_logits.reshape(logits.shape),
            mix.reshape(weights.shape).to(weights.dtype),
            chosen.reshape(indices.shape).to(indices.dtype),
        ) + tuple(output[3:])


def _reshape_to(shape_source: ExpertHookPoints, tensor: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    shape = shape_source.token_shape
    if shape and int(torch.tensor(shape).prod()) == tensor.shape[:-1].numel():
        return tensor.reshape(*shape, tensor.shape[-1]), tensor.shape
    return tensor, tensor.shape


class _InputHook:
    """Forward pre-hook firing a hook point on a module's first input (token layout restored)."""

    def __init__(self, hook: HookPoint, token_shape: ExpertHookPoints):
        self.hook, self.token_shape = hook, token_shape

    def __call__(self, module, args):
        shaped, original = _reshape_to(self.token_shape, args[0])
        return (self.hook(shaped).reshape(original),) + tuple(args[1:])


class _OutputHook:
    """Forward hook firing a hook point on a module's output (token layout restored)."""

    def __init__(self, hook: HookPoint, token_shape: ExpertHookPoints):
        self.hook, self.token_shape = hook, token_shape

    def __call__(self, module, args, output):
        shaped, original = _reshape_to(self.token_shape, output)
        return self.hook(shaped).reshape(original)


def _wire_sparse_layer(
    component: nn.Module,
    modules: LayerModules,
    spec: ArchitectureSpec,
    config: MoEConfig,
    attachment: _Attachment,
) -> None:
    """Create the hook points of one sparse layer on ``component`` and connect them."""
    new = lambda name: _new_hook(component, attachment, name)  # noqa: E731
    expert_hooks = ExpertHookPoints(
        pre=new("hook_expert_pre"), post=new("hook_expert_post"), out=new("hook_expert_out")
    )
    router_hook = _RouterHook(
        rule=config.routing,
        k=int(modules.router.top_k),
        token_shape=expert_hooks,
        selection_bias=selection_bias_of(modules.router, spec),
        logits_hook=new("hook_router_logits"),
        probs_hook=new("hook_router_probs") if config.routing.has_scores else None,
        indices_hook=new("hook_topk_indices"),
        weights_hook=new("hook_topk_weights"),
    )
    handles = attachment.handles
    handles.append(modules.ffn.register_forward_pre_hook(_TokenShape(expert_hooks), with_kwargs=True))
    handles.append(modules.router.register_forward_hook(router_hook))
    bind_expert_hooks(modules.experts, expert_hooks)
    attachment.experts_modules.append(modules.experts)
    if modules.shared is not None:
        # The module the MoE block calls: a TransformerBridge MLP component when the adapter wraps
        # the shared experts (then its own hook_post fires in every mode, including compatibility
        # mode, where the bridge computes the MLP from processed weights), else the HF MLP.
        called = getattr(modules.ffn, spec.shared)
        bridge_neurons = getattr(called, "hook_post", None)
        shared_post = _OutputHook(new("hook_shared_post"), expert_hooks)
        if isinstance(bridge_neurons, HookPoint):
            handles.append(bridge_neurons.register_forward_hook(shared_post))
        else:
            down = unwrap(modules.shared.down_proj)
            handles.append(down.register_forward_pre_hook(_InputHook(shared_post.hook, expert_hooks)))
        handles.append(called.register_forward_hook(_OutputHook(new("hook_shared_out"), expert_hooks)))
    if modules.shared_gate is not None:
        handles.append(
            modules.shared_gate.register_forward_hook(_OutputHook(new("hook_shared_gate"), expert_hooks))
        )


def _refresh_hook_registry(bridge) -> None:
    """Make the bridge's ``hook_dict`` (and so ``run_with_cache``/``hooks``) see new hook points."""
    bridge.clear_hook_registry()
    bridge._initialize_hook_registry()


def is_attached(bridge) -> bool:
    """Whether tl_moe hook points are installed on ``bridge``."""
    return getattr(bridge, "_tl_moe_attachment", None) is not None


def attach(bridge):
    """Install tl_moe's hook points on a TransformerBridge the user booted; returns it.

    Works before or after ``bridge.enable_compatibility_mode()``. Dense models are accepted
    (they get no expert hook points; their neurons are TransformerLens's
    ``blocks.{L}.mlp.hook_post``). Calling it twice is a no-op.
    """
    if is_attached(bridge):
        return bridge
    if not hasattr(bridge, "blocks") or not hasattr(bridge, "original_model"):
        raise TypeError(
            f"attach() expects a transformer_lens TransformerBridge, got {type(bridge).__name__}. "
            "Use tl_moe.load(...) to boot one from a name, a local directory or a Hugging Face model."
        )
    hf = hf_model_of(bridge)
    spec = get_spec(hf.config.model_type)
    config = moe_config(bridge)
    attachment = _Attachment(
        config=config,
        previous_experts_implementation=getattr(hf.config, "_experts_implementation", None),
    )
    if config.is_moe:
        register_experts_implementation()
        hf.set_experts_implementation(IMPLEMENTATION_NAME)
        for layer_index, layer in enumerate(decoder_layers(hf)):
            modules = layer_modules(layer, spec)
            if modules.is_sparse:
                _wire_sparse_layer(bridge.blocks[layer_index].mlp, modules, spec, config, attachment)
    bridge._tl_moe_attachment = attachment
    bridge.moe_cfg = config
    _refresh_hook_registry(bridge)
    return bridge


def detach(bridge):
    """Remove everything :func:`attach` installed; the bridge behaves as before. Returns it."""
    attachment = getattr(bridge, "_tl_moe_attachment", None)
    if attachment is None:
        return bridge
    for handle in attachment.handles:
        handle.remove()
    for experts in attachment.experts_modules:
        unbind_expert_hooks(experts)
    for component, name in attachment.hook_owners:
        component._hook_registry.pop(name, None)
        delattr(component, name)
    if attachment.previous_experts_implementation is not None:
        hf_model_of(bridge).set_experts_implementation(attachment.previous_experts_implementation)
    bridge._tl_moe_attachment = None
    _refresh_hook_registry(bridge)
    return bridge


def _resolve_zoo_name(name: str) -> str:
    from tl_moe.zoo.registry import checkpoint_path  # the zoo sits above models in the layering

    return str(checkpoint_path(name))


def load(
    model, *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32, **boot_kwargs
):
    """Load a model as a TransformerBridge with tl_moe's hook points installed.

    Args:
        model: A Hugging Face hub id, a local directory holding a saved model and tokenizer,
            a toy-zoo name such as ``"toy/moe-8x2"``, an already built Hugging Face
            ``PreTrainedModel``, or a TransformerBridge.
        device: Device to load onto (default: TransformerBridge's choice).
        dtype: Parameter dtype.
        **boot_kwargs: Passed to ``TransformerBridge.boot_transformers`` (e.g. ``tokenizer``,
            ``device_map``).

    Returns:
        The bridge, with :func:`attach` applied and ``bridge.moe_cfg`` set.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, TransformerBridge):
        return attach(model)
    if isinstance(model, nn.Module):
        get_spec(hf_model_of(model).config.model_type)
        name = getattr(model.config, "name_or_path", None) or model.config.model_type
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=model, device=device, dtype=dtype, **boot_kwargs
        )
        return attach(bridge)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"load() accepts a hub id, a local directory, a toy-zoo name, a PreTrainedModel or a "
            f"TransformerBridge; got {type(model).__name__}."
        )
    name = str(model)
    if name.startswith("toy/"):
        from tl_moe.zoo.tokenizer import load_tokenizer

        name = _resolve_zoo_name(name)
        boot_kwargs.setdefault("tokenizer", load_tokenizer())
    _check_supported_before_download(name)
    bridge = TransformerBridge.boot_transformers(name, device=device, dtype=dtype, **boot_kwargs)
    return attach(bridge)


def _check_supported_before_download(name: str) -> None:
    """Fail fast, before loading weights, on an architecture tl_moe does not support."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        return  # let TransformerBridge report what is wrong with the name
    get_spec(config.model_type)
