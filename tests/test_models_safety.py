"""Attaching tl_moe is exact in every dtype and safe: regression tests for issue 10's problems."""

from __future__ import annotations

import copy

import pytest
import torch
from transformer_lens.hook_points import HookPoint
from transformers import AutoModelForCausalLM

import tl_moe
from tiny_models import TINY_CONFIGS, VOCAB, _randomize_router_biases, tiny_tokenizer
from tl_moe.models.architectures import get_spec
from tl_moe.models.introspect import decoder_layers, layer_modules

MOE_ARCHS = [a for a, c in TINY_CONFIGS.items() if c.is_moe]


def tokens(seed: int = 0, batch: int = 3, pos: int = 9) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def built(arch: str, dtype: torch.dtype = torch.float32, **changes):
    """A tiny random HF model of ``arch`` built in memory (``from_config``; no name_or_path)."""
    cfg = TINY_CONFIGS[arch].replace(**changes) if changes else TINY_CONFIGS[arch]
    model = tl_moe.build_model(cfg, seed=0)
    _randomize_router_biases(model, 0)
    model.set_attn_implementation("eager")
    return model.to(dtype).eval()


def routed_layer(model, layer: int):
    return layer_modules(decoder_layers(model)[layer], get_spec(model.config.model_type))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_low_precision_logits_are_bit_identical_to_hugging_face(arch, dtype):
    reference = built(arch, dtype)
    assert reference.config._experts_implementation == "grouped_mm"  # HF's default on CPU
    with torch.no_grad():
        want = reference(tokens()).logits
    bridge = tl_moe.load(built(arch, dtype), tokenizer=tiny_tokenizer(), device="cpu", dtype=dtype)
    with torch.no_grad():
        got, cache = bridge.run_with_cache(tokens())
    assert got.dtype == dtype
    assert torch.equal(got, want), (got.float() - want.float()).abs().max()
    assert tl_moe.get_act_name("expert_post", TINY_CONFIGS[arch].sparse_layers[-1]) in cache


def _hook_points(bridge) -> dict[int, tuple[HookPoint, str]]:
    return {id(m): (m, m.name) for m in bridge.modules() if isinstance(m, HookPoint)}


def _torch_hooks(model) -> list:
    """tl_moe's torch hooks on ``model``'s modules (TransformerLens adds and drops its own)."""
    return [
        (name, hook)
        for name, module in model.named_modules()
        for hook in [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
        if type(hook).__module__.startswith("tl_moe")
    ]


@pytest.mark.parametrize("arch", ["olmoe", "qwen2_moe", "deepseek_v3"])
def test_attach_keeps_transformer_lens_hooks_and_detach_restores_everything(arch, tiny_model_dir):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(tiny_model_dir(arch)), device="cpu")
    hf = bridge.original_model
    before_points = _hook_points(bridge)
    before_dict = dict(bridge.hook_dict)
    before_impl = hf.config._experts_implementation
    before_torch_hooks = _torch_hooks(hf)
    bridge.moe_cfg = "user's own value"
    assert bridge.blocks[0].attn.hook_out.name == "blocks.0.attn.hook_out"

    tl_moe.attach(bridge)
    for hook, name in before_points.values():
        assert hook.name == name  # TransformerLens's own hook points are not renamed
    after_dict = bridge.hook_dict
    for name, hook in before_dict.items():
        assert after_dict[name] is hook
    added = set(after_dict) - set(before_dict)
    assert added and all(".mlp.hook_" in name for name in added)
    for name in added:
        assert after_dict[name].name == name
    assert hf.config._experts_implementation == "tl_moe"
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens())
    assert "blocks.0.attn.hook_out" in cache and "blocks.0.mlp.hook_out" in cache

    tl_moe.detach(bridge)
    assert _hook_points(bridge).keys() == before_points.keys()
    for hook, name in before_points.values():
        assert hook.name == name
    assert bridge.hook_dict == before_dict
    assert hf.config._experts_implementation == before_impl
    assert bridge.moe_cfg == "user's own value"
    assert not tl_moe.models.is_attached(bridge)
    assert _torch_hooks(hf) == before_torch_hooks == []

    bare = TransformerBridge.boot_transformers(str(tiny_model_dir(arch)), device="cpu")
    tl_moe.attach(bare)
    tl_moe.detach(bare)
    assert not hasattr(bare, "moe_cfg")


def test_detach_restores_an_unset_experts_implementation(tiny_model_dir):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(tiny_model_dir("olmoe")), device="cpu")
    config = bridge.original_model.config
    config.__dict__["_experts_implementation_internal"] = None
    tl_moe.detach(tl_moe.attach(bridge))
    assert config.__dict__["_experts_implementation_internal"] is None


@pytest.mark.parametrize("arch", ["olmoe", "deepseek_v3"])
def test_load_accepts_a_model_built_in_memory_with_its_tokenizer(arch):
    model = built(arch)
    assert model.config.architectures is None
    tokenizer = tiny_tokenizer()
    bridge = tl_moe.load(model, tokenizer=tokenizer, device="cpu")
    assert bridge.tokenizer.get_vocab() == tokenizer.get_vocab()  # not a hub tokenizer under the alias
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens()), built(arch)(tokens()).logits, atol=1e-5, rtol=0)


def test_load_refuses_to_guess_the_tokenizer_of_a_model_built_in_memory():
    with pytest.raises(ValueError, match="tokenizer="):
        tl_moe.load(built("olmoe"), device="cpu")


@pytest.mark.parametrize("arch", ["deepseek_v3", "glm4_moe"])
def test_selection_bias_is_read_from_the_module_at_call_time(arch):
    reference = built(arch)
    bridge = tl_moe.load(built(arch), tokenizer=tiny_tokenizer(), device="cpu")
    layer = TINY_CONFIGS[arch].sparse_layers[-1]
    new_bias = torch.randn(TINY_CONFIGS[arch].num_experts, generator=torch.Generator().manual_seed(3))
    for model in (reference, bridge.original_model):
        routed_layer(model, layer).router.e_score_correction_bias = new_bias.clone()
    toks = tokens(1)
    with torch.no_grad():
        torch.testing.assert_close(bridge(toks), reference(toks).logits, atol=1e-5, rtol=0)
        bridge.to(torch.bfloat16)
        reference.to(torch.bfloat16)
        assert torch.equal(bridge(toks), reference(toks).logits)
    assert routed_layer(bridge.original_model, layer).router.e_score_correction_bias.dtype == torch.bfloat16


def test_backward_works_with_unaligned_expert_width():
    reference = built("olmoe", d_expert=37)
    reference.set_experts_implementation("eager")  # HF's grouped kernel needs aligned widths
    bridge = tl_moe.load(built("olmoe", d_expert=37), tokenizer=tiny_tokenizer(), device="cpu")
    toks = tokens(2)
    bridge(toks, return_type="loss").backward()
    reference(toks, labels=toks).loss.backward()
    for layer in (0, 1):
        ours = routed_layer(bridge.original_model, layer).experts
        theirs = routed_layer(reference, layer).experts
        torch.testing.assert_close(ours.down_proj.grad, theirs.down_proj.grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(ours.gate_up_proj.grad, theirs.gate_up_proj.grad, atol=1e-6, rtol=1e-4)


def test_backward_through_an_expanded_gradient():
    bridge = tl_moe.load(built("olmoe"), tokenizer=tiny_tokenizer(), device="cpu")
    bridge(tokens(3)).sum().backward()  # .sum() hands the last grouped matmul an expanded gradient
    assert routed_layer(bridge.original_model, 0).experts.down_proj.grad is not None


def test_hooks_survive_deepcopy_and_copies_detach_independently(tiny_model_dir):
    bridge = tl_moe.load(tiny_model_dir("olmoe"), device="cpu")
    clone = copy.deepcopy(bridge)
    name = tl_moe.get_act_name("expert_post", 1)
    toks = tokens(4)
    with torch.no_grad():
        _, want = bridge.run_with_cache(toks, names_filter=name)
        _, got = clone.run_with_cache(toks, names_filter=name)
    assert name in got
    torch.testing.assert_close(got[name], want[name])
    tl_moe.detach(clone)
    assert not tl_moe.models.is_attached(clone) and tl_moe.models.is_attached(bridge)
    with torch.no_grad():
        _, still = bridge.run_with_cache(toks, names_filter=name)
    torch.testing.assert_close(still[name], want[name])


def test_a_reference_model_is_unchanged_by_loading_another_copy(tiny_model_dir):
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir("olmoe"), attn_implementation="eager")
    tl_moe.load(tiny_model_dir("olmoe"), device="cpu")
    assert reference.config._experts_implementation == "grouped_mm"


def _patch_routers(model, change):
    for layer in decoder_layers(model):
        router = layer_modules(layer).router
        if router is not None:
            original = router.forward
            router.forward = lambda *args, _original=original, **kwargs: change(*_original(*args, **kwargs))


def test_a_router_whose_rule_tl_moe_does_not_know_is_refused():
    model = built("olmoe")
    _patch_routers(model, lambda logits, weights, indices: (logits, weights**2, indices))
    with pytest.raises(tl_moe.UnsupportedArchitectureError, match="mixing weights differ"):
        tl_moe.load(model, tokenizer=tiny_tokenizer(), device="cpu")
    assert model.config._experts_implementation == "grouped_mm"


def test_a_router_whose_selection_tl_moe_cannot_recompute_is_refused():
    model = built("mixtral")
    _patch_routers(model, lambda logits, weights, indices: (logits, weights, indices.flip(0)))
    with pytest.raises(tl_moe.UnsupportedArchitectureError, match="selected experts differ"):
        tl_moe.load(model, tokenizer=tiny_tokenizer(), device="cpu")


def _comparable(rule):
    """Softmax over all experts then renormalized top-k is top-k of the logits then softmax."""
    kind, renormalize = rule.kind, rule.renormalize
    if kind == "topk_softmax":
        kind, renormalize = "softmax_topk", True
    return kind, renormalize, rule.selection_bias, rule.n_groups, rule.topk_groups


@pytest.mark.parametrize(
    "arch", ["olmoe", "mixtral", "deepseek_v2", "deepseek_v3", "gpt_oss", "ernie4_5_moe"]
)
def test_the_routing_rule_read_from_config_and_verified_equals_the_declared_one(arch, monkeypatch):
    from tl_moe.models import architectures

    model = built(arch)
    declared = tl_moe.moe_config(model).routing
    monkeypatch.setitem(architectures.ARCHITECTURES, arch, architectures.ArchitectureSpec(arch))
    found = tl_moe.moe_config(model).routing
    assert _comparable(found) == _comparable(declared)
    assert found.scaling_factor == pytest.approx(declared.scaling_factor, rel=1e-5)


@pytest.mark.parametrize("arch", ["olmoe", "qwen2_moe", "llama"])
def test_cached_generation_equals_uncached_and_hugging_face(arch):
    model = built(arch)
    reference = copy.deepcopy(model)
    bridge = tl_moe.load(model, tokenizer=tiny_tokenizer(), device="cpu")
    prompt = tokens(5, batch=1, pos=6)
    with torch.no_grad():
        cached = bridge.generate(
            prompt, max_new_tokens=8, do_sample=False, use_past_kv_cache=True, verbose=False
        )
        uncached = bridge.generate(
            prompt, max_new_tokens=8, do_sample=False, use_past_kv_cache=False, verbose=False
        )
        hf = reference.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, hf)
    tl_moe.detach(bridge)
    assert not any("_update_kv_cache" in module.__dict__ for module in bridge.modules())
