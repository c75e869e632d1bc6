"""Fast paths of the finalize statistics against brute-force references.

- the logit-lens null's top-1 (a float32 screen, near ties recomputed in float64) equals the float64
  argmax of the readout's logits, on random rows, on planted exact ties (duplicated unembedding rows:
  the first token, as ``argmax`` picks), on planted near ties far below float32 resolution, and on
  zero rows;
- the share statistic for two tokens at once equals the one-token statistic for each, and a hand
  count of float64 argmaxes under document weights;
- the permutation baseline's within-document sort equals a full sort of the document + uniform keys,
  with documents interleaved in token order.
"""

from __future__ import annotations

import numpy as np
import torch

from tl_moe.analysis import logit_lens_null
from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensResult
from tl_moe.analysis.logit_lens_null import Top1, top1_share_statistic, top1_shares_statistic
from tl_moe.analysis.readout import LogitReadout
from tl_moe.analysis.specialization_permutation import _DocumentSort, _WholeCountProduct


def readout(vocab: int, d_model: int, centered: bool, seed: int = 0) -> LogitReadout:
    generator = torch.Generator().manual_seed(seed)
    return LogitReadout(
        unembed=torch.randn(vocab, d_model, generator=generator),
        unembed_bias=None,
        gain=torch.rand(d_model, generator=generator) + 0.5,
        norm_bias=None,
        centered=centered,
        eps=1e-6,
        logit_scale=0.7,
    )


def brute_top1(lens: LogitReadout, x: torch.Tensor) -> torch.Tensor:
    return lens.vocab_logits(x.double()).argmax(-1)


def test_the_screened_top1_is_the_float64_argmax_on_random_rows(monkeypatch):
    monkeypatch.setattr(logit_lens_null, "_UNIT_VECTORS_PER_BLOCK", 5)  # the lens matrix in 4 blocks
    for centered in (False, True):
        lens = readout(300, 16, centered)
        x = torch.randn(5, 400, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        top = Top1(lens.vocab_logits, 16)(x)
        assert top.shape == (5, 400)
        assert torch.equal(top, brute_top1(lens, x))


def test_planted_exact_and_near_ties_and_zero_rows_are_ranked_as_the_float64_argmax():
    generator = torch.Generator().manual_seed(2)
    unembed = 0.1 * torch.randn(50, 8, generator=generator)
    unembed[3] = torch.tensor([0.0, 0.0, 2.0, 0, 0, 0, 0, 0])
    unembed[7] = unembed[3]  # an exact tie between tokens 3 and 7: argmax takes the first
    unembed[10] = torch.tensor([1.0, 0.5, 0, 0, 0, 0, 0, 0])
    unembed[11] = torch.tensor([1.0, -0.5, 0, 0, 0, 0, 0, 0])
    lens = LogitReadout(unembed, None, torch.ones(8), None, False, 1e-6, 1.0)
    toward_3 = torch.zeros(20, 8, dtype=torch.float64)
    toward_3[:, 2] = 5.0 + torch.rand(20, generator=generator, dtype=torch.float64)
    # Tokens 10 and 11 lead and differ by t (logits 5 + t / 2 and 5 - t / 2), t far below float32
    # resolution: 10 for t >= 0 (the first on the exact tie t = 0), 11 below.
    offsets = torch.arange(-10, 11, dtype=torch.float64) * 1e-12
    near = torch.zeros(21, 8, dtype=torch.float64)
    near[:, 0], near[:, 1] = 5.0, offsets
    x = torch.cat([toward_3, near, torch.zeros(3, 8, dtype=torch.float64)])
    top = Top1(lens.vocab_logits, 8)(x)
    assert torch.equal(top, brute_top1(lens, x))
    assert (top[:20] == 3).all()  # the first of the tied pair, never 7
    assert torch.equal(top[20:41], torch.where(offsets >= 0, 10, 11))
    assert (top[41:] == 0).all()  # zero rows: every logit 0, the first token


def planted_lens(seed: int, docs: int = 40, experts: int = 6, d_model: int = 8) -> ExpertLogitLensResult:
    generator = torch.Generator().manual_seed(seed)
    n = torch.randint(0, 5, (docs, 1, experts), generator=generator)
    out = torch.randn(docs, 1, experts, d_model, generator=generator) * n[..., None]
    return ExpertLogitLensResult(
        layers=(0,),
        top_n=3,
        token_groups=None,
        topn_counts=torch.zeros(1, experts, 30).to_sparse(),
        n_routed=n.sum(0),
        dla_sum=torch.zeros(1, experts, dtype=torch.float64),
        n_dla=torch.zeros(1, experts, dtype=torch.long),
        top_token_ids=torch.zeros(1, experts, 3, dtype=torch.long),
        top_token_logits=torch.zeros(1, experts, 3, dtype=torch.float64),
        doc_ids=torch.arange(docs),
        doc_out_sum=out,
        doc_n_routed=n,
    )


def test_two_token_shares_equal_one_token_shares_and_a_hand_count():
    lens_data = planted_lens(3)
    lens = readout(30, 8, True, seed=4)
    documents = np.arange(5, 40)
    weights = np.random.default_rng(0).multinomial(35, np.ones(35) / 35, size=50).astype(float)
    both = top1_shares_statistic(lens_data, lens.vocab_logits, (2, 9), documents)(weights)
    for column, token in enumerate((2, 9)):
        one = top1_share_statistic(lens_data, lens.vocab_logits, token, documents)(weights)
        np.testing.assert_array_equal(both[:, column], one)
    # Hand count: each expert's summed output under the weights, its float64 argmax, experts present.
    out = lens_data.doc_out_sum.double()[documents][:, 0]  # [document, expert, d_model]
    n = lens_data.doc_n_routed.double()[documents][:, 0]
    for row, w in enumerate(weights):
        summed = np.einsum("d,dex->ex", w, out.numpy())
        present = (w @ n.numpy()) > 0
        routed = n.numpy().sum(0) > 0
        top = lens.vocab_logits(torch.from_numpy(summed)).argmax(-1).numpy()
        for column, token in enumerate((2, 9)):
            hits = ((top == token) & present & routed).sum()
            assert both[row, column] == hits / max(1, (present & routed).sum())


def test_the_within_document_sort_equals_a_full_sort_of_the_keys():
    generator = torch.Generator().manual_seed(5)
    doc_of_token = torch.randint(0, 12, (500,), generator=generator)  # documents interleaved
    docs, inverse, sizes = torch.unique(doc_of_token, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    values = torch.randint(0, 7, (500,), generator=generator)
    keys = inverse[None].double() + torch.rand(9, 500, generator=generator, dtype=torch.float64)
    fast = _DocumentSort(order, sizes, values).sorted_values(keys)
    assert torch.equal(fast, values[keys.argsort(dim=1)])
    # Tokens already in document order take the path without a gather.
    in_order = torch.sort(inverse).values
    keys = in_order[None].double() + torch.rand(4, 500, generator=generator, dtype=torch.float64)
    sort = _DocumentSort(torch.arange(500), torch.bincount(in_order), values)
    assert sort.identity and torch.equal(sort.sorted_values(keys), values[keys.argsort(dim=1)])


def test_whole_count_products_run_in_float32_only_where_it_is_exact():
    generator = torch.Generator().manual_seed(6)
    counts = torch.randint(0, 3000, (40, 500), generator=generator).float()
    product = _WholeCountProduct(counts)
    weights = torch.from_numpy(np.random.default_rng(1).multinomial(40, np.ones(40) / 40, size=30)).double()
    assert product.exact_in_float32(weights)
    assert torch.equal(product(weights, True), weights @ counts.double())  # the same values
    assert not product.exact_in_float32(weights + 0.5)  # fractional weights: float64
    big = _WholeCountProduct(counts * 1000)  # 40 x 3,000,000 > 2^24: float64
    assert not big.exact_in_float32(weights)
