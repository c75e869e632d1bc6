"""Hooked MoE models against Hugging Face's own forward and against hand computation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import tl_moe
from tiny_models import TINY_CONFIGS, VOCAB
from tl_moe.models.architectures import get_spec
from tl_moe.models.introspect import decoder_layers, layer_modules

MOE_ARCHS = [a for a, c in TINY_CONFIGS.items() if c.is_moe]
ALL_ARCHS = list(TINY_CONFIGS)


def tokens(seed: int = 0, batch: int = 3, pos: int = 9) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def hf_model(directory):
    return AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()


def hf_moe_modules(model, layer: int):
    spec = get_spec(model.config.model_type)
    return layer_modules(decoder_layers(model)[layer], spec)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_logits_equal_hugging_face_with_every_hook_cached(arch, tiny_model_dir, tiny_bridge):
    bridge = tiny_bridge(arch)
    toks = tokens()
    with torch.no_grad():
        reference = hf_model(tiny_model_dir(arch))(toks).logits
        logits, cache = bridge.run_with_cache(toks)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)
    for layer in TINY_CONFIGS[arch].sparse_layers:
        assert tl_moe.get_act_name("expert_post", layer) in cache


def _shared_contribution(cache, layer, cfg):
    if not cfg.n_shared_experts:
        return 0.0
    shared = cache[f"blocks.{layer}.mlp.hook_shared_out"]
    if cfg.shared_gated:
        shared = torch.sigmoid(cache[f"blocks.{layer}.mlp.hook_shared_gate"]) * shared
    return shared


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_weighted_expert_outputs_recompose_the_block_output(arch, tiny_bridge):
    bridge, cfg = tiny_bridge(arch), TINY_CONFIGS[arch]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens(1))
    for layer in cfg.sparse_layers:
        weights = cache[tl_moe.get_act_name("topk_weights", layer)]
        outputs = cache[tl_moe.get_act_name("expert_out", layer)]
        assert outputs.shape == (3, 9, cfg.experts_per_token, cfg.d_model)
        recomposed = (weights.unsqueeze(-1) * outputs).sum(dim=2) + _shared_contribution(cache, layer, cfg)
        torch.testing.assert_close(recomposed, cache[f"blocks.{layer}.mlp.hook_out"], atol=1e-5, rtol=0)


def _expert_by_hand(experts, expert: int, x: torch.Tensor):
    """(neuron activations, output) of one expert on rows ``x``, from its own weights."""
    if getattr(experts, "is_transposed", False):  # GPT-OSS: [H, 2I] interleaved gate/up, biases, clamped GLU
        gate_up = x @ experts.gate_up_proj[expert] + experts.gate_up_proj_bias[expert]
        gate, up = (
            gate_up[:, ::2].clamp(max=experts.limit),
            gate_up[:, 1::2].clamp(-experts.limit, experts.limit),
        )
        post = (up + 1) * gate * torch.sigmoid(gate * experts.alpha)
        return post, post @ experts.down_proj[expert] + experts.down_proj_bias[expert]
    width = experts.down_proj.shape[-1]
    w_gate, w_up = experts.gate_up_proj[expert, :width], experts.gate_up_proj[expert, width:]
    post = experts.act_fn(x @ w_gate.T) * (x @ w_up.T)
    return post, post @ experts.down_proj[expert].T


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_expert_neurons_and_outputs_equal_hand_computation(arch, tiny_bridge):
    bridge, cfg = tiny_bridge(arch), TINY_CONFIGS[arch]
    layer = cfg.sparse_layers[-1]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens(2))
        x = cache[f"blocks.{layer}.mlp.hook_in"].reshape(-1, cfg.d_model)
        indices = cache[tl_moe.get_act_name("topk_indices", layer)].reshape(x.shape[0], -1)
        post = cache[tl_moe.get_act_name("expert_post", layer)].reshape(*indices.shape, -1)
        out = cache[tl_moe.get_act_name("expert_out", layer)].reshape(*indices.shape, -1)
        experts = hf_moe_modules(bridge.original_model, layer).experts
        for token in range(0, x.shape[0], 4):
            for slot in range(indices.shape[1]):
                want_post, want_out = _expert_by_hand(
                    experts, int(indices[token, slot]), x[token : token + 1]
                )
                torch.testing.assert_close(post[token, slot], want_post[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(out[token, slot], want_out[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_topk_indices_equal_hugging_face_router_choice(arch, tiny_model_dir, tiny_bridge):
    bridge, cfg = tiny_bridge(arch), TINY_CONFIGS[arch]
    layer = cfg.sparse_layers[-1]
    reference = hf_model(tiny_model_dir(arch))
    seen = {}
    router = hf_moe_modules(reference, layer).router
    handle = router.register_forward_hook(lambda m, a, out: seen.update(indices=out[2], weights=out[1]))
    toks = tokens(3)
    with torch.no_grad():
        reference(toks)
        _, cache = bridge.run_with_cache(toks)
    handle.remove()
    ours = cache[tl_moe.get_act_name("topk_indices", layer)].reshape(seen["indices"].shape)
    ours_sorted, order = ours.sort(dim=-1)
    hf_sorted, hf_order = seen["indices"].sort(dim=-1)
    assert torch.equal(ours_sorted, hf_sorted.to(ours_sorted.dtype))
    weights = cache[tl_moe.get_act_name("topk_weights", layer)].reshape(seen["weights"].shape)
    torch.testing.assert_close(
        weights.gather(-1, order), seen["weights"].gather(-1, hf_order), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("arch", ["olmoe", "qwen2_moe", "deepseek_v3"])
def test_hook_shapes(arch, tiny_bridge):
    bridge, cfg = tiny_bridge(arch), TINY_CONFIGS[arch]
    layer = cfg.sparse_layers[-1]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens(4, batch=2, pos=5))
    k, e = cfg.experts_per_token, cfg.num_experts
    expected = {
        "router_logits": (2, 5, e),
        "router_probs": (2, 5, e),
        "topk_indices": (2, 5, k),
        "topk_weights": (2, 5, k),
        "expert_pre": (2, 5, k, cfg.d_expert),
        "expert_post": (2, 5, k, cfg.d_expert),
        "expert_out": (2, 5, k, cfg.d_model),
        "shared_post": (2, 5, cfg.d_shared),
        "shared_out": (2, 5, cfg.d_model),
    }
    for kind, shape in expected.items():
        if kind.startswith("shared") and not cfg.n_shared_experts:
            continue
        assert tuple(cache[tl_moe.get_act_name(kind, layer, bridge)].shape) == shape, kind
    if cfg.shared_gated:
        assert tuple(cache[tl_moe.get_act_name("shared_gate", layer, bridge)].shape) == (2, 5, 1)
    for dense_layer in cfg.dense_layers:
        assert cache[tl_moe.get_act_name("neuron", dense_layer, bridge)].shape == (2, 5, cfg.d_mlp)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_moe_config_round_trips_through_the_built_model(arch, tiny_bridge):
    built, read = TINY_CONFIGS[arch], tiny_bridge(arch).moe_cfg
    for field in (
        "n_layers",
        "d_model",
        "d_vocab",
        "num_experts",
        "experts_per_token",
        "d_expert",
        "sparse_layers",
        "n_shared_experts",
        "d_shared",
        "shared_gated",
        "routing",
    ):
        assert getattr(read, field) == getattr(built, field), field
    if built.dense_layers:
        assert read.d_mlp == built.d_mlp


def test_editing_router_logits_reroutes(tiny_bridge):
    bridge, layer, expert = tiny_bridge("olmoe"), 1, 5
    name = tl_moe.get_act_name("router_logits", layer)

    def boost(logits, hook):
        logits = logits.clone()
        logits[..., expert] = 100.0
        return logits

    seen = {}
    with torch.no_grad():
        bridge.run_with_hooks(
            tokens(5),
            fwd_hooks=[
                (name, boost),
                (tl_moe.get_act_name("topk_indices", layer), lambda t, hook: seen.update(i=t)),
            ],
        )
    assert (seen["i"][..., 0] == expert).all()


def test_attach_works_before_and_after_compatibility_mode(tiny_model_dir, tiny_bridge):
    from transformer_lens.model_bridge import TransformerBridge

    toks = tokens(6)
    with torch.no_grad():
        reference = torch.log_softmax(tiny_bridge("olmoe")(toks), dim=-1)
    after = TransformerBridge.boot_transformers(str(tiny_model_dir("olmoe")), device="cpu")
    after.enable_compatibility_mode(disable_warnings=True)
    tl_moe.attach(after)
    before = tl_moe.load(tiny_model_dir("olmoe"), device="cpu")
    before.enable_compatibility_mode(disable_warnings=True)
    for bridge in (after, before):
        with torch.no_grad():
            logits, cache = bridge.run_with_cache(toks)
        torch.testing.assert_close(torch.log_softmax(logits, dim=-1), reference, atol=1e-4, rtol=0)
        recomposed = (
            cache["blocks.0.mlp.hook_topk_weights"].unsqueeze(-1) * cache["blocks.0.mlp.hook_expert_out"]
        ).sum(2)
        torch.testing.assert_close(recomposed, cache["blocks.0.mlp.hook_out"], atol=1e-5, rtol=0)


def test_detach_removes_hook_points_and_restores_the_model(tiny_model_dir):
    bridge = tl_moe.load(tiny_model_dir("olmoe"), device="cpu")
    toks = tokens(7)
    with torch.no_grad():
        attached = bridge(toks)
    upstream = bridge._tl_moe_attachment.upstream_experts
    tl_moe.detach(bridge)
    assert not any("hook_topk_weights" in name for name in bridge.hook_dict)
    # tl_moe's expert hooks are gone; a TransformerLens that declares its own keeps them
    assert any("hook_expert_post" in name for name in bridge.hook_dict) == upstream
    with torch.no_grad():
        torch.testing.assert_close(bridge(toks), attached, atol=1e-5, rtol=0)


def test_load_accepts_a_model_the_user_built(tiny_model_dir):
    model = hf_model(tiny_model_dir("mixtral"))
    bridge = tl_moe.load(model, device="cpu")
    toks = tokens(8)
    with torch.no_grad():
        torch.testing.assert_close(bridge(toks), model(toks).logits, atol=1e-5, rtol=0)
    assert tl_moe.get_act_name("expert_post", 0, bridge) in bridge.hook_dict


def test_shared_expert_hooks_fire_in_compatibility_mode(tiny_model_dir):
    bridge = tl_moe.load(tiny_model_dir("qwen2_moe"), device="cpu")
    bridge.enable_compatibility_mode(disable_warnings=True)
    cfg, layer = TINY_CONFIGS["qwen2_moe"], 1
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens(9))
    assert cache[tl_moe.get_act_name("shared_post", layer)].shape[-1] == cfg.d_shared
    weights = cache[tl_moe.get_act_name("topk_weights", layer)]
    outputs = cache[tl_moe.get_act_name("expert_out", layer)]
    recomposed = (weights.unsqueeze(-1) * outputs).sum(dim=2) + _shared_contribution(cache, layer, cfg)
    torch.testing.assert_close(recomposed, cache[f"blocks.{layer}.mlp.hook_out"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["olmoe", "granitemoe", "gpt_oss"])
def test_gradients_flow_through_the_hooked_experts(arch, tiny_model_dir):
    bridge = tl_moe.load(tiny_model_dir(arch), device="cpu")
    reference = hf_model(tiny_model_dir(arch))
    toks = tokens(10)
    bridge(toks, return_type="loss").backward()
    reference(toks, labels=toks).loss.backward()
    ours = hf_moe_modules(bridge.original_model, 0).experts.down_proj.grad
    theirs = hf_moe_modules(reference, 0).experts.down_proj.grad
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_hook_names_lists_each_layers_own_hooks(tiny_bridge):
    import tl_moe

    bridge = tiny_bridge("deepseek_v2")  # dense block 0, sparse block 1 with a shared expert
    names = tl_moe.hook_names(bridge)
    assert names["blocks.0.mlp.hook_post"] == "neuron"
    assert names["blocks.1.mlp.hook_expert_post"] == "expert_post"
    assert names["blocks.1.mlp.hook_shared_out"] == "shared_out"
    assert "blocks.0.mlp.hook_expert_post" not in names and "blocks.1.mlp.hook_post" not in names
    for name in names:  # every listed name is a real hook point of the bridge
        assert bridge.get_hook_point(name) is not None, name


def test_a_backward_only_hook_on_an_expert_hook_fires_with_the_gradient(tiny_bridge):
    """A ``dir="bwd"`` hook alone (no forward hook) on an expert hook point receives the gradient of
    the loss with respect to that activation (compared with the gradient of a retained activation)."""
    import torch

    bridge = tiny_bridge("olmoe")
    name = tl_moe.get_act_name("expert_post", bridge.moe_cfg.sparse_layers[-1])
    tokens = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    seen = []
    bridge.reset_hooks()
    bridge.add_hook(name, lambda grad, hook: seen.append(grad.detach().clone()), dir="bwd")
    try:
        bridge(tokens, return_type="loss").backward()
    finally:
        bridge.reset_hooks()
        bridge.zero_grad(set_to_none=True)
    assert len(seen) == 1
    kept = {}

    def keep(tensor, hook):
        tensor.retain_grad()
        kept["act"] = tensor
        return tensor

    loss = bridge.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(name, keep)])
    loss.backward()
    bridge.zero_grad(set_to_none=True)
    torch.testing.assert_close(seen[0], kept["act"].grad)
