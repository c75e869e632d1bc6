"""tl_moe on a TransformerLens that fires the per-expert hook points itself, and on one that does not.

The patched TransformerLens (``upstream/``) declares ``hook_expert_pre/post/out`` on its MoE
bridge and fires them from its own experts implementation once ``set_use_expert_hooks(True)``
(off by default). Here a plain bridge is given such hook points by hand, fired by an experts
implementation registered under another name, and a recording ``set_use_expert_hooks``, so the
test sees whether tl_moe uses them (same objects, that implementation left in place, the flag
turned on and restored, nothing of them removed by ``detach``) or installs its own. The tests
marked for the patched TransformerLens run in ``upstream/check.sh``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge
from transformers.integrations.moe import ExpertsInterface

import tl_moe
from tl_moe.models.experts import (
    IMPLEMENTATION_NAME,
    UPSTREAM_HOOK_NAMES,
    ExpertHookPoints,
    bind_expert_hooks,
    hooked_experts_forward,
)
from tl_moe.models.introspect import hf_model_of, sparse_layer_modules

SIMULATED = "simulated_upstream"
_PATCHED = (
    importlib.util.find_spec("transformer_lens.model_bridge.generalized_components.moe_experts") is not None
)
simulation = pytest.mark.skipif(_PATCHED, reason="this TransformerLens declares the expert hooks itself")
TOKENS = torch.tensor([[3, 17, 29, 5, 11, 42, 7], [1, 2, 3, 4, 5, 6, 8]])


def _boot(directory) -> TransformerBridge:
    return TransformerBridge.boot_transformers(str(directory), device="cpu", dtype=torch.float32)


def _simulate_upstream(bridge: TransformerBridge, layers: list[int]) -> dict[str, HookPoint]:
    """Declare and fire ``blocks.{L}.mlp.hook_expert_*`` as the patched TransformerLens does,
    with a ``set_use_expert_hooks`` that records its calls in ``bridge.flag_calls``."""
    bridge.flag_calls = []

    def set_use_expert_hooks(value: bool) -> None:
        bridge.flag_calls.append(value)
        object.__setattr__(bridge.cfg, "use_expert_hooks", value)

    bridge.set_use_expert_hooks = set_use_expert_hooks
    object.__setattr__(bridge.cfg, "use_expert_hooks", False)
    ExpertsInterface.register(SIMULATED, hooked_experts_forward)
    hf = hf_model_of(bridge)
    hf.set_experts_implementation(SIMULATED)
    modules = sparse_layer_modules(hf)
    declared = {}
    for layer in layers:
        component = bridge.blocks[layer].mlp
        for name in UPSTREAM_HOOK_NAMES:
            setattr(component, name, HookPoint())
            getattr(component, name).name = f"blocks.{layer}.mlp.{name}"
            declared[f"blocks.{layer}.mlp.{name}"] = getattr(component, name)
        points = ExpertHookPoints(
            pre=component.hook_expert_pre, post=component.hook_expert_post, out=component.hook_expert_out
        )
        bind_expert_hooks(modules[layer].experts, points)

        def record_layout(module, args, points=points):
            points.token_shape = tuple(args[0].shape[:-1])

        modules[layer].ffn.register_forward_pre_hook(record_layout)
    bridge._hook_registry.update(declared)
    return declared


@simulation
def test_unpatched_bridge_gets_tl_moe_hooks(tiny_model_dir):
    bridge = _boot(tiny_model_dir("olmoe"))
    tl_moe.attach(bridge)
    assert not bridge._tl_moe_attachment.upstream_experts
    assert bridge._tl_moe_attachment.previous_upstream_flag is None  # no flag to turn on here
    assert hf_model_of(bridge).config._experts_implementation == IMPLEMENTATION_NAME
    tl_moe.detach(bridge)
    assert "blocks.0.mlp.hook_expert_post" not in bridge.hook_dict


@simulation
def test_upstream_hooks_are_used_not_replaced(tiny_model_dir):
    bridge = _boot(tiny_model_dir("olmoe"))
    declared = _simulate_upstream(bridge, [0, 1])
    tl_moe.attach(bridge)
    assert bridge._tl_moe_attachment.upstream_experts
    assert bridge.flag_calls == [True]
    assert hf_model_of(bridge).config._experts_implementation == SIMULATED
    for name, hook in declared.items():
        assert bridge.hook_dict[name] is hook
    with torch.no_grad():
        _, cache = bridge.run_with_cache(TOKENS)
    for layer in (
        0,
        1,
    ):  # the upstream expert outputs, mixed by tl_moe's routing hooks, give the block output
        outputs = cache[tl_moe.get_act_name("expert_out", layer)]
        weights = cache[tl_moe.get_act_name("topk_weights", layer)]
        assert outputs.shape[:3] == (*TOKENS.shape, 2)
        torch.testing.assert_close(
            (weights.unsqueeze(-1) * outputs).sum(dim=2),
            cache[f"blocks.{layer}.mlp.hook_out"],
            atol=1e-5,
            rtol=0,
        )


@simulation
def test_detach_leaves_upstream_hooks_firing(tiny_model_dir):
    bridge = _boot(tiny_model_dir("olmoe"))
    declared = _simulate_upstream(bridge, [0, 1])
    tl_moe.detach(tl_moe.attach(bridge))
    assert bridge.flag_calls == [True, False]  # turned on by attach, back off by detach
    assert hf_model_of(bridge).config._experts_implementation == SIMULATED
    assert "blocks.0.mlp.hook_topk_weights" not in bridge.hook_dict
    with torch.no_grad():
        _, cache = bridge.run_with_cache(TOKENS, names_filter=list(declared))
    assert set(cache.keys()) == set(declared)


@simulation
def test_upstream_hooks_on_only_some_layers_are_not_used(tiny_model_dir):
    """Planted mismatch: one sparse layer lacks them, so tl_moe installs its own everywhere."""
    bridge = _boot(tiny_model_dir("olmoe"))
    declared = _simulate_upstream(bridge, [0])
    tl_moe.attach(bridge)
    assert not bridge._tl_moe_attachment.upstream_experts
    assert hf_model_of(bridge).config._experts_implementation == IMPLEMENTATION_NAME
    assert bridge.hook_dict["blocks.0.mlp.hook_expert_post"] is not declared["blocks.0.mlp.hook_expert_post"]


@pytest.mark.skipif(
    not _PATCHED, reason="needs TransformerLens with the upstream expert hooks (upstream/check.sh)"
)
def test_patched_transformer_lens_hooks_are_turned_on_and_back_off(tiny_model_dir):
    bridge = _boot(tiny_model_dir("qwen3_moe"))
    hf = hf_model_of(bridge)
    before = hf.config._experts_implementation
    assert bridge.cfg.use_expert_hooks is False  # opt-in upstream
    tl_moe.attach(bridge)
    assert bridge._tl_moe_attachment.upstream_experts
    assert bridge.cfg.use_expert_hooks is True
    assert hf.config._experts_implementation == "transformer_lens"
    with torch.no_grad():
        _, cache = bridge.run_with_cache(TOKENS, names_filter=[tl_moe.get_act_name("expert_post", 1)])
    assert cache[tl_moe.get_act_name("expert_post", 1)].shape[:3] == (*TOKENS.shape, 2)
    tl_moe.detach(bridge)
    assert bridge.cfg.use_expert_hooks is False
    assert hf.config._experts_implementation == before


@pytest.mark.skipif(
    not _PATCHED, reason="needs TransformerLens with the upstream expert hooks (upstream/check.sh)"
)
def test_patched_transformer_lens_hooks_equal_tl_moe_hooks(tiny_model_dir):
    patched = tl_moe.attach(_boot(tiny_model_dir("qwen3_moe")))
    assert patched._tl_moe_attachment.upstream_experts
    own = _boot(tiny_model_dir("qwen3_moe"))
    before = hf_model_of(own).config._experts_implementation
    for block in own.blocks:  # hide the upstream hook points so tl_moe installs its own
        for name in UPSTREAM_HOOK_NAMES:
            block.mlp._modules.pop(name, None)
    tl_moe.attach(own)
    assert not own._tl_moe_attachment.upstream_experts
    assert hf_model_of(own).config._experts_implementation == IMPLEMENTATION_NAME
    names = [tl_moe.get_act_name(what, 1) for what in ("expert_pre", "expert_post", "expert_out")]
    with torch.no_grad():
        logits, cache = patched.run_with_cache(TOKENS, names_filter=names)
        own_logits, own_cache = own.run_with_cache(TOKENS, names_filter=names)
    assert torch.equal(logits, own_logits)
    for name in names:
        assert torch.equal(cache[name], own_cache[name])
    tl_moe.detach(own)
    assert hf_model_of(own).config._experts_implementation == before
    assert own.cfg.use_expert_hooks is False
