"""Expert logit lens and direct logit attribution against hand computation from Hugging Face weights."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

import tl_moe
from tiny_models import TINY_CONFIGS, VOCAB, tiny_tokenizer
from tl_moe.analysis.attribution import decompose_logits
from tl_moe.analysis.logit_lens import (
    down_projection,
    expert_logit_lens,
    neuron_top_tokens,
    top_tokens_static,
)
from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensAccumulator
from tl_moe.analysis.readout import LogitReadout
from tl_moe.collect import BatchMeta, collect
from tl_moe.models.build import build_model, save_model

GRANITE_SCALED = "granitemoe_scaled"  # GraniteMoE with non-trivial embedding/residual/logit multipliers
_MULTIPLIERS = dict(embedding_multiplier=2.0, residual_multiplier=0.5, logits_scaling=4.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices run far faster single-threaded on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _randomize(model, seed: int) -> None:
    """Non-trivial norm gains and biases (HF initialises them to 1 and 0) and larger logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.5 * noise)
            elif name.endswith("bias") or name.endswith("_bias"):
                param.copy_(0.1 * noise)
        model.lm_head.weight.mul_(10.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """``model_dir(arch)`` -> a saved tiny model with randomized gains and biases."""
    built = {}

    def get(arch: str):
        if arch not in built:
            cfg = TINY_CONFIGS["granitemoe" if arch == GRANITE_SCALED else arch]
            if arch == GRANITE_SCALED:
                cfg = cfg.replace(extra_hf_config=_MULTIPLIERS)
            model = build_model(cfg, seed=1)
            _randomize(model, seed=2)
            built[arch] = save_model(model, tiny_tokenizer(), tmp_path_factory.mktemp(arch))
        return built[arch]

    return get


@pytest.fixture(scope="module")
def bridge(model_dir):
    loaded = {}

    def get(arch: str):
        if arch not in loaded:
            loaded[arch] = tl_moe.load(model_dir(arch), device="cpu")
        return loaded[arch]

    return get


def tokens(seed: int = 0, batch: int = 2, pos: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


class HandReadout:
    """The final norm + unembedding of an HF model, written out from its weights."""

    def __init__(self, hf):
        config = hf.config
        norm = hf.model.norm
        self.weight = hf.lm_head.weight.detach()
        self.gain = norm.weight.detach() if hasattr(norm, "weight") else torch.ones(self.weight.shape[1])
        self.layer_norm = not hasattr(norm, "variance_epsilon")  # OLMo: parameter-free LayerNorm, eps 1e-5
        self.eps = 1e-5 if self.layer_norm else norm.variance_epsilon
        self.logits_scaling = getattr(config, "logits_scaling", None) or 1.0
        self.embedding_multiplier = getattr(config, "embedding_multiplier", None) or 1.0
        self.residual_multiplier = getattr(config, "residual_multiplier", None) or 1.0

    def center(self, x):
        return x - x.mean(-1, keepdim=True) if self.layer_norm else x

    def scale(self, final_resid):
        return 1.0 / torch.sqrt(self.center(final_resid).pow(2).mean(-1, keepdim=True) + self.eps)

    def share(self, vector, final_resid):
        """Logits written by ``vector`` [b, p, d] with the norm scale of ``final_resid`` frozen."""
        return (
            (self.center(vector) * self.scale(final_resid) * self.gain) @ self.weight.T / self.logits_scaling
        )


def hf_model(directory):
    return AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()


EXACT_ARCHS = ["olmoe", "qwen2_moe", "deepseek_v3", "gpt_oss", GRANITE_SCALED, "olmo"]


def hf_residual_writes(reference, toks):
    """What a plain Hugging Face forward adds to the residual stream: embedding, per-layer attention
    and FFN outputs (multipliers applied, as the decoder layer applies them), and the final residual."""
    seen, handles = {}, []

    def keep(name):
        def hook(module, args, output):
            seen[name] = output[0] if isinstance(output, tuple) else output

        return hook

    handles.append(reference.model.embed_tokens.register_forward_hook(keep("embed")))
    handles.append(reference.model.norm.register_forward_pre_hook(lambda m, args: seen.update(final=args[0])))
    for layer, block in enumerate(reference.model.layers):
        handles.append(block.self_attn.register_forward_hook(keep(f"attn{layer}")))
        ffn = block.block_sparse_moe if hasattr(block, "block_sparse_moe") else block.mlp
        handles.append(ffn.register_forward_hook(keep(f"ffn{layer}")))
    with torch.no_grad():
        seen["logits"] = reference(toks).logits
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("arch", EXACT_ARCHS)
def test_every_component_share_equals_hand_computation_and_they_sum_to_the_logits(arch, model_dir, bridge):
    model, reference = bridge(arch), hf_model(model_dir(arch))
    cfg, hand = model.moe_cfg, HandReadout(reference)
    toks = tokens()
    writes = hf_residual_writes(reference, toks)
    hf_logits, final, multiplier = writes["logits"], writes["final"], hand.residual_multiplier
    with torch.no_grad():
        _, cache = model.run_with_cache(toks)
    decomposition = decompose_logits(model, toks)

    expected = {"embed": hand.share(writes["embed"] * hand.embedding_multiplier, final)}
    for layer in range(cfg.n_layers):
        expected[f"blocks.{layer}.attn"] = hand.share(writes[f"attn{layer}"] * multiplier, final)
        if layer not in cfg.sparse_layers:
            expected[f"blocks.{layer}.mlp"] = hand.share(writes[f"ffn{layer}"] * multiplier, final)
            continue
        weights, outputs = (
            cache[f"blocks.{layer}.mlp.hook_topk_weights"],
            cache[f"blocks.{layer}.mlp.hook_expert_out"],
        )
        for slot in range(cfg.experts_per_token):
            want = hand.share(weights[..., slot, None] * outputs[:, :, slot] * multiplier, final)
            torch.testing.assert_close(decomposition.routed[layer][:, :, slot], want, atol=1e-5, rtol=1e-5)
        if cfg.n_shared_experts:
            shared = cache[f"blocks.{layer}.mlp.hook_shared_out"]
            if cfg.shared_gated:
                shared = torch.sigmoid(cache[f"blocks.{layer}.mlp.hook_shared_gate"]) * shared
            expected[f"blocks.{layer}.shared"] = hand.share(shared * multiplier, final)
    bias = reference.lm_head.bias
    expected["bias"] = torch.zeros(VOCAB) if bias is None else bias.detach() / hand.logits_scaling

    assert set(decomposition.components) == set(expected)
    for name, want in expected.items():
        torch.testing.assert_close(
            decomposition.components[name], want.expand_as(hf_logits), atol=1e-5, rtol=1e-5
        )
    assert hf_logits.abs().max() > 1.0  # the check below is not vacuous
    torch.testing.assert_close(decomposition.total(), hf_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(decomposition.logits, hf_logits, atol=1e-5, rtol=0)


def test_target_decomposition_equals_the_gathered_full_one(bridge):
    model, toks = bridge("qwen2_moe"), tokens(1)
    targets = torch.stack([toks.roll(-1, dims=1), torch.full_like(toks, 5)], dim=-1)
    full, picked = decompose_logits(model, toks), decompose_logits(model, toks, target_ids=targets)
    for name, share in full.as_dict().items():
        torch.testing.assert_close(picked.as_dict()[name], share.gather(-1, targets), atol=1e-6, rtol=0)
    by_expert = full.by_expert(1, model.moe_cfg.num_experts)
    torch.testing.assert_close(by_expert.sum(2), full.routed[1].sum(2), atol=1e-6, rtol=0)
    routed_to = torch.zeros(by_expert.shape[:3], dtype=torch.bool).scatter(2, full.routed_experts[1], True)
    assert (by_expert[~routed_to] == 0).all()
    table = full.to_frame(batch=1, position=3, target=7)
    assert len(table) == len(full.components) + model.moe_cfg.experts_per_token
    assert table["dla"].sum() == pytest.approx(float(full.logits[1, 3, 7]), abs=1e-4)


@pytest.mark.parametrize("arch", ["olmoe", "gpt_oss"])
def test_expert_lens_raw_and_dla_equal_hand_computation(arch, model_dir, bridge):
    model, hand = bridge(arch), HandReadout(hf_model(model_dir(arch)))
    layer, toks = model.moe_cfg.sparse_layers[-1], tokens(2)
    with torch.no_grad():
        _, cache = model.run_with_cache(toks)
    out, weights = (
        cache[f"blocks.{layer}.mlp.hook_expert_out"],
        cache[f"blocks.{layer}.mlp.hook_topk_weights"],
    )
    final = cache[f"blocks.{model.moe_cfg.n_layers - 1}.hook_resid_post"]
    readout = LogitReadout.from_model(model)
    full = expert_logit_lens(readout, out, weights, readout.inverse_rms(final))
    next_token = toks.roll(-1, dims=1)
    at_next = expert_logit_lens(readout, out, weights, readout.inverse_rms(final), target_ids=next_token)
    for b, p, slot in [(0, 0, 0), (0, 4, 1), (1, 6, 1)]:
        raw = (out[b, p, slot] * hand.gain) @ hand.weight.T
        torch.testing.assert_close(full.raw[b, p, slot], raw, atol=1e-5, rtol=1e-5)
        dla = hand.share(weights[b, p, slot] * out[b, p, slot], final[b, p])
        torch.testing.assert_close(full.dla[b, p, slot], dla, atol=1e-5, rtol=1e-5)
        target = int(next_token[b, p])
        torch.testing.assert_close(at_next.dla[b, p, slot, 0], dla[target], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(at_next.raw[b, p, slot, 0], raw[target], atol=1e-5, rtol=1e-5)


def _neuron_output(experts, expert: int, neuron: int) -> torch.Tensor:
    """What expert ``expert``'s down-projection adds per unit of activation of ``neuron``."""
    if getattr(experts, "is_transposed", False):  # GPT-OSS computes post @ down_proj[e] (+ a constant bias)
        one_hot = torch.zeros(experts.down_proj.shape[1])
        one_hot[neuron] = 1.0
        return one_hot @ experts.down_proj[expert]
    one_hot = torch.zeros(experts.down_proj.shape[-1])
    one_hot[neuron] = 1.0
    return one_hot @ experts.down_proj[expert].T


@pytest.mark.parametrize("arch", ["qwen2_moe", "gpt_oss"])
def test_static_tokens_follow_the_mean_down_projection_column(arch, model_dir, bridge):
    model, reference = bridge(arch), hf_model(model_dir(arch))
    hand, cfg = HandReadout(reference), model.moe_cfg
    layer = cfg.sparse_layers[-1]
    experts = reference.model.layers[layer].mlp.experts
    with torch.no_grad():
        columns = torch.stack(
            [
                torch.stack([_neuron_output(experts, e, n) for n in range(cfg.d_expert)])
                for e in range(cfg.num_experts)
            ]
        )  # [expert, neuron, d_model]
        mean_logits = (columns.mean(1) * hand.gain) @ hand.weight.T / hand.logits_scaling
        result = top_tokens_static(model, layer, k=5)
        torch.testing.assert_close(down_projection(model, layer), columns.transpose(1, 2))
        assert torch.equal(result.promoted_ids[: cfg.num_experts], mean_logits.topk(5).indices)
        assert torch.equal(
            result.suppressed_ids[: cfg.num_experts], mean_logits.topk(5, largest=False).indices
        )
        torch.testing.assert_close(result.promoted_logits[: cfg.num_experts], mean_logits.topk(5).values)
        bare = top_tokens_static(model, layer, k=5, through_final_norm=False)
        assert torch.equal(
            bare.promoted_ids[: cfg.num_experts], (columns.mean(1) @ hand.weight.T).topk(5).indices
        )
        if cfg.n_shared_experts:
            shared = reference.model.layers[layer].mlp.shared_expert.down_proj.weight
            shared_logits = (shared.mean(1) * hand.gain) @ hand.weight.T
            assert result.unit_names[-1] == "shared"
            assert torch.equal(result.promoted_ids[-1], shared_logits.topk(5).indices)
        neurons = neuron_top_tokens(model, layer, 2, [0, 3], k=4)
        for row, neuron in enumerate([0, 3]):
            neuron_logits = (columns[2, neuron] * hand.gain) @ hand.weight.T / hand.logits_scaling
            assert torch.equal(neurons.promoted_ids[row], neuron_logits.topk(4).indices)
    frame = neurons.to_frame(model.tokenizer)
    assert set(frame["unit"]) == {"expert 2 neuron 0", "expert 2 neuron 3"}
    assert frame["token"].iloc[0] == f"w{int(neurons.promoted_ids[0, 0])}"


def test_static_view_of_a_dense_layer(model_dir, bridge):
    model, reference = bridge("deepseek_v3"), hf_model(model_dir("deepseek_v3"))
    hand = HandReadout(reference)
    with torch.no_grad():
        direction = reference.model.layers[0].mlp.down_proj.weight.mean(1)
        want = ((direction * hand.gain) @ hand.weight.T).topk(3).indices
    result = top_tokens_static(model, 0, k=3)
    assert result.unit_names == ("dense",)
    assert torch.equal(result.promoted_ids[0], want)
    with pytest.raises(ValueError, match="dense FFN"):
        down_projection(model, 0, unit=1)


def _padded_batch(seed: int):
    toks = tokens(seed, batch=3, pos=8)
    mask = torch.ones_like(toks, dtype=torch.bool)
    mask[1, 5:] = False  # right padding, as the collection pass lays windows out
    mask[2, 2:] = False
    return toks.masked_fill(~mask, 1), mask


def _meta(toks, mask, batch_index: int = 0) -> BatchMeta:
    batch, pos = toks.shape
    positions = torch.arange(pos).expand(batch, pos)
    zeros = torch.zeros_like(toks)
    return BatchMeta(
        input_ids=toks,
        attention_mask=mask,
        position=positions,
        doc_index=zeros,
        doc_position=positions,
        domain=zeros,
        token_index=positions + pos * torch.arange(batch)[:, None],
        window_index=torch.arange(batch),
        batch_index=batch_index,
        domain_names=("all",),
    )


def _hooked(model, acc, toks, mask):
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, attention_mask=mask.long())
    return {name: cache[name] for name in acc.hook_names(model)}


def test_accumulated_counts_and_dla_equal_a_brute_force_loop(model_dir, bridge):
    model, hand = bridge("olmoe"), HandReadout(hf_model(model_dir("olmoe")))
    cfg, top_n = model.moe_cfg, 3
    acc = ExpertLogitLensAccumulator(model, top_n=top_n, n_top_tokens=4)
    n_layers, n_experts = len(cfg.sparse_layers), cfg.num_experts
    counts = torch.zeros(n_layers, n_experts, VOCAB, dtype=torch.long)
    dla_sum = torch.zeros(n_layers, n_experts, dtype=torch.float64)
    n_dla = torch.zeros(n_layers, n_experts, dtype=torch.long)
    out_sum = torch.zeros(n_layers, n_experts, VOCAB, dtype=torch.float64)
    for seed in (3, 4):
        toks, mask = _padded_batch(seed)
        acts = _hooked(model, acc, toks, mask)
        acc.update(acts, _meta(toks, mask))
        final = acts[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
        for row, layer in enumerate(cfg.sparse_layers):
            out = acts[f"blocks.{layer}.mlp.hook_expert_out"]
            weights, experts = (
                acts[f"blocks.{layer}.mlp.hook_topk_weights"],
                acts[f"blocks.{layer}.mlp.hook_topk_indices"],
            )
            for b in range(toks.shape[0]):
                for p in range(toks.shape[1]):
                    if not mask[b, p]:
                        continue
                    for slot in range(cfg.experts_per_token):
                        e = int(experts[b, p, slot])
                        raw = (out[b, p, slot] * hand.gain) @ hand.weight.T
                        counts[row, e, raw.topk(top_n).indices] += 1
                        out_sum[row, e] += raw.double()
                        if p + 1 < toks.shape[1] and mask[b, p + 1]:
                            share = hand.share(weights[b, p, slot] * out[b, p, slot], final[b, p])
                            dla_sum[row, e] += float(share[toks[b, p + 1]])
                            n_dla[row, e] += 1
    result = acc.finalize()
    assert torch.equal(result.dense_counts(), counts)
    assert torch.equal(result.n_routed, counts.sum(-1) // top_n)
    assert torch.equal(result.n_dla, n_dla)
    torch.testing.assert_close(result.dla_sum, dla_sum, atol=1e-5, rtol=1e-5)
    mean = out_sum / result.n_routed.clamp(min=1)[..., None]
    routed = result.n_routed > 0
    assert torch.equal(result.top_token_ids[routed], mean.topk(4).indices[routed])
    torch.testing.assert_close(
        result.top_token_logits[routed], mean.topk(4).values[routed], atol=1e-5, rtol=1e-5
    )
    assert (result.top_token_ids[~routed] == -1).all()
    # Per-document sums (one document here) add up to the expert's sums, through the same lens.
    assert torch.equal(result.doc_n_routed.sum(0), result.n_routed) and len(result.doc_ids) == 1
    by_document = (result.doc_out_sum.sum(0).double() * hand.gain.double()) @ hand.weight.double().T
    torch.testing.assert_close(by_document, out_sum, atol=1e-3, rtol=1e-4)
    frame = result.to_frame()
    assert len(frame) == n_layers * n_experts and frame["n_routed"].sum() == int(result.n_routed.sum())
    tokens_frame = result.top_tokens(model.tokenizer)
    first = tokens_frame.iloc[0]
    assert (
        first["token"] == f"w{int(result.top_token_ids[0, 0, 0])}" and first["layer"] == cfg.sparse_layers[0]
    )

    groups = torch.arange(VOCAB) % 7
    grouped = ExpertLogitLensAccumulator(model, top_n=top_n, token_groups=groups)
    for seed in (3, 4):
        toks, mask = _padded_batch(seed)
        grouped.update(_hooked(model, grouped, toks, mask), _meta(toks, mask))
    by_group = torch.zeros(n_layers, n_experts, 7, dtype=torch.long).index_add(2, groups, counts)
    assert torch.equal(grouped.finalize().dense_counts(), by_group)


def _random_acts(acc, cfg, generator, batch=3, pos=6):
    k, e = cfg.experts_per_token, cfg.num_experts
    acts = {}
    for layer in acc.layers:
        acts[f"blocks.{layer}.mlp.hook_expert_out"] = torch.randn(
            batch, pos, k, cfg.d_model, generator=generator
        )
        acts[f"blocks.{layer}.mlp.hook_topk_weights"] = torch.rand(batch, pos, k, generator=generator)
        acts[f"blocks.{layer}.mlp.hook_topk_indices"] = torch.rand(
            batch, pos, e, generator=generator
        ).argsort(-1)[..., :k]
    acts[f"blocks.{cfg.n_layers - 1}.hook_resid_post"] = torch.randn(
        batch, pos, cfg.d_model, generator=generator
    )
    toks = torch.randint(0, VOCAB, (batch, pos), generator=generator)
    mask = torch.rand(batch, pos, generator=generator).argsort(-1).argsort(-1) < pos - 1  # some padding
    meta = _meta(toks, mask)
    meta.doc_index[:] = torch.randint(0, 5, (batch, 1), generator=generator)  # a document per window
    return acts, meta


def test_merge_and_state_dict_round_trip_equal_a_single_pass(bridge, tmp_path):
    model = bridge("olmoe")

    def make():
        return ExpertLogitLensAccumulator(model, layers=[1], top_n=2, token_groups=torch.arange(VOCAB) // 4)

    single, first, second = make(), make(), make()
    generator = torch.Generator().manual_seed(0)
    batches = [_random_acts(single, model.moe_cfg, generator) for _ in range(4)]
    for index, (acts, meta) in enumerate(batches):
        single.update(acts, meta)
        (first if index % 2 else second).update(acts, meta)
    torch.save(second.state_dict(), tmp_path / "state.pt")
    restored = make()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    merged, want = first.merge(restored).finalize(), single.finalize()
    assert torch.equal(merged.dense_counts(), want.dense_counts())
    assert int(want.dense_counts().sum()) == 2 * int(want.n_routed.sum()) > 0
    assert torch.equal(merged.n_routed, want.n_routed) and torch.equal(merged.n_dla, want.n_dla)
    torch.testing.assert_close(merged.dla_sum, want.dla_sum, atol=1e-10, rtol=1e-10)
    assert torch.equal(merged.top_token_ids, want.top_token_ids)
    assert torch.equal(merged.doc_ids, want.doc_ids) and torch.equal(merged.doc_n_routed, want.doc_n_routed)
    torch.testing.assert_close(merged.doc_out_sum, want.doc_out_sum)
    assert torch.equal(want.doc_n_routed.sum(0), want.n_routed) and len(want.doc_ids) > 1
    with pytest.raises(ValueError, match="configured differently"):
        make().merge(ExpertLogitLensAccumulator(model, layers=[1], top_n=3))


def test_collection_pass_feeds_the_accumulator(bridge):
    model = bridge("qwen2_moe")
    corpus = datasets.Dataset.from_dict({"text": ["w5 w6 w7 w8 w9 w3", "w4 w5 w6"]})
    acc = ExpertLogitLensAccumulator(model)
    result = collect(model, corpus, {"lens": acc}, batch_size=2, seq_len=5, progress=False)["lens"]
    # windows [BOS w5 w6 w7 w8], [BOS w9 w3], [BOS w4 w5 w6]: 12 real tokens, 9 with a next token
    k = model.moe_cfg.experts_per_token
    assert int(result.n_routed.sum()) == 12 * k
    assert int(result.n_dla.sum()) == 9 * k
    assert result.layers == model.moe_cfg.sparse_layers


def test_clear_errors(bridge):
    model = bridge("deepseek_v3")
    with pytest.raises(ValueError, match="sparse layers"):
        ExpertLogitLensAccumulator(model, layers=[0])
    with pytest.raises(ValueError, match="one group per vocabulary token"):
        ExpertLogitLensAccumulator(model, token_groups=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="dense model"):
        ExpertLogitLensAccumulator(bridge("olmo"))
    readout = LogitReadout.from_model(model)
    with pytest.raises(ValueError, match="target_ids"):
        expert_logit_lens(
            readout,
            torch.zeros(1, 2, 2, 32),
            torch.zeros(1, 2, 2),
            torch.ones(1, 2),
            torch.zeros(3, 1, dtype=torch.long),
        )
    with pytest.raises(ValueError, match="token ids must lie"):
        decompose_logits(model, tokens(), target_ids=torch.full((2, 7), VOCAB))


def test_per_document_sums_past_their_memory_bound_are_dropped_not_truncated(bridge, monkeypatch):
    import tl_moe.analysis.logit_lens_accumulator as module

    model = bridge("olmoe")
    acc = ExpertLogitLensAccumulator(model, layers=[1], top_n=2)
    per_document = model.moe_cfg.num_experts * model.moe_cfg.d_model
    monkeypatch.setattr(module, "_DOCUMENT_ELEMENTS", 2 * per_document)  # room for two documents
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        acc.update(*_random_acts(acc, model.moe_cfg, generator))
    result = acc.finalize()
    assert result.doc_ids is None and result.doc_out_sum is None and int(result.n_routed.sum()) > 0


# Every tiny architecture, plus Qwen3-Next, whose final RMSNorm multiplies by ``1 + weight``.
_READOUT_ARCHITECTURES = (*TINY_CONFIGS, "qwen3_next")


def _tiny_hf(arch: str):
    """A tiny random HF causal LM of ``arch`` with non-trivial norm gains and biases."""
    from tl_moe.models.catalog import build_tiny

    model = (
        build_tiny(arch, vocab_size=VOCAB) if arch not in TINY_CONFIGS else build_model(TINY_CONFIGS[arch])
    )
    _randomize(model, seed=3)
    return model.eval()


@pytest.mark.parametrize("arch", _READOUT_ARCHITECTURES)
def test_readout_of_the_final_residual_equals_the_models_logits(arch):
    model = _tiny_hf(arch)
    captured = {}
    final_norm = model.model.norm
    handle = final_norm.register_forward_hook(lambda module, args, out: captured.update(resid=args[0]))
    with torch.no_grad():
        logits = model(tokens(4)).logits
    handle.remove()
    resid = captured["resid"]
    readout = LogitReadout.from_model(model)
    scale = readout.inverse_rms(resid)[..., None]
    rebuilt = readout.vocab_logits(resid) * scale + readout.constant_logits()
    torch.testing.assert_close(rebuilt, logits, atol=1e-4, rtol=1e-4)


class _OnePlusWeightLayerNorm(torch.nn.Module):
    """A mean-subtracting norm with a ``1 + weight`` gain, a bias and an epsilon under a private name."""

    def __init__(self, d_model: int):
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.weight = torch.nn.Parameter(torch.randn(d_model, generator=generator))
        self.bias = torch.nn.Parameter(torch.randn(d_model, generator=generator))
        self._hidden_eps = 1e-3

    def forward(self, x):
        h = x - x.mean(-1, keepdim=True)
        return (1 + self.weight) * h * torch.rsqrt(
            h.pow(2).mean(-1, keepdim=True) + self._hidden_eps
        ) + self.bias


class _TanhNorm(torch.nn.Module):
    weight: torch.Tensor

    def __init__(self, d_model: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d_model))
        self.eps = 1e-6

    def forward(self, x):
        return self.weight * torch.tanh(x)


@pytest.mark.parametrize("d_model", [32, 33])
def test_final_norm_is_read_by_calling_it(d_model):
    from tl_moe.analysis.readout import _final_norm_parts

    norm = _OnePlusWeightLayerNorm(d_model)
    centered, gain, bias, eps = _final_norm_parts(norm, torch.zeros(5, d_model))
    assert centered
    torch.testing.assert_close(gain, 1 + norm.weight.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bias, norm.bias.detach())
    assert eps == pytest.approx(1e-3, rel=1e-3)


def test_a_final_norm_of_another_form_is_refused():
    from tl_moe.analysis.readout import _final_norm_parts

    with pytest.raises(NotImplementedError, match="_TanhNorm is not of the form"):
        _final_norm_parts(_TanhNorm(16), torch.zeros(5, 16))
