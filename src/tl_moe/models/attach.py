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
   ``hook_expert_pre``/``hook_expert_post``/``hook_expert_out`` (where TransformerLens declares
   these itself, as with the upstream expert hooks, its own are used); shared experts get torch
   hooks on their down-projection (``hook_shared_post``), output (``hook_shared_out``) and
   gate (``hook_shared_gate``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from tl_moe.errors import InputError
from tl_moe.models import generation
from tl_moe.models.architectures import UnsupportedArchitectureError
from tl_moe.models.config import MoEConfig, RoutingRule
from tl_moe.models.experts import (
    IMPLEMENTATION_NAME,
    ExpertHookPoints,
    bind_expert_hooks,
    checked_edit,
    has_upstream_expert_hooks,
    register_experts_implementation,
    unbind_expert_hooks,
    unflatten_tokens,
)
from tl_moe.models.folder import check_hub_model, check_model_folder, unbootable_message
from tl_moe.models.introspect import (
    LayerModules,
    hf_model_of,
    moe_config,
    selection_bias_of,
    sparse_layer_modules,
    unwrap,
)
from tl_moe.models.routing import check_expert_indices, mixing_weights, routing_scores, select_experts

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
    components: dict = field(default_factory=dict)  # layer -> bridge path of its MoE component
    cache_compat: list = field(default_factory=list)  # attention components given the cache= workaround
    upstream_experts: bool = (
        False  # TransformerLens fires hook_expert_* itself (see _uses_upstream_expert_hooks)
    )
    previous_upstream_flag: bool | None = None  # cfg.use_expert_hooks before attach turned it on


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
        bias_argument: bool,
        logits_hook: HookPoint,
        probs_hook: HookPoint | None,
        indices_hook: HookPoint,
        weights_hook: HookPoint,
    ):
        self.rule = rule
        self.k = k
        self.token_shape = token_shape
        self.bias_path = bias_path
        self.bias_argument = bias_argument
        self.logits_hook = logits_hook
        self.probs_hook = probs_hook
        self.indices_hook = indices_hook
        self.weights_hook = weights_hook

    def _bias(self, module, args, kwargs) -> torch.Tensor | None:
        if not self.bias_argument:
            return selection_bias_of(module, self.bias_path)
        if len(args) > 1:
            return args[1]
        return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)

    def __call__(self, module, args, kwargs, output):
        """Fire the routing hook points; recompute a stage only downstream of an edit.

        Unedited stages carry the router's own tensors, so the block computes exactly what
        Hugging Face computes (in every dtype); an edited stage (a hook that returns a new
        tensor) re-routes the later ones with the verified rule.
        """
        logits, weights, indices = output[0], output[1], output[2]
        token_shape = self.token_shape.token_shape
        shaped = unflatten_tokens(logits, token_shape)
        router_logits = checked_edit(self.logits_hook, shaped, self.logits_hook(shaped))
        edited = router_logits is not shaped
        scores = None
        if self.probs_hook is not None:
            computed = routing_scores(router_logits, self.rule)
            scores = checked_edit(self.probs_hook, computed, self.probs_hook(computed))
            edited = edited or scores is not computed
        if edited:
            scores = scores if scores is not None else routing_scores(router_logits, self.rule)
            bias = self._bias(module, args, kwargs)
            proposed = select_experts(router_logits, scores, self.rule, self.k, bias)
        else:
            proposed = unflatten_tokens(indices, token_shape)
        chosen = checked_edit(self.indices_hook, proposed, self.indices_hook(proposed))
        if chosen is not proposed:
            check_expert_indices(chosen, router_logits.shape[-1], self.indices_hook.name)
        edited = edited or chosen is not proposed
        if edited:
            if scores is None:
                scores = routing_scores(router_logits, self.rule)
            proposed = mixing_weights(router_logits, scores, chosen, self.rule)
        else:
            proposed = unflatten_tokens(weights, token_shape)
        mix = checked_edit(self.weights_hook, proposed, self.weights_hook(proposed))
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
        shaped = unflatten_tokens(x, self.token_shape.token_shape)
        return (checked_edit(self.hook, shaped, self.hook(shaped)).reshape(x.shape),) + tuple(args[1:])


class _OutputHook:
    """Forward hook firing a hook point on a module's output (token layout restored)."""

    def __init__(self, hook: HookPoint, token_shape: ExpertHookPoints):
        self.hook, self.token_shape = hook, token_shape

    def __call__(self, module, args, output):
        shaped = unflatten_tokens(output, self.token_shape.token_shape)
        return checked_edit(self.hook, shaped, self.hook(shaped)).reshape(output.shape)


def _wire_sparse_layer(
    component: nn.Module,
    prefix: str,
    modules: LayerModules,
    config: MoEConfig,
    attachment: _Attachment,
) -> None:
    """Create the hook points of one sparse layer on ``component`` and connect them."""
    new = lambda name: _new_hook(component, attachment, name, prefix)  # noqa: E731
    if attachment.upstream_experts:  # TransformerLens's own; here they only carry the token layout
        expert_hooks = ExpertHookPoints(
            pre=component.hook_expert_pre, post=component.hook_expert_post, out=component.hook_expert_out
        )
    else:
        expert_hooks = ExpertHookPoints(
            pre=new("hook_expert_pre"), post=new("hook_expert_post"), out=new("hook_expert_out")
        )
    router_hook = _RouterHook(
        rule=config.routing,
        k=config.experts_per_token,
        token_shape=expert_hooks,
        bias_path=modules.bias_path,
        bias_argument=modules.bias_argument,
        logits_hook=new("hook_router_logits"),
        probs_hook=new("hook_router_probs") if config.routing.has_scores else None,
        indices_hook=new("hook_topk_indices"),
        weights_hook=new("hook_topk_weights"),
    )
    _install(attachment, modules.ffn, _TokenShape(expert_hooks), pre=True, with_kwargs=True)
    _install(attachment, modules.router, router_hook, with_kwargs=True)
    if not attachment.upstream_experts:
        bind_expert_hooks(modules.experts, expert_hooks)
        attachment.experts_modules.append(modules.experts)
    if modules.shared is not None:
        # The module the MoE block calls: a TransformerBridge MLP component when the adapter wraps
        # the shared experts (then its own hook_post fires in every mode, including compatibility
        # mode, where the bridge computes the MLP from processed weights), else the HF MLP.
        called = getattr(modules.ffn, modules.shared_name)
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


def _bridge_component(bridge, layer_index: int, modules: LayerModules) -> nn.Module:
    """The TransformerBridge component that wraps this layer's MoE block (it holds the hook points)."""
    block = bridge.blocks[layer_index]
    for name, child in block.named_children():
        if name not in ("original_component", "_original_component") and unwrap(child) is modules.ffn:
            return child
    raise UnsupportedArchitectureError(
        f"TransformerBridge does not wrap the MoE block of layer {layer_index} "
        f"({type(modules.ffn).__name__} at `{modules.ffn_path}`) as a component of blocks.{layer_index}, so "
        "there is no bridge component to hold its hook points."
    )


def _uses_upstream_expert_hooks(bridge, layers: list[LayerModules]) -> bool:
    """Whether TransformerLens itself fires ``blocks.{L}.mlp.hook_expert_*`` on every sparse layer."""
    sparse = [(index, modules) for index, modules in enumerate(layers) if modules.is_sparse]
    return bool(sparse) and all(
        bridge.blocks[index]._modules.get("mlp") is _bridge_component(bridge, index, modules)
        and has_upstream_expert_hooks(_bridge_component(bridge, index, modules))
        for index, modules in sparse
    )


def _enable_upstream_expert_hooks(bridge) -> bool | None:
    """Turn on TransformerLens's own expert hook points, which it gates behind ``use_expert_hooks``.

    The gate goes by name, so tl_moe's own hook points (same names) need it on too; tl_moe's
    experts implementation, set after this, then takes precedence over TransformerLens's. Returns the flag's previous value, for :func:`detach` to restore; None where the bridge has no
    ``set_use_expert_hooks`` (its hook points then fire without one).
    """
    setter = getattr(bridge, "set_use_expert_hooks", None)
    if setter is None:
        return None
    previous = bool(getattr(bridge.cfg, "use_expert_hooks", False))
    setter(True)
    return previous


def _restore_upstream_flag(bridge, attachment: _Attachment) -> None:
    if attachment.previous_upstream_flag is not None:
        bridge.set_use_expert_hooks(attachment.previous_upstream_flag)


def check_block_output(modules: LayerModules, where: str, n_tokens: int = 8) -> None:
    """Refuse a block whose output is not Σ_k weight·expert output (+ (gated) shared experts).

    Runs the HF block once on random hidden states, before anything is installed.
    """
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = output[0] if isinstance(output, tuple) else output

        return hook

    watched = [(modules.experts, "experts"), (modules.shared, "shared"), (modules.shared_gate, "gate")]
    param = next(modules.experts.parameters())
    d_model = int(modules.experts.down_proj.shape[2 if modules.experts.is_transposed else 1])
    x = torch.randn(1, n_tokens, d_model, generator=torch.Generator().manual_seed(0)).to(
        param.device, param.dtype
    )
    handles = [module.register_forward_hook(keep(name)) for module, name in watched if module is not None]
    try:
        with torch.no_grad():
            out = modules.ffn(x)
    except Exception as error:
        raise UnsupportedArchitectureError(
            f"{where}: the MoE block {type(modules.ffn).__name__} cannot be run on hidden states alone ({error!r})."
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    out = (out[0] if isinstance(out, tuple) else out).reshape(n_tokens, d_model).float()
    if "experts" not in seen:
        raise UnsupportedArchitectureError(
            f"{where}: the MoE block {type(modules.ffn).__name__} never calls its experts."
        )
    want = seen["experts"].reshape(n_tokens, d_model).float()
    if "shared" in seen:
        shared = seen["shared"].reshape(n_tokens, d_model).float()
        if "gate" in seen:
            shared = torch.sigmoid(seen["gate"].reshape(n_tokens, 1).float()) * shared
        want = want + shared
    tolerance = 1e-4 if param.dtype == torch.float32 else 3e-2
    if not torch.allclose(
        out, want, rtol=tolerance, atol=tolerance * float(want.abs().max().clamp(min=1e-6))
    ):
        parts = "weighted expert outputs" + (" + shared experts" if modules.shared is not None else "")
        raise UnsupportedArchitectureError(
            f"{where}: the output of {type(modules.ffn).__name__} is not the sum of its {parts} (largest "
            f"difference {float((out - want).abs().max()):.3g}); the block post-processes the experts in a way "
            "tl_moe's hook points would not describe."
        )


def _restore_experts_implementations(attachment: _Attachment) -> None:
    for cfg, previous in attachment.previous_experts_implementations:
        if previous is _MISSING:
            cfg.__dict__.pop("_experts_implementation_internal", None)
        else:
            cfg.__dict__["_experts_implementation_internal"] = previous


def moe_component_name(bridge, layer: int) -> str:
    """The bridge path of layer ``layer``'s MoE component, e.g. ``"blocks.3.mlp"``.

    TransformerLens's own hooks of the block (``hook_in``/``hook_out``) live under it. tl_moe's
    hook points are always named ``blocks.{L}.mlp.hook_*`` (:func:`~tl_moe.models.hook_names.get_act_name`),
    also where the bridge calls this component ``moe`` (GraniteMoE-Hybrid) or ``mixer`` (Nemotron-H).
    """
    attachment = getattr(bridge, "_tl_moe_attachment", None)
    if attachment is None or layer not in attachment.components:
        raise KeyError(
            f"layer {layer} has no tl_moe MoE component (is tl_moe attached? is it a sparse layer?)"
        )
    return attachment.components[layer]


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
    config = moe_config(bridge)
    attachment = _Attachment(config=config, previous_moe_cfg=bridge.__dict__.get("moe_cfg", _MISSING))
    if config.is_moe:
        layers = sparse_layer_modules(hf)
        attachment.upstream_experts = _uses_upstream_expert_hooks(bridge, layers)
        # Turned on either way: TransformerLens gates every blocks.L.mlp.hook_expert_* name behind it.
        attachment.previous_upstream_flag = _enable_upstream_expert_hooks(bridge)
        if not attachment.upstream_experts:
            register_experts_implementation()
            attachment.previous_experts_implementations = [
                (cfg, cfg.__dict__.get("_experts_implementation_internal", _MISSING))
                for cfg in _experts_configs(hf)
            ]
            hf.set_experts_implementation(IMPLEMENTATION_NAME)
            for cfg, _ in attachment.previous_experts_implementations:
                cfg.__dict__["_experts_implementation_internal"] = IMPLEMENTATION_NAME
        try:  # refuse before installing anything; the check runs tl_moe's experts without hooks
            for layer_index, modules in enumerate(layers):
                if modules.is_sparse:
                    _bridge_component(bridge, layer_index, modules)
                    check_block_output(modules, f"{hf.config.model_type} layer {layer_index}")
        except UnsupportedArchitectureError:
            _restore_experts_implementations(attachment)
            _restore_upstream_flag(bridge, attachment)
            raise
        for layer_index, modules in enumerate(layers):
            if modules.is_sparse:
                component = _bridge_component(bridge, layer_index, modules)
                attachment.components[layer_index] = f"blocks.{layer_index}." + next(
                    name for name, child in bridge.blocks[layer_index].named_children() if child is component
                )
                _wire_sparse_layer(component, f"blocks.{layer_index}.mlp", modules, config, attachment)
    attachment.cache_compat = generation.install(bridge)
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
    generation.uninstall(attachment.cache_compat)
    for experts in attachment.experts_modules:
        unbind_expert_hooks(experts)
    registry = bridge._hook_registry
    for component, attribute, name in attachment.hook_owners:
        if registry.get(name) is getattr(component, attribute, None):
            registry.pop(name)
        if isinstance(getattr(component, "_hook_registry", None), dict):
            component._hook_registry.pop(attribute, None)
        delattr(component, attribute)
    _restore_experts_implementations(attachment)
    _restore_upstream_flag(bridge, attachment)
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


_WRAPPER_NAMES = ("_original_component", "original_component")
"""Module names TransformerBridge inserts around the HF modules it wraps (not part of a checkpoint's names)."""


def keep_rotary_in_model_dtype(bridge: nn.Module, dtype: torch.dtype) -> None:
    """Cast the rotated queries and keys of a half-precision bridge back to the model's dtype.

    Some rotary embeddings (OLMo's) return float32 ``cos``/``sin`` whatever the model's dtype, and
    their attention rotates in float32 and casts the result back; TransformerBridge's attention
    rotates with Llama's formula, which leaves float32 queries and keys that then fail against the
    half-precision values. A forward hook on every ``hook_rot_q``/``hook_rot_k`` does the cast back,
    as the Hugging Face attention does (the rotation itself stays in float32).
    """
    if dtype not in (torch.float16, torch.bfloat16):
        return
    for name, module in bridge.named_modules():
        if name.split(".")[-1] in ("hook_rot_q", "hook_rot_k"):
            module.register_forward_hook(functools.partial(_cast_float32_output, dtype=dtype))


def _cast_float32_output(module, args, output, dtype: torch.dtype):
    """Forward hook: a float32 output in ``dtype``; anything else unchanged."""
    if isinstance(output, torch.Tensor) and output.dtype == torch.float32:
        return output.to(dtype)
    return None


def check_finite_weights(model: nn.Module, label: str) -> None:
    """Refuse a model with a NaN or infinite parameter (a corrupt or diverged checkpoint), naming the tensor.

    Buffers are not checked (attention masks may hold ``-inf`` on purpose).
    """
    for name, parameter in model.named_parameters():
        if parameter.device.type == "meta":
            continue
        finite = torch.isfinite(parameter.detach())
        if not bool(finite.all()):
            bad = parameter.detach()[~finite]
            kind = "NaN" if bool(torch.isnan(bad).any()) else "inf"
            tensor = ".".join(part for part in name.split(".") if part not in _WRAPPER_NAMES)
            raise InputError(
                f"{label} has non-finite weights: {tensor} holds {kind} ({bad.numel():,} of {parameter.numel():,} "
                "values); accepted: a checkpoint whose weights are all finite numbers."
            )


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
        check_finite_weights(hf_model_of(bridge), f"model {source or type(hf).__name__!r}")
        keep_rotary_in_model_dtype(bridge, dtype)
        return attach(bridge)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"load() accepts a hub id, a local directory, a registered name (e.g. a toy-zoo name), a "
            f"PreTrainedModel or a TransformerBridge; got {type(model).__name__}."
        )
    name, defaults = _resolve_name(os.fspath(model), resolver)
    for key, value in defaults.items():
        boot_kwargs.setdefault(key, value)
    label = f"model {os.fspath(model)!r}"
    if os.path.isdir(name):
        config = check_model_folder(name, label, needs_tokenizer="tokenizer" not in boot_kwargs)
    elif os.path.exists(name):
        raise InputError(
            f"{label} is a file; accepted: a local folder saved with save_pretrained, a hub id (org/name), "
            "or a toy name (toy/...)."
        )
    else:
        check_hub_model(name, label)
        config = {}
    try:
        bridge = TransformerBridge.boot_transformers(name, device=device, dtype=dtype, **boot_kwargs)
    except ValueError as error:
        if not str(error).startswith("Unsupported architecture"):
            raise
        architecture = str(error).removeprefix("Unsupported architecture:").strip()[:80]
        raise InputError(unbootable_message(label, config.get("model_type", "?"), architecture)) from None
    check_finite_weights(hf_model_of(bridge), label)
    keep_rotary_in_model_dtype(bridge, dtype)
    return attach(bridge)
