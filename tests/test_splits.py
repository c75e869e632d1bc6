"""The one document split: sides are disjoint and cover every document, follow the fractions, depend only
on (id, seed, key), and reproduce the three splits it replaced exactly (frozen copies of them below)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_moe.analysis.drivers import HALVES_KEY
from tl_moe.analysis.splits import KEYS, document_split
from tl_moe.collect.hashing import uniform_priority
from tl_moe.errors import InputError
from tl_moe.explain.examples import SPLIT_FRACTIONS, SPLIT_KEY

# --- frozen copies of the replaced splits (not calling the new function) --------------------------


def old_held_out_split(doc_ids: np.ndarray, selection_fraction: float, seed: int) -> np.ndarray:
    """The held-out probing split as it was: True on the selection side."""
    doc_ids = np.asarray(doc_ids).astype(np.int64)
    unique = np.unique(doc_ids)
    with np.errstate(over="ignore"):
        z = unique.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    side = (z >> np.uint64(11)).astype(np.float64) / float(2**53) < selection_fraction
    return side[np.searchsorted(unique, doc_ids)]


def old_document_half(doc_index: torch.Tensor) -> torch.Tensor:
    """The drivers' halves as they were: 0 selection, 1 report."""
    return ((doc_index.long() * 2654435761) % (1 << 32) >= (1 << 31)).long()


def old_explain_split(doc_index: torch.Tensor, fractions, seed: int) -> torch.Tensor:
    """The explanation splits as they were: an index into (explain, score, causal)."""
    bounds = torch.tensor(np.cumsum(fractions)[:-1], dtype=torch.float64)
    priority = uniform_priority(doc_index.clamp(min=0), seed + 7919)
    return torch.bucketize(priority, bounds, right=True)


# A planted document set: scattered, repeated and large row ids, in no particular order.
rng = np.random.default_rng(3)
PLANTED = np.concatenate([rng.permutation(5000)[:1500], rng.integers(0, 2**40, 300), [7, 7, 7, 0, 0]])


@pytest.mark.parametrize("seed", [0, 1, 12345])
@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.77])
def test_the_held_out_split_is_reproduced(seed, fraction):
    new = document_split(PLANTED, (fraction, 1 - fraction), seed=seed) == 0
    np.testing.assert_array_equal(new, old_held_out_split(PLANTED, fraction, seed))


def test_the_drivers_halves_are_reproduced():
    ids = torch.from_numpy(PLANTED)
    assert torch.equal(document_split(ids, key=HALVES_KEY), old_document_half(ids))
    np.testing.assert_array_equal(document_split(PLANTED, key=HALVES_KEY), old_document_half(ids).numpy())
    # hand-computed: (1 · 2654435761) mod 2³² = 2654435761 ≥ 2³¹ → report half; 0 → selection half;
    # (2 · 2654435761) mod 2³² = 1013904226 < 2³¹ → selection half
    assert document_split(np.array([0, 1, 2]), key=HALVES_KEY).tolist() == [0, 1, 0]


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("fractions", [SPLIT_FRACTIONS, (0.2, 0.2, 0.6)])
def test_the_explanation_splits_are_reproduced(seed, fractions):
    ids = torch.from_numpy(PLANTED)
    new = document_split(ids, fractions, seed=seed, key=SPLIT_KEY)
    assert torch.equal(new, old_explain_split(ids, fractions, seed))


@pytest.mark.parametrize("key", KEYS)
def test_sides_are_disjoint_cover_every_document_and_follow_the_fractions(key):
    ids = np.arange(20_000)
    fractions = (0.6, 0.1, 0.3)
    side = document_split(ids, fractions, key=key)
    assert side.shape == ids.shape and set(np.unique(side)) == {0, 1, 2}  # one side each, all used
    shares = np.bincount(side, minlength=3) / len(ids)
    # binomial sd at n = 20000 is at most 0.0035: 4 sd
    np.testing.assert_allclose(shares, fractions, atol=0.015)


@pytest.mark.parametrize("key", KEYS)
def test_a_side_depends_only_on_the_id_not_on_the_other_documents_or_their_order(key):
    ids = np.arange(3000)
    side = document_split(ids, key=key)
    order = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(document_split(ids[order], key=key), side[order])
    np.testing.assert_array_equal(document_split(ids[1000:], key=key), side[1000:])
    np.testing.assert_array_equal(document_split(np.repeat(ids, 2), key=key), np.repeat(side, 2))
    # numpy and torch give the same sides; torch keeps the input's shape
    as_tensor = document_split(torch.from_numpy(ids).reshape(30, 100), key=key)
    assert as_tensor.dtype == torch.long and as_tensor.shape == (30, 100)
    np.testing.assert_array_equal(as_tensor.reshape(-1).numpy(), side)


@pytest.mark.parametrize("key", ["splitmix64", "avalanche32"])
def test_a_seed_gives_the_same_split_every_time_and_another_seed_another(key):
    ids = np.arange(2000)
    first = document_split(ids, seed=3, key=key)
    np.testing.assert_array_equal(document_split(ids, seed=3, key=key), first)
    other = document_split(ids, seed=4, key=key)
    assert 0.4 < (other != first).mean() < 0.6  # independent halves disagree about half the time


def test_fraction_boundaries_cut_the_key_exactly():
    # the knuth key of id 1 is 2654435761 / 2³² ≈ 0.61804; a cut just below puts it on side 1, just above on side 0
    key = 2654435761 / 2**32
    assert document_split(np.array([1]), (key - 1e-12, 1 - key + 1e-12), key="knuth")[0] == 1
    assert document_split(np.array([1]), (key + 1e-12, 1 - key - 1e-12), key="knuth")[0] == 0


def test_bad_arguments_are_refused():
    with pytest.raises(InputError, match="at least 30 on each side"):
        document_split(np.arange(8), min_per_side=30)
    with pytest.raises(InputError, match="each side needs at least 5"):
        document_split(np.arange(8), (0.2, 0.3, 0.5), min_per_side=5)
    with pytest.raises(InputError, match="sum to 1"):
        document_split(np.arange(8), (0.5, 0.3, 0.3))
    with pytest.raises(InputError, match="positive"):
        document_split(np.arange(8), (1.0, 0.0))
    with pytest.raises(InputError, match="accepted: splitmix64, avalanche32, knuth"):
        document_split(np.arange(8), key="md5")
    with pytest.raises(ValueError, match="non-negative"):
        document_split(np.array([3, -1]))
    with pytest.raises(ValueError, match="takes no seed"):
        document_split(np.arange(8), seed=1, key="knuth")
    # enough documents on each side: no error, and min_per_side counts distinct documents
    side = document_split(np.repeat(np.arange(200), 5), min_per_side=60)
    assert 60 <= int((side == 0).sum()) // 5 <= 140
