"""The dense twin's own-layer arms fitted once for several held-out studies (the sparsity family).

- RememberedSteps computes each key once and hands the same value after;
- two studies of two MoEs against one dense model with one shared ``dense_step``: the second fits none
  of the dense arms' blocks, the study's own ``step`` never sees them, and both studies' dense arms
  equal those of studies run without sharing (same units, choices and confusion counts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from test_held_out_study import EXPERTS, STUDY, planted
from tl_moe.analysis import StoredTokens
from tl_moe.collect.steps import RememberedSteps, run_now
from tl_moe.models.hook_names import get_act_name

DENSE_ARMS = ("dense", "dense_permuted_labels")


class Recording:
    """A step runner that computes every step and records its key."""

    def __init__(self):
        self.keys: list[str] = []

    def __call__(self, key, compute):
        self.keys.append(key)
        return compute()


def test_remembered_steps_compute_each_key_once():
    inner = Recording()
    steps = RememberedSteps(inner)
    calls = []
    first = steps("a", lambda: calls.append("a") or [1, 2])
    again = steps("a", lambda: calls.append("a again") or [3])
    other = steps("b", lambda: calls.append("b") or 7)
    assert first == [1, 2] and again is first and other == 7
    assert calls == ["a", "b"] and inner.keys == ["a", "b"]


def _rerouted(moe: StoredTokens) -> StoredTokens:
    """The same tokens routed to other experts (expert e -> e + 1): another MoE beside the same dense model."""
    hook = get_act_name("topk_indices", 0)
    rows = {**moe.rows, hook: (moe.rows[hook] + 1) % EXPERTS}
    return StoredTokens(
        moe.token_index,
        moe.input_ids,
        moe.domain,
        moe.labels,
        rows,
        moe.domain_names,
        moe.concept_names,
        moe.doc_index,
    )


def _same_arm(a, b) -> None:
    pd.testing.assert_frame_equal(a.units, b.units)
    pd.testing.assert_frame_equal(a.chosen, b.chosen)
    np.testing.assert_array_equal(a.doc_counts, b.doc_counts)


def test_a_shared_dense_step_fits_the_dense_arms_once_and_changes_nothing():
    moe, dense, _ = planted(carried=True, concepts=2)
    other = _rerouted(moe)
    alone = [STUDY(m, dense, step=run_now) for m in (moe, other)]
    fits = Recording()
    shared = RememberedSteps(fits)
    own = [Recording(), Recording()]
    found = [STUDY(m, dense, step=s, dense_step=shared) for m, s in zip((moe, other), own, strict=True)]
    dense_keys = list(fits.keys)
    assert dense_keys and all(
        key.startswith(("held_out-dense-", "held_out-dense_permuted_labels-")) for key in dense_keys
    )
    assert len(dense_keys) == len(set(dense_keys))  # the second study fitted none of them
    for steps in own:
        assert not [
            key
            for key in steps.keys
            if key.startswith(("held_out-dense-p", "held_out-dense_permuted_labels-p"))
        ]
        assert "held_out-dense" in steps.keys  # the arm itself (its test-side scoring) stays the study's
    for before, after in zip(alone, found, strict=True):
        for name in DENSE_ARMS:
            _same_arm(before.arms[name], after.arms[name])
        assert before.arms["moe"].chosen.equals(after.arms["moe"].chosen)
    # the two MoEs differ (routing), so their own arms are not shared
    assert not found[0].arms["moe"].units.equals(found[1].arms["moe"].units)
    assert torch.equal(dense.labels, moe.labels)
