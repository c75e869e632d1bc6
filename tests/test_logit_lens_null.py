"""The controlled logit-lens finding (share of experts ranking a token first, trained vs untrained).

Planted per-document expert outputs with an identity lens (d_model = vocabulary, logits = output):
- the share and its bootstrap statistic equal a hand count of argmaxes under document weights;
- the token is chosen on the selection documents of the document split and counted on the test ones:
  with no lean at all (planted no effect), the held-out share stays at chance while the share counted
  on the documents that chose the token is inflated;
- two models whose experts lean to the same tokens (no effect of training): the trained − untrained
  interval covers 0 over seeds;
- a trained model whose experts lean to token 0 against an untrained one without the lean: found;
- models fed other documents: no paired difference, with the reason.
"""

from __future__ import annotations

import numpy as np
import torch

from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensResult
from tl_moe.analysis.logit_lens_null import top1_share_statistic, top_token_share

VOCAB, EXPERTS, DOCS = 5, 24, 90


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def planted_lens(lean: torch.Tensor, seed: int, docs: torch.Tensor | None = None) -> ExpertLogitLensResult:
    """One layer of EXPERTS experts; expert e's output on a routed token is lean[e] + unit noise;
    each document routes 20-40 tokens to each expert."""
    generator = torch.Generator().manual_seed(seed)
    n = torch.randint(20, 40, (DOCS, 1, EXPERTS), generator=generator)
    noise = torch.randn(DOCS, 1, EXPERTS, VOCAB, generator=generator) * n[..., None].double().sqrt()
    out = lean[None, None] * n[..., None] + noise
    mean = out.sum(0) / n.sum(0)[..., None]
    top = mean.topk(3, dim=-1)
    return ExpertLogitLensResult(
        layers=(0,),
        top_n=3,
        token_groups=None,
        topn_counts=torch.zeros(1, EXPERTS, VOCAB).to_sparse(),
        n_routed=n.sum(0),
        dla_sum=torch.zeros(1, EXPERTS, dtype=torch.float64),
        n_dla=torch.zeros(1, EXPERTS, dtype=torch.long),
        top_token_ids=top.indices,
        top_token_logits=top.values,
        doc_ids=torch.arange(DOCS) if docs is None else docs,
        doc_out_sum=out.float(),
        doc_n_routed=n,
    )


def leaning(strength: float, seed: int) -> torch.Tensor:
    """Expert e leans to token e % VOCAB, half of them (strength) also to token 0."""
    lean = torch.zeros(EXPERTS, VOCAB, dtype=torch.float64)
    lean[torch.arange(EXPERTS), torch.arange(EXPERTS) % VOCAB] = 0.3
    lean[: EXPERTS // 2, 0] += strength
    return lean


def test_the_statistic_counts_argmaxes_under_document_weights_by_hand():
    lens = planted_lens(leaning(0.2, 0), seed=0)
    statistic = top1_share_statistic(lens, identity, token=0)
    weights = np.random.default_rng(0).integers(0, 3, (4, DOCS)).astype(float)
    for w, got in zip(weights, statistic(weights), strict=True):
        summed = np.tensordot(w, lens.doc_out_sum.double().numpy()[:, 0], axes=1)  # [expert, vocab]
        present = np.tensordot(w, lens.doc_n_routed.numpy()[:, 0], axes=1) > 0
        assert got == np.mean(summed[present].argmax(-1) == 0)
    assert statistic(np.ones((1, DOCS)))[0] == np.mean(lens.top_token_ids[0, :, 0].numpy() == 0)


def test_no_effect_of_training_gives_a_difference_covering_zero():
    covered = 0
    for seed in range(12):
        lean = leaning(0.25, seed)  # the same leaning experts in both models, independent documents' noise
        share = top_token_share(
            planted_lens(lean, seed),
            identity,
            planted_lens(lean, 100 + seed),
            identity,
            n_resamples=300,
            seed=seed,
        )
        covered += int(share.difference.covers(0.0))
    assert covered >= 10  # 95% nominal over 12 seeds; measured 59 of 60 seeds (300 resamples)


def test_a_token_favoured_by_training_is_found():
    share = top_token_share(
        planted_lens(leaning(0.6, 0), 0),
        identity,
        planted_lens(leaning(0.0, 0), 1),
        identity,
        n_resamples=300,
    )
    assert share.token == 0 and share.trained.estimate >= 0.5 and share.held_out
    assert (
        share.selection_documents + share.test_documents == DOCS and share.trained.n == share.test_documents
    )
    assert share.difference.low > 0.2  # half the experts lean to token 0 in the trained model only
    assert share.untrained_own_top_share < share.trained.estimate


def test_models_fed_other_documents_have_no_paired_difference():
    lean = leaning(0.6, 0)
    share = top_token_share(
        planted_lens(lean, 0),
        identity,
        planted_lens(lean, 1, torch.arange(DOCS) + 500),
        identity,
        n_resamples=100,
    )
    assert share.trained.available and share.untrained.available
    assert not share.difference.available and "same documents" in share.difference.reason


def test_the_token_is_chosen_on_selection_documents_and_counted_on_test_documents_only():
    """No expert leans to any token: each expert's top-1 is document noise, so a token chosen on the
    selection documents is the top-1 of a chance share (1 / VOCAB) of experts on the test documents;
    counted on the documents that chose it, its share is inflated by the choice."""
    covered, inflated, held = 0, [], []
    for seed in range(12):
        lean = torch.zeros(EXPERTS, VOCAB, dtype=torch.float64)
        share = top_token_share(
            planted_lens(lean, seed), identity, n_resamples=300, seed=seed, split_seed=seed
        )
        covered += int(share.trained.covers(1 / VOCAB))
        inflated.append(share.all_documents_share)
        held.append(share.trained.estimate)
    assert covered >= 10  # 95% nominal over 12 seeds
    assert np.mean(inflated) > np.mean(held) + 0.05  # choosing on the reported documents inflates
    assert abs(np.mean(held) - 1 / VOCAB) < 0.05


def test_without_per_document_sums_nothing_is_held_out_and_no_share_is_a_number():
    import dataclasses

    lens = dataclasses.replace(planted_lens(leaning(0.6, 0), 0), doc_out_sum=None, doc_n_routed=None)
    share = top_token_share(lens, identity, n_resamples=100)
    assert not share.held_out and "per-document" in share.reason
    assert np.isnan(share.trained.estimate) and not share.trained.available
    assert share.all_documents_share >= 0.5  # descriptive, on the documents that chose the token


def test_both_models_ranking_one_token_first_equally_give_an_own_token_difference_covering_zero():
    covered, old_found = 0, 0
    for seed in range(12):
        # the untrained model concentrates its experts on token 1 as strongly as training does on token 0:
        # trained − untrained on token 0 alone credits training, the own-token difference must not
        trained_lean = leaning(0.6, seed)
        share = top_token_share(
            planted_lens(trained_lean, seed),
            identity,
            planted_lens(trained_lean.roll(1, dims=1), 100 + seed),
            identity,
            n_resamples=300,
            seed=seed,
        )
        assert share.token == 0 and share.untrained_own.available
        assert share.untrained_own.estimate == share.untrained_own_top_share
        pair = share.own_difference
        assert pair.estimate == share.trained.estimate - share.untrained_own.estimate
        covered += int(pair.covers(0.0))
        old_found += int(share.difference.low > 0)
    assert covered >= 10  # 95% nominal over 12 seeds
    assert old_found == 12  # the trained model's token alone would say training put it there


def test_an_own_token_difference_finds_a_concentration_only_training_made():
    share = top_token_share(
        planted_lens(leaning(0.6, 0), 0),
        identity,
        planted_lens(leaning(0.0, 0), 1),
        identity,
        n_resamples=300,
    )
    assert share.own_difference.low > 0.15  # ~0.6 trained share vs ~0.2 own-token share untrained
    assert share.untrained_own.low <= share.untrained_own_top_share <= share.untrained_own.high


def test_the_finding_rests_on_the_own_token_difference():
    from types import SimpleNamespace

    from tl_moe.pipeline.sections.logit_lens import LogitLensResult

    lean = leaning(0.6, 0)
    share = top_token_share(
        planted_lens(lean, 0), identity, planted_lens(lean.roll(1, dims=1), 1), identity, n_resamples=200
    )
    result = SimpleNamespace(share=share, _shown=lambda: "tok")
    text = LogitLensResult._own_token_verdict(result)
    assert "trained share − that share" in text and "training is not shown to favour `tok`" in text


def test_a_concentration_only_training_made_is_credited_against_the_one_initialization_only():
    """Planted: the trained lens leans on token 0, the untrained one on nothing; the verdict credits
    training, worded for the one random initialization measured, not random weights in general."""
    from types import SimpleNamespace

    from tl_moe.pipeline.sections.logit_lens import LogitLensResult

    share = top_token_share(
        planted_lens(leaning(0.6, 0), 0),
        identity,
        planted_lens(leaning(0.0, 0), 1),
        identity,
        n_resamples=200,
    )
    text = LogitLensResult._own_token_verdict(SimpleNamespace(share=share, _shown=lambda: "tok"))
    assert (
        "training concentrates the experts' top-1 on one token more than this one random initialization"
        in text
    )
    assert "random weights do" not in text
