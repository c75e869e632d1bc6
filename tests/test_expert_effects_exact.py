"""The one exact-effect accumulator against brute force on a tiny random OLMoE: every expert's zeroing
effect from forwards of the whole model with that expert's output weights set to zero, and its removal
effect from whole-model forwards with the router unable to pick it, per document and per domain (the
values the per-expert ``ExpertEffects`` and the per-document ``DocumentEffects`` gave before they were
one)."""

from __future__ import annotations

from contextlib import contextmanager

import datasets
import pytest
import torch

from test_resumed_forwards import Batches, per_token_loss
from tl_moe.collect import ExpertEffects, collect
from tl_moe.interventions import remove_experts

SEQ_LEN, BATCH, N_DOCS = 12, 3, 10
DOMAINS = ("a", "b")


def corpus() -> datasets.Dataset:
    """Documents of varied length (short ones leave padding) in two domains."""
    generator = torch.Generator().manual_seed(11)
    texts = []
    for _ in range(N_DOCS):
        length = int(torch.randint(3, 2 * SEQ_LEN, (1,), generator=generator))
        texts.append(" ".join(f"w{w}" for w in torch.randint(3, 90, (length,), generator=generator).tolist()))
    return datasets.Dataset.from_dict({"text": texts, "domain": [DOMAINS[i % 3 == 0] for i in range(N_DOCS)]})


@contextmanager
def zeroed_output(model, layer: int, expert: int):
    """The expert's down projection set to zero (its output is zero wherever it is routed)."""
    weights = model.original_model.model.layers[layer].mlp.experts.down_proj
    saved = weights.data[expert].clone()
    weights.data[expert] = 0
    try:
        yield
    finally:
        weights.data[expert] = saved


def token_loss(model, meta, hooks=()) -> torch.Tensor:
    """Next-token loss of every position of the batch from one whole-model forward (0 at the last)."""
    return per_token_loss(model, meta, list(hooks)).double()


def valid_positions(meta) -> torch.Tensor:
    mask = meta.attention_mask
    valid = torch.zeros_like(mask)
    valid[:, :-1] = mask[:, :-1] & mask[:, 1:]
    return valid


def brute_force(model, metas, kind: str, layer: int, expert: int) -> torch.Tensor:
    """``[document]`` Σ of ``loss(edited) − loss(clean)`` over each document's valid positions."""
    sums = torch.zeros(N_DOCS, dtype=torch.float64)
    for meta in metas:
        valid = valid_positions(meta)
        if kind == "zero":
            with zeroed_output(model, layer, expert):
                edited = token_loss(model, meta)
        else:
            edited = token_loss(model, meta, remove_experts(model, layer, [expert]))
        change = edited - token_loss(model, meta)
        sums.index_add_(0, meta.doc_index[valid].long(), change[valid])
    return sums


@pytest.fixture(scope="module")
def exact(tiny_bridge):
    model = tiny_bridge("olmoe")
    done = collect(
        model,
        corpus(),
        {"effects": ExpertEffects(kinds=("remove", "zero")), "batches": Batches()},
        batch_size=BATCH,
        seq_len=SEQ_LEN,
        progress=False,
    )
    return model, done["effects"], done["batches"]


def test_per_document_and_per_domain_effects_equal_brute_force(exact):
    model, result, metas = exact
    assert sum(int((~meta.attention_mask).sum()) for meta in metas) > 0  # padding is exercised
    domain_of = torch.tensor([int(d == "b") for d in (DOMAINS[i % 3 == 0] for i in range(N_DOCS))])
    counts = torch.zeros(N_DOCS, dtype=torch.long)
    clean = torch.zeros(N_DOCS, dtype=torch.float64)
    for meta in metas:
        valid = valid_positions(meta)
        docs = meta.doc_index[valid].long()
        counts.index_add_(0, docs, torch.ones_like(docs))
        clean.index_add_(0, docs, token_loss(model, meta)[valid])
    assert torch.equal(result.counts[:N_DOCS], counts) and int(result.counts[N_DOCS:].sum()) == 0
    assert result.domain_names == DOMAINS and result.resumed
    n_tokens = torch.zeros(2, dtype=torch.long).index_add(0, domain_of, counts)
    assert torch.equal(result.n_tokens, n_tokens)
    torch.testing.assert_close(
        result.clean_loss, torch.zeros(2, dtype=torch.float64).index_add(0, domain_of, clean)
    )
    for k, kind in enumerate(result.kinds):
        for li, layer in enumerate(result.layers):
            for expert in range(model.moe_cfg.num_experts):
                expected = brute_force(model, metas, kind, layer, expert)
                # per document (what DocumentEffects gave) ...
                torch.testing.assert_close(result.sums[k, li, expert, :N_DOCS], expected, atol=1e-5, rtol=0)
                # ... and per domain, and over all (what ExpertEffects gave); float32 forwards differ by
                # up to 1e-5 per document, so a domain's sum of its documents by up to N_DOCS times that
                per_domain = torch.zeros(2, dtype=torch.float64).index_add(0, domain_of, expected)
                torch.testing.assert_close(
                    result.loss_change[k, li, expert], per_domain, atol=N_DOCS * 1e-5, rtol=0
                )
                mean = per_domain / n_tokens
                torch.testing.assert_close(result.mean_loss_change[k, li, expert], mean, atol=1e-6, rtol=0)


def test_an_expert_that_is_never_routed_has_no_zeroing_effect(exact):
    """Planted null: zeroing changes only the positions routed to the expert, so its routed sums are its
    whole sums, and an expert with no routed position (if any) has exactly zero effect."""
    _, result, _ = exact
    zero = result.kinds.index("zero")
    last = len(result.layers) - 1  # after the last sparse block only routed positions can change
    torch.testing.assert_close(
        result.loss_change[zero, last], result.loss_change_routed[zero, last], atol=1e-9, rtol=0
    )
    never = result.n_routed[last].sum(-1) == 0
    assert torch.equal(result.sums[zero, last][never], torch.zeros_like(result.sums[zero, last][never]))


def test_the_token_budget_keeps_the_first_batches_exactly(tiny_bridge):
    """``max_tokens`` stops the edited forwards after the batch that crosses it; what was kept equals the
    same batches of an uncapped pass (a pass over only those documents)."""
    model = tiny_bridge("olmoe")
    capped = ExpertEffects(kinds=("zero",), max_tokens=1)
    whole = ExpertEffects(kinds=("zero",))
    batches = Batches()
    collect(
        model,
        corpus(),
        {"c": capped, "w": whole, "b": batches},
        batch_size=BATCH,
        seq_len=SEQ_LEN,
        progress=False,
    )
    first = batches.metas[0]
    kept = capped.finalize()
    assert capped.seen == int(first.n_tokens)
    seen_docs = torch.unique(first.doc_index[valid_positions(first)].long())
    assert set(torch.nonzero(kept.counts).flatten().tolist()) <= set(seen_docs.tolist())
    assert int(kept.counts.sum()) == int(valid_positions(first).sum())
    assert int(kept.counts.sum()) < int(whole.finalize().counts.sum())
