"""Automatic labeling: examples, explainers, scorers, controls, and the runner against a loopback server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from explain_fixtures import LoopbackServer, word_records
from tl_moe.explain.clients import CachedChatClient, OpenAIChatClient
from tl_moe.explain.explainers import LMExplainer, parse_label
from tl_moe.explain.runner import label_experts, shuffled_partners
from tl_moe.explain.scorers import DetectionScorer, detection_metrics, parse_verdicts

pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[1]


def _by_expert(result):
    return {int(row.expert): row for row in result.frame.itertuples()}


def test_parsers_accept_json_and_refuse_malformed_answers():
    assert parse_label('{"label": "closing brackets in LaTeX"}') == "closing brackets in LaTeX"
    assert parse_label("Sure.\nLabel: the word cat") == "the word cat"
    with pytest.raises(ValueError, match="malformed"):
        parse_label("I am not sure what this is.")
    assert parse_verdicts("answer: [1, 0, 1]", 3) == ([1, 0, 1], None)
    assert parse_verdicts("[0.9, 0.2]", 2) == ([1, 0], [0.9, 0.2])
    with pytest.raises(ValueError, match="malformed"):
        parse_verdicts("[1, 0]", 3)


def test_detection_metrics_and_chance_levels():
    m = detection_metrics([1, 1, 0, 0], [1, 0, 1, 0], [0.9, 0.4, 0.6, 0.1])
    assert m["precision"] == m["recall"] == m["f1"] == m["balanced_accuracy"] == 0.5
    assert m["auc"] == 0.75
    assert m["chance_f1"] == pytest.approx(2 / 3)
    assert detection_metrics([1, 0], [1, 1])["f1"] == pytest.approx(2 / 3)  # answering yes = chance


def test_shuffled_partners_are_a_derangement_within_each_layer():
    keys = [(layer, e) for layer in (0, 1) for e in range(7)]
    partners = shuffled_partners(keys, seed=3)
    assert set(partners) == set(keys)
    assert all(partners[k] != k and partners[k][0] == k[0] for k in keys)
    assert sorted(partners.values()) == sorted(keys)


def test_loopback_server_labels_scores_and_records_failures():
    words = ["cat", "dog", "fish", "zzz", "slow", "busy"]
    records = word_records(words)
    with LoopbackServer(slow_s=1.5, busy_failures=2) as server:
        client = OpenAIChatClient(server.url, "canned", timeout=0.4, max_retries=2)
        result = label_experts(
            records, LMExplainer(client), [DetectionScorer(client)], concurrency=4, progress=False
        )
        requests = list(server.requests)
    rows = _by_expert(result)
    for expert, word in enumerate(words):
        if word in ("cat", "dog", "fish", "busy"):
            assert rows[expert].label == f"the word {word}"
            assert rows[expert].detection_f1 == 1.0  # own label: every positive, no negative
            assert rows[expert].detection_shuffled_f1 == 0.0  # another expert's label: no positive
            assert rows[expert].detection_chance_f1 == pytest.approx(2 / 3)
    assert "malformed" in rows[3].label_error  # recorded, not fatal
    assert "request failed" in rows[4].label_error and "Timeout" in rows[4].label_error

    def explain_requests(word):
        return [r for r in requests if r["messages"][0]["content"].startswith("You explain")
                and f"<<{' ' + word}>>" in r["messages"][-1]["content"]]  # fmt: skip

    assert len(explain_requests("slow")) == 3  # 1 + max_retries attempts, then given up
    assert len(explain_requests("busy")) == 3  # two 429s, then the answer
    summary = result.summary.set_index(["layer", "metric"]).loc[("all", "f1")]
    assert summary["mean"] == 1.0 and summary["shuffled mean"] == 0.0
    assert summary["chance"] == pytest.approx(2 / 3)
    balanced = result.summary.set_index(["layer", "metric"]).loc[("all", "balanced_accuracy")]
    # another word says yes on none of the positives and on the 2 of 10 negatives that hold its word
    assert (
        balanced["mean"] == 1.0
        and balanced["shuffled mean"] == pytest.approx(0.4)
        and balanced["chance"] == 0.5
    )
    assert summary["experts scored"] == 4 and summary["experts not scored"] == 2
    assert set(result.failures["expert"]) == {3, 4}


def test_rate_limit_retries_are_bounded():
    records = word_records(["busy", "cat"])
    with LoopbackServer(busy_failures=-1) as server:  # always 429
        client = OpenAIChatClient(server.url, "canned", timeout=2, max_retries=2)
        tic = time.perf_counter()
        result = label_experts(records, LMExplainer(client), [], concurrency=2, progress=False)
        elapsed = time.perf_counter() - tic
        n_busy = sum("<< busy>>" in r["messages"][-1]["content"] for r in server.requests)
    assert n_busy == 3 and elapsed < 10
    assert "RateLimit" in _by_expert(result)[0].label_error
    assert _by_expert(result)[1].label == "the word cat"


def test_a_killed_run_resumes_without_repeating_a_finished_request(tmp_path):
    words = ["cat", "dog", "fish", "bird", "frog", "mole", "newt"]
    cache = tmp_path / "cache.sqlite"
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(ROOT / "tests")!r})
            from explain_fixtures import word_records
            from tl_moe.explain.clients import CachedChatClient, OpenAIChatClient
            from tl_moe.explain.explainers import LMExplainer
            from tl_moe.explain.runner import label_experts
            from tl_moe.explain.scorers import DetectionScorer
            client = CachedChatClient(OpenAIChatClient(sys.argv[1], "canned", max_retries=0), {str(cache)!r})
            label_experts(word_records({words!r}), LMExplainer(client), [DetectionScorer(client)],
                          concurrency=1, progress=False)
            """
        )
    )
    with LoopbackServer(delay_s=0.05) as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        process = subprocess.Popen([sys.executable, str(script), server.url], env=env)
        deadline = time.time() + 120
        while len(server.answered) < 6 and time.time() < deadline and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # a crash mid-run, no cleanup
        process.wait()
        first_run = [json.dumps(r["messages"]) for r in server.answered]
        assert 6 <= len(first_run) < 3 * len(words)  # killed before the end
        server.requests.clear()
        client = CachedChatClient(OpenAIChatClient(server.url, "canned", max_retries=0), cache)
        resumed = label_experts(
            word_records(words), LMExplainer(client), [DetectionScorer(client)], concurrency=2, progress=False
        )
        second_run = [json.dumps(r["messages"]) for r in server.requests]
    committed = len(first_run) - 1  # the answer in flight at the kill may not have been stored
    assert len(set(first_run[:committed]) & set(second_run)) == 0  # nothing paid twice
    assert client.hits >= committed
    assert (resumed.frame["detection_f1"] == 1.0).all()
    assert (resumed.frame["label"] == [f"the word {w}" for w in words]).all()


# ---------------------------------------------------------------- planted expert, offline labeler


PLANTED = {5: "latex_command", 9: "text_newline", 12: "text_digit"}  # no token is in all three


def _planted_examples(
    planted: dict[int, str] = PLANTED,
    planted_layer: int = 1,
    max_tokens: int = 40_000,
    split_to=None,
    make=None,
):
    """Expert examples of a 4-layer, 16-expert, top-2 routing over the embedded corpus in which each
    expert of ``planted`` (in ``planted_layer``) is chosen exactly on its concept's tokens; every other
    choice is a pseudo-random non-planted expert (a hash of the token id)."""
    from types import SimpleNamespace

    from tl_moe.collect import domain_names, uniform_priority
    from tl_moe.collect.batching import BatchBuilder, plan_batches
    from tl_moe.data.concepts import TokenConceptLabeler
    from tl_moe.data.corpus import load_corpus
    from tl_moe.explain.examples import ExpertExamplesAccumulator
    from tl_moe.models.config import MoEConfig
    from tl_moe.zoo.tokenizer import load_tokenizer

    make = make or ExpertExamplesAccumulator
    cfg = MoEConfig(architecture="olmoe", n_layers=4, d_model=8, d_vocab=8192, num_experts=16,
                    experts_per_token=2, d_expert=8, sparse_layers=(0, 1, 2, 3))  # fmt: skip
    tokenizer = load_tokenizer()
    dataset = load_corpus(None, require_domain=True)["validation"].shuffle(seed=0)
    labeler = TokenConceptLabeler()
    names = domain_names(dataset)
    accumulator = make(SimpleNamespace(moe_cfg=cfg), names, labeler.concept_names)
    builder = BatchBuilder(tokenizer, seq_len=128, domain_names=names, concept_labeler=labeler)
    batches = plan_batches(
        dataset, tokenizer, batch_size=16, seq_len=128, max_tokens=max_tokens, with_offsets=True
    )
    for planned in batches:
        meta = builder.build(planned)
        token = meta.token_index
        acts = {}
        for layer in cfg.sparse_layers:
            free = torch.tensor([e for e in range(16) if layer != planted_layer or e not in planted])
            first = (uniform_priority(token, 10 + layer) * len(free)).long()
            second = (first + 1 + (uniform_priority(token, 20 + layer) * (len(free) - 1)).long()) % len(free)
            first, second = free[first], free[second]
            if layer == planted_layer:
                taken = torch.zeros_like(first, dtype=torch.bool)
                for (
                    expert,
                    concept,
                ) in planted.items():  # slot 0 for the first concept a token has, slot 1 next
                    positive = meta.concept_labels[..., labeler.concept_names.index(concept)]
                    second = torch.where(positive & taken, expert, second)
                    first = torch.where(positive & ~taken, expert, first)
                    taken |= positive
            acts[f"blocks.{layer}.mlp.hook_topk_indices"] = torch.stack([first, second], -1)
            weights = 0.3 + 0.4 * uniform_priority(token, 30 + layer).float()
            acts[f"blocks.{layer}.mlp.hook_topk_weights"] = torch.stack([weights, 1 - weights], -1)
            acts[f"blocks.{layer}.mlp.hook_expert_out"] = torch.ones(*token.shape, 2, 8)
        (accumulator if split_to is None else split_to[meta.batch_index % len(split_to)]).update(acts, meta)
    return accumulator.finalize(), tokenizer


def test_planted_experts_get_their_concepts_and_other_labels_score_at_or_below_chance():
    from tl_moe.explain.explainers import DissectionExplainer
    from tl_moe.explain.scorers import ConceptScorer

    examples, tokenizer = _planted_examples()
    records = [examples.record(1, e, tokenizer) for e in range(16)]
    scorer = ConceptScorer(examples.concept_names)
    result = label_experts(records, DissectionExplainer(examples), [scorer], progress=False)
    rows = _by_expert(result)
    for expert, concept in PLANTED.items():
        planted = rows[expert]
        assert planted.concept == concept and planted.domain is None
        assert planted.concept_f1 >= 0.95
        assert planted.concept_chance_f1 == pytest.approx(2 / 3)
        # the shuffled control (another expert's label): no better than chance
        assert planted.concept_shuffled_f1 <= planted.concept_chance_f1
        assert planted.concept_shuffled_balanced_accuracy <= 0.5 + 0.05
        # the other planted concepts on this expert's contexts: at chance (balanced accuracy 0.5)
        for other in set(PLANTED) - {expert}:
            score = scorer(records[expert], result.explanations[(1, other)])
            assert score.metrics["balanced_accuracy"] == pytest.approx(0.5, abs=0.1)
    assert {c.source for c in records[5].negatives} == {"random", "contrastive"}
    assert all(not c.marks[c.target] for c in records[5].negatives)  # routed elsewhere
    # disjoint documents: no explanation context shares a document with a scoring context
    for record in records:
        explain_docs = {c.doc_index for c in record.explanation}
        assert not explain_docs & {c.doc_index for c in record.positives + record.negatives}
    summary = result.summary.set_index(["layer", "metric"]).loc[(1, "f1")]
    assert summary["share own > shuffled"] >= 3 / 16


# ---------------------------------------------------------------- the toy MoE through the pipeline


def test_offline_labeler_labels_every_expert_of_the_toy_moe_through_the_pipeline(tmp_path):
    import tl_moe.pipeline  # noqa: F401 (registers the built-in analyses)
    from tl_moe.pipeline import RunOptions, run

    options = RunOptions(
        analyses=("explain",), max_tokens=30_000, explain_causal_windows=3, out=tmp_path, progress=False
    )
    results = run(options)
    explained = results["explain"]
    # Three windows are three documents: the causal checks run, and say their intervals are unavailable.
    causal = next(f for f in results.findings if f.startswith("**Causal checks"))
    assert "3 windows of 3 documents" in causal and "intervals unavailable: 3 document(s)" in causal
    metrics = json.loads((tmp_path / "results.json").read_text())["sections"]["explain"]["metrics"]
    assert "interval unavailable" in metrics["causal: remove_effect [95% CI]"]
    frame = explained.labeling.frame
    assert len(frame) == 4 * 16  # every expert of every sparse layer has a row
    ok = frame["status"] == "ok"
    assert (frame.loc[ok, "label"] != "").all()  # every expert with enough contexts is labeled
    assert frame.loc[~ok, "status"].str.startswith("too few").all()  # the others say why
    summary = explained.labeling.summary.set_index(["layer", "metric"])
    f1 = summary.loc[("all", "f1")]
    assert f1["chance"] == pytest.approx(2 / 3, abs=0.05)
    summary = summary.loc[("all", "balanced_accuracy")]
    assert summary["experts scored"] >= 40
    assert summary["chance"] == 0.5
    assert summary["diff ci low"] > 0  # a label scores higher on its own expert than another's label
    assert summary["baseline diff ci low"] > 0  # and higher than the token-set baseline
    table = explained.label_table()
    assert {
        "balanced accuracy",
        "shuffled-label balanced accuracy",
        "token-set baseline balanced accuracy",
        "F1",
        "F1 ci low",
        "F1 ci high",
        "chance F1",
        "precision",
        "recall",
        "AUC",
    } <= set(table.columns)
    lines = (tmp_path / "explain" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 64 and all(json.loads(line)["layer"] in (0, 1, 2, 3) for line in lines)
    page = (tmp_path / "index.html").read_text()
    assert "Automatic expert labels" in page and "explain_f1_histograms" in page
    assert json.loads((tmp_path / "results.json").read_text())["sections"]["explain"]
    finding = next(f for f in results.findings if f.startswith("**Automatic labels**"))
    assert f"{summary['mean']:.3f} [{summary['ci low']:.3f}, {summary['ci high']:.3f}]" in finding
    assert "better than its shuffled control" in finding and "token-set baseline" in finding
    own = finding.split("better than its shuffled control")[0]
    assert "below chance" not in own  # the labels' own mean is not below chance
    shuffled = summary.get("shuffled mean")
    if shuffled is not None and shuffled < 0.5:  # a shuffled control below chance is explained, not hidden
        assert "below chance 0.500: half of each expert's negatives" in finding
    assert f"F1 of answering yes to every item: {f1['chance']:.3f}" in finding
    cards = explained.cards
    assert len(cards) == 64 and "«" in cards.loc[cards["status"] == "ok", "top contexts"].iloc[0]


def test_causal_checks_on_held_out_documents_report_labeled_vs_control():
    import tl_moe
    from tl_moe.analysis.splits import document_split
    from tl_moe.collect import collect, domain_names
    from tl_moe.data.concepts import TokenConceptLabeler
    from tl_moe.data.corpus import load_corpus
    from tl_moe.explain import DissectionExplainer, ExpertExamplesAccumulator
    from tl_moe.explain.causal import _loss_changes, causal_checks, causal_windows
    from tl_moe.explain.examples import SPLIT_FRACTIONS, SPLIT_KEY, SPLITS
    from tl_moe.models.interventions import Intervention, remove_experts

    model = tl_moe.load("toy/moe-16x2", device="cpu")
    dataset = load_corpus(None, require_domain=True)["validation"].shuffle(seed=0)
    labeler = TokenConceptLabeler()
    accumulator = ExpertExamplesAccumulator(model, domain_names(dataset), labeler.concept_names)
    examples = collect(
        model, dataset, {"ex": accumulator}, max_tokens=8_000, concept_labeler=labeler, progress=False
    )["ex"]
    explainer = DissectionExplainer(examples)  # every kind of label
    plain = [e for e in (explainer(examples.record(0, x, model.tokenizer)) for x in range(16)) if e.ok]
    assert any(e.rule.kind not in ("concept", "concept_and_domain") for e in plain[:4])
    windows = causal_windows(dataset, model.tokenizer, examples, max_windows=4)
    assert windows.ids.shape == (4, 128) and windows.labels.shape[:2] == (4, 128)
    split = document_split(torch.arange(len(dataset)), SPLIT_FRACTIONS, key=SPLIT_KEY)
    assert (split[windows.documents] == SPLITS.index("causal")).all()  # only held-out documents
    assert windows.valid[:, :16].all()  # every window holds at least 16 real tokens, padding after them
    result = causal_checks(
        model, dataset, examples, plain[:4], max_windows=12, n_resamples=200, min_documents=20, progress=False
    )
    assert result.min_documents == 20  # the run's --min-documents, not the default 30
    frame = result.frame
    assert (
        len(frame) == len(plain[:4])
        and (frame["status"].eq("ok") | frame["status"].str.startswith("too few")).all()
    )
    ok = frame[frame["status"] == "ok"]
    assert len(ok) >= 1
    assert (ok["control_expert"] != ok["expert"]).all()
    # Described positions of a token-set rule, recounted from each window token decoded on its own.
    windows_12, checked_tokens = causal_windows(dataset, model.tokenizer, examples, max_windows=12), False
    for e, row in zip(plain[:4], frame.itertuples(), strict=True):
        assert row.kind == e.rule.kind
        if e.rule.kind != "tokens":
            continue
        assert row.control_chosen_on in ("random explain contexts", "all stored explain contexts")
        scored = windows_12.valid[:, 1:].clone()
        scored[:, 0] = False
        texts = [[model.tokenizer.decode([t]) for t in w[:-1].tolist()] for w in windows_12.ids]
        hits = torch.tensor([[t in e.rule.tokens for t in w] for w in texts]) & scored
        assert row.n_described == int(hits.sum())
        checked_tokens = True
    assert checked_tokens
    assert ok[["routing_described", "routing_other", "weight_described"]].stack().between(0, 1).all()
    routed = ok["n_described_routed"] > 0
    assert ok.loc[routed, "dla_rank1_rate"].between(0, 1).all()
    # The edited losses are real forwards: equal to a separate run_with_hooks forward of the same edit.
    row = ok.iloc[0]
    ids = windows.ids[:2]
    changes = _loss_changes(
        model, ids, windows.valid[:2], [Intervention("remove", int(row.layer), int(row.expert))]
    )
    with torch.no_grad():
        clean, edited = (
            model(ids),
            model.run_with_hooks(ids, fwd_hooks=remove_experts(model, int(row.layer), [int(row.expert)])),
        )
    loss = [
        torch.nn.functional.cross_entropy(x[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        for x in (clean, edited)
    ]
    real = windows.valid[:2, 1:]
    torch.testing.assert_close(changes[0][real], (loss[1] - loss[0]).abs()[real], atol=1e-4, rtol=1e-4)
    summary = result.summary.set_index("quantity")
    assert {"remove_effect", "control_remove_effect", "remove_labeled_minus_control", "boost_effect",
            "routing_described", "control_routing_described", "dla_rank1_rate"} <= set(summary.index)  # fmt: skip
    assert summary.loc["dla_rank1 chance (1/k)", "mean"] == 0.5
    assert {"remove_labeled_minus_control_weight_adjusted", "boost_labeled_minus_control_weight_adjusted",
            "dla_rank1_rate labeled - control"} <= set(summary.index)  # fmt: skip
    # Per group of label kinds: one summary per group present among the checked experts, below
    # min_documents (20 here) documents without an interval.
    groups = set(ok["kind group"])
    assert set(result.by_kind["kind group"]) == groups
    assert result.by_kind["interval"].str.startswith("unavailable").all()
    assert result.by_kind["interval"].str.contains("at least 20").all()
    assert not len(result.balanced) or result.balanced["interval"].str.contains("at least 20").all()
    for group in groups:
        part = result.by_kind[result.by_kind["kind group"] == group].set_index("quantity")
        mine = ok[ok["kind group"] == group]["remove_labeled_minus_control_weight_adjusted"]
        assert part.loc["remove_labeled_minus_control_weight_adjusted", "mean"] == pytest.approx(mine.mean())
    # 12 windows come from at most 12 documents: no interval, the reason given, never a number.
    assert result.n_documents <= 12 and summary["ci low"].isna().all()
    assert (
        summary.loc["remove_effect", "interval"].startswith("unavailable")
        and "at least 20" in (summary.loc["remove_effect", "interval"])
    )


def test_examples_merge_exactly_like_one_pass():
    """Batches split over two accumulators (alternating), one saved and restored, merged: equal to the
    single pass in every kept context, sample, random context and count (what makes resume and
    sharding exact)."""
    from tl_moe.explain import ExpertExamplesAccumulator

    single, _ = _planted_examples(max_tokens=6_000)
    holder: list = []

    def make_split(*args):
        holder.extend([ExpertExamplesAccumulator(*args), ExpertExamplesAccumulator(*args)])
        holder[1]._args = args
        return holder[0]

    _planted_examples(max_tokens=6_000, make=make_split, split_to=_Lazy(holder))
    first, second = holder
    restored = ExpertExamplesAccumulator(*second._args)
    restored.load_state_dict(second.state_dict())
    merged = first.merge(restored).finalize()
    for name in ("top_scores", "top_payload", "sample_scores", "sample_payload", "random_payload",
                 "routed_concept", "routed_total", "concept_total", "token_total", "out_sum"):  # fmt: skip
        assert torch.equal(getattr(merged, name), getattr(single, name)), name


class _Lazy:
    """A two-element sequence view of a list that is filled once the accumulators are built."""

    def __init__(self, holder: list) -> None:
        self.holder = holder

    def __len__(self) -> int:
        return len(self.holder)

    def __getitem__(self, i: int):
        return self.holder[i]


def test_top_contexts_carry_each_tokens_routing_weight_recomputed_by_hand():
    """The planted routing's weights are a hash of the stream token id, so every position of a kept
    context can be recomputed: the expert's weight where it was chosen, 0 where it was not."""
    from tl_moe.collect import uniform_priority

    examples, tokenizer = _planted_examples(max_tokens=6_000)
    layer, checked = 0, 0
    for expert in (0, 7):
        contexts = examples.top_contexts(layer, expert, tokenizer, n=3)
        assert len(contexts) == 3
        saliency = [c.activation for c, _ in contexts]
        assert saliency == sorted(saliency, reverse=True)
        for context, weights in contexts:
            assert len(weights) == len(context.tokens)
            tokens = torch.tensor([context.token_index - context.target + j for j in range(len(weights))])
            first = (uniform_priority(tokens, 10) * 16).long()
            second = (first + 1 + (uniform_priority(tokens, 20) * 15).long()) % 16
            w = 0.3 + 0.4 * uniform_priority(tokens, 30).float()
            expected = torch.where(first == expert, w, torch.where(second == expert, 1 - w, 0.0))
            assert torch.allclose(torch.tensor(weights), expected, atol=1e-6)
            assert context.marks == tuple(bool(m) for m in (expected > 0).tolist())
            checked += int((expected > 0).sum())
    assert checked > 6
    sample = examples.saliency_sample(layer, 0)
    assert len(sample) > 0 and bool((sample > 0).all())
