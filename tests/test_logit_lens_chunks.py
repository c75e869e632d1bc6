"""The logit lens ranks the whole vocabulary in chunks of rows: the result does not depend on them."""

from __future__ import annotations

import pytest
import torch

from tl_moe.analysis.logit_lens_accumulator import top_n_vocab
from tl_moe.analysis.readout import LogitReadout


def random_readout(vocab=1000, d_model=16, seed=0, centered=True, logit_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return LogitReadout(
        unembed=torch.randn(vocab, d_model, generator=g),
        unembed_bias=None,
        gain=torch.rand(d_model, generator=g) + 0.5,
        norm_bias=None,
        centered=centered,
        eps=1e-5,
        logit_scale=logit_scale,
    )


@pytest.mark.parametrize(("centered", "logit_scale"), [(True, 1.0), (False, 1.0), (True, -0.5)])
def test_chunked_top_n_equals_the_whole_vocabulary_ranked_at_once(centered, logit_scale):
    """A negative scale (not met in models) reverses the ranking: the scale is applied, not assumed 1."""
    readout = random_readout(centered=centered, logit_scale=logit_scale)
    rows = torch.randn(37, 16, generator=torch.Generator().manual_seed(1))
    # Independent reference: every logit at once, by hand, sorted.
    x = rows - rows.mean(-1, keepdim=True) if centered else rows
    logits = (x * readout.gain) @ readout.unembed.T * readout.logit_scale
    expected = logits.argsort(dim=-1, descending=True)[:, :5]
    whole = top_n_vocab(readout, rows, 5, logits_per_chunk=rows.shape[0] * readout.d_vocab)
    assert torch.equal(whole, expected)
    for logits_per_chunk in (1, readout.d_vocab, 3 * readout.d_vocab + 7, None):
        assert torch.equal(top_n_vocab(readout, rows, 5, logits_per_chunk=logits_per_chunk), expected)


def test_no_rows_give_an_empty_ranking():
    readout = random_readout()
    top = top_n_vocab(readout, torch.zeros(0, 16), 3)
    assert top.shape == (0, 3) and top.dtype == torch.long
