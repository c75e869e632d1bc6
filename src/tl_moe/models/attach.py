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

import contextlib
import os
import tempfile
from collections.abc import Callable
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
    unflatten_tokens,
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

_MISSING = object()
_TORCH_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


@dataclass
class _Attachment:
    """What :func:`attach` installed on one bridge, so :func:`detach` can undo it.

    Everything is held by reference to modules and hook objects (no ``RemovableHandle``s,
    whose weak references a ``copy.deepcopy`` of the bridge would keep pointing at the
    original), so a deep copy of an attached bridge detaches independently.
    """

    config: MoEConfig
    previous_moe_cfg: object = _MISSING
    previous_experts_implementations: list = field(default_factory=list)  # (config, __dict__ value)
    torch_hooks: list = field(default_factory=list)  # (module, hook object)
    hook_owners: list = field(default_factory=list)  # (component, attribute, registry name)
    experts_modules: list = field(default_factory=list)


def _install(attachment: _Attachment, module: nn.Module, hook, *, pre: bool = False, **kwargs) -> None:
    """Register ``hook`` on ``module`` (a forward hook, or a pre-hook with ``pre``) and record it."""
    if pre:
        module.register_forward_pre_hook(hook, **kwargs)
    else:
        module.register_forward_hook(hook, **kwargs)
    attachment.torch_hooks.append((module, hook))


def _uninstall(module: nn.Module, hook) -> None:
    """Remove every registration of ``hook`` (by identity) from ``module``'s torch hook dicts."""
    ids = [key for key, value in module._forward_hooks.items() if value is hook]
    ids += [key for key, value in module._forward_pre_hooks.items() if value is hook]
    for name in _TORCH_HOOK_DICTS:
        table = getattr(module, name, None)
        if isinstance(table, dict):
            for key in ids:
                table.pop(key, None)
        elif isinstance(table, set):
            table.difference_update(ids)


def _new_hook(component: nn.Module, attachment: _Attachment, attribute: str, prefix: str) -> HookPoint:
    hook = HookPoint()
    setattr(component, attribute, hook)
    hook.name = f"{prefix}.{attribute}"
    attachment.hook_owners.append((component, attribute, hook.name))
    return hook


class _TokenShape:
    """Records the ``[batch, pos]`` layout of the tokens entering an MoE block."""

    def __init__(self, expert_hooks: ExpertHookPoints):
        self.expert_hooks = expert_hooks

    def __call__(self, module, args, kwargs):
        hidden = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        self.expert_hooks.token_shape = tuple(hidden.shape[:-1])


class _RouterHook:
    """Forward hook on an HF router: recompute routing from the logits, firing hook points.

    The selection bias is read from the router module being called (``bias_path``), at call
    time: reassigning the buffer, ``.to(device)`` and ``copy.deepcopy`` are all followed.
    """

    def __init__(
        self,
        rule: RoutingRule,
        k: int,
        token_shape: ExpertHookPoints,
        bias_path: str | None,
        logits_hook: HookPoint,
        probs_hook: HookPoint | None,
        indices_hook: HookPoint,
        weights_hook: HookPoint,
    ):
        self.rule = rule
        self.k = k
        self.token_shape = token_shape
        self.bias_path = bias_path
        self.logits_hook = logits_hook
        self.probs_hook = probs_hook
        self.indices_hook = indices_hook
        self.weights_hook = weights_hook

    def __call__(self, module, args, output):
        logits, weights, indices = output[0], output[1], output[2]
        router_logits = self.logits_hook(unflatten_tokens(logits, self.token_shape.token_shape))
        scores = routing_scores(router_logits, self.rule)
        if scores is not None and self.probs_hook is not None:
            scores = self.probs_hook(scores)
        bias = selection_bias_of(module, self.bias_path)
        chosen = self.indices_hook(select_experts(router_logits, scores, self.rule, self.k, bias))
        mix = self.weights_hook(mixing_weights(router_logits, scores, chosen, self.rule))
        return (
            router_logits.reshape(logits.shape),
            mix.reshape(weights.shape).to(weights.dtype),
            chosen.reshape(indices.shape).to(indices.dtype),
        ) + tuple(output[3:])


class _InputHook:
    """Forward pre-hook firing a hook point on a module's first input (token layout restored)."""

    def __init__(self, hook: HookPoint, token_shape: ExpertHookPoints):
        self.hook, self.token_shape = hook, token_shape

    def __call__(self, module, args):
        x = args[0]
        return (self.hook(unflatten_tokens(x, self.token_shape.token_shape)).reshape(x.shape),) + tuple(
            args[1:]
        )


class _OutputHook:
    """Forward hook firing a hook point on a module's output (token layout restored)."""

    def __init__(self, hook: HookPoint, token_shape: ExpertHookPoints):
        self.hook, self.token_shape = hook, token_shape

    def __call__(self, module, args, output):
        return self.hook(unflatten_tokens(output, self.token_shape.token_shape)).reshape(output.shape)


def _wire_sparse_layer(
    component: nn.Module,
    prefix: str,
    modules: LayerModules,
    spec: ArchitectureSpec,
    config: MoEConfig,
    attachment: _Attachment,
) -> None:
    """Create the hook points of one sparse layer on ``component`` and connect them."""
    new = lambda name: _new_hook(component, attachment, name, prefix)  # noqa: E731
    expert_hooks = ExpertHookPoints(
        pre=new("hook_expert_pre"), post=new("hook_expert_post"), out=new("hook_expert_out")
    )
    router_hook = _RouterHook(
        rule=config.routing,
        k=int(modules.router.top_k),
        token_shape=expert_hooks,
        bias_path=spec.selection_bias,
        logits_hook=new("hook_router_logits"),
        probs_hook=new("hook_router_probs") if config.routing.has_scores else None,
        indices_hook=new("hook_topk_indices"),
        weights_hook=new("hook_topk_weights"),
    )
    _install(attachment, modules.ffn, _TokenShape(expert_hooks), pre=True, with_kwargs=True)
    _install(attachment, modules.router, router_hook)
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
            _install(attachment, bridge_neurons, shared_post)
        else:
            down = unwrap(modules.shared.down_proj)
            _install(attachment, down, _InputHook(shared_post.hook, expert_hooks), pre=True)
        _install(attachment, called, _OutputHook(new("hook_shared_out"), expert_hooks))
    if modules.shared_gate is not None:
        _install(attachment, modules.shared_gate, _OutputHook(new("hook_shared_gate"), expert_hooks))


def _experts_configs(hf: nn.Module) -> list:
    """Every config object whose ``_experts_implementation`` a fused experts module may read."""
    from transformers import PreTrainedModel

    configs, seen = [], set()
    for module in hf.modules():
        config = getattr(module, "config", None)
        if (
            isinstance(module, PreTrainedModel)
            or hasattr(module, "gate_up_proj")
            or hasattr(module, "up_proj")
        ) and (config is not None and hasattr(config, "_experts_implementation") and id(config) not in seen):
            seen.add(id(config))
            configs.append(config)
    return configs


def is_attached(bridge) -> bool:
    """Whether tl_moe hook points are installed on ``bridge``."""
    return getattr(bridge, "_tl_moe_attachment", None) is not None


def attach(bridge):
    """Install tl_moe's hook points on a TransformerBridge the user booted; returns it.

    Works before or after ``bridge.enable_compatibility_mode()``. Dense models are accepted
    (they get no expert hook points; their neurons are TransformerLens's
    ``blocks.{L}.mlp.hook_post``). Calling it twice is a no-op. TransformerLens's own hook
    points are left exactly as they were (same objects, same ``.name``); the new ones are added
    to the bridge's hook registry by name.
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
    attachment = _Attachment(config=config, previous_moe_cfg=bridge.__dict__.get("moe_cfg", _MISSING))
    if config.is_moe:
        register_experts_implementation()
        attachment.previous_experts_implementations = [
            (cfg, cfg.__dict__.get("_experts_implementation_internal", _MISSING))
            for cfg in _experts_configs(hf)
        ]
        hf.set_experts_implementation(IMPLEMENTATION_NAME)
        for cfg, _ in attachment.previous_experts_implementations:
            cfg.__dict__["_experts_implementation_internal"] = IMPLEMENTATION_NAME
        for layer_index, layer in enumerate(decoder_layers(hf)):
            modules = layer_modules(layer, spec)
            if modules.is_sparse:
                prefix = f"blocks.{layer_index}.mlp"
                _wire_sparse_layer(bridge.blocks[layer_index].mlp, prefix, modules, spec, config, attachment)
    bridge._tl_moe_attachment = attachment
    bridge.moe_cfg = config
    registry = bridge._hook_registry
    for component, attribute, name in attachment.hook_owners:
        registry[name] = getattr(component, attribute)
    return bridge


def detach(bridge):
    """Remove everything :func:`attach` installed; the bridge behaves as before. Returns it.

    Restores the experts implementation of every config :func:`attach` changed, and
    ``bridge.moe_cfg`` (removed, or the value it had before).
    """
    attachment = getattr(bridge, "_tl_moe_attachment", None)
    if attachment is None:
        return bridge
    for module, hook in attachment.torch_hooks:
        _uninstall(module, hook)
    for experts in attachment.experts_modules:
        unbind_expert_hooks(experts)
    registry = bridge._hook_registry
    for component, attribute, name in attachment.hook_owners:
        if registry.get(name) is getattr(component, attribute, None):
            registry.pop(name)
        if isinstance(getattr(component, "_hook_registry", None), dict):
            component._hook_registry.pop(attribute, None)
        delattr(component, attribute)
    for cfg, previous in attachment.previous_experts_implementations:
        if previous is _MISSING:
            cfg.__dict__.pop("_experts_implementation_internal", None)
        else:
            cfg.__dict__["_experts_implementation_internal"] = previous
    if attachment.previous_moe_cfg is _MISSING:
        bridge.__dict__.pop("moe_cfg", None)
    else:
        bridge.moe_cfg = attachment.previous_moe_cfg
    del bridge._tl_moe_attachment
    return bridge


# --- loading ------------------------------------------------------------------------------

NameResolver = Callable[[str], "tuple[str, dict]"]
_NAME_RESOLVERS: dict[str, NameResolver] = {}


def register_name_resolver(prefix: str, resolver: NameResolver) -> None:
    """Let :func:`load` accept names starting with ``prefix`` (e.g. ``"toy/"``).

    ``resolver(name)`` returns ``(local directory, default boot kwargs)`` — for example the
    toy zoo returns its checkpoint directory and ``{"tokenizer": <its tokenizer>}``. The
    package above ``models/`` registers its resolvers; ``models/`` knows none of them.
    """
    _NAME_RESOLVERS[prefix] = resolver


def _resolve_name(name: str, resolver: NameResolver | None) -> tuple[str, dict]:
    if resolver is not None:
        return resolver(name)
    for prefix, registered in _NAME_RESOLVERS.items():
        if name.startswith(prefix):
            return registered(name)
    return name, {}


def _causal_lm_architecture(model: nn.Module) -> list[str]:
    """``config.architectures`` for the adapter lookup: as saved, else the model's own class."""
    architectures = list(getattr(model.config, "architectures", None) or [])
    return architectures or [type(model).__name__]


@contextlib.contextmanager
def _reloadable(tokenizer):
    """``tokenizer``, or, for one built in memory, the same tokenizer saved to a temporary folder.

    TransformerBridge reloads the tokenizer by ``name_or_path`` (to set ``add_bos_token``); an
    in-memory tokenizer has none, so it is saved and reloaded from a folder that exists while
    the bridge boots.
    """
    if (
        tokenizer is None
        or "name_or_path" in getattr(tokenizer, "init_kwargs", {})
        and os.path.isdir(tokenizer.init_kwargs["name_or_path"] or "")
    ):
        yield tokenizer
        return
    if "name_or_path" in getattr(tokenizer, "init_kwargs", {}) and tokenizer.init_kwargs["name_or_path"]:
        yield tokenizer  # a hub tokenizer the user chose
        return
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="tl_moe_tokenizer_") as directory:
        tokenizer.save_pretrained(directory)
        yield AutoTokenizer.from_pretrained(directory)


def load(
    model,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    tokenizer=None,
    resolver: NameResolver | None = None,
    **boot_kwargs,
):
    """Load a model as a TransformerBridge with tl_moe's hook points installed.

    Args:
        model: A Hugging Face hub id, a local directory holding a saved model and tokenizer,
            a name a registered resolver knows (the toy zoo's ``"toy/moe-8x2"``), an already
            built Hugging Face ``PreTrainedModel`` (``from_pretrained``, ``from_config`` or
            :func:`~tl_moe.models.build.build_model`), or a TransformerBridge.
        device: Device to load onto (default: TransformerBridge's choice).
        dtype: Parameter dtype.
        tokenizer: The tokenizer to use. Required for a model built in memory that was not
            loaded from a directory (nothing else says which tokenizer it was trained with;
            tl_moe never guesses one from the hub).
        resolver: ``name -> (directory, boot kwargs)``, used instead of the registered ones.
        **boot_kwargs: Passed to ``TransformerBridge.boot_transformers`` (e.g. ``device_map``).

    Returns:
        The bridge, with :func:`attach` applied and ``bridge.moe_cfg`` set.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if tokenizer is not None:
        boot_kwargs["tokenizer"] = tokenizer
    if isinstance(model, TransformerBridge):
        return attach(model)
    if isinstance(model, nn.Module):
        hf = hf_model_of(model)
        get_spec(hf.config.model_type)
        source = getattr(hf.config, "name_or_path", None) or ""
        if "tokenizer" not in boot_kwargs and not os.path.isdir(source):
            raise ValueError(
                f"This {type(hf).__name__} was built in memory (config.name_or_path={source!r} is not a local "
                "directory), so nothing says which tokenizer goes with it. Pass tokenizer=... to tl_moe.load; "
                "tl_moe does not fetch a tokenizer from the hub by model type."
            )
        overrides = dict(boot_kwargs.pop("hf_config_overrides", None) or {})
        overrides.setdefault("architectures", _causal_lm_architecture(hf))
        with _reloadable(boot_kwargs.get("tokenizer")) as reloadable:
            if reloadable is not None:
                boot_kwargs["tokenizer"] = reloadable
            bridge = TransformerBridge.boot_transformers(
                source or type(hf).__name__,
                hf_model=hf,
                device=device,
                dtype=dtype,
                hf_config_overrides=overrides,
                **boot_kwargs,
            )
        return attach(bridge)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"load() accepts a hub id, a local directory, a registered name (e.g. a toy-zoo name), a "
            f"PreTrainedModel or a TransformerBridge; got {type(model).__name__}."
        )
    name, defaults = _resolve_name(str(model), resolver)
    for key, value in defaults.items():
        boot_kwargs.setdefault(key, value)
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
