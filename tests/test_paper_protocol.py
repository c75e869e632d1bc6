"""The paper protocol samples, splits and scores as the paper's reference code does.

Checked against numpy / scikit-learn doing each step on the same tokens: per-document balancing
before routing, a 75/25 split stratified at the unit's class ratio (``train_test_split(stratify=y)``
sizes), neurons ranked on train, ``LogisticRegression(class_weight="balanced")`` on the top k,
``f1_score`` on the test split; and on planted units whose F1 at the routed class ratio is known.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.concept_probing import expert_activation_block, probe_experts
from tl_moe.analysis.probing import STATUS_OK, KSparseProbe
from tl_moe.analysis.probing_math import balance_per_document, stratified_split
from tl_moe.models.hook_names import get_act_name


def sklearn_class_counts(n_pos: int, n_neg: int, seed: int = 0) -> tuple[int, int, int, int]:
    """(train pos, train neg, test pos, test neg) of scikit-learn's stratified 75/25 split."""
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    y_train, y_test = train_test_split(y, test_size=0.25, stratify=y, random_state=seed, shuffle=True)
    return int(y_train.sum()), int((y_train == 0).sum()), int(y_test.sum()), int((y_test == 0).sum())


def sklearn_probe_f1(X, y, train, test, ks):
    """Rank on train with numpy, fit LogisticRegression(class_weight='balanced') per k, F1 on test."""
    separation = np.abs(X[train & y].mean(0) - X[train & ~y].mean(0))
    order = np.argsort(-separation, kind="stable")
    scores = []
    for k in ks:
        cols = order[:k]
        model = LogisticRegression(class_weight="balanced", tol=1e-8, max_iter=2000)
        model.fit(X[train][:, cols], y[train])
        scores.append(f1_score(y[test], model.predict(X[test][:, cols])))
    return np.array(scores), order


# --------------------------------------------------------------------------------------------------
# the sampling steps
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_pos,n_neg", [(50, 50), (51, 400), (137, 62), (1000, 53), (77, 91), (333, 1)])
def test_stratified_split_sizes_are_sklearns(n_pos, n_neg):
    n = n_pos + n_neg
    g = torch.Generator().manual_seed(n)
    positive = torch.zeros(1, n + 7, dtype=torch.bool)
    positive[0, torch.randperm(n + 7, generator=g)[:n_pos]] = True
    member = torch.ones(1, n + 7, dtype=torch.bool)
    member[0, torch.randperm(n + 7, generator=g)[:7]] = False  # 7 tokens the unit did not see
    positive &= member
    n_pos = int(positive.sum())
    order = torch.randperm(n + 7, generator=g)[None]
    train, test = stratified_split(member, positive, order, test_size=0.25)
    assert not (train & test).any() and torch.equal(train | test, member)  # every token, once
    ours = (
        int((train & positive).sum()),
        int((train & ~positive).sum()),
        int((test & positive).sum()),
        int((test & ~positive).sum()),
    )
    # scikit-learn breaks a tie of remainders at random: accept any of its seeds' answers.
    assert ours in {sklearn_class_counts(n_pos, member.sum().item() - n_pos, seed) for seed in range(8)}


def test_stratified_split_takes_the_first_tokens_in_order_for_test():
    member = torch.ones(1, 8, dtype=torch.bool)
    positive = torch.tensor([[True, False, False, True, False, False, False, True]])
    order = torch.tensor([[7, 6, 5, 4, 3, 2, 1, 0]])
    train, test = stratified_split(member, positive, order, test_size=0.25)
    # n = 8 -> 2 test tokens; train: 6 * 3/8 = 2.25 positives, 6 * 5/8 = 3.75 negatives -> 2 + 4.
    # test: one positive (first in order: 7) and one negative (first in order: 6).
    assert test[0].nonzero().flatten().tolist() == [6, 7]


def test_balance_per_document_keeps_every_positive_and_as_many_negatives_per_document():
    g = torch.Generator().manual_seed(0)
    n_docs, per_doc = 40, 30
    doc = torch.arange(n_docs).repeat_interleave(per_doc)[torch.randperm(n_docs * per_doc, generator=g)]
    prevalence = torch.rand(n_docs, generator=g)[doc] * 0.9  # 0 % .. 90 % positives per document
    labels = torch.rand(len(doc), 3, generator=g) < prevalence[:, None] * torch.tensor([1.0, 0.3, 1.5])
    allowed = torch.rand(len(doc), generator=g) < 0.9
    sample = balance_per_document(labels, doc, allowed, seed=4)
    d, lab, ok, kept = doc.numpy(), labels.numpy(), allowed.numpy(), sample.numpy()
    for c in range(3):
        assert (kept[:, c] <= ok).all()  # only allowed tokens
        assert np.array_equal(kept[:, c] & lab[:, c], ok & lab[:, c])  # every allowed positive
        for document in range(n_docs):
            here = ok & (d == document)
            pos, neg = (here & lab[:, c]).sum(), (here & ~lab[:, c]).sum()
            assert (kept[:, c] & here & ~lab[:, c]).sum() == min(pos, neg)
    assert torch.equal(sample, balance_per_document(labels, doc, allowed, seed=4))
    assert not torch.equal(sample, balance_per_document(labels, doc, allowed, seed=5))


def test_balance_per_document_draws_negatives_uniformly():
    # One document: 2 positives, 8 negatives -> each negative is kept with probability 2/8.
    labels = torch.tensor([True, True] + [False] * 8)[:, None]
    doc, allowed = torch.zeros(10, dtype=torch.long), torch.ones(10, dtype=torch.bool)
    kept = torch.stack([balance_per_document(labels, doc, allowed, seed=s)[:, 0] for s in range(800)])
    assert (kept[:, :2]).all() and (kept[:, 2:].sum(1) == 2).all()
    np.testing.assert_allclose(kept[:, 2:].double().mean(0).numpy(), 0.25, atol=0.06)


# --------------------------------------------------------------------------------------------------
# KSparseProbe(sampling="all") against scikit-learn, and planted units
# --------------------------------------------------------------------------------------------------
def imbalanced_units(seed=0, units=4, tokens=3000, neurons=12):
    """Units that see concept 0 (30 % of tokens) at about 7 %, 20 %, 35 % and 59 % (routing-like
    class ratios): each keeps a positive / a negative token with its own probability."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(tokens, 2, generator=g) < torch.tensor([0.3, 0.15])
    keep_pos = torch.tensor([0.15, 0.4, 0.7, 1.0])[:units, None]
    keep_neg = torch.tensor([0.8, 0.7, 0.55, 0.3])[:units, None]
    keep = torch.where(labels[:, 0][None], keep_pos, keep_neg)
    unit_mask = torch.rand(units, tokens, generator=g) < keep
    acts = torch.randn(units, tokens, neurons, generator=g, dtype=torch.float64)
    acts[:, :, 0] += labels[:, 0].double() * 1.2
    acts[:, :, 1] += labels[:, 1].double() * 0.8
    return acts, labels, unit_mask


def test_probe_on_every_routed_token_matches_sklearn_on_the_same_split():
    acts, labels, unit_mask = imbalanced_units()
    probe = KSparseProbe(ks=(1, 2, 4), min_examples=50, sampling="all", dtype=torch.float64)
    probe.fit(acts, labels, unit_mask)
    train, test = probe.train_test_masks(labels, unit_mask)
    checked = 0
    for u in range(acts.shape[0]):
        for c in range(labels.shape[1]):
            if probe.status_[u, c] != STATUS_OK:
                continue
            seen, y = unit_mask[u].numpy(), labels[:, c].numpy()
            tr, te = train[u, c].numpy(), test[u, c].numpy()
            assert np.array_equal(tr | te, seen) and not (tr & te).any()  # every token the unit saw
            n_pos, n_neg = int((seen & y).sum()), int((seen & ~y).sum())
            assert (probe.n_pos_[u, c], probe.n_neg_[u, c]) == (n_pos, n_neg)
            counts = (int((tr & y).sum()), int((tr & ~y).sum()), int((te & y).sum()), int((te & ~y).sum()))
            assert counts in {sklearn_class_counts(n_pos, n_neg, s) for s in range(4)}
            expected, order = sklearn_probe_f1(acts[u].numpy(), y, tr, te, probe.ks_)
            np.testing.assert_allclose(probe.f1_[u, c].numpy(), expected, atol=1e-9)
            assert probe.top_neurons_[u, c].tolist() == order[:4].tolist()
            checked += 1
    assert checked >= 6


def test_probe_f1_over_seeds_agrees_with_sklearns_own_stratified_splits():
    """The same tokens; scikit-learn draws its own splits (train_test_split(stratify=y)): mean F1
    over 12 seeds each agrees within the seeds' noise."""
    acts, labels, unit_mask = imbalanced_units(seed=1, units=2)
    u, c = 0, 0  # the 8 % unit: where F1 at the routed ratio and F1 on a balanced split differ most
    X, y = acts[u][unit_mask[u]].numpy(), labels[unit_mask[u], c].numpy()
    ours, theirs = [], []
    for seed in range(12):
        probe = KSparseProbe(ks=(2,), min_examples=50, sampling="all", random_state=seed).fit(
            acts[u : u + 1], labels[:, c : c + 1], unit_mask[u : u + 1]
        )
        ours.append(float(probe.f1_[0, 0, 0]))
        idx_train, idx_test = train_test_split(
            np.arange(len(y)), test_size=0.25, stratify=y, random_state=seed, shuffle=True
        )
        tr, te = np.zeros(len(y), bool), np.zeros(len(y), bool)
        tr[idx_train], te[idx_test] = True, True
        theirs.append(sklearn_probe_f1(X, y, tr, te, (2,))[0][0])
    ours, theirs = np.array(ours), np.array(theirs)
    spread = np.hypot(ours.std(ddof=1), theirs.std(ddof=1)) / np.sqrt(12)
    assert abs(ours.mean() - theirs.mean()) < 3 * spread + 0.005, (ours.mean(), theirs.mean())


def test_planted_unit_scores_f1_at_its_routed_class_ratio():
    """One neuron: positives N(1, 1), negatives N(0, 1), 20 % positives. The class-weighted probe's
    threshold is 0.5, so TPR = Φ(0.5), FPR = 1 − Φ(0.5); F1 at the routed ratio is
    2·p·TPR / (2·p·TPR + (1 − p)·FPR + p·(1 − TPR)) = 0.473, while a balanced test set gives 0.691."""
    g = torch.Generator().manual_seed(3)
    n, p = 24_000, 0.2
    labels = (torch.arange(n) < int(p * n))[:, None]
    acts = torch.randn(1, n, 1, generator=g, dtype=torch.float64) + labels.T[..., None].double()
    tpr, fpr = norm.cdf(0.5), 1 - norm.cdf(0.5)
    at_ratio = 2 * p * tpr / (2 * p * tpr + (1 - p) * fpr + p * (1 - tpr))
    balanced = 2 * tpr / (2 * tpr + fpr + 1 - tpr)
    assert at_ratio == pytest.approx(0.4727, abs=1e-3) and balanced == pytest.approx(0.6915, abs=1e-3)
    routed = KSparseProbe(ks=(1,), sampling="all").fit(acts, labels).f1_[0, 0, 0].item()
    resampled = KSparseProbe(ks=(1,), sampling="balanced").fit(acts, labels).f1_[0, 0, 0].item()
    assert routed == pytest.approx(at_ratio, abs=0.03)
    assert resampled == pytest.approx(balanced, abs=0.03)


def test_planted_noise_units_score_no_better_than_always_positive_at_their_ratio():
    """No signal, 15 % positives: any probe's F1 is at most 2p / (1 + p) = 0.26 in expectation (saying
    "positive" always); the balanced protocol would score the same units near 0.5."""
    g = torch.Generator().manual_seed(4)
    n, p = 4000, 0.15
    labels = (torch.rand(n, generator=g) < p)[:, None]
    acts = torch.randn(8, n, 6, generator=g)
    routed = KSparseProbe(ks=(1, 4), sampling="all").fit(acts, labels).f1_
    resampled = KSparseProbe(ks=(1, 4), sampling="balanced").fit(acts, labels).f1_
    ceiling = 2 * p / (1 + p)
    assert routed.mean() < ceiling + 0.03, routed
    assert resampled.mean() > 0.4, resampled


def test_sampling_options_are_checked():
    acts, labels, unit_mask = imbalanced_units(units=2)
    with pytest.raises(ValueError, match="sampling must be one of"):
        KSparseProbe(sampling="stratified").fit(acts, labels, unit_mask)
    with pytest.raises(ValueError, match="needs sampling='balanced'"):
        KSparseProbe(sampling="all", max_examples_per_class=100).fit(acts, labels, unit_mask)
    with pytest.raises(ValueError, match="token_mask must be a bool tensor"):
        KSparseProbe(sampling="all").fit(acts, labels, unit_mask, token_mask=labels[:, :1])


# --------------------------------------------------------------------------------------------------
# the whole paper path: probe_experts on stored tokens
# --------------------------------------------------------------------------------------------------
def routed_store(seed=0, n_docs=80, per_doc=50, experts=4, width=10) -> StoredTokens:
    """One sparse layer, top-1 routing that prefers expert 0 for concept "a" (so experts see it at
    different class ratios); neuron 0 of every expert carries concept "a"."""
    g = torch.Generator().manual_seed(seed)
    n = n_docs * per_doc
    doc = torch.arange(n_docs).repeat_interleave(per_doc)
    labels = (
        torch.rand(n, 2, generator=g)
        < torch.tensor([0.25, 0.1]) * torch.rand(n_docs, generator=g)[doc, None] * 2
    )
    logits = torch.randn(n, experts, generator=g)
    logits[:, 0] += labels[:, 0].float() * 1.5
    indices = logits.argmax(1, keepdim=True)
    post = torch.randn(n, 1, width, generator=g)
    post[:, 0, 0] += labels[:, 0].float() * 1.0
    return StoredTokens(
        token_index=torch.arange(n),
        input_ids=torch.zeros(n, dtype=torch.long),
        domain=torch.zeros(n, dtype=torch.long),
        labels=labels,
        rows={get_act_name("expert_post", 0): post.half(), get_act_name("topk_indices", 0): indices},
        domain_names=("prose",),
        concept_names=("a", "b"),
        doc_index=doc,
    )


def test_probe_experts_is_sklearn_on_the_per_document_sample_of_each_experts_routed_tokens():
    stored = routed_store()
    params = {"ks": (1, 2), "min_examples": 50, "random_state": 7}
    frame = probe_experts(stored, [0], 4, params, min_positives=50, progress=False)
    post = stored.rows[get_act_name("expert_post", 0)]
    block, routed = expert_activation_block(post, stored.rows[get_act_name("topk_indices", 0)], range(4))
    everyone = torch.ones(len(stored.doc_index), dtype=torch.bool)
    sample = balance_per_document(stored.labels, stored.doc_index, everyone, seed=8)
    train, test = KSparseProbe(**params, sampling="all").train_test_masks(stored.labels, routed, sample)
    ratios, checked = [], 0
    for e in range(4):
        for c, name in enumerate(("a", "b")):
            seen = (routed[e] & sample[:, c]).numpy()
            y = stored.labels[:, c].numpy()
            rows = frame[(frame.expert == e) & (frame.concept == name)].sort_values("k")
            assert (rows.n_pos == (seen & y).sum()).all() and (rows.n_neg == (seen & ~y).sum()).all()
            if rows.status.iloc[0] != "ok":
                assert rows.f1.isna().all()
                continue
            tr, te = train[e, c].numpy(), test[e, c].numpy()
            assert np.array_equal(tr | te, seen)
            expected, _ = sklearn_probe_f1(block[e].double().numpy(), y, tr, te, (1, 2))
            np.testing.assert_allclose(rows.f1.to_numpy(), expected, atol=0.01)
            ratios.append((seen & y).sum() / seen.sum())
            checked += 1
    assert checked >= 5
    assert max(ratios) - min(ratios) > 0.2  # routing left the experts different class ratios


def test_probe_experts_needs_document_ids():
    stored = routed_store(n_docs=20)
    stored = dataclasses.replace(stored, doc_index=None)
    with pytest.raises(ValueError, match="need document ids"):
        probe_experts(stored, [0], 4, {"ks": (1,)}, min_positives=10, progress=False)
