"""Interventional passes of the collection engine equal separate ``run_with_hooks`` forwards.

References are plain TransformerLens forwards of the whole batch with the per-call hook
functions (``return_type="loss", loss_per_token=True``), one per expert; the engine's reuse
(suffix forwards from the edited layer, replicated rows, readout only where the final residual
changed) must not change a number beyond fp32 noise (1e-5).
"""

from __future__ import annotations

import datasets
import pytest
import torch

import tl_moe
from tiny_models import TINY_CONFIGS, tiny_tokenizer
from tl_moe.collect import ExpertEffects, InterventionalAccumulator, collect, run_interventions
from tl_moe.interventions import (
    Intervention,
    remove_experts,
    scale_expert_weights,
    zero_expert_outputs,
)
from tl_moe.models.build import build_model, save_model

SEQ_LEN = 10
BATCH = 3

# Dense layers below (and between) sparse ones: qwen2_moe with mlp_only_layers, deepseek_v2 with
# first_k_dense_replace; an OLMoE (softmax over all experts, no renormalization: removal changes
# every token's mixing weights).
SHAPES = {
    "qwen2_moe": TINY_CONFIGS["qwen2_moe"].replace(n_layers=4, sparse_layers=(1, 3)),
    "deepseek_v2": TINY_CONFIGS["deepseek_v2"].replace(n_layers=3, sparse_layers=(1, 2)),
    "olmoe": TINY_CONFIGS["olmoe"].replace(n_layers=3, sparse_layers=(0, 1, 2)),
}


@pytest.fixture(scope="module")
def bridges(tmp_path_factory):
    built = {}

    def get(arch: str):
        if arch not in built:
            directory = tmp_path_factory.mktemp(f"interventional-{arch}")
            save_model(build_model(SHAPES[arch], seed=1), tiny_tokenizer(), directory)
            built[arch] = tl_moe.load(directory, device="cpu")
        return built[arch]

    return get


def corpus(n_docs: int = 7, seed: int = 0) -> datasets.Dataset:
    """Word-level documents of varied length (short ones leave padded windows), two domains."""
    generator = torch.Generator().manual_seed(seed)
    texts, domains = [], []
    for i in range(n_docs):
        length = int(torch.randint(3, 2 * SEQ_LEN, (1,), generator=generator))
        words = torch.randint(3, 96, (length,), generator=generator).tolist()
        texts.append(" ".join(f"w{w}" for w in words))
        domains.append("code" if i % 3 == 0 else "prose")
    return datasets.Dataset.from_dict({"text": texts, "domain": domains})


class Recorder(InterventionalAccumulator):
    """Keeps every batch's effects (tests only: not mergeable)."""

    def __init__(self, edits):
        self.edits = list(edits)
        self.seen = []

    def interventions(self, model):
        return self.edits

    def update_effects(self, effects, meta):
        self.seen.append((effects, meta))

    def merge(self, other):
        raise NotImplementedError

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def finalize(self):
        return self.seen


def reference_loss(bridge, meta, hooks):
    """Per-token loss ``[batch, pos]`` of a plain forward of the whole batch with ``hooks``."""
    with torch.no_grad():
        loss = bridge.run_with_hooks(
            meta.input_ids,
            attention_mask=meta.attention_mask.long(),
            return_type="loss",
            loss_per_token=True,
            fwd_hooks=hooks,
        )
    return torch.nn.functional.pad(loss, (0, 1))


def per_call_hooks(bridge, edit: Intervention):
    if edit.kind == "remove":
        return remove_experts(bridge, edit.layer, list(edit.experts))
    if edit.kind == "zero":
        return zero_expert_outputs(bridge, edit.layer, list(edit.experts))
    return scale_expert_weights(bridge, edit.layer, list(edit.experts), edit.factor)


def run_recorder(bridge, edits, **kwargs):
    recorder = Recorder(edits)
    collect(bridge, corpus(), {"r": recorder}, batch_size=BATCH, seq_len=SEQ_LEN, progress=False, **kwargs)
    return recorder.seen


@pytest.mark.parametrize("arch", list(SHAPES))
@pytest.mark.parametrize("which", ["first", "last"])
@pytest.mark.parametrize("kind", ["remove", "zero", "scale"])
def test_every_expert_of_a_layer_equals_a_separate_forward(bridges, arch, which, kind):
    bridge = bridges(arch)
    cfg = bridge.moe_cfg
    layer = cfg.sparse_layers[0] if which == "first" else cfg.sparse_layers[-1]
    factor = 2.5 if kind == "scale" else None
    edits = [Intervention(kind, layer, (e,), factor) for e in range(cfg.num_experts)]
    # A small budget forces several forwards per layer (chunks of replicated rows).
    seen = run_recorder(bridge, edits, intervention_memory=200_000, max_tokens=50)
    assert len(seen) >= 2
    padded = 0
    for effects, meta in seen:
        valid = effects.valid
        padded += int((~meta.attention_mask).sum())
        assert torch.equal(valid[:, :-1], meta.attention_mask[:, :-1] & meta.attention_mask[:, 1:])
        clean = reference_loss(bridge, meta, [])
        torch.testing.assert_close(effects.clean_loss[valid], clean[valid], atol=1e-5, rtol=0)
        assert torch.all(effects.loss[:, ~valid] == 0)
        for i, edit in enumerate(edits):
            expected = reference_loss(bridge, meta, per_call_hooks(bridge, edit))
            torch.testing.assert_close(effects.loss[i][valid], expected[valid], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                effects.loss_change[i][valid], (expected - clean)[valid], atol=1e-5, rtol=0
            )
    assert padded > 0  # the corpus leaves padded windows: the mask is exercised


def test_readout_is_skipped_where_the_last_layer_leaves_the_residual_unchanged(bridges):
    bridge = bridges("qwen2_moe")
    layer = bridge.moe_cfg.sparse_layers[-1]
    seen = run_recorder(bridge, [Intervention("zero", layer, (e,)) for e in range(8)])
    for effects, meta in seen:
        with torch.no_grad():
            _, cache = bridge.run_with_cache(
                meta.input_ids, attention_mask=meta.attention_mask.long(), names_filter=lambda n: "topk" in n
            )
        routed = cache[f"blocks.{layer}.mlp.hook_topk_indices"]
        for e in range(8):
            # Zeroing an expert of the last layer changes exactly the tokens routed to it.
            assert torch.equal(effects.changed[e], (routed == e).any(-1)), e
            assert torch.all(effects.loss[e][~effects.changed[e]] == effects.clean_loss[~effects.changed[e]])


def test_composite_edits_and_force_run_in_one_pass(bridges):
    bridge = bridges("olmoe")
    both = (Intervention("force", 1, (0, 1)), Intervention("zero", 2, (3,)))
    seen = run_recorder(bridge, [both, Intervention("scale", 0, (2, 5), 0.5)])
    for effects, meta in seen:
        valid = effects.valid
        expected = reference_loss(bridge, meta, both[0].hooks(bridge) + both[1].hooks(bridge))
        torch.testing.assert_close(effects.loss[0][valid], expected[valid], atol=1e-5, rtol=0)
        expected = reference_loss(bridge, meta, scale_expert_weights(bridge, 0, [2, 5], 0.5))
        torch.testing.assert_close(effects.loss[1][valid], expected[valid], atol=1e-5, rtol=0)


def test_logits_on_request(bridges):
    bridge = bridges("deepseek_v2")
    recorder = Recorder([Intervention("remove", 2, (4,))])
    recorder.needs_logits = True
    collect(bridge, corpus(3), {"r": recorder}, batch_size=BATCH, seq_len=SEQ_LEN, progress=False)
    effects, meta = recorder.seen[0]
    with torch.no_grad():
        mask = meta.attention_mask.long()
        clean = bridge(meta.input_ids, attention_mask=mask)
        edited = bridge.run_with_hooks(
            meta.input_ids, attention_mask=mask, fwd_hooks=remove_experts(bridge, 2, [4])
        )
    real = meta.attention_mask
    torch.testing.assert_close(effects.clean_logits[real], clean[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(effects.logits[0][real], edited[real], atol=1e-5, rtol=0)


# --- ExpertEffects: sums, merge, resume ---------------------------------------------------------


def expert_effects(bridge, **kwargs):
    acc = ExpertEffects(
        layers=list(bridge.moe_cfg.sparse_layers), kinds=("remove", "zero", "scale"), factor=3.0
    )
    result = collect(
        bridge, corpus(), {"fx": acc}, batch_size=BATCH, seq_len=SEQ_LEN, progress=False, **kwargs
    )
    return acc, result["fx"]


def test_expert_effects_sums_equal_the_per_token_effects(bridges):
    bridge = bridges("qwen2_moe")
    acc, result = expert_effects(bridge)
    cfg = bridge.moe_cfg
    edits = acc.interventions(bridge)
    seen = run_recorder(bridge, edits)
    names = list(result.domain_names)
    n_kinds, n_layers, n_experts = 3, len(cfg.sparse_layers), cfg.num_experts
    total = torch.zeros(n_kinds, n_layers, n_experts, len(names), dtype=torch.float64)
    routed_total = torch.zeros_like(total)
    n_routed = torch.zeros(n_layers, n_experts, len(names), dtype=torch.long)
    n_tokens = torch.zeros(len(names), dtype=torch.long)
    for effects, meta in seen:
        with torch.no_grad():
            _, cache = bridge.run_with_cache(
                meta.input_ids,
                attention_mask=meta.attention_mask.long(),
                names_filter=lambda n: "topk_ind" in n,
            )
        for b, p in zip(*torch.nonzero(effects.valid, as_tuple=True), strict=True):
            d = int(meta.domain[b, p])
            n_tokens[d] += 1
            for i, edit in enumerate(edits):
                k, li, e = edit_coordinates(edit, acc)
                change = float(effects.loss_change[i, b, p])
                total[k, li, e, d] += change
                if e in cache[f"blocks.{edit.layer}.mlp.hook_topk_indices"][b, p].tolist():
                    routed_total[k, li, e, d] += change
                    if k == 0:
                        n_routed[li, e, d] += 1
    assert torch.equal(result.n_tokens, n_tokens)
    assert torch.equal(result.n_routed, n_routed)
    torch.testing.assert_close(result.loss_change, total, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(result.loss_change_routed, routed_total, atol=1e-9, rtol=1e-9)
    # Zeroing changes nothing at tokens not routed to the expert of the last layer.
    torch.testing.assert_close(result.loss_change[1, -1], result.loss_change_routed[1, -1], atol=1e-9, rtol=0)
    frame = result.to_frame()
    assert set(frame["kind"]) == {"remove", "zero", "scale"} and set(frame["layer"]) == set(cfg.sparse_layers)
    assert len(result.to_frame(by_domain=False)) == n_kinds * n_layers * n_experts


def edit_coordinates(edit, acc):
    return acc.kinds.index(edit.kind), acc.layers.index(edit.layer), edit.experts[0]


def result_fields(result):
    return {
        name: getattr(result, name)
        for name in (
            "loss_change",
            "loss_change_routed",
            "loss_change_sq",
            "n_tokens",
            "n_routed",
            "clean_loss",
        )
    }


def test_shards_merged_equal_one_pass(bridges):
    bridge = bridges("deepseek_v2")
    _, whole = expert_effects(bridge)
    halves = [expert_effects(bridge, shard=(position, 2))[0] for position in range(2)]
    merged = halves[0].merge(halves[1]).finalize()
    for name, value in result_fields(merged).items():
        torch.testing.assert_close(value, result_fields(whole)[name], atol=1e-12, rtol=1e-12)


class Interrupt(Exception):
    pass


def test_interrupted_and_resumed_equals_uninterrupted(bridges, tmp_path):
    bridge = bridges("olmoe")
    _, whole = expert_effects(bridge)
    calls = []

    def bomb(x, hook):  # fires once per clean forward (the interventional ones start later)
        calls.append(1)
        if len(calls) > 2:
            raise Interrupt

    with bridge.hooks(fwd_hooks=[("embed.hook_out", bomb)]), pytest.raises(Interrupt):
        expert_effects(bridge, checkpoint_dir=tmp_path, checkpoint_every=1)
    _, resumed = expert_effects(bridge, checkpoint_dir=tmp_path, checkpoint_every=1)
    for name, value in result_fields(resumed).items():
        assert torch.equal(value, result_fields(whole)[name]), name


def test_expert_effects_arguments_are_checked(bridges):
    with pytest.raises(ValueError, match="kinds must be"):
        ExpertEffects(kinds=("remove", "ablate"))
    with pytest.raises(ValueError, match="factor"):
        ExpertEffects(kinds=("scale",))
    with pytest.raises(ValueError, match="finite"):
        ExpertEffects(kinds=("scale",), factor=float("nan"))
    with pytest.raises(ValueError, match="not sparse layers"):
        ExpertEffects(layers=[0]).hook_names(bridges("qwen2_moe"))


def test_run_interventions_on_a_batch_equals_separate_forwards(bridges):
    bridge = bridges("olmoe")
    toks = torch.randint(3, 96, (2, 8), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(toks, dtype=torch.bool)
    mask[1, 5:] = False
    edits = [Intervention("remove", 1, e) for e in range(8)]
    effects = run_interventions(
        bridge, toks, edits, attention_mask=mask, hook_names=["blocks.1.mlp.hook_topk_indices"]
    )
    assert effects.acts["blocks.1.mlp.hook_topk_indices"].shape == (2, 8, 2)
    with torch.no_grad():
        for i, edit in enumerate(edits):
            expected = bridge.run_with_hooks(
                toks,
                attention_mask=mask.long(),
                return_type="loss",
                loss_per_token=True,
                fwd_hooks=edit.hooks(bridge),
            )
            expected = torch.nn.functional.pad(expected, (0, 1))
            torch.testing.assert_close(
                effects.loss[i][effects.valid], expected[effects.valid], atol=1e-5, rtol=0
            )


def test_an_edit_of_a_dense_layer_is_refused_before_the_pass(bridges):
    with pytest.raises(tl_moe.HookNameError, match="dense FFN"):
        run_recorder(bridges("qwen2_moe"), [Intervention("zero", 0, (1,))])
