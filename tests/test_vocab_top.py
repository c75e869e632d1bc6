"""The screened top-n of a vocabulary's logits equals ``torch.topk`` value for value, ties included."""

from __future__ import annotations

import pytest
import torch

from tl_moe.analysis._vocab_top import BLOCK, vocab_topk


def _same_as_topk(logits: torch.Tensor, n: int) -> None:
    values, indices = vocab_topk(logits, n)
    expected = logits.topk(n, dim=-1)
    assert torch.equal(indices, expected.indices)
    assert torch.allclose(values, expected.values, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("vocab", [BLOCK * 40, BLOCK * 40 + 17, 1000])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_random_rows_rank_as_topk(vocab, n):
    """Distinct logits: the screen's answer is topk's (whole blocks and a ragged tail)."""
    logits = torch.randn(300, vocab, generator=torch.Generator().manual_seed(vocab + n))
    _same_as_topk(logits, n)


def test_top_tokens_in_one_block_and_in_the_tail():
    """Planted: the whole top-n in a single block (the other chosen blocks hold none), or in the tail."""
    vocab = BLOCK * 20 + 5
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(0))
    logits[0, 3 * BLOCK : 3 * BLOCK + 4] = torch.tensor([10.0, 12.0, 11.0, 9.0])
    logits[1, -5:] = torch.tensor([8.0, 9.0, 10.0, 11.0, 12.0])
    logits[2, [0, vocab - 1]] = torch.tensor([20.0, 19.0])
    top = vocab_topk(logits, 3)[1]
    assert top[0].tolist() == [3 * BLOCK + 1, 3 * BLOCK + 2, 3 * BLOCK]
    assert top[1].tolist() == [vocab - 1, vocab - 2, vocab - 3]
    assert top[2, :2].tolist() == [0, vocab - 1]
    _same_as_topk(logits, 3)


def test_ties_and_non_finite_rows_are_broken_as_topk_breaks_them():
    """Tied logits (duplicated tokens, a constant row, a tie at the cut) and NaN / inf rows fall back to
    topk on the whole row, so even its arbitrary tie order is reproduced."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, BLOCK * 30, generator=g)
    logits[0, [5, 700, 1500]] = 7.0  # three-way tie at the top
    logits[1] = 0.25  # every logit equal
    logits[2, [10, 900]] = torch.tensor([9.0, 8.0])
    logits[2, [11, 1200]] = 7.0  # tie at the cut between the 3rd and 4th
    logits[3, 77] = float("nan")
    logits[4, [1, 2]] = float("inf")
    logits[5, 3] = float("-inf")
    _same_as_topk(logits, 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_dtypes_rank_as_topk(dtype):
    """bfloat16 / float16 logits have many ties: those rows go to topk, the rest are screened."""
    logits = torch.randn(200, BLOCK * 50, generator=torch.Generator().manual_seed(2)).to(dtype)
    _same_as_topk(logits, 3)


def test_small_vocabulary_and_no_rows():
    """Too few blocks to screen, or no rows: topk itself."""
    logits = torch.randn(5, BLOCK * 3)
    _same_as_topk(logits, 3)
    values, indices = vocab_topk(torch.zeros(0, 5000), 3)
    assert values.shape == indices.shape == (0, 3) and indices.dtype == torch.long
