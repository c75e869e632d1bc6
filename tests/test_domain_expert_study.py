"""The domain-expert study and re-weighting's choices, as a notebook calls them (no pipeline):
per-document routing counted by hand, a planted domain expert found when a domain without tokens is
left out, a planted no-effect case with none found, and the steering contrast and candidate sets."""

import datasets
import numpy as np
import pytest
import torch

from tl_moe.analysis import DomainExpertStudy, Statistics, StoredTokens, steering_contrast
from tl_moe.analysis.domain_expert_study import per_document_routing
from tl_moe.analysis.expert_reweighting import candidate_sets, held_out_capacity
from tl_moe.models.hook_names import get_act_name

LAYERS = (1, 3)
N_EXPERTS = 4


def _stored(doc_of_token, domain_of_doc, topk) -> StoredTokens:
    """Tokens of documents ``doc_of_token`` with ``topk [token, layer, k]`` routing per layer."""
    doc = torch.as_tensor(doc_of_token)
    rows = {get_act_name("topk_indices", layer): topk[:, i] for i, layer in enumerate(LAYERS)}
    return _tokens(torch.as_tensor(domain_of_doc)[doc], rows, doc)


def _tokens(domain, rows, doc) -> StoredTokens:
    n = len(doc)
    return StoredTokens(
        token_index=torch.arange(n),
        input_ids=torch.zeros(n, dtype=torch.long),
        domain=domain,
        labels=None,
        rows=rows,
        domain_names=("a", "b", "c"),
        concept_names=None,
        doc_index=doc,
    )


def test_per_document_routing_counts_each_documents_routing_by_hand():
    rng = np.random.default_rng(0)
    doc_of_token = rng.integers(0, 5, 60)
    domain_of_doc = [0, 2, 0, 1, 2]  # domain 1 ("b") is absent from the study
    topk = torch.from_numpy(rng.integers(0, N_EXPERTS, (60, len(LAYERS), 2)))
    present = torch.tensor([True, False, True])
    counts, tokens, domain = per_document_routing(
        _stored(doc_of_token, domain_of_doc, topk), LAYERS, N_EXPERTS, present
    )
    kept = [d for d in range(5) if domain_of_doc[d] != 1]
    assert domain.tolist() == [{0: 0, 2: 1}[domain_of_doc[d]] for d in kept]
    for row, d in enumerate(kept):
        mine = doc_of_token == d
        assert tokens[row] == mine.sum()
        for i in range(len(LAYERS)):
            for e in range(N_EXPERTS):
                assert counts[row, i, e] == int((topk[mine, i] == e).sum())


def _planted(seed: int, preference: bool):
    """40 documents of domains a and c (b has no tokens), 12 tokens each, top-2 routing; with
    ``preference`` expert 0 of the second layer takes every token of domain a and none of c."""
    rng = np.random.default_rng(seed)
    domain_of_doc = np.array([0, 2] * 20)
    doc_of_token = np.repeat(np.arange(40), 12)
    topk = torch.from_numpy(rng.integers(1, N_EXPERTS, (len(doc_of_token), len(LAYERS), 2)))
    topk[:, :, 1] = (topk[:, :, 0] % (N_EXPERTS - 1)) + 1  # two different experts, never 0
    if preference:
        topk[domain_of_doc[doc_of_token] == 0, 1, 0] = 0
    else:
        topk[rng.random(len(doc_of_token)) < 0.5, 1, 0] = 0
    stored = _stored(doc_of_token, domain_of_doc, topk)
    routed = torch.zeros(len(LAYERS), N_EXPERTS, 3, dtype=torch.float64)
    for i in range(len(LAYERS)):
        for d in (0, 2):
            chosen = topk[stored.domain == d, i].flatten()
            routed[i, :, d] = torch.bincount(chosen, minlength=N_EXPERTS).double()
    tokens = torch.tensor([240.0, 0.0, 240.0])
    return routed, tokens, stored


def test_a_planted_domain_expert_is_found_and_a_domain_without_tokens_is_left_out():
    routed, tokens, stored = _planted(1, preference=True)
    study = DomainExpertStudy(statistics=Statistics(permutations=199, seed=3))
    outcome = study(routed, tokens, ["a", "b", "c"], stored, layers=LAYERS, num_experts=N_EXPERTS)
    experts = outcome.experts
    assert experts.domain_names_ == ["a", "c"] and outcome.notes == ()
    assert experts.is_domain_expert_[1, 0] and experts.scores_[1, 0] == pytest.approx(1.0)
    assert experts.n_permutations_ >= 199


def test_with_no_planted_preference_no_expert_is_a_domain_expert():
    routed, tokens, stored = _planted(2, preference=False)
    study = DomainExpertStudy(statistics=Statistics(permutations=199, seed=3))
    outcome = study(routed, tokens, ["a", "b", "c"], stored, layers=LAYERS, num_experts=N_EXPERTS)
    assert not outcome.experts.is_domain_expert_.any() and outcome.experts.q_values_ is not None


def test_too_few_documents_give_no_test_and_a_note():
    routed, tokens, stored = _planted(1, preference=True)
    few = stored.doc_index < 10
    small = _tokens(stored.domain[few], {k: v[few] for k, v in stored.rows.items()}, stored.doc_index[few])
    outcome = DomainExpertStudy()(
        routed, tokens, ["a", "b", "c"], small, layers=LAYERS, num_experts=N_EXPERTS
    )
    assert not outcome.experts.is_domain_expert_.any() and "no significance test" in outcome.notes[0]


def test_the_contrast_given_or_chosen_and_the_candidate_sets():
    assert steering_contrast(("code:en", "fr"), []) == ("code", "en", "fr")
    assert steering_contrast(("x", "y"), []) == (None, "x", "y")
    # planted sizes: z (100 documents) and y (80) reach 30 held-out documents, x (20) cannot
    domains = ["x"] * 20 + ["y"] * 80 + ["z"] * 100
    capacity = held_out_capacity(domains)
    assert {g: n for g, (n, _) in capacity.items()} == {"x": 20, "y": 80, "z": 100}
    assert capacity["x"][1] < 30 <= min(capacity["y"][1], capacity["z"][1])
    assert steering_contrast(None, datasets.Dataset.from_dict({"domain": domains})["domain"]) == (
        None,
        "z",
        "y",
    )
    with pytest.raises(Exception, match="steering needs two domains"):
        steering_contrast(None, ["x"] * 5)
    candidates, frame = candidate_sets({"a": ((1, 2),)}, ((1, 0), (3, 1)), ["b", "a", "a"])
    assert candidates == {
        "a": {
            "domain experts": ((1, 2),),
            "driver experts": ((1, 0), (3, 1)),
            "domain + driver experts": ((1, 0), (1, 2), (3, 1)),
        },
        "b": {"domain experts": (), "driver experts": ((1, 0), (3, 1))},
    }
    assert frame["experts"].tolist() == ["L1E2", "L1E0 L3E1", "L1E0 L1E2 L3E1", "", "L1E0 L3E1"]
