"""Offline candidate labels: planted token-set and concept experts are found and score >= 0.95 held
out; on routing that depends on no token, no label beats its shuffled control beyond the nominal rate."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from explain_fixtures import word_records
from tl_moe.explain import ConceptScorer, DissectionExplainer, TokenSetBaseline, label_experts
from tl_moe.explain.document_bootstrap import expert_interval
from tl_moe.explain.explainers import rule_explanation
from tl_moe.explain.labels import token_level_concepts
from tl_moe.explain.scorers import Score, detection_metrics

N_EXPERTS = 16
TOKEN_EXPERT, CONCEPT_EXPERT, CONCEPT = 3, 7, "text_digit"
PLANTED_TEXTS = (" the", " of", " and")


def _routed_examples(planted: bool, n_layers: int, max_tokens: int):
    """Expert examples of a 16-expert, top-2 routing over the embedded corpus. Every choice is a
    pseudo-random expert (a hash of the token's stream position, so it depends on no token), except,
    when ``planted``, in layer 0: TOKEN_EXPERT takes exactly the tokens PLANTED_TEXTS and
    CONCEPT_EXPERT exactly the tokens of CONCEPT (first slot)."""
    from tl_moe.collect import domain_names, uniform_priority
    from tl_moe.collect.batching import BatchBuilder, plan_batches
    from tl_moe.data.concepts import TokenConceptLabeler
    from tl_moe.data.corpus import load_corpus
    from tl_moe.explain.examples import ExpertExamplesAccumulator
    from tl_moe.models.config import MoEConfig
    from tl_moe.zoo.tokenizer import load_tokenizer

    cfg = MoEConfig(architecture="olmoe", n_layers=n_layers, d_model=8, d_vocab=8192, num_experts=N_EXPERTS,
                    experts_per_token=2, d_expert=8, sparse_layers=tuple(range(n_layers)))  # fmt: skip
    tokenizer = load_tokenizer()
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in PLANTED_TEXTS]
    assert all(len(i) == 1 for i in ids), "each planted text is one token"
    token_ids = torch.tensor([i[0] for i in ids])
    dataset = load_corpus(None, require_domain=True)["validation"].shuffle(seed=0)
    labeler = TokenConceptLabeler()
    names = domain_names(dataset)
    accumulator = ExpertExamplesAccumulator(SimpleNamespace(moe_cfg=cfg), names, labeler.concept_names)
    builder = BatchBuilder(tokenizer, seq_len=128, domain_names=names, concept_labeler=labeler)
    batches = plan_batches(
        dataset, tokenizer, batch_size=16, seq_len=128, max_tokens=max_tokens, with_offsets=True
    )
    for planned in batches:
        meta = builder.build(planned)
        token = meta.token_index
        acts = {}
        for layer in cfg.sparse_layers:
            reserved = (TOKEN_EXPERT, CONCEPT_EXPERT) if planted and layer == 0 else ()
            free = torch.tensor([e for e in range(N_EXPERTS) if e not in reserved])
            first = (uniform_priority(token, 10 + layer) * len(free)).long()
            second = (first + 1 + (uniform_priority(token, 20 + layer) * (len(free) - 1)).long()) % len(free)
            first, second = free[first], free[second]
            if reserved:
                in_set = torch.isin(meta.input_ids, token_ids)
                concept = meta.concept_labels[..., labeler.concept_names.index(CONCEPT)]
                first = torch.where(in_set, TOKEN_EXPERT, first)
                first = torch.where(concept & ~in_set, CONCEPT_EXPERT, first)
                second = torch.where(concept & in_set, CONCEPT_EXPERT, second)
            acts[f"blocks.{layer}.mlp.hook_topk_indices"] = torch.stack([first, second], -1)
            weights = 0.3 + 0.4 * uniform_priority(token, 30 + layer).float()
            acts[f"blocks.{layer}.mlp.hook_topk_weights"] = torch.stack([weights, 1 - weights], -1)
            acts[f"blocks.{layer}.mlp.hook_expert_out"] = torch.ones(*token.shape, 2, 8)
        accumulator.update(acts, meta)
    return accumulator.finalize(), tokenizer


def _label(examples, tokenizer):
    records = [examples.record(layer, e, tokenizer) for layer in examples.layers for e in range(N_EXPERTS)]
    result = label_experts(records, DissectionExplainer(examples), [ConceptScorer(examples.concept_names)],
                           progress=False, concurrency=1, baseline=TokenSetBaseline())  # fmt: skip
    return records, result


def test_planted_token_set_and_concept_experts_get_their_labels_and_score_held_out():
    examples, tokenizer = _routed_examples(planted=True, n_layers=1, max_tokens=30_000)
    records, result = _label(examples, tokenizer)
    frame = result.frame.set_index(["layer", "expert"])
    tokens = result.explanations[(0, TOKEN_EXPERT)]
    assert tokens.rule.kind == "tokens" and set(tokens.rule.tokens) == set(PLANTED_TEXTS)
    concept = result.explanations[(0, CONCEPT_EXPERT)]
    assert concept.rule.kind == "concept" and concept.concept == CONCEPT and concept.domain is None
    for expert in (TOKEN_EXPERT, CONCEPT_EXPERT):
        row = frame.loc[(0, expert)]
        assert row["concept_balanced_accuracy"] >= 0.95  # held out: score documents only
        assert row["concept_shuffled_balanced_accuracy"] <= 0.6
        assert row["concept_own_minus_shuffled_balanced_accuracy"] >= 0.35
        # its items come from fewer than 30 score documents: its own intervals are unavailable, and say why
        assert row["concept_beats_shuffled"] is None
        assert "needs at least 30" in row["concept_own_minus_shuffled_interval"]
        assert "needs at least 30" in row["concept_f1_interval"] and np.isnan(row["concept_f1_ci_low"])
        assert row["concept_chance_balanced_accuracy"] == 0.5
    assert frame.loc[(0, TOKEN_EXPERT), "concept_auc"] >= 0.95  # a token set's answer is graded
    # the labels were chosen on explain documents and scored on others
    record = records[TOKEN_EXPERT]
    explain_docs = {c.doc_index for c in record.explanation + record.explain_negatives}
    assert not explain_docs & {c.doc_index for c in record.positives + record.negatives}
    # no document-level concept is ever a label
    assert not result.frame["label"].str.contains("domain_|language_", regex=True).any()


def test_on_routing_that_depends_on_no_token_no_label_beats_its_shuffled_control():
    examples, tokenizer = _routed_examples(
        planted=False, n_layers=4, max_tokens=30_000
    )  # >= 30 score documents
    _, result = _label(examples, tokenizer)
    summary = result.summary.set_index(["layer", "metric"]).loc[("all", "balanced_accuracy")]
    assert summary["mean"] == pytest.approx(0.5, abs=0.05)
    assert summary["interval over"] == "score documents" and summary["documents"] >= 30
    assert summary["diff ci low"] <= 0 <= summary["diff ci high"]
    # No more than half the experts beat their shuffled control (ties, ~1/5 here, count as not beating):
    # the share's interval over the score documents, every expert rescored in each resample, stays below 1/2
    # at its lower end; a leak would lift the whole interval above it.
    assert summary["share documents"] >= 30 and summary["share experts"] >= 48
    assert summary["share ci low"] < 0.5


def test_records_without_concepts_get_token_set_labels_the_concept_scorer_scores():
    records = word_records(["cat", "dog", "fish", "bird"])
    record = records[0]
    negatives = tuple(c.with_marks([False] * len(c.marks)) for c in records[1].explanation)  # not routed
    record = type(record)(**{**record.__dict__, "explain_negatives": negatives})
    explanation = rule_explanation(record, ("text_digit",), ("prose",))
    assert explanation.label == "tokens ` cat`" and explanation.rule.kind == "tokens"
    score = ConceptScorer(("text_digit",))(record, explanation)
    assert score.metrics["balanced_accuracy"] == 1.0 and score.metrics["f1"] == 1.0


def test_document_level_concepts_are_never_candidates():
    names = ("text_digit", "domain_python", "language_en", "latex_command")
    assert token_level_concepts(names) == [0, 3]


def test_auc_and_the_paired_difference_match_independent_references():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    graded = rng.integers(0, 4, 40).astype(float)  # with ties
    metrics = detection_metrics(y, graded > 1, graded)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, graded))
    documents = tuple(range(40))  # one item a document
    own = Score(0, 0, "concept", "a", (0, 0), truth=tuple(y), predicted=tuple(int(g > 1) for g in graded),
                documents=documents)  # fmt: skip
    other = Score(0, 0, "concept", "b", (0, 1), truth=tuple(y), predicted=tuple(int(g > 2) for g in graded),
                  documents=documents)  # fmt: skip
    point, low, high, why = expert_interval(own, other)
    ba = (
        detection_metrics(y, graded > 1)["balanced_accuracy"]
        - detection_metrics(y, graded > 2)["balanced_accuracy"]
    )
    assert point == pytest.approx(ba) and low <= point <= high and why == ""


def test_concept_only_labels_on_request_and_unknown_kinds_refused():
    examples, tokenizer = _routed_examples(planted=True, n_layers=1, max_tokens=8_000)
    explainer = DissectionExplainer(examples, kinds=("concept",))
    explanation = explainer(examples.record(0, TOKEN_EXPERT, tokenizer))
    assert explanation.rule.kind == "concept"  # the token-set expert, described by a concept only
    with pytest.raises(ValueError, match="kinds must be among"):
        DissectionExplainer(examples, kinds=("sentences",))


def _context(tokens: list[str], marks: list[bool], doc: int):
    from tl_moe.explain.examples import Context

    return Context(tuple(range(len(tokens))), tuple(tokens), tuple(marks), 0, 1.0, doc, doc, "prose",
                   tuple((0,) for _ in tokens), "top")  # fmt: skip


def test_token_set_baseline_is_the_balanced_accuracy_optimal_set_the_labeler_considers():
    """` rare` is always routed but seen twice; ` common` is routed 30 times and not routed 10 times
    among 200 not-routed positions; ` noise` is as frequent routed as not. A log-ratio ranking prefers
    ` rare`; balanced accuracy (0.5 + Σ (P(t | routed) − P(t | not routed)) / 2) prefers ` common`. The
    baseline is the best set by balanced accuracy, checked against every set of at most 2 tokens, and it
    is the labeler's own token-set candidate."""
    import itertools

    from tl_moe.explain.examples import ExpertRecord
    from tl_moe.explain.labels import candidates, explain_items, token_set_baseline

    routed = [" rare"] * 2 + [" common"] * 30 + [" noise"] * 18
    not_routed = [" common"] * 10 + [" noise"] * 72 + [" other"] * 118
    record = ExpertRecord(0, 0, (_context(routed, [True] * len(routed), 0),), (), (),
                          explain_negatives=(_context(not_routed, [False] * len(not_routed), 1),))  # fmt: skip
    tokens = routed + not_routed
    truth = np.array([True] * len(routed) + [False] * len(not_routed))

    def balanced_accuracy(chosen):
        said = np.isin(tokens, list(chosen))
        return 0.5 + (said[truth].mean() - said[~truth].mean()) / 2

    for n in (1, 2):
        best = max(
            (set(c) for k in range(1, n + 1) for c in itertools.combinations(sorted(set(tokens)), k)),
            key=balanced_accuracy,
        )
        rule = token_set_baseline(record, n=n)
        assert set(rule.tokens) == best
    assert token_set_baseline(record, n=1).tokens == (" common",)
    offered = [
        r for r in candidates(explain_items(record, 1), ("text_digit",), ("prose",)) if r.kind == "tokens"
    ]
    assert offered == [token_set_baseline(record)]


def planted_shared_documents(
    seed: int, *, n_documents: int = 60, experts: int = 30, items: int = 40, shift=0.0
):
    """Two labels per expert (own, baseline) scored on the same balanced items, drawn from documents
    that all experts share. Each document makes one label right more often and the other less (logit
    0.8 ± u_d, u_d ~ N(0, 1)): no difference in expectation (``shift`` 0), but every expert's difference
    moves with the same documents. ``shift`` raises the own label's logit."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0, 1.0, n_documents)
    own, base = {}, {}
    for e in range(experts):
        docs = rng.integers(0, n_documents, items)
        y = np.arange(items) % 2
        right = [rng.random(items) < 1 / (1 + np.exp(-(0.8 + s * u[docs] + (shift if s > 0 else 0))))
                 for s in (1, -1)]  # fmt: skip
        for out, ok, name in ((own, right[0], "own"), (base, right[1], "baseline")):
            out[(0, e)] = Score(0, e, "concept", name, (0, e), truth=tuple(y), predicted=tuple(np.where(ok, y, 1 - y)),
                                documents=tuple(docs.tolist()))  # fmt: skip
    return own, base


def _balanced_accuracy(score):
    y, p = np.asarray(score.truth, bool), np.asarray(score.predicted, bool)
    return (p[y].mean() + (~p[~y]).mean()) / 2


def test_label_scores_resample_documents_and_cover_a_shared_document_null():
    """No true difference between the labels, documents shared by all experts: the document interval of
    own − baseline covers 0 at about the nominal rate (measured over these 100 seeds: 93%), where the
    interval over experts (which treats experts as independent) covers it far less often (measured: 49%).
    The point estimate is the mean over experts of each expert's own − baseline balanced accuracy."""
    from tl_moe.explain.document_bootstrap import document_intervals

    covered, covered_experts = [], []
    for seed in range(100):
        own, base = planted_shared_documents(seed)
        row = document_intervals(
            list(own), own, {"baseline": base}, "balanced_accuracy", n_resamples=999, seed=seed
        )
        covered.append(row["baseline diff ci low"] <= 0 <= row["baseline diff ci high"])
        differences = [_balanced_accuracy(own[k]) - _balanced_accuracy(base[k]) for k in own]
        assert row["own - baseline"] == pytest.approx(np.mean(differences))
        assert row["mean"] == pytest.approx(np.mean([_balanced_accuracy(own[k]) for k in own]))
        low, high = np.percentile(
            np.random.default_rng(seed).choice(differences, (999, len(differences))).mean(1), [2.5, 97.5]
        )
        covered_experts.append(low <= 0 <= high)
    assert 0.88 <= np.mean(covered) <= 0.99
    assert np.mean(covered_experts) <= 0.75


def test_document_interval_finds_a_real_difference_and_refuses_below_30_documents():
    from tl_moe.explain.document_bootstrap import document_intervals

    found = []
    for seed in range(10):
        own, base = planted_shared_documents(seed, shift=1.5)
        row = document_intervals(
            list(own), own, {"baseline": base}, "balanced_accuracy", n_resamples=499, seed=seed
        )
        found.append(row["baseline diff ci low"] > 0)
    assert np.mean(found) >= 0.9
    own, base = planted_shared_documents(0, n_documents=29)
    row = document_intervals(list(own), own, {"baseline": base}, "balanced_accuracy", n_resamples=99)
    assert row["documents"] == 29 and np.isnan(row["ci low"]) and np.isnan(row["baseline diff ci low"])
    assert row["interval"].startswith("unavailable: 29 document(s)")
    assert np.isfinite(row["own - baseline"])


def test_metrics_from_counts_match_detection_metrics():
    from tl_moe.explain.document_bootstrap import document_intervals

    own, base = planted_shared_documents(1, experts=5)
    for metric in ("balanced_accuracy", "f1", "precision", "recall"):
        row = document_intervals(list(own), own, {"baseline": base}, metric, n_resamples=99)
        expected = np.mean([detection_metrics(own[k].truth, own[k].predicted)[metric] for k in own])
        assert row["mean"] == pytest.approx(expected), metric


@pytest.mark.parametrize("n_documents", [60, 29])
def test_document_interval_rows_carry_the_document_reason_not_the_expert_one(n_documents):
    """8 experts: the summary over experts has no interval ("8 experts, at least 30 needed"). Recomputed
    over 60 shared documents every row has its intervals, so no reason is left; over 29 documents every
    row (the ``all`` row included) gives the documents' reason, not the experts'."""
    import pandas as pd

    from tl_moe.explain.runner import summarize, with_document_intervals

    own, base = planted_shared_documents(0, n_documents=n_documents, experts=8)
    shuffled = {k: Score(*k, "concept", "shuffled", k, truth=s.truth, predicted=s.predicted[::-1],
                         documents=s.documents) for k, s in own.items()}  # fmt: skip
    frame = pd.DataFrame([{"layer": 0, "expert": e,
                           "concept_balanced_accuracy": _balanced_accuracy(own[(0, e)]),
                           "concept_shuffled_balanced_accuracy": _balanced_accuracy(shuffled[(0, e)]),
                           "concept_baseline_balanced_accuracy": _balanced_accuracy(base[(0, e)])}
                          for e in range(8)])  # fmt: skip
    by_experts = summarize(frame, "concept")
    reasons = ["interval unavailable", "shuffled interval unavailable", "baseline interval unavailable"]
    assert (by_experts[reasons] == "8 experts, at least 30 needed").all().all()
    scores = {k: {"concept": s} for k, s in own.items()}
    arms = {"shuffled": {k: {"concept": s} for k, s in shuffled.items()},
            "baseline": {k: {"concept": s} for k, s in base.items()}}  # fmt: skip
    summary = with_document_intervals(
        by_experts, frame, scores, arms, "concept", "balanced_accuracy", n_resamples=99
    )
    assert list(summary["layer"]) == [0, "all"] and (summary["interval over"] == "score documents").all()
    if n_documents >= 30:
        assert (summary[reasons] == "").all().all()
        assert summary[["ci low", "diff ci low", "baseline diff ci low"]].notna().all().all()
    else:
        expected = "29 document(s) behind the label scores; a document-level interval needs at least 30"
        assert (summary[reasons] == expected).all().all()
        assert summary[["ci low", "diff ci low", "baseline diff ci low"]].isna().all().all()


def test_the_notebook_labeler_finds_planted_experts_of_those_asked_and_matches_label_experts():
    """ExpertLabeler (ExplainConfig + Statistics, no pipeline) on a planted routing: the token-set and
    concept experts get their planted labels and score >= 0.95 held out; experts whose routing depends on
    no token stay near chance; the outcome equals label_experts called by hand on the same records."""
    from tl_moe.analysis.configs import ExplainConfig, Statistics
    from tl_moe.errors import InputError
    from tl_moe.explain import ExpertLabeler

    examples, tokenizer = _routed_examples(planted=True, n_layers=1, max_tokens=8_000)
    statistics = Statistics(seed=3, bootstrap_resamples=200)
    labeler = ExpertLabeler(ExplainConfig(causal_windows=0), statistics, progress=False)
    asked = [(0, TOKEN_EXPERT), (0, CONCEPT_EXPERT), (0, 0), (0, 1), (0, 2), (0, 4)]
    outcome = labeler(examples, tokenizer, experts=asked)
    assert [r.key for r in outcome.records] == asked and outcome.causal is None
    assert (outcome.explainer, outcome.main_scorer) == ("offline", "concept")
    tokens, concept = (
        outcome.labeling.explanations[(0, TOKEN_EXPERT)],
        outcome.labeling.explanations[(0, CONCEPT_EXPERT)],
    )
    assert tokens.rule.kind == "tokens" and set(tokens.rule.tokens) == set(PLANTED_TEXTS)
    assert concept.rule.kind == "concept" and concept.concept == CONCEPT
    frame = outcome.labeling.frame.set_index(["layer", "expert"])["concept_balanced_accuracy"]
    assert frame[(0, TOKEN_EXPERT)] >= 0.95 and frame[(0, CONCEPT_EXPERT)] >= 0.95
    assert all(frame[(0, e)] <= 0.75 for e in (0, 1, 2, 4))  # planted no effect: chance is 0.5
    # the same records through the lower-level functions, the seed and resamples passed by hand
    records = [examples.record(layer, e, tokenizer, seed=3) for layer, e in asked]
    by_hand = label_experts(records, DissectionExplainer(examples), [ConceptScorer(examples.concept_names)],
                            shuffle_seed=3, progress=False, baseline=TokenSetBaseline(), n_resamples=200)  # fmt: skip
    pd.testing.assert_frame_equal(outcome.labeling.frame, by_hand.frame)
    pd.testing.assert_frame_equal(outcome.labeling.summary, by_hand.summary)
    with pytest.raises(InputError, match="experts"):
        labeler(examples, tokenizer, experts=[(0, N_EXPERTS)])
    with pytest.raises(InputError, match="need model= and dataset="):
        ExpertLabeler(ExplainConfig(causal_windows=4), statistics)(examples, tokenizer)
    with pytest.raises(InputError, match="concept scorer only"):
        ExpertLabeler(ExplainConfig(scorers=("detection",)))
