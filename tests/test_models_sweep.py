"""The sweep: every MoE architecture the installed transformers dispatches through its experts
registry and the installed TransformerLens boots, on a tiny random model.

The architectures are enumerated from the installed packages (``registry_architectures``), not
listed by hand. Each one either passes every check below or is refused with a clear error.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.integrations.moe import _default_apply_gate

import tl_moe
from tl_moe.models.architectures import UnsupportedArchitectureError
from tl_moe.models.attach import moe_component_name
from tl_moe.models.catalog import build_tiny, registry_architectures, word_tokenizer
from tl_moe.models.hook_names import HOOK_KINDS
from tl_moe.models.introspect import decoder_layers, layer_modules

ARCHITECTURES = [arch.model_type for arch in registry_architectures()]
# Refused, and why (the error must say so).
REFUSED = {
    "deepseek_v4": "hash routing on token ids",
    "gemma4_text": "called by the decoder layer itself",
}
SUPPORTED = [arch for arch in ARCHITECTURES if arch not in REFUSED]
VOCAB = 96


def tokens(seed: int = 0, batch: int = 2, pos: int = 7) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pair():
    """``pair(arch)`` -> (reference HF model, tl_moe bridge of an identical copy), built once."""
    built = {}

    def get(arch: str):
        if arch not in built:
            model = build_tiny(arch)
            reference = copy.deepcopy(model)
            built[arch] = reference, tl_moe.load(model, tokenizer=word_tokenizer(), device="cpu")
        return built[arch]

    return get


def test_sweep_covers_every_enumerated_architecture():
    print(
        f"\ntl_moe sweep: {len(ARCHITECTURES)} architectures enumerated, {len(SUPPORTED)} supported, "
        f"{len(REFUSED)} refused ({', '.join(sorted(REFUSED))})"
    )
    assert len(SUPPORTED) >= 20
    assert set(REFUSED) <= set(ARCHITECTURES)
    for arch in ("olmoe", "mixtral", "qwen3_next", "jamba", "nemotron_h", "granitemoehybrid"):
        assert arch in SUPPORTED


def _tl_moe_names(bridge) -> list[str]:
    return [name for name in bridge.hook_dict if any(name.endswith(k.attribute) for k in HOOK_KINDS.values())]


def _sparse(bridge):
    return bridge.moe_cfg.sparse_layers


@pytest.mark.parametrize("arch", SUPPORTED)
def test_logits_equal_hugging_face_with_every_hook_cached(arch, pair):
    reference, bridge = pair(arch)
    names = [n for n in _tl_moe_names(bridge) if ".hook_post" not in n]
    assert names
    with torch.no_grad():
        want = reference(tokens()).logits
        got, cache = bridge.run_with_cache(tokens(), names_filter=lambda n: n in names)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for layer in _sparse(bridge):
        for kind in (
            "router_logits",
            "topk_indices",
            "topk_weights",
            "expert_pre",
            "expert_post",
            "expert_out",
        ):
            assert tl_moe.get_act_name(kind, layer) in cache, kind


@pytest.mark.parametrize("arch", SUPPORTED)
def test_weighted_expert_outputs_recompose_the_block_output(arch, pair):
    _, bridge = pair(arch)
    cfg = bridge.moe_cfg
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens(1))
    for layer in cfg.sparse_layers:
        name = lambda kind, layer=layer: tl_moe.get_act_name(kind, layer)  # noqa: E731
        total = (cache[name("topk_weights")].unsqueeze(-1) * cache[name("expert_out")]).sum(dim=2)
        if cfg.n_shared_experts:
            shared = cache[name("shared_out")]
            if cfg.shared_gated:
                shared = torch.sigmoid(cache[name("shared_gate")]) * shared
            total = total + shared
        block_out = cache[f"{moe_component_name(bridge, layer)}.hook_out"]
        torch.testing.assert_close(total, block_out.reshape(total.shape), atol=1e-5, rtol=0)


def _by_hand(experts, expert: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(neurons, output) of one expert on rows ``x`` from its own fused weights."""

    def linear(weight, bias):
        w = weight[expert] if experts.is_transposed else weight[expert].T
        return x @ w + (bias[expert] if experts.has_bias else 0)

    if experts.has_gate:
        gate_up = linear(experts.gate_up_proj, getattr(experts, "gate_up_proj_bias", None))
        if type(experts)._apply_gate is _default_apply_gate:
            gate, up = (
                gate_up.chunk(2, dim=-1)
                if experts.is_concatenated
                else (gate_up[..., ::2], gate_up[..., 1::2])
            )
            post = experts.act_fn(gate) * up
        else:  # an architecture's own GLU (GPT-OSS: clamped, interleaved)
            post = experts._apply_gate(gate_up)
    else:
        post = experts.act_fn(linear(experts.up_proj, getattr(experts, "up_proj_bias", None)))
    w = experts.down_proj[expert] if experts.is_transposed else experts.down_proj[expert].T
    out = post @ w + (experts.down_proj_bias[expert] if experts.has_bias else 0)
    if experts.has_post_expert_norm:
        out = experts.post_expert_norm(out)
    return post, out


@pytest.mark.parametrize("arch", SUPPORTED)
def test_expert_neurons_and_outputs_equal_hand_computation(arch, pair):
    _, bridge = pair(arch)
    layer = _sparse(bridge)[-1]
    experts = layer_modules(decoder_layers(bridge.original_model)[layer]).experts
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens(2))
        x = cache[f"{moe_component_name(bridge, layer)}.hook_in"].reshape(-1, bridge.moe_cfg.d_model)
        indices = cache[tl_moe.get_act_name("topk_indices", layer)].reshape(x.shape[0], -1)
        post = cache[tl_moe.get_act_name("expert_post", layer)].reshape(*indices.shape, -1)
        out = cache[tl_moe.get_act_name("expert_out", layer)].reshape(*indices.shape, -1)
        for token in range(0, x.shape[0], 3):
            for slot in range(indices.shape[1]):
                want_post, want_out = _by_hand(experts, int(indices[token, slot]), x[token : token + 1])
                torch.testing.assert_close(post[token, slot], want_post[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(out[token, slot], want_out[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", SUPPORTED)
def test_topk_equals_hugging_face_router(arch, pair):
    reference, bridge = pair(arch)
    layer = _sparse(bridge)[-1]
    router = layer_modules(decoder_layers(reference)[layer]).router
    seen = {}
    handle = router.register_forward_hook(lambda m, a, out: seen.update(indices=out[2], weights=out[1]))
    try:
        with torch.no_grad():
            reference(tokens(3))
            _, cache = bridge.run_with_cache(tokens(3))
    finally:
        handle.remove()
    theirs, their_order = seen["indices"].reshape(-1, seen["indices"].shape[-1]).long().sort(dim=-1)
    ours, order = cache[tl_moe.get_act_name("topk_indices", layer)].reshape(theirs.shape).sort(dim=-1)
    assert torch.equal(ours, theirs)
    weights = cache[tl_moe.get_act_name("topk_weights", layer)].reshape(theirs.shape)
    torch.testing.assert_close(
        weights.gather(-1, order),
        seen["weights"].reshape(theirs.shape).float().gather(-1, their_order),
        atol=1e-6,
        rtol=0,
    )


@pytest.mark.parametrize("arch", SUPPORTED)
def test_gradients_equal_hugging_face(arch, pair):
    reference, bridge = pair(arch)
    toks = tokens(4)
    bridge.zero_grad(set_to_none=True)
    reference.zero_grad(set_to_none=True)
    bridge(toks, return_type="loss").backward()
    reference(toks, labels=toks).loss.backward()
    layer = _sparse(bridge)[-1]
    ours = layer_modules(decoder_layers(bridge.original_model)[layer])
    theirs = layer_modules(decoder_layers(reference)[layer])
    for attr in ("down_proj", "gate_up_proj" if ours.experts.has_gate else "up_proj"):
        torch.testing.assert_close(
            getattr(ours.experts, attr).grad, getattr(theirs.experts, attr).grad, atol=1e-6, rtol=1e-4
        )
    ours_router = [p.grad for p in ours.router.parameters() if p.requires_grad]
    theirs_router = [p.grad for p in theirs.router.parameters() if p.requires_grad]
    for a, b in zip(ours_router, theirs_router, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    bridge.zero_grad(set_to_none=True)


@pytest.mark.parametrize("arch", sorted(REFUSED))
def test_unsupported_architectures_are_refused_with_the_reason(arch):
    model = build_tiny(arch)
    implementation = model.config._experts_implementation
    with pytest.raises(UnsupportedArchitectureError) as error:
        tl_moe.load(model, tokenizer=word_tokenizer(), device="cpu")
    message = str(error.value)
    assert arch in message or "Router" in message
    reason_words = REFUSED[arch].split()
    assert any(word in message for word in reason_words)
    assert model.config._experts_implementation == implementation


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", SUPPORTED)
def test_low_precision_logits_are_bit_identical_to_hugging_face(arch, dtype):
    model = build_tiny(arch).to(dtype)
    reference = copy.deepcopy(model)
    try:
        with torch.no_grad():
            want = reference(tokens()).logits
    except (RuntimeError, NotImplementedError) as error:
        pytest.skip(f"Hugging Face's own {arch} forward does not run on CPU in {dtype}: {error}")
    bridge = tl_moe.load(model, tokenizer=word_tokenizer(), device="cpu", dtype=dtype)
    try:
        with torch.no_grad():
            got = bridge(tokens())
    except RuntimeError as error:
        tl_moe.detach(bridge)
        with pytest.raises(RuntimeError):  # then it is TransformerLens's bridge, not tl_moe, that fails
            with torch.no_grad():
                bridge(tokens())
        pytest.skip(f"TransformerLens's bridge of {arch} does not run in {dtype} on CPU: {error}")
    assert torch.equal(got, want), float((got.float() - want.float()).abs().max())
