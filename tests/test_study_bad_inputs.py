"""Bad inputs to the analysis objects a notebook uses without the pipeline (DriverStudy,
AssociationStudy, SpecializationStudy, LogitLensStudy, DomainExpertStudy, ExpertReweighting,
SparsityVerdicts, ExpertLabeler) and the shared :class:`~tl_moe.analysis.configs.Statistics`.

A bad input raises a one-line :class:`~tl_moe.errors.InputError` naming it before any work starts, a
setting the user passes is honoured (or refused where the study cannot honour it), and every number
comes with its interval or the reason it has none. Small budgets: the toy MoE on a few thousand tokens
of the embedded corpus.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import tl_moe
from tl_moe.analysis import (
    AssociationStudy,
    DomainExperts,
    DomainExpertStudy,
    DriversConfig,
    DriverStudy,
    ExpertLogitLensAccumulator,
    ExpertReweighting,
    LogitLensStudy,
    ReweightingConfig,
    SparsityVerdicts,
    SpecializationCounts,
    SpecializationStudy,
    Statistics,
    TokenActivationStore,
    cluster_vocabulary,
    routed_tokens_by_domain,
    routed_tokens_by_group,
)
from tl_moe.analysis.configs import ExplainConfig
from tl_moe.analysis.readout import LogitReadout
from tl_moe.analysis.sparsity_family import HEADLINE, UNMATCHED
from tl_moe.analysis.specialization_study import DocumentRouting
from tl_moe.collect import collect, domain_names
from tl_moe.data import TokenConceptLabeler
from tl_moe.data.corpus import load_corpus
from tl_moe.errors import InputError

TOKENS = 6000
GROUPS = 8
# Few documents reach these budgets: a study told to accept 5 documents per interval must give one.
FEW = Statistics(seed=0, bootstrap_resamples=200, min_documents=5, permutations=99)
# More documents than any of these passes sees: every interval is unavailable, with its reason.
MANY = dataclasses.replace(FEW, min_documents=100_000)


@pytest.fixture(scope="module")
def toy():
    model = tl_moe.load("toy/moe-8x2", device="cpu")
    corpus = load_corpus()["validation"].shuffle(seed=0)
    return model, corpus


@pytest.fixture(scope="module")
def gathered(toy):
    """One pass of the toy MoE feeding the drivers, associations, specialization, domains and lens."""
    model, corpus = toy
    cfg = model.moe_cfg
    groups = cluster_vocabulary(model.W_U.detach(), GROUPS)
    drivers = DriverStudy((3,), cfg.num_experts, DriversConfig(tokens=TOKENS, count=2), FEW)
    accumulators = dict(drivers.accumulators())
    accumulators.update(
        rec=AssociationStudy(cfg.num_experts, statistics=FEW).accumulator(cfg.sparse_layers, TOKENS),
        by_group=routed_tokens_by_group(cfg, groups),
        by_domain=routed_tokens_by_domain(cfg, len(domain_names(corpus))),
        lens=ExpertLogitLensAccumulator(model, token_groups=groups),
        topk=TokenActivationStore([f"blocks.{layer}.mlp.hook_topk_indices" for layer in cfg.sparse_layers]),
    )
    found = collect(model, corpus, accumulators, max_tokens=TOKENS, progress=False)
    return {**found, "groups": groups, "names": domain_names(corpus)}


def _driver_inputs(gathered):
    return {key: gathered[key] for key in ("effects", "saliency", "estimate")}


def _counts(gathered, **changes):
    routing = DocumentRouting.from_stored(gathered["topk"], (0, 1, 2, 3), gathered["groups"])
    return SpecializationCounts(
        changes.get("by_group", gathered["by_group"]),
        changes.get("by_domain", gathered["by_domain"]),
        routing,
    )


def _specialization(gathered, **changes):
    settings = dict(
        layers=(0, 1, 2, 3),
        num_experts=8,
        n_token_groups=GROUPS,
        n_domains=len(gathered["names"]),
        statistics=FEW,
    )
    return SpecializationStudy(**{**settings, **changes})


# --- the shared statistical settings -------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"selection_fraction": 1.5},
        {"selection_fraction": 0.0},
        {"bootstrap_resamples": 0},
        {"bootstrap_resamples": -5},
        {"fdr": 2.0},
        {"permutations": 0},
        {"min_documents": 0},
    ],
    ids=str,
)
def test_statistics_rejects_nonsense_values_when_built(changes):
    """Statistics checks its fields when built, as the configs do (and with RunOptions' messages),
    instead of failing later deep inside scipy (bootstrap_resamples=0) or never (fdr=2)."""
    (name,) = changes
    with pytest.raises(InputError, match=f"--{name.replace('_', '-')} must be") as caught:
        Statistics(**changes)
    assert "\n" not in str(caught.value)


def test_driver_study_honours_min_documents(gathered):
    """Statistics.min_documents (5 here) is the fewest report documents behind an interval: the
    drivers' comparison gets its intervals on the few documents the small pass reaches."""
    study = DriverStudy((3,), 8, DriversConfig(tokens=TOKENS, count=2), FEW)
    comparison = study(**_driver_inputs(gathered)).comparison
    assert (comparison["report documents"] >= FEW.min_documents).all()
    assert comparison["ci low"].notna().all(), comparison["interval unavailable"].tolist()
    strict = DriverStudy((3,), 8, DriversConfig(tokens=TOKENS, count=2), MANY)
    refused = strict(**_driver_inputs(gathered)).comparison  # the same documents, too few for MANY
    assert refused["ci low"].isna().all() and refused["interval unavailable"].str.contains("document").all()


def test_driver_study_refuses_a_selection_fraction(gathered):
    """The drivers are chosen and reported on the fixed 50/50 hash halves they share with the
    associations and the re-weighting: another selection_fraction cannot be honoured, so it is refused,
    naming the fixed halves (0.5, the default, is accepted)."""
    with pytest.raises(InputError, match="fixed 50/50") as caught:
        DriverStudy(
            (3,), 8, DriversConfig(tokens=TOKENS, count=2), dataclasses.replace(FEW, selection_fraction=0.2)
        )
    assert "\n" not in str(caught.value)
    assert (
        DriverStudy((3,), 8, DriversConfig(tokens=TOKENS, count=2), FEW).statistics.selection_fraction == 0.5
    )


def test_specialization_study_honours_min_documents(gathered):
    """The routing measures' excess intervals need Statistics.min_documents documents: 5 gives them,
    more than the pass saw gives none (with the reason)."""
    strict = _specialization(gathered, statistics=MANY)(_counts(gathered)).to_frame()
    strict = strict[strict["measure"].str.startswith("routing")]
    assert not strict["permutation_interval_available"].astype(bool).any()
    frame = _specialization(gathered)(_counts(gathered)).to_frame()
    routing = frame[frame["measure"].str.startswith("routing")]
    assert routing["permutation_interval_available"].astype(bool).all(), routing[
        "permutation_interval_unavailable_reason"
    ].tolist()


def test_logit_lens_study_honours_min_documents(toy, gathered):
    model, _ = toy
    share = LogitLensStudy(FEW)(
        gathered["lens"], LogitReadout.from_model(model).vocab_logits, model.tokenizer
    )
    assert share.share.trained.available, share.share.trained.reason
    strict = LogitLensStudy(MANY)(
        gathered["lens"], LogitReadout.from_model(model).vocab_logits, model.tokenizer
    )
    assert not strict.share.trained.available and "document" in strict.share.trained.reason


@pytest.mark.parametrize("swap", ["none", "swapped"])
def test_driver_study_wrong_results_is_an_input_error(gathered, swap):
    """Results of the wrong kind (None, or saliency passed as effects) are refused by name, not an
    AttributeError deep inside."""
    study = DriverStudy((3,), 8, DriversConfig(tokens=TOKENS, count=2), FEW)
    effects = None if swap == "none" else gathered["saliency"]
    saliency = gathered["saliency"] if swap == "none" else gathered["effects"]
    with pytest.raises(InputError):
        study(effects, saliency)


def test_driver_study_num_experts_contradicting_the_effects(gathered):
    """num_experts=4 on effects of 8 experts per layer is refused."""
    with pytest.raises(InputError):
        DriverStudy((3,), 4, DriversConfig(tokens=TOKENS, count=2), FEW)(**_driver_inputs(gathered))


def test_association_study_bad_inputs(gathered):
    """Positions of the wrong length, num_experts of another model and a drivers frame without its
    columns are refused by name."""
    experts = DriverStudy((3,), 8, DriversConfig(tokens=TOKENS, count=2), FEW)(
        **_driver_inputs(gathered)
    ).experts
    study = AssociationStudy(8, statistics=FEW)
    n = len(gathered["rec"].token_id)
    with pytest.raises(InputError):
        study(gathered["rec"], experts, np.full(7, -1))
    with pytest.raises(InputError):
        AssociationStudy(4, statistics=FEW)(gathered["rec"], experts, np.full(n, -1))
    with pytest.raises(InputError):
        study(gathered["rec"], experts[["layer", "expert"]], np.full(n, -1))


# --- specialization, domains, lens ---------------------------------------------------------------


@pytest.mark.parametrize(
    "changes", [{"num_experts": 4}, {"n_token_groups": 5}, {"n_domains": 2}, {"layers": (0, 1)}], ids=str
)
def test_specialization_study_facts_contradicting_the_counts(gathered, changes):
    """Facts that contradict the counts' shape are refused by name, not a reshape RuntimeError."""
    with pytest.raises(InputError):
        _specialization(gathered, **changes)(_counts(gathered))


def test_specialization_study_untrained_counts_of_another_shape(gathered):
    """An untrained null with 4 experts per layer beside a trained model of 8 is refused."""
    untrained = SpecializationCounts(gathered["by_group"][:, :4], gathered["by_domain"][:, :4], None)
    with pytest.raises(InputError):
        _specialization(gathered)(_counts(gathered), untrained=untrained)


def test_specialization_frame_gives_the_functional_measure_its_reason(gathered):
    """to_frame() gives the functional measure (no document-permutation baseline, so no interval)
    the reason it has no interval (SpecializationOutcome.no_control_reason)."""
    frame = _specialization(gathered)(
        _counts(gathered), lens_counts=gathered["lens"].dense_counts()
    ).to_frame()
    functional = frame[frame["measure"].str.startswith("functional")]
    assert len(functional)
    assert functional["permutation_interval_unavailable_reason"].notna().all()


def _tokens(gathered):
    return gathered["by_domain"][0].sum(0).float() / 2


@pytest.mark.parametrize("case", ["short names", "num_experts", "no doc ids", "short tokens"])
def test_domain_expert_study_bad_inputs(gathered, case):
    """Names, experts, tokens that contradict the counts, and stored tokens without document ids, are
    refused by name before any scoring."""
    names, tokens, stored, experts = gathered["names"], _tokens(gathered), gathered["topk"], 8
    if case == "short names":
        names = names[:3]
    elif case == "num_experts":
        experts = 4
    elif case == "no doc ids":
        stored = dataclasses.replace(stored, doc_index=None)
    else:
        tokens = tokens[:3]
    with pytest.raises(InputError):
        DomainExpertStudy(statistics=FEW)(
            gathered["by_domain"].float(), tokens, names, stored, layers=(0, 1, 2, 3), num_experts=experts
        )


@pytest.mark.parametrize("changes", [{"threshold": 5.0}, {"min_tokens": -3}], ids=str)
def test_domain_experts_rule_rejects_nonsense(changes):
    """threshold is a normalized entropy in [0, 1]; min_tokens is a count: both checked when built."""
    with pytest.raises(InputError):
        DomainExperts(**changes)


def test_logit_lens_study_untrained_without_its_logits(toy, gathered):
    """The untrained lens needs its own readout: refused without it."""
    model, _ = toy
    study = LogitLensStudy(FEW)
    with pytest.raises(InputError):
        study(
            gathered["lens"],
            LogitReadout.from_model(model).vocab_logits,
            model.tokenizer,
            untrained=gathered["lens"],
        )


def test_driver_study_of_a_dense_layer_is_an_input_error(hybrid):
    """Layer 0 of the hybrid is dense. DriverStudy's plain facts (layer indices, experts per layer) cannot
    tell a dense block from a sparse one, so the check lives where the model's config is known:
    DriverStudy.of(moe_cfg, layers=...) refuses it when built; the model's sparse layer is accepted."""
    config = DriversConfig(tokens=500, count=2)
    with pytest.raises(InputError, match=r"not sparse layers"):
        DriverStudy.of(hybrid.moe_cfg, layers=(0,), config=config, statistics=FEW)
    assert tuple(DriverStudy.of(hybrid.moe_cfg, config=config, statistics=FEW).layers) == (1,)


@pytest.mark.parametrize("layers, num_experts", [((), 8), ((1,), 0)])
def test_driver_study_with_no_experts_is_an_input_error(layers, num_experts):
    with pytest.raises(InputError):
        DriverStudy(layers, num_experts)


# --- re-weighting, verdicts, labels --------------------------------------------------------------


def _reweight(toy, config=None, **changes):
    model, corpus = toy
    study = ExpertReweighting(config or ReweightingConfig(tokens=600, draws=2), FEW)
    settings = dict(seq_len=64, batch_size=4, driver_experts=((3, 6), (3, 7)), max_domain_experts=2)
    return study(model, corpus, **{**settings, **changes})


@pytest.mark.parametrize(
    "changes",
    [{"max_domain_experts": -1}, {"seq_len": 0}, {"driver_experts": ((3, 99),)}],
    ids=str,
)
def test_expert_reweighting_bad_arguments(toy, changes):
    """A negative domain-expert count, an empty window and an expert the model lacks are refused
    before any forward pass."""
    with pytest.raises(InputError):
        _reweight(toy, **changes)


def test_expert_reweighting_steering_contrast_of_unknown_domains(toy):
    """A steering contrast naming no corpus domain is refused, naming the domains it accepts."""
    config = ReweightingConfig(tokens=600, draws=2, steer_contrast=("nonexistent", "other"))
    with pytest.raises(InputError):
        _reweight(toy, config)


def test_sparsity_verdicts_holm_on_a_planted_family():
    """Worked (kept as a reference): p 0.01, 0.04, 0.03 -> Holm 0.03, 0.06, 0.06."""
    rows = [
        dict(
            model=f"m{i}",
            active_ratio=0.1 * (i + 1),
            comparison=comparison,
            metric="balanced_accuracy",
            k=1,
            estimate=0.1,
            ci_low=0.01,
            ci_high=0.2,
            interval_available=True,
            swap_p=p,
            bootstrap_p=None,
            n_draws=1,
        )
        for i, (comparison, p) in enumerate([(HEADLINE, 0.01), (UNMATCHED, 0.04), (HEADLINE, 0.03)])
    ]
    family = SparsityVerdicts(deterministic=lambda c, n: c == UNMATCHED).family(pd.DataFrame(rows))
    holm = {r["model"]: r["p_holm"] for r in family}
    assert holm == pytest.approx({"m0": 0.03, "m1": 0.06, "m2": 0.06})


def test_sparsity_verdicts_without_active_ratio_is_an_input_error():
    """A held-out frame without its active_ratio column is refused by name."""
    frame = pd.DataFrame([dict(model="m", comparison=HEADLINE, metric="f1", k=1, estimate=0.1)])
    with pytest.raises(InputError):
        SparsityVerdicts(deterministic=lambda c, n: False).family(frame)


@pytest.fixture(scope="module")
def examples(toy):
    from tl_moe.explain import ExpertExamplesAccumulator

    model, corpus = toy
    concepts = TokenConceptLabeler()
    accumulator = ExpertExamplesAccumulator(model, domain_names(corpus), concepts.concept_names)
    return collect(
        model, corpus, {"ex": accumulator}, max_tokens=TOKENS, concept_labeler=concepts, progress=False
    )["ex"]


def test_expert_labeler_with_no_experts_is_an_input_error(toy, examples):
    """An empty expert list is refused, not a KeyError on an empty table."""
    from tl_moe.explain import ExpertLabeler

    model, _ = toy
    labeler = ExpertLabeler(ExplainConfig(causal_windows=0), FEW, progress=False)
    with pytest.raises(InputError):
        labeler(examples, model.tokenizer, readout=LogitReadout.from_model(model), experts=[])


def test_association_position_effect_says_why_it_has_no_interval(gathered):
    """positions.effects gives every early − late estimate without an interval its reason (planted: a
    min_documents above the documents the pass saw), and honours Statistics.min_documents (5: intervals
    with an empty reason)."""
    from tl_moe.analysis import segment_positions_of

    experts = DriverStudy((3,), 8, DriversConfig(tokens=TOKENS, count=2), FEW)(
        **_driver_inputs(gathered)
    ).experts
    corpus = load_corpus()["validation"].shuffle(seed=0)
    tokenizer = tl_moe.load("toy/moe-8x2", device="cpu").tokenizer
    positions, _ = segment_positions_of(gathered["rec"], corpus, tokenizer, gathered["names"])
    missing = AssociationStudy(8, statistics=MANY)(gathered["rec"], experts, positions).positions.effects
    assert missing["ci low"].isna().all() and not missing["interval available"].any()
    assert missing["interval unavailable"].str.contains("document").all(), missing["interval unavailable"]
    found = AssociationStudy(8, statistics=FEW)(gathered["rec"], experts, positions).positions.effects
    available = found[found["interval available"].astype(bool)]
    assert len(available) and available["ci low"].notna().all()
    assert (available["interval unavailable"] == "").all()
