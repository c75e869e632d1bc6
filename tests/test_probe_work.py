"""The probing analysis's fit count from shapes alone, against counts made by hand for planted shapes."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from tl_moe.analysis.held_out_probing import ROUTED_COUNT_DRAWS
from tl_moe.analysis.probe_work import ProbeWork, eligible_concepts, probing_work

MOE = SimpleNamespace(num_experts=8, experts_per_token=2, d_expert=32, sparse_layers=(0, 1, 2))
WIDE_DENSE = SimpleNamespace(d_mlp=64, dense_layers=(0, 1, 2, 3))  # wider than an expert: several draws
NARROW_DENSE = SimpleNamespace(d_mlp=32, dense_layers=(0, 1))  # as wide as an expert: one draw is all


def _fits(work: list[ProbeWork], n_ks: int) -> int:
    return sum(w.fits(n_ks) for w in work)


def test_an_moe_alone_is_its_experts_by_each_protocol():
    work = probing_work(MOE, layers=2, tokens=800, concepts=5)
    # 2 layers x 8 experts = 16 units, each on 800 x 2 / 8 = 200 routed tokens: paper protocol and held-out arm
    assert work == [ProbeWork(32, 16, 200, 5), ProbeWork(32, 16, 200, 5, held_out=True)]
    assert _fits(work, n_ks=3) == 2 * 16 * 5 * 3
    with_null = probing_work(MOE, layers=2, tokens=800, concepts=5, untrained=True)
    assert _fits(with_null, n_ks=3) == 3 * 16 * 5 * 3  # the untrained null's held-out arm


def test_a_wide_dense_baseline_adds_its_arms_counted_by_hand():
    work = probing_work(MOE, layers=2, tokens=800, concepts=5, dense_cfg=WIDE_DENSE, untrained=True)
    assert ROUTED_COUNT_DRAWS == 3
    experts, routed, dense_layers = 16, 200, 4
    # held-out expert units: the moe arm, its permuted labels, 3 matched-count draws and their 3 nulls
    held_out_experts = experts * (1 + 1 + 2 * 3)
    by_hand = [
        (32, experts, routed, False),  # paper protocol, experts
        (32, held_out_experts, routed, True),
        (32, experts, routed, True),  # the untrained null
        (64, dense_layers, 800, False),  # paper protocol, dense layers on every token
        (64, dense_layers * 8, routed, False),  # and one routing-matched draw per expert
        (64, 2 * dense_layers, 800, True),  # held-out dense and its permuted labels
        (64, 2 * experts, routed, True),  # dense on routed tokens, matched subsets
    ]
    assert [(w.width, w.units, w.rows, w.held_out) for w in work] == by_hand
    units = (
        experts
        + held_out_experts
        + experts
        + dense_layers
        + dense_layers * 8
        + 2 * dense_layers
        + 2 * experts
    )
    assert _fits(work, n_ks=7) == units * 5 * 7


def test_a_dense_baseline_as_wide_as_an_expert_makes_one_draw_and_the_store_cap_bounds_rows():
    work = probing_work(MOE, layers=1, tokens=10_000, concepts=2, rows_per_class=100, dense_cfg=NARROW_DENSE)
    cap = 100 * 4 * 2  # rows per class x 2 classes x 2 sides x concepts
    assert work[1] == ProbeWork(32, 8 * (1 + 1 + 2 * 1), cap, 2, held_out=True)
    assert all(w.rows == cap for w in work)  # 10,000 x 2 / 8 = 2,500 routed tokens, above the cap


def test_eligible_concepts_need_enough_expected_positives_and_negatives():
    rates = torch.tensor([0.0, 0.01, 0.05, 0.5, 0.99, 1.0])
    # 1000 tokens: 0, 10, 50, 500, 990, 1000 positives; at least 10 of each class: 0.01, 0.05, 0.5, 0.99
    assert eligible_concepts(rates, 1000, 10) == 4
    assert eligible_concepts(rates, 1000, 11) == 2  # 10 positives, 10 negatives fall short
    assert eligible_concepts(torch.zeros(3), 1000, 1) == 0  # planted: no concept ever present
