"""Driver experts: per-document effects agree with ExpertEffects, a planted harmful expert ranks last,
controls are frequency-matched, intervals agree with scipy, shards merge exactly."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import tl_moe
from tl_moe.analysis.drivers import (
    DocumentEffects,
    ExpertSaliency,
    _bootstrap_ratio,
    document_half,
    driver_report,
)
from tl_moe.collect import ExpertEffects, collect

PLANTED_LAYER, PLANTED_EXPERT = 1, 3


@pytest.fixture(scope="module")
def short_docs():
    generator = torch.Generator().manual_seed(1)
    texts = []
    for _ in range(64):
        words = torch.randint(
            3, 90, (int(torch.randint(6, 14, (1,), generator=generator)),), generator=generator
        )
        texts.append(" ".join(f"w{w}" for w in words.tolist()))
    return datasets.Dataset.from_dict({"text": texts, "domain": ["a", "b"] * 32})


@pytest.fixture(scope="module")
def planted(tiny_model_dir):
    """The tiny OLMoE made sensitive (unembedding x 10, so logits are far from uniform) with one expert
    whose output is blown up 3000x: zeroing that expert must move the loss most, on both halves."""
    model = tl_moe.load(tiny_model_dir("olmoe"), device="cpu")
    hf = model.original_model
    experts = hf.model.layers[PLANTED_LAYER].mlp.experts
    with torch.no_grad():
        hf.lm_head.weight.mul_(10.0)
        experts.down_proj[PLANTED_EXPERT] *= 3000.0
    return model


def _pass(model, corpus, **kwargs):
    cfg = model.moe_cfg
    accumulators = {
        "docs": DocumentEffects(cfg.sparse_layers, cfg.num_experts, ("remove", "zero"), max_tokens=10_000),
        "saliency": ExpertSaliency(cfg.sparse_layers, cfg.num_experts),
        "reference": ExpertEffects(layers=list(cfg.sparse_layers), kinds=("remove", "zero")),
    }
    return collect(model, corpus, accumulators, batch_size=8, seq_len=16, progress=False, **kwargs)


def test_document_sums_equal_expert_effects_and_the_planted_expert_ranks_last(planted, short_docs):
    results = _pass(planted, short_docs)
    docs, reference = results["docs"], results["reference"]
    assert torch.allclose(docs.sums.sum(-1), reference.loss_change.sum(-1), atol=1e-9)
    assert int(docs.counts.sum()) == int(reference.n_tokens.sum())
    experts, comparison = driver_report(
        docs, results["saliency"], n_drivers=3, n_resamples=200, min_documents=5
    )
    row = experts.set_index(["layer", "expert"]).loc[(PLANTED_LAYER, PLANTED_EXPERT)]
    # zeroing touches only the expert's own tokens (removal also re-weights the others, which on a
    # softmax router without renormalization amplifies the planted expert when a neighbour goes)
    for half in ("selection", "report"):
        effects = experts[f"zero: effect ({half})"].abs()
        assert abs(row[f"zero: effect ({half})"]) == effects.max()
        assert abs(row[f"zero: effect ({half})"]) > 5 * effects.median()
    # drivers are the largest removal effects on the selection half
    selection = experts["remove: effect (selection)"]
    assert set(experts.index[experts["driver"]]) == set(selection.nlargest(3).index)
    assert row["driver"] == (row["remove: effect (selection)"] >= selection.nlargest(3).min())
    # each driver (strongest first) gets the closest-share non-driver of its layer not taken yet
    taken = set()
    for _, driver in (
        experts[experts["driver"]].sort_values("remove: effect (selection)", ascending=False).iterrows()
    ):
        control = experts[experts["control for"] == f"L{driver['layer']}E{driver['expert']}"]
        assert len(control) == 1 and int(control["layer"].iloc[0]) == driver["layer"]
        free = experts[
            (experts["layer"] == driver["layer"]) & ~experts["driver"] & ~experts.index.isin(taken)
        ]
        gap = (free["routed share (selection)"] - driver["routed share (selection)"]).abs()
        assert control.index[0] == gap.idxmin()
        taken.add(control.index[0])
    assert set(comparison["group"]) == {"driver experts", "matched controls", "driver − control"}
    assert (comparison["ci low"] <= comparison["mean effect (nats/token, report half)"]).all()


def test_shards_merge_to_the_single_pass(planted, short_docs):
    whole = _pass(planted, short_docs)["docs"]
    cfg = planted.moe_cfg
    parts = []
    for position in range(2):
        acc = DocumentEffects(cfg.sparse_layers, cfg.num_experts, ("remove", "zero"), max_tokens=10_000)
        collect(
            planted, short_docs, {"d": acc}, batch_size=8, seq_len=16, progress=False, shard=(position, 2)
        )
        parts.append(acc)
    merged = parts[0].merge(parts[1]).finalize()
    assert torch.allclose(merged.sums, whole.sums, atol=1e-9) and torch.equal(merged.counts, whole.counts)


def test_the_token_budget_stops_the_edited_forwards(planted, short_docs):
    cfg = planted.moe_cfg
    capped = DocumentEffects(cfg.sparse_layers, cfg.num_experts, ("remove",), max_tokens=100)
    collect(planted, short_docs, {"d": capped}, batch_size=8, seq_len=16, progress=False)
    assert 100 <= capped.seen < 100 + 8 * 16  # stops after the batch that crosses the budget
    assert int(capped.counts.sum()) < int(_pass(planted, short_docs)["docs"].counts.sum())


def test_the_document_bootstrap_matches_scipy():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(0)
    counts = rng.integers(5, 30, size=40).astype(float)
    sums = (rng.normal(0.1, 0.3, size=40) * counts)[None]
    estimate, low, high, _ = _bootstrap_ratio(sums, counts, n_resamples=4000, seed=1)
    reference = bootstrap(
        (sums[0], counts),
        lambda s, c: s.sum() / c.sum(),
        paired=True,
        vectorized=False,
        n_resamples=4000,
        method="percentile",
        random_state=2,
    ).confidence_interval
    assert estimate[0] == pytest.approx(sums.sum() / counts.sum())
    assert low[0] == pytest.approx(reference.low, abs=0.02) and high[0] == pytest.approx(
        reference.high, abs=0.02
    )


def test_document_halves_are_balanced_and_stable():
    halves = document_half(torch.arange(10_000))
    assert abs(float(halves.float().mean()) - 0.5) < 0.02
    assert torch.equal(document_half(torch.tensor([7, 7, 123])), document_half(torch.tensor([7, 7, 123])))


def test_the_drivers_analysis_runs_through_the_pipeline_and_reports(tiny_run_options, short_docs, tmp_path):
    import json

    from tl_moe.pipeline import run

    options = tiny_run_options(("drivers",))
    results = run(options, dataset=short_docs)
    drivers = results["drivers"]
    assert int(drivers.experts["driver"].sum()) == 3
    assert set(drivers.comparison["group"]) == {"driver experts", "matched controls", "driver − control"}
    saved = json.loads((tmp_path / "results.json").read_text())["sections"]["drivers"]["metrics"]
    assert "remove | driver − control | 95% CI" in saved and saved["report documents"] >= 10
    assert any("Driver experts" in finding for finding in results.findings)
    assert (tmp_path / "figures" / "drivers_effect_vs_saliency.png").exists()
    # REAP's ρ carries its document interval, or says why it has none (never a bare number).
    (finding,) = [f for f in results.findings if "Driver experts" in f]
    rho = finding.split("Spearman ρ = ")[1]
    interval = drivers.saliency_interval
    assert interval is not None and interval.estimate == pytest.approx(drivers.saliency_spearman)
    if interval.available:
        assert rho.startswith(f"{drivers.saliency_spearman:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}]")
    else:
        assert rho.startswith(f"{drivers.saliency_spearman:+.2f} (no interval: {interval.reason})")


def test_with_the_domains_analysis_drivers_are_compared_with_domain_experts(
    tiny_run_options, short_docs, tmp_path
):
    from tl_moe.analysis.driver_domain import compare_drivers_with_domain_experts
    from tl_moe.pipeline import run

    options = tiny_run_options(("domains", "drivers"))
    results = run(options, dataset=short_docs)
    drivers, domains = results["drivers"], results["domains"]
    expected = compare_drivers_with_domain_experts(drivers.experts, domains.experts.to_frame(), seed=0)
    overlap_columns = ["layer", "experts", "drivers", "domain experts", "both", "expected both", "overlap p"]
    pd.testing.assert_frame_equal(  # the overlap test does not depend on the per-document routing
        drivers.domain_overlap.table[overlap_columns], expected.table[overlap_columns]
    )
    # ρ: the domain score on the selection half against the removal effect (report half), over the
    # experts that pass the document gate, as scipy computes it from the experts frame
    compared = drivers.domain_overlap.experts
    table = drivers.domain_overlap.table
    assert (table["spearman domain score"] == "domain score (selection half)").all()
    gated = compared[compared["in ρ"]]
    rho = scipy.stats.spearmanr(gated["domain score (selection half)"], gated["remove: effect (report)"])
    all_row = table.set_index("layer").loc["all"]
    assert all_row["spearman experts"] == len(gated)
    if all_row["spearman unavailable"] == "":
        assert all_row["spearman"] == pytest.approx(rho.statistic)
    assert (table["spearman documents"] > 0).all()
    has_interval = table["spearman ci low"].notna()
    assert (table.loc[~has_interval, "spearman interval unavailable"] != "").all()
    assert (table.loc[has_interval, "spearman interval unavailable"] == "").all()
    scored = domains.experts.to_frame()
    scored = scored[~scored["insufficient_tokens"]]
    total = drivers.domain_overlap.table.set_index("layer").loc["all"]
    assert total["experts"] == len(scored)
    assert total["domain experts"] == int(scored["domain_expert"].sum())
    assert any("Drivers vs domain experts" in finding for finding in results.findings)
    assert (tmp_path / "figures" / "drivers_vs_domain_experts.png").exists()


def test_per_document_saliency_adds_up_to_the_half_totals_and_merges_across_shards(planted, short_docs):
    from tl_moe.analysis.drivers import document_half

    whole = _pass(planted, short_docs)["saliency"]
    half = document_half(torch.arange(whole.doc_routed.shape[-1]))
    for h in (0, 1):
        on = (half == h).double()
        torch.testing.assert_close(whole.doc_routed @ on, whole.routed[h].double())
        torch.testing.assert_close(whole.doc_saliency @ on, whole.saliency[h], rtol=1e-9, atol=1e-9)
    cfg = planted.moe_cfg
    parts = []
    for position in range(2):
        acc = ExpertSaliency(cfg.sparse_layers, cfg.num_experts)
        collect(
            planted, short_docs, {"s": acc}, batch_size=8, seq_len=16, progress=False, shard=(position, 2)
        )
        parts.append(acc)
    merged = parts[0].merge(parts[1]).finalize()
    size = whole.doc_routed.shape[-1]
    torch.testing.assert_close(merged.doc_routed[..., :size], whole.doc_routed)
    torch.testing.assert_close(merged.doc_saliency[..., :size], whole.doc_saliency, rtol=1e-9, atol=1e-9)
