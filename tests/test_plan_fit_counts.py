"""``tl-moe plan``'s probe-fit count and fit rate against the fits the probing analysis really makes.

The fits made are counted where they happen: every call of the logistic solver
(:func:`~tl_moe.analysis.probing_math.fit_logistic_nested`, as :mod:`tl_moe.analysis.probing` calls it)
fits its problems once per probe size. The plan's count comes from the protocols' own decisions on the
same stored tokens, with no fit made; planted stores have rare concepts and uneven routing, so that
many (unit, concept) pairs are skipped for too few examples.
"""

from __future__ import annotations

import pytest
import torch

import tl_moe.pipeline  # noqa: F401 (registers the analyses)
from tl_moe.analysis import HeldOutProbing, PaperProtocol, ProbingConfig, Statistics, StoredTokens
from tl_moe.analysis import probing as probing_module
from tl_moe.analysis.probe_work import count_probing_fits, repeat_tokens
from tl_moe.models.hook_names import get_act_name
from tl_moe.pipeline import RunOptions, calibration

N_DOCS, TOKENS_PER_DOC, EXPERTS, D_EXPERT, D_MLP = 90, 30, 4, 8, 16


@pytest.fixture
def solver_fits(monkeypatch):
    """A list that receives, per solver call, the fits it made (problems x probe sizes)."""
    made: list[int] = []
    real = probing_module.fit_logistic_nested

    def counting(x, y, mask, ks, **kwargs):
        made.append(x.shape[0] * len(ks))
        return real(x, y, mask, ks, **kwargs)

    monkeypatch.setattr(probing_module, "fit_logistic_nested", counting)
    return made


def _stored(rows: dict[str, torch.Tensor], labels: torch.Tensor) -> StoredTokens:
    n = labels.shape[0]
    return StoredTokens(
        token_index=torch.arange(n),
        input_ids=torch.arange(n) % 97,
        domain=torch.zeros(n, dtype=torch.long),
        labels=labels,
        rows=rows,
        domain_names=("prose",),
        concept_names=("common", "rare", "rarer", "scarce"),
        doc_index=torch.arange(N_DOCS).repeat_interleave(TOKENS_PER_DOC),
    )


def planted(seed: int = 0) -> tuple[StoredTokens, StoredTokens, StoredTokens]:
    """MoE, dense and untrained stored tokens of one text: one sparse layer, top-1 routing that sends
    most tokens to expert 0, and concepts from common (0.3) to scarce (0.004)."""
    g = torch.Generator().manual_seed(seed)
    n = N_DOCS * TOKENS_PER_DOC
    labels = torch.rand(n, 4, generator=g) < torch.tensor([0.3, 0.03, 0.01, 0.004])
    expert = torch.multinomial(torch.tensor([0.6, 0.25, 0.1, 0.05]), n, replacement=True, generator=g)[
        :, None
    ]

    def moe(values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {get_act_name("expert_post", 0): values.half(), get_act_name("topk_indices", 0): expert}

    return (
        _stored(moe(torch.randn(n, 1, D_EXPERT, generator=g)), labels),
        _stored({get_act_name("neuron", 0): torch.randn(n, D_MLP, generator=g).half()}, labels),
        _stored(moe(torch.randn(n, 1, D_EXPERT, generator=g)), labels),
    )


CONFIG = ProbingConfig(ks=(1, 2, 4), min_examples=5, held_out_min_examples=8)
STATISTICS = Statistics(seed=0, bootstrap_resamples=50, min_documents=20, permutations=99)
PAPER = PaperProtocol((0,), EXPERTS, dense_layers=(0,), config=CONFIG, statistics=STATISTICS)
STUDY = HeldOutProbing(
    (0,), EXPERTS, D_EXPERT, 1, dense_layers=(0,), dense_n_layers=1, config=CONFIG, statistics=STATISTICS
)


def test_counted_fits_are_the_fits_both_protocols_make(solver_fits):
    moe, dense, untrained = planted()
    counted = count_probing_fits(PAPER, STUDY, moe, dense, untrained)
    assert solver_fits == []  # counting fits nothing
    PAPER(moe, dense)
    paper_made = sum(solver_fits)
    STUDY(moe, dense, untrained)
    held_out_made = sum(solver_fits) - paper_made
    assert counted.held_out_unavailable is None
    assert (counted.paper.fits, counted.held_out.fits) == (paper_made, held_out_made)
    # skipped pairs are not counted: every unit x concept x k would be more
    pairs = (EXPERTS + 1 + EXPERTS) * 4 * len(CONFIG.ks)  # experts; the dense layer and its matched draws
    assert 0 < paper_made < pairs


def test_a_held_out_protocol_without_enough_documents_counts_no_fit(solver_fits):
    moe, dense, untrained = planted()
    strict = STUDY.replace(statistics=Statistics(seed=0, min_documents=60))  # 90 documents cannot split so
    counted = count_probing_fits(PAPER, strict, moe, dense, untrained)
    assert counted.held_out.fits == 0 and "60" in counted.held_out_unavailable
    PAPER(moe, dense)
    assert counted.paper.fits == sum(solver_fits)


def test_repeated_tokens_count_as_new_documents_with_the_same_labels_and_routing():
    moe, _, _ = planted()
    n = len(moe.token_index)
    longer = repeat_tokens(moe, 2 * n + 10)
    assert len(longer.token_index) == 2 * n + 10 and torch.equal(longer.labels[n : 2 * n], moe.labels)
    assert len(longer.doc_index.unique()) == 2 * N_DOCS + 1  # two copies and the start of a third
    routing = get_act_name("topk_indices", 0)
    assert torch.equal(longer.rows[routing][:n], moe.rows[routing])
    post = longer.rows[get_act_name("expert_post", 0)]
    assert post.shape == (2 * n + 10, 1, D_EXPERT) and post.stride()[0] == 0  # no activation held
    assert repeat_tokens(moe, n) is moe


def _short_documents(n: int) -> list[str]:
    """``n`` short documents of varied prose (numbers, names, punctuation), a few dozen tokens each."""
    words = "the cat sat on a mat while Bob read 42 books in Paris , and Alice wrote 7 letters .".split()
    g = torch.Generator().manual_seed(1)
    return [
        " ".join(words[i] for i in torch.randint(len(words), (18,), generator=g).tolist()) for _ in range(n)
    ]


def test_the_plan_counts_the_fits_a_small_run_makes(solver_fits, monkeypatch, tmp_path):
    """A run of a tiny toy MoE with its dense baseline and untrained null over about a thousand tokens
    of 60 short documents (both protocols run), which the calibration pass covers in full: the plan's
    expected fits are the fits the run makes."""
    import datasets

    from tl_moe.pipeline import run
    from tl_moe.pipeline.plan import plan_run

    texts = _short_documents(60)
    corpus = datasets.Dataset.from_dict(
        {"text": texts, "domain": ["a", "b"] * 30, "split": ["validation"] * len(texts)}
    )
    options = RunOptions(
        model="toy/moe-4x2",
        corpus=corpus,
        analyses=("probing",),
        max_tokens=1000,
        batch_size=2,
        seq_len=64,
        threads=1,
        min_documents=2,
        probe_ks=(1, 4),
        min_examples=4,
        held_out_min_examples=4,
        progress=False,
        out=str(tmp_path / "out"),
    )
    monkeypatch.setattr(calibration, "calibration_tokens", lambda options, run_tokens: run_tokens)
    estimate = calibration.calibrate(plan_run(options), fit_rate=100.0)
    assert solver_fits == []  # the plan fitted nothing
    run(options, write_report=False)
    assert estimate.fits["probing"] == sum(solver_fits)
    assert estimate.held_out_unavailable is None and estimate.held_out_fits["probing"] > 0


def test_the_fit_rate_counts_the_fits_made_and_times_a_problem_that_fits(solver_fits):
    """Concepts too rare for a unit of 125 tokens (the old rate counted their skipped pairs as fits) and
    a cell below twice ``min_examples`` tokens: the rate is the fits the timed call made, and it made some."""
    made_at: list[int] = []

    def clock() -> float:
        made_at.append(sum(solver_fits))  # read at the start and the end of the timed fit
        return 2.0 * (len(made_at) - 1)  # 2 s apart

    ks = (1, 2)
    rare = torch.full((8,), 0.03)  # about 4 positives of 125: fewer than 10
    rate = calibration.measure_fit_rate(16, 125, ks, clock=clock, rates=rare, params={"min_examples": 10})
    timed = made_at[1] - made_at[0]
    assert timed > 0 and rate == timed / 2.0
    made_at.clear()
    rate = calibration.measure_fit_rate(16, 5, ks, clock=clock, params={"min_examples": 10})
    timed = made_at[1] - made_at[0]
    assert timed > 0 and rate == timed / 2.0


def test_planted_labels_give_each_concept_its_share_within_the_least_of_each_class():
    labels = calibration.planted_labels(torch.tensor([0.5, 0.001, 0.999]), 200, 10, torch.Generator())
    assert labels.sum(0).tolist() == [100, 10, 190]


def test_a_model_is_warmed_up_before_its_clock_and_a_slow_batch_after_the_first_does_not_set_its_rate(
    monkeypatch,
):
    """The first model's cold start: one discarded forward at the run's batch shape before the clock
    starts; then the median of the per-batch rates after the warm-up batch, so one slow later batch
    (300 tokens in 4 s, the others 300 in 1 s) does not set the rate (the tokens over all the later
    batches' seconds would give 150 tokens/s)."""
    from test_plan_timing import ForwardCounter

    model = ForwardCounter()

    class Context:
        options = RunOptions(max_tokens=2000, batch_size=3, seq_len=32)

        def model(self, name):
            return model

    forwards_at_start: list[int] = []
    readings = iter([0.0, 5.0, 9.0, 10.0, 11.0, 11.5])

    def clock() -> float:
        forwards_at_start.append(len(model.forwards))
        return next(readings)

    def four_batches(*args, observers):
        (batches,) = observers.values()
        for n in (400, 300, 300, 300):
            batches.update({}, type("Meta", (), {"n_tokens": n})())
        return {}

    monkeypatch.setattr("tl_moe.pipeline.runner._collect_model", four_batches)
    rate, _ = calibration.measure_pass(Context(), "m", ["spec"], clock=clock)
    assert model.forwards == [(3, 32)] and forwards_at_start[0] == 1  # warmed up before the clock
    assert rate.tokens_per_second == 300.0  # median of 75, 300, 300 tokens/s
    assert rate.overhead_seconds == pytest.approx(11.5 - 1300 / 300.0)
    # a pass of one batch has no batch to leave out: the whole pass, after the warm-up forward
    assert calibration.pass_rate(0.0, 4.0, [3.0], [1000]).tokens_per_second == 250.0


def test_too_few_documents_for_a_per_document_gate_is_one_line_naming_the_flag_and_the_fix():
    from tl_moe.pipeline.checks import few_documents_warning

    line = few_documents_warning(23, 30, ("domains", "logit_lens", "probing"), 8000)
    assert (
        "\n" not in line and line.startswith("--min-documents 30: ") and "reaches only 23 documents" in line
    )
    assert "domains (needs 30)" in line and "probing (needs 30 on each half)" in line
    assert "logit_lens" not in line  # no per-document gate
    assert "raise --max-tokens" in line and "lower --min-documents" in line
    # 40 documents: enough for a gate on all of them, not for one on each half of a split
    assert "domains" not in few_documents_warning(40, 30, ("domains", "associations"), 8000)
    assert few_documents_warning(60, 30, ("domains", "associations"), 8000) is None
    assert few_documents_warning(1, 30, ("logit_lens",), 8000) is None


def test_plan_and_analyze_warn_before_the_passes_that_domains_go_untested(monkeypatch, tmp_path):
    """Ten documents and --min-documents 12: plan warns, and analyze warns the same line before its
    first pass (the pass is stopped here as soon as it starts)."""
    import warnings

    import datasets

    from tl_moe.pipeline import run, runner
    from tl_moe.pipeline.plan import plan_run

    texts = _short_documents(10)
    corpus = datasets.Dataset.from_dict(
        {"text": texts, "domain": ["a", "b"] * 5, "split": ["validation"] * 10}
    )
    options = RunOptions(
        model="toy/moe-4x2",
        corpus=corpus,
        analyses=("domains",),
        dense_baseline=None,
        skip_untrained_null=True,
        max_tokens=1000,
        threads=1,
        min_documents=12,
        progress=False,
        out=str(tmp_path / "out"),
    )
    expected = "--min-documents 12: the corpus holds only 10 documents (read whole within --max-tokens 1000)"
    with warnings.catch_warnings(record=True) as planned:
        warnings.simplefilter("always")
        calibration.calibrate(plan_run(options), forward_rates={"toy/moe-4x2": 1000.0})

    class PassStarted(Exception):
        pass

    def stop(*args, **kwargs):
        raise PassStarted

    monkeypatch.setattr(runner, "_collect_model", stop)
    with warnings.catch_warnings(record=True) as analyzed, pytest.raises(PassStarted):
        warnings.simplefilter("always")
        run(options, write_report=False)
    planned = [str(w.message) for w in planned if expected in str(w.message)]
    assert len(planned) == 1 and "domains (needs 12)" in planned[0]
    assert "raise --max-tokens" not in planned[0]  # the whole corpus was read: more tokens reach no more
    assert planned[0] in {str(w.message) for w in analyzed}


def _bounded(stored: StoredTokens, keep: int) -> StoredTokens:
    """The first ``keep`` tokens of ``stored`` as a bounded probing store that dropped rows."""
    import dataclasses

    from tl_moe.analysis.bounded_store import BoundedStoredTokens

    fields = {
        f.name: getattr(stored, f.name)[:keep] if isinstance(getattr(stored, f.name), torch.Tensor) else None
        for f in dataclasses.fields(stored)
    }
    fields |= {
        "rows": {key: value[:keep] for key, value in stored.rows.items()},
        "domain_names": stored.domain_names,
        "concept_names": stored.concept_names,
    }
    n_seen = torch.full((EXPERTS, 5, 2, 2), 3)
    n_seen[0, 0, 0, 0] = 50  # one key streamed more than it kept
    return BoundedStoredTokens(**fields, rows_per_class=10, n_seen=n_seen)


def test_repeated_bounded_stores_of_different_lengths_still_count_the_held_out_protocol():
    """Two bounded stores that each dropped rows keep different tokens of one stream (the run exempts
    them from the same-tokens check); repeated to a longer run they stay exempt, so the held-out
    protocol is counted, not refused with the run's internal consistency error."""
    moe, dense, untrained = planted()
    n = len(moe.token_index)
    moe, untrained = _bounded(moe, n), _bounded(untrained, n - 10)
    scaled = [repeat_tokens(s, round(len(s.token_index) * 2.5)) for s in (moe, dense, untrained)]
    assert [len(s.token_index) for s in scaled] == [round(2.5 * n), round(2.5 * n), round(2.5 * (n - 10))]
    assert type(scaled[0]) is type(moe) and scaled[0].n_capped == moe.n_capped
    counted = count_probing_fits(PAPER, STUDY, *scaled)
    assert counted.held_out_unavailable is None and counted.held_out.fits > 0


@pytest.mark.parametrize(
    ("n_docs", "least", "fraction"), [(30, 5, 0.1), (30, 5, 0.9), (10, 5, 0.5), (12, 5, 0.5), (40, 5, 0.5)]
)
def test_the_few_documents_warning_counts_each_side_of_the_held_out_split(n_docs, least, fraction):
    """The probing gate counts the documents on each side of the held-out split at --selection-fraction
    (30 documents at 0.1 give about 3 selection documents, 10 at 0.5 give 4 / 6: fewer than 5 on a side, though at least 2 x 5 in all): it warns
    exactly when the held-out protocol will refuse the split, and names the real sides."""
    import datasets
    import numpy as np

    from tl_moe.analysis.splits import document_split
    from tl_moe.pipeline.checks import warn_few_documents
    from tl_moe.zoo.tokenizer import load_tokenizer

    texts = _short_documents(n_docs)
    corpus = datasets.Dataset.from_dict({"text": texts, "domain": ["a"] * n_docs})
    options = RunOptions(max_tokens=100_000, min_documents=least, selection_fraction=fraction)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = warn_few_documents(corpus, load_tokenizer(), options, ["probing"])
    sides = np.bincount(
        document_split(np.arange(n_docs), (fraction, 1 - fraction), seed=options.seed), minlength=2
    )
    refused = calibration.held_out_gate(tuple(range(n_docs)), options)
    assert (line is not None) == (refused is not None) == (int(sides.min()) < least)
    if line is not None:
        assert f"split: {sides[0]} selection / {sides[1]} test)" in line and [
            str(w.message) for w in caught
        ] == [line]
        assert "raise --max-tokens" not in line  # the corpus is read whole
        assert ("--selection-fraction toward 0.5" in line) == (fraction != 0.5)
        assert f"{sides[0]} selection / {sides[1]} test" in refused
        assert f"about {int(np.ceil(least / min(fraction, 1 - fraction))) + 4} documents" in refused


def test_the_few_documents_warning_advises_more_tokens_only_when_the_stream_stops_short():
    import datasets

    from tl_moe.pipeline.checks import warn_few_documents
    from tl_moe.zoo.tokenizer import load_tokenizer

    corpus = datasets.Dataset.from_dict({"text": _short_documents(100), "domain": ["a"] * 100})
    capped = RunOptions(max_tokens=1000, min_documents=60, seq_len=32)  # a few dozen tokens a document
    with pytest.warns(UserWarning):
        line = warn_few_documents(corpus, load_tokenizer(), capped, ["domains"])
    assert "the run's stream (--max-tokens 1000) reaches only" in line and "raise --max-tokens" in line
    assert (
        warn_few_documents(corpus, load_tokenizer(), capped.replace(max_tokens=100_000), ["domains"]) is None
    )
