"""First-order (attribution-patching) estimate of expert effects: it is the derivative a central finite
difference measures, its per-expert sums equal a hand loop over slots, shards and checkpoints merge to
the single pass, a planted driver comes out first, and its rank agreement (weighted Spearman) equals
scipy's on the expanded sample."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import scipy.stats
import torch

import tl_moe
from tl_moe.analysis.effect_estimate import (
    NO_EXPERT_INTERVAL,
    FirstOrderEffects,
    score_agreement,
    weighted_spearman,
)
from tl_moe.collect import ExpertEffects, collect
from tl_moe.collect.gradients import GradientAccumulator, slot_gradients
from tl_moe.models.interventions import scale_expert_weights

PLANTED_LAYER, PLANTED_EXPERT = 1, 3


@pytest.fixture(scope="module")
def short_docs():
    generator = torch.Generator().manual_seed(1)
    texts = []
    for _ in range(48):
        words = torch.randint(
            3, 90, (int(torch.randint(6, 14, (1,), generator=generator)),), generator=generator
        )
        texts.append(" ".join(f"w{w}" for w in words.tolist()))
    return datasets.Dataset.from_dict({"text": texts, "domain": ["a", "b", "c"] * 16})


def _planted(directory, factor: float):
    """The tiny OLMoE with a sharpened unembedding and one expert's down-projection scaled by ``factor``."""
    model = tl_moe.load(directory, device="cpu")
    hf = model.original_model
    with torch.no_grad():
        hf.lm_head.weight.mul_(10.0)
        hf.model.layers[PLANTED_LAYER].mlp.experts.down_proj[PLANTED_EXPERT] *= factor
    return model


def _estimator(model, **kwargs) -> FirstOrderEffects:
    return FirstOrderEffects(model.moe_cfg.sparse_layers, model.moe_cfg.num_experts, **kwargs)


def test_the_estimate_is_the_derivative_a_central_difference_measures(tiny_model_dir):
    """Σ_slots of e  w·∂L/∂w  =  dL/dα at α = 1 when every mixing weight of e is scaled by α
    (``scale_expert_weights``), measured by (L(1+ε) − L(1−ε)) / 2ε on a float64 model.

    Tolerance: the central difference's truncation error is ε²/6 · L‴ (checked: halving ε changes
    the difference by less than the tolerance). What dominates is rounding: Hugging Face's RMSNorm
    and routers compute in float32 even in a float64 model, so each loss carries noise of order
    2⁻²⁴ relative on the positions the edit changes (measured ≈ 1e-7 nats on this ≈ 150-nat batch
    loss), ≈ 1e-6 after dividing by 2ε. 1% of the layer's largest derivative (≥ 1e-5 here) is ten
    times that, and a hundredth of what a wrong sign or a missing factor w would cost."""
    model = tl_moe.load(tiny_model_dir("olmoe"), device="cpu", dtype=torch.float64)
    tokens = torch.randint(2, 90, (3, 12), generator=torch.Generator().manual_seed(0))

    def batch_loss(layer: int, expert: int, factor: float) -> float:
        with torch.no_grad(), model.hooks(fwd_hooks=scale_expert_weights(model, layer, [expert], factor)):
            logits = model(tokens, return_type="logits").double()
        picked = logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])
        return -float(picked.sum())

    grads = slot_gradients(model, tokens, None, model.moe_cfg.sparse_layers)
    assert grads.weights[0].dtype == torch.float64 and bool(grads.valid[:, :-1].all())
    assert float(grads.loss.sum()) == pytest.approx(batch_loss(0, 0, 1.0), rel=1e-12)
    eps = 4e-2
    for row, layer in enumerate(grads.layers):
        derivative = np.array(
            [
                float((grads.weights[row] * grads.grads[row] * (grads.indices[row] == e)).sum())
                for e in range(model.moe_cfg.num_experts)
            ]
        )
        central = np.array(
            [
                (batch_loss(layer, e, 1 + eps) - batch_loss(layer, e, 1 - eps)) / (2 * eps)
                for e in range(model.moe_cfg.num_experts)
            ]
        )
        halved = np.array(
            [
                (batch_loss(layer, e, 1 + eps / 2) - batch_loss(layer, e, 1 - eps / 2)) / eps
                for e in range(model.moe_cfg.num_experts)
            ]
        )
        tolerance = 1e-2 * np.abs(derivative).max()
        assert tolerance >= 1e-5
        assert np.abs(central - halved).max() < tolerance  # truncation (and noise) below the tolerance
        np.testing.assert_allclose(derivative, central, rtol=0, atol=tolerance)
        # the first-order zeroing estimate is minus this derivative
        zeroing = torch.stack(grads.first_order_zeroing()[row : row + 1])[0]
        assert float(zeroing.sum()) == pytest.approx(-derivative.sum(), rel=1e-12)


class _Recorder(GradientAccumulator):
    """Keeps every batch's raw gradients and metadata (for the hand loop)."""

    def __init__(self, layers):
        self.layers, self.batches = tuple(layers), []

    def gradient_layers(self, model):
        return self.layers

    def update_gradients(self, grads, meta):
        self.batches.append((grads, meta))

    def merge(self, other):
        return self

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def finalize(self):
        return self.batches


def test_per_expert_sums_equal_a_hand_loop_and_track_the_exact_zeroing_effect(tiny_model_dir, short_docs):
    model = tl_moe.load(tiny_model_dir("olmoe"), device="cpu")
    cfg = model.moe_cfg
    results = collect(
        model,
        short_docs,
        {
            "estimate": _estimator(model),
            "raw": _Recorder(cfg.sparse_layers),
            "exact": ExpertEffects(kinds=("zero",)),
        },
        batch_size=8,
        seq_len=16,
        progress=False,
    )
    estimate, exact = results["estimate"], results["exact"]
    n_docs = len(short_docs)
    sums = np.zeros((len(cfg.sparse_layers), cfg.num_experts, n_docs))
    routed = np.zeros_like(sums, dtype=np.int64)
    counts = np.zeros(n_docs, dtype=np.int64)
    for grads, meta in results["raw"]:
        # independently: a batch's gradients are those of a direct slot_gradients call
        again = slot_gradients(model, meta.input_ids, meta.attention_mask, cfg.sparse_layers)
        assert torch.allclose(again.grads[0], grads.grads[0], atol=1e-7)
        for b in range(meta.batch_size):
            for p in range(meta.seq_len):
                if not bool(grads.valid[b, p]):
                    continue
                doc = int(meta.doc_index[b, p])
                counts[doc] += 1
                for row in range(len(cfg.sparse_layers)):
                    for slot in range(cfg.experts_per_token):
                        e = int(grads.indices[row][b, p, slot])
                        w, g = float(grads.weights[row][b, p, slot]), float(grads.grads[row][b, p, slot])
                        sums[row, e, doc] -= w * g
                        routed[row, e, doc] += 1
    size = estimate.counts.numel()
    np.testing.assert_allclose(estimate.sums.numpy(), sums[..., :size], rtol=1e-9, atol=1e-12)
    assert np.array_equal(estimate.routed.numpy(), routed[..., :size])
    assert np.array_equal(estimate.counts.numpy(), counts[:size])
    # same positions and routed counts as the exact pass; per-domain sums add up to the total
    by_domain, n_tokens = estimate.by_domain()
    assert torch.equal(n_tokens, exact.n_tokens) and torch.equal(
        estimate.routed.sum(-1), exact.n_routed.sum(-1)
    )
    assert torch.allclose(by_domain.sum(-1), estimate.sums.sum(-1), atol=1e-12)
    frame = estimate.to_frame(by_domain=False)
    assert np.allclose(frame["per_corpus_token"], estimate.per_corpus_token().reshape(-1).numpy())
    # on this near-linear random model the estimate tracks the exact zeroing effect closely
    exact_zero = exact.loss_change[0].sum(-1) / exact.n_tokens.sum()
    assert torch.allclose(estimate.per_corpus_token(), exact_zero, rtol=0.2, atol=2e-6)


def test_shards_and_checkpoints_merge_to_the_single_pass(tiny_model_dir, short_docs, tmp_path):
    model = tl_moe.load(tiny_model_dir("olmoe"), device="cpu")
    options = dict(batch_size=8, seq_len=16, progress=False)
    whole = collect(model, short_docs, {"e": _estimator(model)}, **options)["e"]
    parts = []
    for position in range(2):
        acc = _estimator(model)
        collect(model, short_docs, {"e": acc}, shard=(position, 2), **options)
        parts.append(acc)
    restored = _estimator(model)
    restored.load_state_dict(parts[1].state_dict())
    merged = parts[0].merge(restored).finalize()
    assert torch.allclose(merged.sums, whole.sums, rtol=0, atol=1e-12)
    for name in ("routed", "counts", "doc_domain"):
        assert torch.equal(getattr(merged, name), getattr(whole, name))
    # a resumed run (checkpoint after every batch) gives the same result
    resumed = collect(
        model, short_docs, {"e": _estimator(model)}, checkpoint_dir=tmp_path, checkpoint_every=1, **options
    )["e"]
    assert torch.equal(resumed.sums, whole.sums)
    # the token budget stops the backward like DocumentEffects' edited forwards
    capped = _estimator(model, max_tokens=100)
    collect(model, short_docs, {"e": capped}, **options)
    assert 100 <= capped.seen < 100 + 8 * 16 and int(capped.counts.sum()) < int(whole.counts.sum())
    with pytest.raises(ValueError, match="configured differently"):
        _estimator(model).merge(_estimator(model, max_tokens=5))


def test_a_planted_driver_ranks_first(tiny_model_dir, short_docs):
    """An expert whose down-projection is scaled up 100x is the largest exact zeroing effect and the
    largest first-order estimate (signed and in magnitude). At 3000x (the test_drivers plant) its output
    dominates the residual stream and zeroing it is far outside the linear regime (the two disagree by
    3x; at 300x even in sign), yet both still put it first in magnitude."""
    for factor in (100.0, 3000.0):
        model = _planted(tiny_model_dir("olmoe"), factor)
        results = collect(
            model,
            short_docs,
            {"estimate": _estimator(model), "exact": ExpertEffects(kinds=("zero",))},
            batch_size=8,
            seq_len=16,
            progress=False,
        )
        estimate = results["estimate"].per_corpus_token().reshape(-1)
        exact = results["exact"].loss_change[0].sum(-1).reshape(-1)
        flat = PLANTED_LAYER * model.moe_cfg.num_experts + PLANTED_EXPERT
        assert int(estimate.abs().argmax()) == int(exact.abs().argmax()) == flat
        if factor == 100.0:
            assert int(estimate.argmax()) == int(exact.argmax()) == flat
            others = torch.cat([estimate[:flat], estimate[flat + 1 :]]).max()
            assert float(estimate[flat]) > 3 * float(others)  # by a clear margin


def test_a_dense_layer_is_refused_before_any_pass(tiny_model_dir, short_docs):
    from tl_moe.errors import InputError

    model = tl_moe.load(tiny_model_dir("qwen2_moe"), device="cpu")  # block 0 is dense
    recorder = _Recorder([0])
    with pytest.raises(InputError, match="dense layers \\[0\\]"):
        collect(model, short_docs, {"e": recorder}, batch_size=8, seq_len=16, progress=False)
    assert recorder.batches == []


def test_weighted_spearman_equals_scipy_on_the_expanded_sample():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = x + rng.normal(size=12)
    x[3] = x[5]  # a tie
    weights = rng.integers(0, 4, size=(5, 12)).astype(float)
    weights[:, :3] += 1
    got = weighted_spearman(x, y, weights)
    for b in range(5):
        expanded = np.repeat(np.arange(12), weights[b].astype(int))
        assert got[b] == pytest.approx(spearmanr(x[expanded], y[expanded]).statistic, abs=1e-12)
    assert weighted_spearman(x, y, np.ones((1, 12)))[0] == pytest.approx(spearmanr(x, y).statistic)


def test_score_agreement_counts_top_overlap_and_marks_small_layers():
    first = 5.0 - np.arange(16.0)  # 2 layers x 16 experts: 32 pooled (an interval), 16 per layer (none)
    exact = {"zero": np.stack([first, -first + 0.5])}
    scores = {"perfect": exact["zero"].copy(), "reversed": -exact["zero"]}
    table = score_agreement(exact, scores, layers=(0, 1), n_top=2).set_index(["score", "layer"])
    assert table.loc[("perfect", "all"), "spearman"] == pytest.approx(1.0)
    assert table.loc[("reversed", "all"), "spearman"] == pytest.approx(-1.0)
    assert (
        table.loc[("perfect", "all"), "top-n overlap"] == 2
        and table.loc[("reversed", "0"), "top-n overlap"] == 0
    )
    assert table.loc[("perfect", "all"), "chance overlap"] == pytest.approx(4 / 32)
    # no interval over experts (an expert's effect is not exact): the reason names the document one
    assert (table["interval"] == NO_EXPERT_INTERVAL).all() and "ci low" not in table.columns


def test_the_drivers_analysis_reports_the_estimate_beside_the_exact_effect(
    tiny_run_options, short_docs, tmp_path
):
    import json

    from tl_moe.pipeline import run

    docs = datasets.Dataset.from_dict({"text": list(short_docs["text"]) * 2, "domain": ["a", "b"] * 48})
    options = tiny_run_options(("drivers",), max_tokens=1200, driver_tokens=1200)
    drivers = run(options, dataset=docs)["drivers"]
    estimates, agreement = drivers.estimates, drivers.agreement
    # the estimate sits beside the exact effect of the same documents
    assert agreement.attrs["exact positions"] == agreement.attrs["estimate positions"] > 0
    pooled = agreement[(agreement["layer"] == "all") & (agreement["exact effect"] == "zero")].set_index(
        "score"
    )
    expected = weighted_spearman(
        estimates["first-order estimate"].to_numpy(), estimates["zero: exact"].to_numpy(), np.ones((1, 16))
    )[0]
    assert pooled.loc["first-order estimate", "spearman"] == pytest.approx(expected)
    # no interval over experts; the paired document bootstrap compares the estimate with REAP
    assert pooled.loc["first-order estimate", "interval"] == NO_EXPERT_INTERVAL
    paired = drivers.paired[drivers.paired["layer"] == "all"].set_index("score")
    assert set(drivers.paired["layer"]) == {
        "all",
        "0",
        "1",
        "within layers (mean)",
        "pooled − within layers (mean)",
    }
    column = "spearman with exact zeroing effect"
    # the paired ρ are on the experts routed on enough documents (the gate names those left out)
    names = [
        f"L{layer}E{expert}" for layer, expert in zip(estimates["layer"], estimates["expert"], strict=True)
    ]
    kept = ~np.isin(names, drivers.paired.attrs["left out"]) & estimates["saliency (REAP)"].notna().to_numpy()
    gated = estimates[kept]
    rho = {
        score: scipy.stats.spearmanr(gated[name], gated["zero: exact"]).statistic
        for score, name in (
            ("first-order estimate", "first-order estimate"),
            ("REAP saliency", "saliency (REAP)"),
        )
    }
    assert paired.loc["first-order estimate", column] == pytest.approx(rho["first-order estimate"])
    assert paired.loc["estimate − REAP", column] == pytest.approx(
        rho["first-order estimate"] - rho["REAP saliency"]
    )
    saved = json.loads((tmp_path / "results.json").read_text())["sections"]["drivers"]
    key = "Spearman(first-order estimate, exact zeroing effect) | all layers"
    assert saved["metrics"][key] == pytest.approx(round(expected, 4))
    assert "remove | driver − control | 95% CI" in saved["metrics"]  # the existing outputs stay
    assert len(saved["first_order_estimate"]["experts"]) == 16
    assert (tmp_path / "figures" / "drivers_estimate_vs_exact.png").exists()
    assert (tmp_path / "figures" / "drivers_effect_vs_saliency.png").exists()
