"""Each intervention equals an independently built reference model; bad inputs give clear errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import tl_moe
from test_models import hf_model, hf_moe_modules, tokens
from tiny_models import TINY_CONFIGS, VOCAB
from tl_moe.interventions import (
    ablate_expert_neurons,
    force_routing,
    remove_experts,
    scale_expert_weights,
    zero_expert_outputs,
)


def run(bridge, hooks, toks):
    with torch.no_grad():
        return bridge.run_with_hooks(toks, fwd_hooks=hooks)


def reference_logits(model, toks):
    with torch.no_grad():
        return model(toks).logits


def test_remove_experts_equals_the_model_without_those_experts(tiny_model_dir, tiny_bridge):
    bridge, cfg, removed = tiny_bridge("olmoe"), TINY_CONFIGS["olmoe"], 5
    original = hf_model(tiny_model_dir("olmoe"))
    keep = [e for e in range(cfg.num_experts) if e != removed]
    smaller_config = original.config.__class__.from_dict(original.config.to_dict())
    smaller_config.num_experts = cfg.num_experts - 1
    smaller_config._attn_implementation = "eager"
    smaller = AutoModelForCausalLM.from_config(smaller_config).eval()
    state = original.state_dict()
    for name, tensor in state.items():
        if name.endswith(("mlp.gate.weight", "experts.gate_up_proj", "experts.down_proj")):
            state[name] = tensor[keep]
    smaller.load_state_dict(state)

    hooks = [hook for layer in cfg.sparse_layers for hook in remove_experts(bridge, layer, [removed])]
    toks = tokens(10)
    torch.testing.assert_close(run(bridge, hooks, toks), reference_logits(smaller, toks), atol=1e-5, rtol=0)
    assert not torch.allclose(run(bridge, [], toks), reference_logits(smaller, toks), atol=1e-3)


def test_remove_experts_with_a_selection_bias_equals_an_infinite_negative_bias(tiny_model_dir, tiny_bridge):
    bridge, layer, removed = tiny_bridge("deepseek_v3"), 1, 3
    reference = hf_model(tiny_model_dir("deepseek_v3"))
    with torch.no_grad():
        hf_moe_modules(reference, layer).router.e_score_correction_bias[removed] = float("-inf")
    toks = tokens(11)
    got = run(bridge, remove_experts(bridge, layer, [removed]), toks)
    torch.testing.assert_close(got, reference_logits(reference, toks), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["olmoe", "gpt_oss"])
def test_zero_and_scale_equal_a_model_with_a_scaled_down_projection(arch, tiny_model_dir, tiny_bridge):
    bridge, layer, expert = tiny_bridge(arch), 1, 2
    toks = tokens(12)
    for factor in (0.0, 2.5):
        reference = hf_model(tiny_model_dir(arch))
        experts = hf_moe_modules(reference, layer).experts
        with torch.no_grad():
            experts.down_proj[expert] *= factor
            if getattr(experts, "has_bias", False):
                experts.down_proj_bias[expert] *= factor
        hooks = (
            zero_expert_outputs(bridge, layer, [expert])
            if factor == 0.0
            else scale_expert_weights(bridge, layer, [expert], factor)
        )
        torch.testing.assert_close(
            run(bridge, hooks, toks), reference_logits(reference, toks), atol=1e-5, rtol=0
        )


def test_ablate_neurons_equals_a_model_with_those_down_projection_columns_zeroed(tiny_model_dir, tiny_bridge):
    bridge, layer, expert, neurons = tiny_bridge("olmoe"), 1, 4, [0, 3, 7]
    reference = hf_model(tiny_model_dir("olmoe"))
    with torch.no_grad():
        hf_moe_modules(reference, layer).experts.down_proj[expert][:, neurons] = 0.0
    toks = tokens(13)
    got = run(bridge, ablate_expert_neurons(bridge, layer, expert, neurons), toks)
    torch.testing.assert_close(got, reference_logits(reference, toks), atol=1e-5, rtol=0)


def test_force_routing_equals_hand_computed_block_output(tiny_bridge):
    bridge, cfg, layer, forced = tiny_bridge("olmoe"), TINY_CONFIGS["olmoe"], 1, [1, 6]
    seen = {}
    hooks = force_routing(bridge, layer, forced) + [
        (f"blocks.{layer}.mlp.hook_in", lambda x, hook: seen.update(x=x)),
        (f"blocks.{layer}.mlp.hook_out", lambda y, hook: seen.update(y=y)),
    ]
    run(bridge, hooks, tokens(14))
    modules = hf_moe_modules(bridge.original_model, layer)
    x = seen["x"]
    probs = torch.softmax(x @ modules.router.weight.T, dim=-1)  # OLMoE: no top-k renormalization
    width = cfg.d_expert
    expected = torch.zeros_like(x)
    for e in forced:
        w_gate_up, w_down = modules.experts.gate_up_proj[e], modules.experts.down_proj[e]
        neurons = torch.nn.functional.silu(x @ w_gate_up[:width].T) * (x @ w_gate_up[width:].T)
        expected += probs[..., e : e + 1] * (neurons @ w_down.T)
    torch.testing.assert_close(seen["y"], expected, atol=1e-5, rtol=1e-5)


# --- bad inputs -----------------------------------------------------------------------------


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    from transformers import AutoConfig

    from tiny_models import tiny_tokenizer

    config = AutoConfig.for_model("gpt2", vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(tl_moe.UnsupportedArchitectureError, match="gpt2.*olmoe"):
        tl_moe.load(tmp_path, device="cpu")


def test_dense_model_asked_for_expert_hooks(tiny_bridge):
    with pytest.raises(tl_moe.HookNameError, match="dense"):
        tl_moe.get_act_name("expert_post", 0, tiny_bridge("llama"))
    assert tl_moe.get_act_name("neuron", 0, tiny_bridge("llama")) == "blocks.0.mlp.hook_post"


def test_dense_layer_of_an_moe_model_asked_for_expert_hooks(tiny_bridge):
    with pytest.raises(tl_moe.HookNameError, match=r"sparse layers are \[1\]"):
        tl_moe.get_act_name("expert_post", 0, tiny_bridge("deepseek_v3"))


def test_unknown_hook_kind_lists_the_known_ones():
    with pytest.raises(tl_moe.HookNameError, match="expert_post"):
        tl_moe.get_act_name("expert_neurons", 0)


def test_layer_out_of_range(tiny_bridge):
    with pytest.raises(tl_moe.HookNameError, match="out of range.*2 layers"):
        tl_moe.get_act_name("expert_post", 2, tiny_bridge("olmoe"))
    assert tl_moe.get_act_name("expert_post", -1, tiny_bridge("olmoe")) == "blocks.1.mlp.hook_expert_post"


def test_router_probs_on_a_topk_then_softmax_router(tiny_bridge):
    with pytest.raises(tl_moe.HookNameError, match="router_logits"):
        tl_moe.get_act_name("router_probs", 0, tiny_bridge("gpt_oss"))


def test_intervention_arguments_are_checked(tiny_bridge):
    bridge = tiny_bridge("olmoe")
    with pytest.raises(ValueError, match="0..7"):
        remove_experts(bridge, 0, [8])
    with pytest.raises(ValueError, match="exactly k=2"):
        force_routing(bridge, 0, [1, 2, 3])
    with pytest.raises(ValueError, match="0..15"):
        ablate_expert_neurons(bridge, 0, 1, [16])
