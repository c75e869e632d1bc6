"""Each intervention equals an independently built reference model; bad inputs give clear errors."""

from __future__ import annotations

import re

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
    for factor in (0.0, 2.5, -1.0):  # a negative factor flips the experts' contribution, on purpose
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


# --- per-row interventions, typed interventions, order independence (issue 13) -------------

from tl_moe.interventions import (  # noqa: E402
    Intervention,
    batched_hooks,
    force_routing_per_row,
    remove_experts_per_row,
    scale_expert_weights_per_row,
    zero_expert_outputs_per_row,
)


def per_row_tokens(rows: int, pos: int = 9) -> torch.Tensor:
    return torch.randint(3, VOCAB, (rows, pos), generator=torch.Generator().manual_seed(rows))


@pytest.mark.parametrize("arch", ["olmoe", "deepseek_v3", "gpt_oss", "qwen2_moe"])
def test_per_row_interventions_equal_the_per_call_ones_row_by_row(arch, tiny_bridge):
    bridge = tiny_bridge(arch)
    layer = bridge.moe_cfg.sparse_layers[-1]
    per_row = [[1], [2, 3], None, [0]]
    toks = per_row_tokens(len(per_row))
    tensor_form = torch.tensor([[1, -1], [2, 3], [-1, -1], [0, -1]])
    factors = torch.tensor([2.0, 0.5, 3.0, -1.0])
    cases = [
        (remove_experts_per_row(bridge, layer, per_row), lambda e, b: remove_experts(bridge, layer, e)),
        (remove_experts_per_row(bridge, layer, tensor_form), lambda e, b: remove_experts(bridge, layer, e)),
        (
            zero_expert_outputs_per_row(bridge, layer, per_row),
            lambda e, b: zero_expert_outputs(bridge, layer, e),
        ),
        (
            scale_expert_weights_per_row(bridge, layer, per_row, factors),
            lambda e, b: scale_expert_weights(bridge, layer, e, float(factors[b])),
        ),
    ]
    for hooks, single in cases:
        batched = run(bridge, hooks, toks)
        for b, experts in enumerate(per_row):
            expected = run(bridge, [] if experts is None else single(experts, b), toks[b : b + 1])
            torch.testing.assert_close(batched[b : b + 1], expected, atol=1e-5, rtol=0)
    forced = torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2]])
    which = torch.tensor([True, True, False, True])
    batched = run(bridge, force_routing_per_row(bridge, layer, forced, which), toks)
    for b in range(len(forced)):
        hooks = force_routing(bridge, layer, forced[b].tolist()) if which[b] else []
        torch.testing.assert_close(batched[b : b + 1], run(bridge, hooks, toks[b : b + 1]), atol=1e-5, rtol=0)


def test_batched_hooks_apply_one_intervention_per_row(tiny_bridge):
    bridge = tiny_bridge("olmoe")
    rows = [
        Intervention("remove", 1, 3),
        None,
        Intervention("zero", 0, (2, 4)),
        (Intervention("force", 1, (5, 6)), Intervention("scale", 1, (5,), 2.0)),
        Intervention("scale", 0, [1, 7], factor=0.25),
    ]
    toks = per_row_tokens(len(rows))
    batched = run(bridge, batched_hooks(bridge, rows), toks)
    for b, edits in enumerate(rows):
        edits = () if edits is None else (edits,) if isinstance(edits, Intervention) else edits
        hooks = [h for edit in edits for h in edit.hooks(bridge)]
        torch.testing.assert_close(batched[b : b + 1], run(bridge, hooks, toks[b : b + 1]), atol=1e-5, rtol=0)
    assert Intervention("remove", 1, 3).hooks(bridge)[0][0] == remove_experts(bridge, 1, [3])[0][0]


@pytest.mark.parametrize("arch", ["olmoe", "deepseek_v3"])
def test_interventions_compose_independently_of_order(arch, tiny_bridge):
    bridge = tiny_bridge(arch)
    layer = bridge.moe_cfg.sparse_layers[-1]
    toks = tokens(15)
    force = force_routing(bridge, layer, [0, 1])
    contributions = [
        zero_expert_outputs(bridge, layer, [0]),
        scale_expert_weights(bridge, layer, [1], 3.0),
        ablate_expert_neurons(bridge, layer, 0, [1, 2]),
        zero_expert_outputs(bridge, layer, [2]) + scale_expert_weights(bridge, layer, [0], 0.5),
    ]
    for edit in contributions:
        before, after = run(bridge, force + edit, toks), run(bridge, edit + force, toks)
        assert torch.equal(before, after)
        assert not torch.allclose(before, run(bridge, force, toks))  # the edit acts on forced slots
    removal = remove_experts(bridge, layer, [0])
    zero = zero_expert_outputs(bridge, layer, [1])
    assert torch.equal(run(bridge, removal + zero, toks), run(bridge, zero + removal, toks))
    scale_then_zero = scale_expert_weights(bridge, layer, [2], 2.0) + zero_expert_outputs(bridge, layer, [3])
    zero_then_scale = zero_expert_outputs(bridge, layer, [3]) + scale_expert_weights(bridge, layer, [2], 2.0)
    assert torch.equal(run(bridge, scale_then_zero, toks), run(bridge, zero_then_scale, toks))


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ([1.7], TypeError, "non-integer 1.7"),
        ([1.0], TypeError, "non-integer"),
        ([True], TypeError, "non-integer True"),
        (True, TypeError, "non-integer True"),
        ("12", TypeError, "the string '12'"),
        (["1"], TypeError, "non-integer '1'"),
        ([8], ValueError, "0..7"),
        ([-1], ValueError, "0..7"),
        ([], ValueError, "non-empty"),
        (torch.tensor([1.5]), TypeError, "float32 tensor"),
        (None, TypeError, "experts must be"),
    ],
)
def test_expert_indices_must_be_integers_in_range(bad, error, message, tiny_bridge):
    bridge = tiny_bridge("olmoe")
    for make in (
        lambda: remove_experts(bridge, 1, bad),
        lambda: zero_expert_outputs(bridge, 1, bad),
        lambda: scale_expert_weights(bridge, 1, bad, 2.0),
    ):
        with pytest.raises(error, match=message):
            make()


def test_integer_like_indices_are_accepted(tiny_bridge):
    bridge = tiny_bridge("olmoe")
    import numpy as np

    reference = run(bridge, remove_experts(bridge, 1, [3]), tokens(8))
    for same in (3, [np.int64(3)], torch.tensor([3]), np.array([3]), (3,)):
        assert torch.equal(run(bridge, remove_experts(bridge, 1, same), tokens(8)), reference)


@pytest.mark.parametrize("factor", [float("nan"), float("inf"), -float("inf")])
def test_factors_must_be_finite(factor, tiny_bridge):
    bridge = tiny_bridge("olmoe")
    with pytest.raises(ValueError, match="factor must be a finite"):
        scale_expert_weights(bridge, 1, [0], factor)
    with pytest.raises(ValueError, match="finite"):
        scale_expert_weights_per_row(bridge, 1, [[0], [1]], torch.tensor([1.0, factor]))
    with pytest.raises(ValueError, match="finite"):
        Intervention("scale", 1, (0,), factor)
    with pytest.raises(ValueError, match="value must be a finite"):
        ablate_expert_neurons(bridge, 1, 0, [1], value=factor)


def test_other_intervention_arguments_are_checked(tiny_bridge):
    bridge = tiny_bridge("olmoe")
    with pytest.raises(TypeError, match="factor must be a finite real number; got str"):
        scale_expert_weights(bridge, 1, [0], "2")
    with pytest.raises(TypeError, match="factor must be a finite real number; got bool"):
        scale_expert_weights(bridge, 1, [0], True)
    with pytest.raises(TypeError, match="layer must be an integer"):
        remove_experts(bridge, 1.0, [0])
    with pytest.raises(TypeError, match="expert must be one integer"):
        ablate_expert_neurons(bridge, 1, 1.5, [0])
    with pytest.raises(TypeError, match="neurons must be a list of integer"):
        ablate_expert_neurons(bridge, 1, 1, [0.5])
    with pytest.raises(ValueError, match="kind must be one of"):
        Intervention("ablate", 1, (0,))
    with pytest.raises(ValueError, match="factor is only used by 'scale'"):
        Intervention("remove", 1, (0,), 2.0)
    with pytest.raises(TypeError, match="one entry per row"):
        remove_experts_per_row(bridge, 1, 3)
    with pytest.raises(ValueError, match="outside -1..7"):
        remove_experts_per_row(bridge, 1, torch.tensor([8]))
    with pytest.raises(ValueError, match="run it on a batch of 3 rows"):
        run(bridge, remove_experts_per_row(bridge, 1, [[0], [1], [2]]), tokens(5, batch=2))
    with pytest.raises(ValueError, match="Cannot remove 7 of 8"):
        remove_experts_per_row(bridge, 1, [list(range(7))])


def test_ablation_values_of_the_wrong_shape_are_refused_in_one_line(tiny_bridge):
    from tl_moe.errors import InputError

    bridge, layer, expert, neurons = tiny_bridge("olmoe"), 1, 4, [0, 3, 7]
    toks = tokens(9)
    zeroed = run(bridge, ablate_expert_neurons(bridge, layer, expert, neurons), toks)
    # one value per neuron, or one 0-d value, both accepted: zeros equal the default zero-ablation
    per_neuron = run(
        bridge, ablate_expert_neurons(bridge, layer, expert, neurons, value=torch.zeros(3)), toks
    )
    scalar = run(bridge, ablate_expert_neurons(bridge, layer, expert, neurons, value=torch.tensor(0.0)), toks)
    torch.testing.assert_close(per_neuron, zeroed, atol=0, rtol=0)
    torch.testing.assert_close(scalar, zeroed, atol=0, rtol=0)
    for value, shown in (
        (torch.zeros(2), "[2]"),
        (torch.zeros(3, 1), "[3, 1]"),
        (torch.zeros(1, 3), "[1, 3]"),
    ):
        with pytest.raises(InputError) as refused:
            ablate_expert_neurons(bridge, layer, expert, neurons, value=value)
        message = str(refused.value)
        assert "\n" not in message and f"shape {shown} for 3 neurons" in message and "shape [3]" in message
    with pytest.raises(InputError, match="not finite"):
        ablate_expert_neurons(bridge, layer, expert, neurons, value=torch.tensor([0.0, float("nan"), 1.0]))


def test_a_row_that_removes_and_forces_or_activates_the_same_expert_is_refused():
    from tl_moe.errors import InputError

    cfg = TINY_CONFIGS["olmoe"]  # 8 experts, k = 2, sparse layers 0 and 1
    remove_1 = Intervention("remove", 1, (1,))
    # planted agreements: other experts, or the same expert on another layer or another row
    assert batched_hooks(cfg, [[remove_1, Intervention("force", 1, (2, 3))]])
    assert batched_hooks(cfg, [[remove_1, Intervention("force", 0, (1, 2))]])
    assert batched_hooks(cfg, [[remove_1], [Intervention("force", 1, (1, 2))]])
    assert batched_hooks(cfg, [[remove_1, Intervention("activate", 1, (2,))]])
    for other, verb in (
        (Intervention("force", 1, (1, 2)), "forces"),
        (Intervention("activate", 1, (1,)), "activates"),
    ):
        for edits in ([remove_1, other], [other, remove_1]):
            with pytest.raises(InputError) as refused:
                batched_hooks(cfg, [None, edits])
            message = str(refused.value)
            assert (
                "\n" not in message and f"row 1 both removes and {verb} expert(s) [1] at layer 1" in message
            )
    with pytest.raises(InputError, match="at layer 1"):  # a negative layer names the same block
        batched_hooks(cfg, [[Intervention("remove", -1, (1,)), Intervention("force", 1, (1, 2))]])


# --- edits made by user hooks at tl_moe's own hook points -------------------------------------

_WRONG_SHAPES = [
    ("olmoe", "hook_router_logits", lambda x: x[..., :2]),
    ("olmoe", "hook_router_probs", lambda x: x[..., :2]),
    ("olmoe", "hook_topk_weights", lambda x: x[..., :1]),
    ("olmoe", "hook_topk_indices", lambda x: x[..., :1]),
    ("olmoe", "hook_expert_out", lambda x: x[..., :3]),
    ("olmoe", "hook_expert_post", lambda x: x.flatten(-2)),
    ("qwen2_moe", "hook_shared_out", lambda x: x[:, :-1]),
]


@pytest.mark.parametrize(("arch", "point", "edit"), _WRONG_SHAPES)
def test_a_hook_returning_another_shape_is_refused_naming_the_hook_and_both_shapes(
    arch, point, edit, tiny_bridge
):
    from tl_moe.models.experts import HookEditError

    bridge, name, seen = tiny_bridge(arch), f"blocks.1.mlp.{point}", {}
    clean = run(bridge, [], tokens(3))
    # planted no-effect: a hook returning nothing, or a same-shaped copy, leaves the forward as it was
    got = run(bridge, [(name, lambda x, hook: seen.update(shape=list(x.shape)))], tokens(3))
    assert torch.equal(got, clean)
    assert torch.equal(run(bridge, [(name, lambda x, hook: x.clone())], tokens(3)), clean)
    with pytest.raises(HookEditError) as refused:
        run(bridge, [(name, lambda x, hook: edit(x))], tokens(3))
    message = str(refused.value)
    returned = list(edit(torch.zeros(seen["shape"])).shape)
    assert "\n" not in message and isinstance(refused.value, ValueError)
    assert f"a hook on {name} returned a tensor of shape {returned}" in message
    assert f"accepted: a tensor of the shape it received, {seen['shape']}" in message


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda x: torch.full_like(x, 8), "returned expert indices from 8 to 8 for 8 experts"),
        (lambda x: torch.full_like(x, -1), "returned expert indices from -1 to -1 for 8 experts"),
        (lambda x: torch.stack([torch.full_like(x[..., 0], 9), x[..., 1]], -1), "to 9 for 8 experts"),
        (lambda x: torch.zeros_like(x), "repeat an expert within a token (at token [0, 0]: [0, 0])"),
        (lambda x: x.float(), "returned torch.float32 expert indices"),
    ],
)
def test_edited_topk_indices_must_be_distinct_experts_of_the_layer(edit, message, tiny_bridge):
    from tl_moe.models.routing import ExpertIndicesError

    bridge = tiny_bridge("olmoe")
    with pytest.raises(ExpertIndicesError, match=re.escape(message)) as refused:
        run(bridge, [("blocks.1.mlp.hook_topk_indices", lambda x, hook: edit(x))], tokens(4))
    assert "accepted: k=2 distinct integer expert indices in 0..7 per token" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_valid_edit_of_the_topk_indices_is_accepted_and_re_routes(tiny_bridge):
    """Planted cases: swapping the two slots changes nothing (the weights follow the indices); sending
    every token to experts 0 and 1 equals force_routing to them."""
    bridge, name = tiny_bridge("olmoe"), "blocks.1.mlp.hook_topk_indices"
    clean = run(bridge, [], tokens(5))
    swapped = run(bridge, [(name, lambda x, hook: x.flip(-1))], tokens(5))
    torch.testing.assert_close(swapped, clean, atol=1e-5, rtol=0)
    by_hand = run(bridge, [(name, lambda x, hook: torch.tensor([0, 1]).expand_as(x).clone())], tokens(5))
    torch.testing.assert_close(
        by_hand, run(bridge, force_routing(bridge, 1, [0, 1]), tokens(5)), atol=0, rtol=0
    )
    assert not torch.allclose(by_hand, clean)


def test_scale_factors_are_bounded(tiny_bridge):
    """1e38 passes a finiteness check but overflows the scaled outputs (NaN loss): refused in one line
    beyond MAX_FACTOR, by every form of the edit; MAX_FACTOR itself gives a finite forward."""
    from tl_moe.errors import InputError
    from tl_moe.interventions import scale_expert_weights_per_row
    from tl_moe.models.interventions import MAX_FACTOR, Intervention

    bridge = tiny_bridge("olmoe")
    for make in (
        lambda: scale_expert_weights(bridge, 1, [0], 1e38),
        lambda: scale_expert_weights(bridge, 1, [0], -1e38),
        lambda: scale_expert_weights_per_row(bridge, 1, [[0], [1]], torch.tensor([2.0, 1e38])),
        lambda: scale_expert_weights_per_row(bridge, 1, [[0], [1]], 1e38),
        lambda: Intervention("scale", 1, (0,), 1e38),
    ):
        with pytest.raises(InputError, match=r"\|factor\| <= 1e\+06 \(MAX_FACTOR\)"):
            make()
    assert torch.isfinite(run(bridge, scale_expert_weights(bridge, 1, [0], MAX_FACTOR), tokens(6))).all()
