"""``tl-moe plan``'s wall-time estimate: computed from measured rates (checked with planted rates and a
planted clock), refused inputs load nothing, and a real small plan prints an estimate with its basis."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import tl_moe.pipeline  # noqa: F401 (registers the analyses)
from tl_moe.cli import main
from tl_moe.pipeline import RunOptions, calibration
from tl_moe.pipeline.calibration import (
    CALIBRATION_CONCEPTS,
    CALIBRATION_UNITS,
    ProbeWork,
    calibration_tokens,
    concept_rates,
    eligible_concepts,
    eligible_work,
    estimate_times,
    held_out_gate,
    measure_fit_rate,
    measure_pass,
    probe_fit_counts,
)
from tl_moe.pipeline.plan import plan_run


def _clock(*readings: float):
    """A clock that returns ``readings`` in order (the measured interval is their difference)."""
    values = iter(readings)
    return lambda: next(values)


def test_pass_and_probing_seconds_are_the_work_over_the_measured_rates():
    options = RunOptions(
        model="toy/moe-8x2", dense_baseline="toy/dense", analyses=("probing",), max_tokens=6000
    )
    plan = plan_run(options)
    names = [model.name for model in plan.models]
    assert names == ["toy/moe-8x2", "toy/dense", "untrained:toy/moe-8x2"]
    big = calibration.CALIBRATION_MAX_ROWS
    work = [
        ProbeWork(width=64, units=10, rows=3 * big, concepts=5),
        ProbeWork(width=512, units=3, rows=100, concepts=4, held_out=True),
        ProbeWork(width=512, units=9, rows=100, concepts=0),  # fits nothing: needs no rate
    ]
    estimate = estimate_times(
        plan,
        forward_rates={"toy/moe-8x2": 1500.0, "toy/dense": 3000.0, "untrained:toy/moe-8x2": 1200.0},
        fit_rates={(64, big): 50.0, (512, 100): 20.0},  # the 64-wide rate measured on a third of the rows
        probe_work=work,
        bound_work=[dataclasses.replace(w, concepts=7) for w in work],
    )
    assert estimate.pass_seconds == {
        "toy/moe-8x2": 4.0,  # 6000 tokens / 1500 tokens/s
        "toy/dense": 2.0,
        "untrained:toy/moe-8x2": 5.0,  # the untrained null at its own measured rate
    }
    ks = len(options.probe_ks)
    by_hand = 10 * 5 * ks * 3 / 50.0 + 3 * 4 * ks / 20.0
    assert estimate.probing_seconds == pytest.approx(by_hand)
    assert estimate.probe_fits == (10 * 5 + 3 * 4) * ks
    assert estimate.held_out_fits == {"probing": 3 * 4 * ks}
    assert estimate.fits_at_most == {"probing": (10 + 3 + 9) * 7 * ks}
    assert estimate.total_seconds == pytest.approx(11.0 + by_hand)
    text = estimate.summary()
    assert "an estimate, from rates given, not measured, on cpu" in text
    assert text.splitlines()[1].split() == ["pass", "tokens", "tokens/s", "start-up", "s", "estimated", "s"]
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:5]}
    assert rows["toy/moe-8x2"] == ["6,000", "1,500", "0", "4"]  # tokens, tokens/s, start-up s, estimated s
    assert rows["untrained:toy/moe-8x2"] == ["6,000", "1,200", "0", "5"]
    assert f"50 fits/s at 64 neurons x {big:,} tokens" in text
    assert f"{(10 * 5 + 3 * 4) * ks:,} probe fits expected, {3 * 4 * ks:,} of them held-out" in text
    assert f"at most {22 * 7 * ks:,} if every unit saw every token" in text
    assert "not estimated: probing besides the probe fits (sampling, intervals)" in text
    # what the fits' estimate is known to miss, beside it and in the JSON
    caveats = [line for line in text.splitlines() if line.startswith("  caveat: ")]
    assert len(caveats) == 3 and "rare concepts" in caveats[0] and "about 2-2.5x" in caveats[1]
    assert "--workers" in caveats[2]  # the estimate is one process's; workers can shorten the wall time
    assert estimate.to_dict()["fit_caveats"] == [line.removeprefix("  caveat: ") for line in caveats]
    # a corpus that ends before --max-tokens: each pass streams what it holds
    short = estimate_times(plan, {n: 1000.0 for n in names}, tokens=1500)
    assert short.pass_seconds == dict.fromkeys(names, 1.5)
    assert "each pass streams 1,500" in short.summary()


def test_no_probing_no_probing_estimate():
    plan = plan_run(
        RunOptions(model="toy/moe-8x2", dense_baseline=None, analyses=("domains",), max_tokens=3000)
    )
    estimate = estimate_times(plan, {"toy/moe-8x2": 1000.0})
    assert estimate.pass_seconds == {"toy/moe-8x2": 3.0}
    assert estimate.probing_seconds is None and "probing" not in estimate.summary()
    assert "not estimated: the finalize of domains" in estimate.summary()
    assert "caveat" not in estimate.summary() and estimate.to_dict()["fit_caveats"] == []


def test_probe_work_of_an_moe_alone_is_its_experts_in_each_protocol():
    options = RunOptions(
        model="toy/moe-8x2",
        dense_baseline=None,
        skip_untrained_null=True,
        analyses=("probing",),
        max_tokens=8000,
        probe_layers=(1, 2),
    )
    plan = plan_run(options)
    cfg = plan.models[0].config
    assert cfg.num_experts == 8 and cfg.experts_per_token == 2
    # 2 probed layers x 8 experts, fitted by the paper protocol and the held-out arm (no dense baseline:
    # no permuted-label arm); each expert sees 8000 x 2 / 8 routed tokens.
    assert probe_fit_counts(plan, concepts=10) == [
        ProbeWork(cfg.d_expert, 16, 2000, 10),
        ProbeWork(cfg.d_expert, 16, 2000, 10, held_out=True),
    ]
    assert probe_fit_counts(plan, concepts=10, tokens=4000)[0].rows == 1000  # a corpus that ends first
    bounded = plan_run(options.replace(probe_rows_per_class=50))
    assert probe_fit_counts(bounded, concepts=5)[0].rows == 50 * 4 * 5  # N x classes x sides x concepts


def test_sparsity_family_work_is_each_other_member_in_both_protocols():
    """--sparsity-family adds every other toy MoE: its experts by the paper protocol and, against the
    dense twin, the held-out arms (the expert arm, its permuted null, the matched-count draws and their
    null at d_expert; the twin's neurons on the member's routed tokens at d_mlp; the twin's own layers
    are shared with the probing analysis, not refitted)."""
    from tl_moe.analysis.held_out_probing import ROUTED_COUNT_DRAWS

    options = RunOptions(
        model="toy/moe-8x2", dense_baseline="toy/dense", skip_untrained_null=True, max_tokens=8000
    )
    plain = plan_run(options.replace(analyses=("probing",)))
    family = plan_run(options.replace(analyses=("probing",), sparsity_family=True))
    assert "sparsity" in family.analyses and "sparsity" not in plain.analyses
    probing_work = probe_fit_counts(plain, concepts=6)
    work = probe_fit_counts(family, concepts=6)
    assert [w for w in work if w.analysis == "probing"] == probing_work
    members = {m.name: m.config for m in family.models if m.name not in ("toy/moe-8x2", "toy/dense")}
    assert sorted(members) == ["toy/moe-16x2", "toy/moe-32x2", "toy/moe-4x2"]
    d_mlp = next(m.config.d_mlp for m in family.models if m.name == "toy/dense")
    expected = []
    for cfg in members.values():
        experts = len(cfg.sparse_layers) * cfg.num_experts
        rows = 8000 * cfg.experts_per_token // cfg.num_experts
        draws = ROUTED_COUNT_DRAWS if d_mlp > cfg.d_expert else 1
        expected += [
            (cfg.d_expert, experts, rows, False),
            (cfg.d_expert, experts * (2 + 2 * draws), rows, True),
            # the twin's own layers are not refitted: the probing analysis's held-out dense arm is shared
            (d_mlp, 2 * experts, rows, True),
        ]
    got = [(w.width, w.units, w.rows, w.held_out) for w in work if w.analysis == "sparsity"]
    assert sorted(got) == sorted(expected)
    # without a dense twin the family's held-out protocol is not run: paper protocol alone
    alone = plan_run(options.replace(analyses=("probing",), sparsity_family=True, dense_baseline=None))
    assert all(not w.held_out for w in probe_fit_counts(alone, concepts=6) if w.analysis == "sparsity")
    estimate = estimate_times(
        family,
        dict.fromkeys((m.name for m in family.models), 1000.0),
        {calibration.rate_key(w): 100.0 for w in work},
        work,
    )
    assert set(estimate.fit_seconds) == {"probing", "sparsity"}
    assert "sparsity finalize, probe fits: about" in estimate.summary()


def test_held_out_fits_are_zero_when_the_run_has_too_few_documents_to_split():
    """The gate is the held-out protocol's own document split: too few documents, no held-out fit (and
    the reason is analyze's); enough, the expected fits per protocol's minimum."""
    import numpy as np
    import torch

    from tl_moe.analysis.splits import document_split
    from tl_moe.errors import InputError

    options = RunOptions(min_documents=30, min_examples=30, held_out_min_examples=15, selection_fraction=0.5)
    few = tuple(range(10))
    reason = held_out_gate(few, options)
    with pytest.raises(InputError) as refused:
        document_split(
            np.arange(10),
            (options.selection_fraction, 1 - options.selection_fraction),
            seed=options.seed,
            min_per_side=options.min_documents,
        )
    assert reason == str(refused.value)
    assert held_out_gate(tuple(range(400)), options) is None
    rates = torch.tensor([0.5, 0.02, 0.0])
    work = [ProbeWork(64, 10, 2000, 3), ProbeWork(64, 30, 2000, 3, held_out=True)]
    # paper protocol: 2000 tokens a unit -> 1000, 40, 0 positives: concepts 0 and 1 have min_examples
    # (30) of each class; held-out: the selection half's 1000 tokens -> 500, 20, 0 positives, with
    # held_out_min_examples (15) of each class for concepts 0 and 1.
    selection = int(2000 * options.selection_fraction)
    paper = eligible_concepts(rates, 2000, options.min_examples)
    held = eligible_concepts(rates, selection, options.held_out_min_examples)
    assert (paper, held) == (2, 2)
    assert eligible_concepts(rates, selection, 25) == 1  # 20 positives: below a minimum of 25
    split = eligible_work(work, rates, options, held_out_runs=True)
    assert [(w.rows, w.concepts) for w in split] == [(2000, paper), (selection, held)]
    gated = eligible_work(work, rates, options, held_out_runs=False)
    assert [w.concepts for w in gated] == [paper, 0]
    assert estimate_times(
        plan_run(RunOptions(model="toy/moe-4x2", analyses=("probing",), dense_baseline=None)),
        {"toy/moe-4x2": 1.0, "untrained:toy/moe-4x2": 1.0},
        {(64, 2000): 1.0},
        gated,
    ).held_out_fits == {"probing": 0}


def test_calibration_runs_at_most_half_the_runs_stream():
    options = RunOptions(batch_size=16, seq_len=128)
    assert calibration_tokens(options, 100_000) == 4 * 16 * 128  # a warm-up batch and three timed ones
    assert calibration_tokens(options, 6000) == 3000  # a small run: half of it
    assert calibration_tokens(options, 1200) == 1000  # never fewer than a run accepts


def test_fit_rates_are_timed_at_the_runs_own_concept_rates():
    """The timed concepts are evenly spaced quantiles of the concepts a unit is fitted for; the timed
    fits count them (a unit x a concept x a probe size)."""
    import torch

    rates = torch.tensor([0.5, 0.001, 0.2, 0.05, 0.0, 0.1, 0.3, 0.02, 0.4, 0.6, 0.7, 0.15])
    # 1000 tokens, at least 10 of each class: rates 0.01 to 0.99; 0.001 and 0.0 are not fitted
    picked = calibration.fit_rate_concepts(rates, rows=1000, min_examples=10)
    eligible = sorted(r for r in rates.tolist() if 10 <= r * 1000 <= 990)
    assert len(eligible) == 10 and len(picked) == CALIBRATION_CONCEPTS
    assert picked[0].item() == pytest.approx(eligible[0]) and picked[-1].item() == pytest.approx(eligible[-1])
    assert set(picked.tolist()) <= set(torch.tensor(eligible).tolist())
    assert calibration.fit_rate_concepts(torch.tensor([0.0, 1.0]), rows=1000, min_examples=10) is None
    ks = (1, 2)
    three = torch.tensor([0.1, 0.2, 0.3])
    assert (
        measure_fit_rate(16, 400, ks, clock=_clock(0.0, 4.0), rates=three) == CALIBRATION_UNITS * 3 * 2 / 4.0
    )


def test_rates_are_the_measured_work_over_the_clocked_interval(monkeypatch):
    ks = (1, 2, 4)
    rate = measure_fit_rate(width=16, rows=400, ks=ks, clock=_clock(10.0, 12.0))
    assert rate == CALIBRATION_UNITS * CALIBRATION_CONCEPTS * len(ks) / 2.0
    assert measure_fit_rate(width=2, rows=400, ks=(1, 4), clock=_clock(0.0, 1.0)) == (
        CALIBRATION_UNITS * CALIBRATION_CONCEPTS * 1  # k = 4 > 2 neurons is not fitted
    )

    class Context:
        options = RunOptions(max_tokens=1024)

        def model(self, name):
            return ForwardCounter()

    calls = []

    def three_batches(*args, observers):
        """A pass of three batches (400, 300 and 300 real tokens), each stamped by the calibration clock."""
        calls.append(args)
        (clock,) = observers.values()
        for n in (400, 300, 300):
            clock.update({}, type("Meta", (), {"n_tokens": n})())
        return {}

    monkeypatch.setattr("tl_moe.pipeline.runner._collect_model", three_batches)
    # start 3.0; batches end at 5.0 (the warm-up, start-up included), 6.0, 7.0; the pass ends at 7.5
    rate, collected = measure_pass(Context(), "m", ["spec"], clock=_clock(3.0, 5.0, 6.0, 7.0, 7.5))
    assert rate.tokens_per_second == 600 / 2.0  # the two batches after the warm-up
    assert rate.overhead_seconds == pytest.approx(4.5 - 1000 / 300)  # the pass's rest: start-up, finalize
    assert rate.seconds(3000) == pytest.approx(rate.overhead_seconds + 10.0)
    assert calls and calls[0][1:] == ("m", ["spec"], None)  # the pass ran, writing nothing
    # one batch: no warm-up to leave out, the whole pass's rate
    assert calibration.pass_rate(0.0, 4.0, [3.0], [1000]) == calibration.PassRate(250.0, 0.0)
    assert calibration.pass_rate(0.0, 2.0, [], []).tokens_per_second == 0.5  # nothing clocked: 1 token


class ForwardCounter:
    """A model that counts its forwards (and has one parameter, on the CPU)."""

    def __init__(self):
        import torch

        self.weight, self.forwards = torch.nn.Parameter(torch.zeros(1)), []

    def parameters(self):
        return iter([self.weight])

    def __call__(self, ids, **kwargs):
        self.forwards.append(tuple(ids.shape))


def test_concepts_probed_are_those_with_enough_expected_positives_and_negatives():
    import torch

    labels = torch.zeros(1000, 4, dtype=torch.bool)
    labels[:10, 0] = True  # rate 0.01
    labels[:500, 1] = True  # 0.5
    labels[:, 2] = True  # 1.0: no negatives
    stored = type("Stored", (), {"labels": labels})()
    rates = concept_rates({"spec": stored, "other": 3})
    assert rates.tolist() == pytest.approx([0.01, 0.5, 1.0, 0.0])
    # A unit seeing 2000 tokens expects 20, 1000, 2000 and 0 positives: with at least 10 of each class,
    # concepts 0 and 1 are probed; with at least 30, concept 1 alone.
    assert eligible_concepts(rates, rows=2000, min_examples=10) == 2
    assert eligible_concepts(rates, rows=2000, min_examples=30) == 1
    assert concept_rates({"spec": object()}) is None


def test_refused_plan_loads_and_calibrates_nothing(monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("calibrated a refused run")

    monkeypatch.setattr(calibration, "calibrate", never)
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "toy/moe-4x2", "--seq-len", "100000"])
    assert exit_info.value.code == 2
    assert "--seq-len 100000" in capsys.readouterr().err


def test_a_small_plan_measures_and_prints_a_time_without_progress_bars(capsys, tmp_path):
    import json
    import math

    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    main(
        [
            "plan",
            "toy/moe-4x2",
            "--analyses",
            "probing",
            "--dense-baseline",
            "none",
            "--max-tokens",
            "2000",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--json",
            str(tmp_path / "plan.json"),
        ]
    )
    captured = capsys.readouterr()
    out = captured.out
    assert "It fits in the memory available." in out
    estimate = out[out.index("Estimated wall time") :]
    record = json.loads((tmp_path / "plan.json").read_text())["time"]
    calibrated = record["basis"]["calibration_tokens"]
    assert 0 < calibrated <= 1000  # half the run's 2,000 tokens
    assert (
        f"an estimate, from a calibration of {calibrated:,} tokens per pass, the median batch after a warm-up forward and batch, "
        "on cpu (float32, 1 CPU thread(s))" in estimate
    )
    assert [p["pass"] for p in record["passes"]] == ["toy/moe-4x2", "untrained:toy/moe-4x2"]
    for row in record["passes"]:
        assert 0 < row["estimated_seconds"] < math.inf and 0 < row["tokens_per_second"] < math.inf
        assert row["overhead_seconds"] >= 0 and row["tokens"] == 2000
        assert row["estimated_seconds"] == pytest.approx(
            row["overhead_seconds"] + row["tokens"] / row["tokens_per_second"]
        )
        assert row["pass"] in estimate and f"{row['tokens_per_second']:,.0f}" in estimate
    probing = record["probe_fits"]["probing"]
    assert 0 < probing["estimated_seconds"] < math.inf and probing["fits"] > 0
    assert record["total_seconds"] == pytest.approx(
        sum(p["estimated_seconds"] for p in record["passes"]) + probing["estimated_seconds"]
    )
    assert not (tmp_path / "out").exists()  # no pass of the run itself: nothing written
    assert "probing finalize, probe fits: about" in estimate and "fits/s at" in estimate
    # 2000 tokens reach a handful of documents: the held-out protocol cannot split them, as analyze says
    assert (
        "0 of them held-out" in estimate and "held-out protocol unavailable, so it makes 0 fits" in estimate
    )
    # the models' loading bars (weights; the untrained null's shards) stay out of plan's output
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err
    assert hf_logging.is_progress_bar_enabled()  # as they were after


def test_calibration_times_each_pass_on_its_own_model_at_most_half_the_run(monkeypatch):
    """The untrained null's pass is timed on the untrained model with its own accumulators, and each
    short pass streams the capped calibration budget (counted in real tokens)."""
    calls = []
    real = calibration.measure_pass

    def spy(context, name, specs, clock=None, tokens=None):
        calls.append((name, tuple(specs), context.options.max_tokens, tokens))
        return real(context, name, specs, tokens=tokens)

    monkeypatch.setattr(calibration, "measure_pass", spy)
    options = RunOptions(
        model="toy/moe-4x2",
        analyses=("probing",),
        dense_baseline=None,
        max_tokens=3000,
        batch_size=16,
        seq_len=64,
        threads=1,
    )
    plan = plan_run(options)
    estimate = calibration.calibrate(plan)
    names = [name for name, *_ in calls]
    assert names == ["toy/moe-4x2", "untrained:toy/moe-4x2"]  # the null measured, not copied
    specs = dict((name, s) for name, s, *_ in calls)
    assert specs["untrained:toy/moe-4x2"] == tuple(plan_needs(plan)["untrained:toy/moe-4x2"])
    assert {budget for *_, budget, _ in calls} == {calibration_tokens(options, 3000)} == {1500}
    assert all(0 < tokens <= 1500 for *_, tokens in calls)
    assert set(estimate.forward_rates) == set(names)


def plan_needs(plan):
    from tl_moe.pipeline.context import RunContext
    from tl_moe.pipeline.runner import _chosen_analyses, _needs_by_model

    context = RunContext(plan.options)
    return _needs_by_model(context, _chosen_analyses(plan.options, None))


def test_a_tiny_corpus_is_warned_about_as_analyze_warns_and_planned_at_its_own_size(tmp_path):
    """Two short documents: plan relays analyze's small-corpus warning (same text) and estimates each
    pass over the tokens the corpus holds, not --max-tokens."""
    import warnings

    import datasets

    from tl_moe.pipeline import run

    corpus = datasets.Dataset.from_dict(
        {"text": ["the cat sat on the mat", "a dog ran"], "domain": ["a", "b"], "split": ["validation"] * 2}
    )
    options = RunOptions(
        model="toy/moe-4x2",
        corpus=corpus,
        analyses=("domains",),
        dense_baseline=None,
        skip_untrained_null=True,
        max_tokens=2000,
        threads=1,
        progress=False,
        out=str(tmp_path / "out"),
    )
    with warnings.catch_warnings(record=True) as planned:
        warnings.simplefilter("always")
        estimate = calibration.calibrate(plan_run(options))
    with warnings.catch_warnings(record=True) as analyzed:
        warnings.simplefilter("always")
        run(options, write_report=False)
    small = [str(w.message) for w in planned if "far fewer than --max-tokens 2000" in str(w.message)]
    assert len(small) == 1 and small[0] in {str(w.message) for w in analyzed}
    assert estimate.tokens is not None and estimate.tokens < 100  # the corpus's tokens, BOS included
    rate = estimate.forward_rates["toy/moe-4x2"]
    assert estimate.pass_seconds["toy/moe-4x2"] == pytest.approx(estimate.tokens / rate)


def test_plan_relays_the_drivers_warning_of_fewer_than_30_report_documents():
    """A drivers run whose edited forwards reach few documents: plan prints analyze's warning, the one
    the drivers' own budget check gives for these inputs."""
    import warnings

    from tl_moe.pipeline.checks import check_driver_budget
    from tl_moe.pipeline.context import RunContext
    from tl_moe.pipeline.runner import _chosen_analyses

    options = RunOptions(
        model="toy/moe-4x2",
        analyses=("drivers",),
        dense_baseline=None,
        max_tokens=3000,
        driver_tokens=1000,
        threads=1,
    )
    context = RunContext(options)
    with warnings.catch_warnings(record=True) as direct:
        warnings.simplefilter("always")
        check_driver_budget(
            context.dataset,
            context.model(options.model).tokenizer,
            seq_len=options.seq_len,
            batch_size=options.batch_size,
            max_tokens=options.max_tokens,
            driver_tokens=options.driver_tokens,
        )
    expected = [str(w.message) for w in direct]
    assert len(expected) == 1 and "intervals need 30" in expected[0]
    with warnings.catch_warnings(record=True) as planned:
        warnings.simplefilter("always")
        with calibration.quiet_loading():
            calibration.relay_run_warnings(RunContext(options), _chosen_analyses(options, None))
    assert expected[0] in [str(w.message) for w in planned]


def _injected(max_tokens: int, **changes):
    """toy/moe-4x2's probing run estimated at injected rates: 2,000 tokens/s and 100 fits/s."""
    options = RunOptions(
        model="toy/moe-4x2",
        analyses=("probing",),
        dense_baseline=None,
        skip_untrained_null=True,
        max_tokens=max_tokens,
        threads=1,
        **changes,
    )
    plan = plan_run(options)
    return plan, calibration.calibrate(plan, forward_rates={"toy/moe-4x2": 2000.0}, fit_rate=100.0)


def test_probe_fits_at_injected_rates_are_the_units_concepts_and_ks_counted_by_hand():
    """toy/moe-4x2 alone (no dense baseline, no untrained null), 30,000 tokens (enough documents for the
    held-out split): its 4 layers x 4 experts are fitted by the paper protocol and by the held-out
    expert arm (no permuted arm without a dense baseline), every concept (no rates measured) at every
    probe size; each fit costs 1/100 s at the injected rate."""
    from tl_moe.data.concepts import TokenConceptLabeler, concepts_for_corpus

    plan, estimate = _injected(30_000)
    options = plan.options
    concepts = len(TokenConceptLabeler(concepts_for_corpus(options.corpus)).concept_names)
    n_ks = len(options.config("probing").ks)
    layers, experts = 4, 4
    assert (plan.models[0].config.n_layers, plan.models[0].config.num_experts) == (layers, experts)
    by_hand = 2 * layers * experts * concepts * n_ks  # two protocols
    assert estimate.held_out_unavailable is None
    assert estimate.fits == {"probing": by_hand} and estimate.held_out_fits == {"probing": by_hand // 2}
    assert estimate.fit_seconds["probing"] == pytest.approx(by_hand / 100.0)
    assert estimate.calibration_tokens is None and "rates given, not measured" in estimate.summary()
    # a planted "no held-out" case: 3,000 tokens reach too few documents to split, so half the fits go
    _, few = _injected(3_000)
    assert few.held_out_unavailable is not None and few.fits == {"probing": by_hand // 2}


def test_doubling_max_tokens_doubles_each_pass_estimate_at_fixed_rates():
    """At an injected throughput the pass estimate is tokens / rate: twice the tokens, twice the time;
    a pass's measured start-up is paid once."""
    small_plan, small = _injected(6_000)
    large_plan, large = _injected(12_000)
    assert small.pass_seconds["toy/moe-4x2"] == pytest.approx(6_000 / 2000.0, rel=0.01)
    assert large.pass_seconds["toy/moe-4x2"] == pytest.approx(2 * small.pass_seconds["toy/moe-4x2"], rel=0.01)
    with_start_up = {"toy/moe-4x2": calibration.PassRate(2000.0, 1.5)}
    once = estimate_times(small_plan, with_start_up).pass_seconds["toy/moe-4x2"]
    twice = estimate_times(large_plan, with_start_up).pass_seconds["toy/moe-4x2"]
    assert (once, twice) == (pytest.approx(1.5 + 3.0), pytest.approx(1.5 + 6.0))


def test_plan_refuses_a_json_path_it_cannot_write_in_one_line_before_calibrating(
    monkeypatch, capsys, tmp_path
):
    def never(*args, **kwargs):
        raise AssertionError("calibrated a refused run")

    monkeypatch.setattr(calibration, "calibrate", never)
    base = ["plan", "toy/moe-4x2", "--analyses", "domains", "--dense-baseline", "none", "--threads", "1"]
    missing = _refusal([*base, "--json", str(tmp_path / "no" / "plan.json")], capsys)
    assert "--json" in missing and "in a folder that does not exist; accepted: a file path" in missing
    folder = _refusal([*base, "--json", str(tmp_path)], capsys)
    assert "is a folder; accepted: a file path in an existing folder." in folder
    new_folder = _refusal([*base, "--json", f"{tmp_path / 'newdir'}/"], capsys)
    assert "is a folder; accepted" in new_folder and not (tmp_path / "newdir").exists()
    assert "is empty; accepted" in _refusal([*base, "--json", ""], capsys)
    if not Path("/proc/self").is_dir():  # a folder no one can create files in (Linux's /proc)
        return
    unwritable = _refusal([*base, "--no-calibrate", "--json", "/proc/plan.json"], capsys)
    assert "in a folder that cannot be written; accepted" in unwritable and "\n" not in unwritable.strip()
    out = tmp_path / "report"
    same = _refusal([*base, "--out", str(out), "--json", str(out)], capsys)
    assert "is the run's --out folder; accepted" in same and not out.exists()


def test_no_calibrate_writes_the_memory_plan_alone(capsys, tmp_path):
    import json

    path = tmp_path / "plan.json"
    main(
        ["plan", "toy/moe-4x2", "--analyses", "domains", "--dense-baseline", "none", "--no-calibrate"]
        + ["--json", str(path)]
    )
    record = json.loads(path.read_text())
    assert record["time"] is None and "Estimated wall time" not in capsys.readouterr().out
    (planned,) = record["memory"]["passes"]
    assert planned["model"] == "toy/moe-4x2" and planned["parameters"] > 0
    assert record["memory"]["peak bytes"] > 0


def test_no_calibration_prints_memory_alone(capsys):
    main(["plan", "toy/moe-4x2", "--analyses", "domains", "--dense-baseline", "none", "--no-calibration"])
    out = capsys.readouterr().out
    assert "Estimated peak memory" in out and "Estimated wall time" not in out


def _top_k_all_folder(tmp_path):
    """toy/moe-4x2 (4 experts a layer) with its tokens routed to all 4, and its tokenizer beside it."""
    import json
    import shutil

    from tl_moe.zoo.registry import checkpoint_dir
    from tl_moe.zoo.tokenizer import load_tokenizer

    folder = tmp_path / "top_k_all"
    shutil.copytree(checkpoint_dir("toy/moe-4x2"), folder)
    load_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_experts_per_tok": config["num_experts"]}))
    return folder


def _refusal(argv, capsys, *, loads: bool = False) -> str:
    """The one error line ``tl-moe ARGV`` exits with (rc 2), nothing printed on stdout (``loads``: a run that
    loads weights first, whose progress bars precede that line on stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    if loads:
        return lines[-1]
    assert captured.out == ""  # refused before the memory plan is printed
    assert len(lines) == 1, captured.err
    return lines[0]


# (the arguments analyze and plan share, plan's own, a piece of the refusal)
PLAN_REFUSALS = {
    "device banana": (["toy/moe-4x2", "--device", "banana"], [], "--device 'banana'"),
    "device mps": (["toy/moe-4x2", "--device", "mps"], [], "--device 'mps'"),
    "device cuda": (["toy/moe-4x2", "--device", "cuda"], [], "--device 'cuda'"),
    "device cuda:0 without calibration": (
        ["toy/moe-4x2", "--device", "cuda:0"],
        ["--no-calibration"],
        "'cuda:0'",
    ),
    "an MoE as dense baseline": (
        ["toy/moe-4x2", "--dense-baseline", "toy/moe-16x2"],
        [],
        "accepted: a dense model",
    ),
    "a missing model folder": (["/no/such/dir"], [], "does not exist; accepted:"),
    "a dense model": (["toy/dense"], ["--no-calibration"], "is a dense model (olmo); accepted: an MoE model"),
    "a file as --out": (["toy/moe-4x2", "--out", "README.md"], [], "is a file, not a folder"),
}


@pytest.mark.parametrize("case", sorted(PLAN_REFUSALS))
def test_plan_refuses_what_analyze_refuses_in_the_same_line_before_calibrating(
    case, monkeypatch, capsys, tmp_path
):
    import torch

    if case.startswith("device cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if case == "device mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")

    def never(*args, **kwargs):
        raise AssertionError("calibrated a refused run")

    monkeypatch.setattr(calibration, "calibrate", never)
    arguments, plan_only, piece = PLAN_REFUSALS[case]
    if "--out" not in arguments:
        arguments = [*arguments, "--out", str(tmp_path / "out")]
    planned = _refusal(["plan", *arguments, *plan_only, "--threads", "1"], capsys)
    analyzed = _refusal(["analyze", *arguments, "--threads", "1"], capsys)
    assert piece in planned
    assert planned == analyzed
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("analysis", ["drivers", "associations", "reweighting"])
def test_plan_refuses_a_model_whose_tokens_use_every_expert_as_analyze_does(
    analysis, monkeypatch, capsys, tmp_path
):
    def never(*args, **kwargs):
        raise AssertionError("calibrated a refused run")

    monkeypatch.setattr(calibration, "calibrate", never)
    folder = _top_k_all_folder(tmp_path)
    arguments = [
        str(folder),
        "--dense-baseline",
        "none",
        "--analyses",
        analysis,
        "--out",
        str(tmp_path / "out"),
    ]
    planned = _refusal(["plan", *arguments, "--no-calibration"], capsys)
    assert "routes each token to 4 of its 4 experts" in planned
    assert "num_experts_per_tok < num_experts" in planned
    assert _refusal(["plan", *arguments], capsys) == planned  # with calibration too, calibrating nothing
    if analysis == "associations":  # analyze loads the model and corpus before this check: once is enough
        assert (
            _refusal(["analyze", *arguments, "--threads", "1", "--max-tokens", "2000"], capsys, loads=True)
            == planned
        )


def test_plan_refuses_probe_sizes_analyze_refuses_before_the_memory_table(monkeypatch, capsys):
    """--probing.ks above an expert's neurons: plan (even --no-calibrate) refuses in analyze's words
    before it prints a memory table; the default sizes are fitted to the experts, never refused."""
    from transformers import AutoConfig

    from tl_moe.errors import InputError
    from tl_moe.models.introspect import moe_config
    from tl_moe.pipeline.plan import meta_model
    from tl_moe.pipeline.validation import check_probe_ks
    from tl_moe.zoo.registry import checkpoint_path

    neurons = moe_config(meta_model(AutoConfig.from_pretrained(checkpoint_path("toy/moe-4x2")))).d_expert
    base = ["plan", "toy/moe-4x2", "--analyses", "probing", "--threads", "1", "--no-calibrate"]
    line = _refusal([*base, "--probing.ks", f"1,{neurons + 1}"], capsys)
    with pytest.raises(InputError) as analyze_says:
        check_probe_ks((1, neurons + 1), neurons)
    assert line == f"tl-moe: error: {analyze_says.value}"
    main(base)
    assert "It fits in the memory available." in capsys.readouterr().out


def test_the_command_line_prints_the_package_warnings_as_one_line():
    """A warning the package raises (here the small-corpus one, from its module) prints as one
    ``tl-moe: warning:`` line, with no path, category or echoed source line; another package's keeps
    Python's format."""
    import subprocess
    import sys

    script = (
        "import warnings, tl_moe.cli as cli\n"
        "from tl_moe.pipeline.checks import corpus\n"
        "def stats(args):\n"
        "    warnings.warn_explicit('the corpus is small', UserWarning, corpus.__file__, 160)\n"
        "    warnings.warn_explicit('theirs', UserWarning, '/elsewhere/other.py', 3)\n"
        "cli._cmd_corpus_stats = stats\n"
        "cli.main(['corpus', 'stats'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "tl-moe: warning: the corpus is small"
    assert lines[1] == "/elsewhere/other.py:3: UserWarning: theirs"
