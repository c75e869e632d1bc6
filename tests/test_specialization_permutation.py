"""The document-level permutation baseline of specialization, on cases whose answer is known.

- a hand-computed case: whole documents routed to one expert, domain labels; the null's distribution
  is hypergeometric and its mean JSD is computed with scipy;
- a planted stream without specialization whose documents are clumped (in content and in routing):
  the multinomial baseline reports specialization, the permutation baseline does not (its range
  covers 0);
- a planted specialized expert: a clear excess, a small p-value;
- the document-bootstrap interval of the excess: it covers 0 on the planted no-specialization stream
  over seeds, excludes it for a planted specialized expert, and pairs trained − untrained over the same
  documents;
- the permutation count is honoured: p-values are multiples of 1 / (1 + permutations), and the
  section passes ``--permutations``;
- away from zero, on the planted stream of ``benchmarks/planted_studies.py`` (study
  ``excess_interval_coverage``, which measures percentile, basic and BCa coverage over more seeds): the
  true excess computed by hand is the excess of a large stream, and the pipeline's interval covers it in
  most of a few seeds, its estimate below mid-interval.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch

from tl_moe.analysis.specialization import specialization_scores
from tl_moe.analysis.specialization_permutation import (
    document_permutation_baseline,
    excess_intervals,
    excess_statistic,
)
from tl_moe.errors import InputError
from tl_moe.zoo.registry import checkpoint_dir

SHIPPED = all((checkpoint_dir(n) / "metadata.json").exists() for n in ("toy/moe-16x2", "toy/dense"))


def jsd_bits(p, q) -> float:
    return float(scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2)


def test_whole_documents_per_expert_give_a_hypergeometric_null_computed_by_hand():
    # 10 documents of 20 tokens, domains 0 x5 then 1 x5; expert 0 takes documents 0-4, expert 1 the rest.
    doc = torch.arange(10).repeat_interleave(20)
    domain = (doc >= 5).long()
    experts = (doc >= 5).long()[:, None, None]  # [token, layer=1, slot=1]
    result = document_permutation_baseline(experts, domain, doc, 2, 2, n_permutations=4000, seed=0)
    assert result.score[0, 0].item() == pytest.approx(jsd_bits([1, 0], [0.5, 0.5]), abs=1e-12)
    reference = specialization_scores(torch.tensor([[[100.0, 0.0], [0.0, 100.0]]], dtype=torch.float64))
    torch.testing.assert_close(result.score, reference.score)
    # Under a permutation, expert 0's 5 documents hold m ~ Hypergeom(10, 5, 5) documents of domain 0.
    m = np.arange(6)
    pmf = scipy.stats.hypergeom(10, 5, 5).pmf(m)
    expected = sum(p * jsd_bits([k / 5, 1 - k / 5], [0.5, 0.5]) for k, p in zip(m, pmf, strict=True))
    assert result.baseline[0, 0].item() == pytest.approx(expected, abs=0.01)
    # p-value: the observed split (m = 5) is reached by m in {0, 5}: 2 / C(10, 5) of the permutations.
    assert result.p_values()[0, 0].item() == pytest.approx(2 * pmf[5], abs=0.006)
    assert (result.n == 100).all()


def planted_stream(
    seed: int, specialized: bool = False, n_docs: int = 30, n_groups: int = 8, n_experts: int = 8
):
    """Documents clumped in content (Dirichlet 0.2 over groups) and in routing (Dirichlet 0.1 over
    experts), routing independent of content; with ``specialized``, layer 0 sends every token of
    group 0, and no other, to expert 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(60, 150, n_docs)
    doc = np.repeat(np.arange(n_docs), lengths)
    content = np.concatenate([rng.choice(n_groups, n, p=rng.dirichlet([0.2] * n_groups)) for n in lengths])
    routed = np.zeros((len(doc), 2, 2), dtype=np.int64)
    for layer in range(2):
        preference = rng.dirichlet([0.1] * n_experts, n_docs)
        for t, d in enumerate(doc):
            routed[t, layer] = rng.choice(n_experts, 2, replace=False, p=preference[d])
    if specialized:  # layer 0: expert 0 takes every token of group 0 and no other token
        zero = content == 0
        routed[zero & (routed[:, 0, 1] == 0), 0, 1] = routed[zero & (routed[:, 0, 1] == 0), 0, 0]
        routed[zero, 0, 0] = 0
        for slot in (0, 1):
            other = ~zero & (routed[:, 0, slot] == 0)
            free = 1 + (
                routed[other, 0, 1 - slot] % (n_experts - 1)
            )  # a nonzero expert not in the other slot
            routed[other, 0, slot] = np.where(
                free == routed[other, 0, 1 - slot], 1 + free % (n_experts - 1), free
            )
    return torch.from_numpy(routed), torch.from_numpy(content), torch.from_numpy(doc)


def multinomial_layer_excess(routed, content, n_experts=8, n_groups=8) -> np.ndarray:
    counts = torch.zeros(2, n_experts, n_groups, dtype=torch.float64)
    for layer in range(2):
        for slot in range(2):
            counts[layer].index_put_(
                (routed[:, layer, slot], content), torch.ones(len(content)).double(), accumulate=True
            )
    return specialization_scores(counts).layer_summary()["token_weighted_mean_excess"].to_numpy()


def test_no_specialization_in_clumped_documents_gives_no_permutation_excess():
    covered, perm_excess, multinomial_excess = 0, [], []
    for seed in range(10):
        routed, content, doc = planted_stream(seed, n_docs=40)
        baseline = document_permutation_baseline(routed, content, doc, 8, 8, n_permutations=19, seed=seed)
        intervals = excess_intervals(baseline, n_resamples=200, seed=seed)
        covered += int(((intervals["ci_low"] <= 0) & (0 <= intervals["ci_high"])).sum())
        perm_excess += list(baseline.layer_summary()["permutation_excess"])
        multinomial_excess += list(multinomial_layer_excess(routed, content))
    # Of 20 layer intervals (95% nominal). Measured over 40 seeds (80 layers, 500 resamples): 80 of 80,
    # the bootstrap sd 1.8x the spread of the excess over seeds: at zero excess the interval of a JSD
    # (a degenerate quadratic statistic) is conservative.
    assert covered >= 18
    # The multinomial baseline mistakes document clumping for specialization; the permutation one not.
    # Measured: multinomial 0.034 bits, permutation -0.000 (sd 0.005 over the layers).
    assert np.mean(multinomial_excess) > 0.02
    assert abs(np.mean(perm_excess)) < 0.25 * np.mean(multinomial_excess)


def test_the_bootstrap_statistic_recomputes_the_layer_excess_on_the_kept_permutations():
    routed, content, doc = planted_stream(3, n_docs=40)
    baseline = document_permutation_baseline(routed, content, doc, 8, 8, n_permutations=20, seed=0)
    statistic = excess_statistic(baseline, min_n=50)
    # All documents once: the layer summary's excess (every permutation is kept when there are 20).
    np.testing.assert_allclose(
        statistic(np.ones((1, 40)))[0], baseline.layer_summary(50)["permutation_excess"], atol=1e-9
    )
    # Document 0 drawn twice, document 1 not at all: recomputed by hand with scipy's JSD.
    weights = np.ones(40)
    weights[0], weights[1] = 2, 0
    kept = baseline.kept(50).numpy()

    def layer_mean(counts):  # [layer, expert, group] -> token-weighted mean JSD over kept experts
        out = []
        for layer in range(2):
            pooled = counts[layer].sum(0)
            n = counts[layer].sum(1)
            jsd = [
                jsd_bits(row / row.sum(), pooled / pooled.sum()) if row.sum() else 0.0
                for row in counts[layer]
            ]
            w = np.where(kept[layer], n, 0.0)
            out.append(float(np.dot(jsd, w) / w.sum()))
        return np.array(out)

    token_weight = weights[doc.numpy()]
    counts = np.zeros((2, 8, 8))
    for layer in range(2):
        for slot in range(2):
            np.add.at(counts[layer], (routed[:, layer, slot].numpy(), content.numpy()), token_weight)
    null = baseline.doc_null_counts.double().numpy()
    null_mean = np.mean([layer_mean(np.tensordot(weights, null[k], axes=1)) for k in range(len(null))], 0)
    np.testing.assert_allclose(statistic(weights[None])[0], layer_mean(counts) - null_mean, atol=1e-9)
    assert len(null) == 20 and baseline.doc_counts.sum().item() == len(doc) * 2 * 2


def test_a_planted_specialized_expert_shows_a_clear_permutation_excess():
    routed, content, doc = planted_stream(0, specialized=True, n_docs=40)
    result = document_permutation_baseline(routed, content, doc, 8, 8, n_permutations=49, seed=0)
    summary = result.layer_summary()
    assert summary.loc[0, "p_value"] == pytest.approx(1 / 50) and summary.loc[0, "p_at_floor"]
    assert result.p_values()[0, 0].item() == pytest.approx(1 / 50)
    assert result.excess[0, 0].item() > 0.5  # measured 0.77 (JSD 0.81 vs a null mean of 0.04)
    intervals = excess_intervals(result, n_resamples=300)
    assert intervals.loc[0, "ci_low"] > 0.01  # measured +0.045 [+0.03, +0.06]
    assert intervals.loc[1, "ci_low"] <= 0 <= intervals.loc[1, "ci_high"]  # layer 1 is left unspecialized


def test_p_values_have_the_resolution_of_the_permutation_count():
    routed, content, doc = planted_stream(1, n_docs=40)
    for n in (9, 29):
        result = document_permutation_baseline(routed, content, doc, 8, 8, n_permutations=n, seed=0)
        p = np.concatenate([result.p_values().flatten().numpy(), result.layer_summary()["p_value"]])
        p = p[np.isfinite(p)]
        assert result.n_permutations == n and result.p_floor == pytest.approx(1 / (n + 1))
        np.testing.assert_allclose(p * (n + 1), np.round(p * (n + 1)), atol=1e-9)
        assert p.min() >= 1 / (n + 1) - 1e-12
    with pytest.raises(InputError, match="--permutations"):
        document_permutation_baseline(routed, content, doc, 8, 8, n_permutations=0)


def test_trained_minus_untrained_is_paired_over_the_same_documents():
    routed, content, doc = planted_stream(0, specialized=True, n_docs=40)
    plain, _, _ = planted_stream(5, n_docs=40)  # other routing, same documents: no specialization
    plain = plain[: len(doc)] if len(plain) >= len(doc) else torch.cat([plain, plain])[: len(doc)]
    trained = document_permutation_baseline(routed, content, doc, 8, 8, n_permutations=19, seed=0)
    untrained = document_permutation_baseline(plain, content, doc, 8, 8, n_permutations=19, seed=1)
    frame = excess_intervals(trained, untrained, n_resamples=300).set_index(["model", "layer"])
    difference = frame.loc["trained − untrained"]
    np.testing.assert_allclose(
        difference["estimate"],
        frame.loc["trained", "estimate"].to_numpy() - frame.loc["untrained", "estimate"].to_numpy(),
    )
    assert difference.loc[0, "ci_low"] > 0.01  # the planted expert: the trained model specializes more
    assert difference.loc[1, "ci_low"] <= 0 <= difference.loc[1, "ci_high"]  # neither layer 1 does
    # Fed other documents: each model has its interval, the difference is unavailable with the reason.
    moved = document_permutation_baseline(plain, content, doc + 1000, 8, 8, n_permutations=19, seed=1)
    frame = excess_intervals(trained, moved, n_resamples=100)
    difference = frame[frame["model"] == "trained − untrained"]
    assert not difference["interval_available"].any()
    assert difference["reason"].str.contains("same documents").all()
    assert frame[frame["model"] == "untrained"]["interval_available"].all()


def test_too_few_documents_for_an_interval_gives_it_unavailable_with_the_reason():
    import dataclasses

    from tl_moe.analysis.stats import MIN_DOCUMENTS

    routed, content, doc = planted_stream(2, n_docs=max(MIN_DOCUMENTS, 40))
    full = document_permutation_baseline(routed, content, doc, 8, 8, n_permutations=9, seed=0)
    k = MIN_DOCUMENTS - 1  # the per-document counts of one document fewer than the minimum
    few = dataclasses.replace(
        full,
        n_documents=k,
        doc_ids=full.doc_ids[:k],
        doc_counts=full.doc_counts[:k],
        doc_null_counts=full.doc_null_counts[:, :k],
    )
    frame = excess_intervals(few, n_resamples=100)
    assert not frame["interval_available"].any() and frame["ci_low"].isna().all()
    assert frame["reason"].str.contains(f"at least {MIN_DOCUMENTS}").all()
    assert excess_intervals(full, n_resamples=100)["interval_available"].all()


def test_too_few_documents_is_refused_naming_the_minimum():
    doc = torch.arange(5).repeat_interleave(4)
    from tl_moe.analysis.specialization_permutation import MIN_PERMUTATION_DOCUMENTS

    with pytest.raises(InputError, match=f"at least {MIN_PERMUTATION_DOCUMENTS}"):
        document_permutation_baseline(
            torch.zeros(20, 1, 1, dtype=torch.long), doc % 2, doc, 2, 2, n_permutations=9
        )


def test_the_untrained_curve_comes_with_the_probing_sections_untrained_pass_only():
    from tl_moe.analysis import SpecializationConfig
    from tl_moe.pipeline import RunOptions
    from tl_moe.pipeline.context import RunContext
    from tl_moe.pipeline.sections.specialization import Specialization

    def models(**options):
        return {need.model for need in Specialization().needs(RunContext(RunOptions(**options)))}

    inits = {f"untrained:init{k}:toy/moe-16x2" for k in range(1, SpecializationConfig().untrained_inits)}
    # the default run has probing; the further initializations are routing-only passes
    assert models() == {"toy/moe-16x2", "untrained:toy/moe-16x2"} | inits
    one = {"specialization": SpecializationConfig(untrained_inits=1)}
    assert models(configs=one) == {"toy/moe-16x2", "untrained:toy/moe-16x2"}
    assert models(skip_untrained_null=True) == {"toy/moe-16x2"}
    assert models(analyses=("specialization", "domains")) == {"toy/moe-16x2"}  # no pass of its own


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_the_section_scores_the_stored_routing_as_the_accumulators_and_draws_the_untrained_model():
    from tl_moe.pipeline import RunOptions, run

    options = RunOptions(
        analyses=("probing", "specialization"),
        max_tokens=4000,
        batch_size=8,
        probe_ks=(1,),
        min_examples=20,
        permutations=49,
        progress=False,
    )
    results = run(options, write_report=False)
    assert "pass untrained:toy/moe-16x2 (s)" in results.timings
    each = [results.timings[f"finalize {name} (s)"] for name in ("probing", "specialization")]
    assert all(seconds >= 0 for seconds in each)  # each analysis's finalize, within the whole one
    assert sum(each) <= results.timings["finalize (s)"] + 0.15  # each rounded to 0.1 s
    spec = results["specialization"]
    assert set(spec.permutation) == set(spec.untrained) == {"routing, 50 token clusters", "routing, domains"}
    for name, baseline in spec.permutation.items():
        # Two code paths over the same tokens: stored routing per token vs the pass's count accumulators.
        torch.testing.assert_close(baseline.score, spec.measures[name].score.double(), equal_nan=True)
        torch.testing.assert_close(baseline.n, spec.measures[name].n.double())
        assert baseline.n_permutations == 49  # --permutations, not a constant of the section
    # Both measures permute the same documents: every one the 4,000 tokens reached (13 with the shipped tokenizer).
    assert len({baseline.n_documents for baseline in spec.permutation.values()}) == 1
    assert next(iter(spec.permutation.values())).n_documents >= 10
    # Fewer documents than a bootstrap interval needs: unavailable with the reason, never a number.
    from tl_moe.analysis.stats import MIN_DOCUMENTS

    frame = spec.to_frame()
    if next(iter(spec.permutation.values())).n_documents < MIN_DOCUMENTS:
        routing = frame[frame["measure"].str.startswith("routing")]
        assert not routing["permutation_interval_available"].astype(bool).any()
        assert routing["permutation_ci_low"].isna().all()
    untrained = spec.untrained_frame()
    assert set(untrained["layer"]) == {0, 1, 2, 3} and untrained["permutation_excess"].notna().all()
    assert [item.name for item in spec.figures()] == [
        "specialization_per_layer",
        "specialization_permutation_per_layer",
    ]
    frame = spec.to_frame()
    functional = frame["measure"].str.startswith("functional")
    assert frame.loc[functional, "permutation_excess"].isna().all()
    assert frame.loc[~functional, "permutation_p_value"].between(0, 1).all()


def test_the_headline_leads_with_the_weighted_permutation_excess_and_labels_the_spread():
    """Planted: a specialized routing measure, and a functional measure with no control. The headline
    quotes the routing measure's token-weighted permutation excess and its interval (the numbers of the
    interval table), says why the functional one has none, and keeps mean ± sd only as a labelled spread."""
    from tl_moe.pipeline.sections.specialization import FUNCTIONAL_NO_CONTROL, SpecializationSummary

    routed, content, doc = planted_stream(0, specialized=True, n_docs=40)
    baseline = document_permutation_baseline(routed, content, doc, 8, 8, n_permutations=19, seed=0)
    counts = baseline.doc_counts.double().sum(0)  # [layer, expert, group]
    routing, functional = "routing, 8 token clusters", "functional, 8 token clusters"
    intervals = excess_intervals(baseline, n_resamples=200)
    summary = SpecializationSummary(
        {routing: specialization_scores(counts), functional: specialization_scores(counts)},
        permutation={routing: baseline},
        intervals={routing: intervals},
    )
    lead = summary.findings()[0]
    last = intervals.iloc[-1]
    # both intervals of the same resamples: basic (the pipeline's), and percentile = basic reflected
    low, high = 2 * last["estimate"] - last["ci_high"], 2 * last["estimate"] - last["ci_low"]
    head = (
        f"{routing} {last['estimate']:+.4f}, basic [{last['ci_low']:+.4f}, {last['ci_high']:+.4f}], "
        f"percentile [{low:+.4f}, {high:+.4f}]"
    )
    assert head in lead
    assert lead.index(head) < lead.index("a spread, not an interval")  # the weighted excess leads
    spread = specialization_scores(counts).layer_summary().iloc[-1]
    assert f"{spread['mean_excess']:.3f} ± {spread['std_excess']:.3f}" in lead.split("a spread")[1]
    assert f"{functional}: no control ({FUNCTIONAL_NO_CONTROL})" in lead
    assert "above the document-permutation baseline" in summary.findings()[1]


def test_the_null_means_monte_carlo_error_and_the_intervals_diagnostics_are_recomputed_by_hand():
    """null_mean_se is the sd over the kept permutations of each layer's null score / √kept, the null
    scores recomputed from the per-document null counts with scipy's JSD; bootstrap_bias and
    interval_position come from the same interval."""
    routed, content, doc = planted_stream(3, n_docs=40)
    baseline = document_permutation_baseline(routed, content, doc, 8, 8, n_permutations=20, seed=0)
    kept = baseline.kept(50).numpy()
    null = baseline.doc_null_counts.double().numpy().sum(1)  # [permutation, layer, expert, group]

    def layer_mean(counts, layer):
        pooled = counts.sum(0)
        jsd = [jsd_bits(row / row.sum(), pooled / pooled.sum()) if row.sum() else 0.0 for row in counts]
        w = np.where(kept[layer], counts.sum(1), 0.0)
        return float(np.dot(jsd, w) / w.sum())

    scores = np.array([[layer_mean(null[k, layer], layer) for layer in range(2)] for k in range(len(null))])
    expected = scores.std(0, ddof=1) / np.sqrt(len(null))
    frame = excess_intervals(baseline, min_n=50, n_resamples=200, seed=1)
    np.testing.assert_allclose(frame["null_mean_se"], expected, rtol=1e-9)
    position = (frame["estimate"] - frame["ci_low"]) / (frame["ci_high"] - frame["ci_low"])
    np.testing.assert_allclose(frame["interval_position"], position)
    assert frame["bootstrap_bias"].notna().all() and (frame["method"] == "basic").all()
    # the default (basic) interval is the same resamples' percentile interval reflected about the estimate
    percentile = excess_intervals(baseline, min_n=50, n_resamples=200, seed=1, method="percentile")
    assert (percentile["method"] == "percentile").all()
    np.testing.assert_allclose(
        frame["ci_low"], 2 * percentile["estimate"] - percentile["ci_high"], atol=1e-12
    )
    np.testing.assert_allclose(
        frame["ci_high"], 2 * percentile["estimate"] - percentile["ci_low"], atol=1e-12
    )


def test_the_planted_excess_studys_truth_by_hand_is_the_excess_of_a_large_stream():
    """``benchmarks/planted_studies.py``'s stream (study ``excess_interval_coverage``): each layer's
    true excess, the JSD of ``s · δ + (1 − s) · uniform`` against uniform computed by hand, is what the
    permutation excess gives on 4,000 documents (its sd there is about 0.0003 bits)."""
    from planted_script import planted_studies

    studies = planted_studies()
    s = studies.EXCESS_STRENGTHS[1]
    by_hand = np.full(8, (1 - s) / 8)
    by_hand[0] += s
    m = (by_hand + 1 / 8) / 2
    kl = lambda p: float(np.sum(p * np.log2(p / m)))  # noqa: E731
    assert studies.excess_truth(s) == pytest.approx(
        0.5 * kl(by_hand) + 0.5 * kl(np.full(8, 1 / 8)), rel=1e-12
    )
    large = studies.planted_excess(7, n_docs=4000, n_permutations=4).layer_summary(50)["permutation_excess"]
    truths = [studies.excess_truth(strength) for strength in studies.EXCESS_STRENGTHS]
    np.testing.assert_allclose(large, truths, atol=0.0015)


def test_the_run_shaped_excess_truth_by_hand_is_the_excess_of_a_large_stream():
    """The study's run-shaped regime (50 groups, 16 experts, top-2): the truth by hand, recomputed here
    by enumerating the second slot's shift over every first expert and offset, and the permutation
    excess of a 3,000-document stream."""
    from planted_script import planted_studies

    studies = planted_studies()
    shape = studies.EXCESS_REGIMES["run shape"]
    groups, experts = shape.groups, shape.experts
    for s in shape.strengths:
        first = np.full((experts, groups), (1 - s) / experts)
        for g in range(groups):
            first[g % experts, g] += s
        second = np.zeros_like(first)
        for f in range(experts):
            for offset in range(experts - 1):
                second[(f + 1 + offset) % experts] += first[f] / (experts - 1)
        rates = first + second
        pool = rates.sum(0) / rates.sum()
        jsd = [scipy.spatial.distance.jensenshannon(row / row.sum(), pool, base=2) ** 2 for row in rates]
        by_hand = float(np.dot(rates.sum(1), jsd) / rates.sum())
        assert studies.excess_truth(s, shape) == pytest.approx(by_hand, rel=1e-12)
    large = studies.planted_excess(7, n_docs=3000, n_permutations=4, shape=shape).layer_summary(50)
    truths = [studies.excess_truth(strength, shape) for strength in shape.strengths]
    np.testing.assert_allclose(large["permutation_excess"], truths, atol=0.002)


def test_the_pipelines_interval_of_a_planted_excess_away_from_zero_covers_it_in_most_seeds():
    """The pipeline's basic interval (``excess_intervals``) on the study's planted stream, 20 seeds: it
    covers each layer's true excess in most seeds; the resampled excesses lie above the estimate (a
    positive bootstrap bias), so the basic interval, reflecting that lean, puts the estimate above
    mid-interval. The study measures the rates of percentile, basic and BCa over more seeds."""
    from planted_script import planted_studies

    studies = planted_studies()
    truths = np.array([studies.excess_truth(strength) for strength in studies.EXCESS_STRENGTHS])
    covered, positions, bias = np.zeros(len(truths)), [], []
    for seed in range(20):
        frame = excess_intervals(studies.planted_excess(seed), min_n=50, n_resamples=300, seed=seed)
        covered += (frame["ci_low"].to_numpy() <= truths) & (truths <= frame["ci_high"].to_numpy())
        positions.append(frame["interval_position"].to_numpy())
        bias.append(frame["bootstrap_bias"].to_numpy())
    assert (covered >= 15).all(), covered
    assert (np.median(positions, 0) > 0.5).all()
    assert (np.mean(bias, 0) > 0).all()
