"""The sampling-plan cache: fits sharing labels and masks reuse one plan and give the very same probes."""

import torch

from tl_moe.analysis._sampling_plans import SamplingPlans, reuse_sampling_plans, sampling_plans
from tl_moe.analysis.probing import KSparseProbe


def _data(seed: int = 0, n_tokens: int = 600, n_units: int = 3, n_concepts: int = 2, neurons: int = 6):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.rand(n_tokens, n_concepts, generator=generator) < 0.4
    unit_mask = torch.rand(n_units, n_tokens, generator=generator) < 0.7
    activations = torch.randn(n_units, n_tokens, neurons, generator=generator)
    activations[..., 0] += 2.0 * labels[:, 0].float()  # something to find
    return activations, labels, unit_mask


def _fit(activations, labels, unit_mask, **settings):
    return KSparseProbe(ks=(1, 2, 4), min_examples=20, **settings).fit(activations, labels, unit_mask)


def _same_probes(a: KSparseProbe, b: KSparseProbe) -> bool:
    return all(
        torch.equal(getattr(a, name), getattr(b, name))
        for name in ("status_", "top_neurons_", "coef_", "n_pos_", "n_neg_", "n_examples_")
    ) and all(
        torch.equal(getattr(a, n).nan_to_num(-1), getattr(b, n).nan_to_num(-1)) for n in ("f1_", "intercept_")
    )


def test_no_cache_outside_the_scope():
    assert sampling_plans() is None
    with reuse_sampling_plans() as plans:
        assert sampling_plans() is plans
        with reuse_sampling_plans() as inner:  # an enclosing cache is reused
            assert inner is plans
    assert sampling_plans() is None


def test_reused_plan_gives_the_same_probes_as_fresh_fits():
    activations, labels, unit_mask = _data()
    other = torch.randn(activations.shape, generator=torch.Generator().manual_seed(5))
    fresh = [_fit(x, labels, unit_mask) for x in (activations, other)]
    with reuse_sampling_plans() as plans:
        cached = [_fit(x, labels, unit_mask) for x in (activations, other)]
        assert len(plans._plans) == 1  # the second fit found the first one's plan
    for a, b in zip(fresh, cached, strict=True):
        assert _same_probes(a, b)
    # and the plan is the one a probe computes alone: the same train / test tokens
    assert not _same_probes(fresh[0], fresh[1])


def test_other_labels_masks_or_settings_get_their_own_plan():
    activations, labels, unit_mask = _data()
    flipped = labels.clone()
    flipped[0, 0] = ~flipped[0, 0]
    fewer = unit_mask.clone()
    fewer[0, unit_mask[0].nonzero()[0]] = False
    with reuse_sampling_plans() as plans:
        _fit(activations, labels, unit_mask)
        for lab, mask, settings in (
            (flipped, unit_mask, {}),
            (labels, fewer, {}),
            (labels, unit_mask, {"random_state": 1}),
        ):
            reference = _fit(activations, lab, mask, **settings)
            with_cache = _fit(activations, lab, mask, **settings)
            assert _same_probes(reference, with_cache)
        assert len(plans._plans) == 4
    for lab, mask, settings in (
        (flipped, unit_mask, {}),
        (labels, fewer, {}),
        (labels, unit_mask, {"random_state": 1}),
    ):
        alone = _fit(activations, lab, mask, **settings)
        with reuse_sampling_plans():
            _fit(activations, labels, unit_mask)
            assert _same_probes(alone, _fit(activations, lab, mask, **settings))


def test_cache_drops_least_recently_used_plans_past_its_bound():
    plans = SamplingPlans(max_bytes=1)
    first = plans.plan(("s",), (torch.ones(3, dtype=torch.bool),))
    first.keep("counts", lambda: torch.zeros(10))
    second = plans.plan(("s",), (torch.zeros(3, dtype=torch.bool),))
    second.keep("counts", lambda: torch.zeros(10))
    assert list(plans._plans.values()) == [second]  # the older one went; the one in use stays
    assert plans.plan(("s",), (torch.zeros(3, dtype=torch.bool),)) is second
