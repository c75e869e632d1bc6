"""HeldOutProbing, the held-out protocol with its controls, on planted stored tokens, without the pipeline.

- a concept carried by one neuron of one expert: that expert is chosen, and the MoE beats the dense
  model, the dense neurons on the same routed tokens (all, and d_expert per draw) and the untrained MoE,
  each with an interval above 0, while the permuted-label difference covers 0;
- nobody carries any of four concepts (noise everywhere): every MoE-minus-control interval covers 0.
"""

from __future__ import annotations

import subprocess
import sys

import torch

from tl_moe.analysis import HeldOutProbing, PaperProtocol, ProbingConfig, Statistics, StoredTokens
from tl_moe.models.hook_names import get_act_name

N_DOCS, TOKENS_PER_DOC, EXPERTS, D_EXPERT, D_MLP = 120, 40, 4, 8, 32
PLANTED_EXPERT, PLANTED_NEURON = 2, 5


def _tokens(rows: dict[str, torch.Tensor], labels: torch.Tensor) -> StoredTokens:
    concepts = ("planted", "noise_a", "noise_b", "noise_c")[: labels.shape[1]]
    n = labels.shape[0]
    return StoredTokens(
        token_index=torch.arange(n),
        input_ids=torch.arange(n) % 97,
        domain=torch.zeros(n, dtype=torch.long),
        labels=labels,
        rows=rows,
        domain_names=("prose",),
        concept_names=concepts,
        doc_index=torch.arange(N_DOCS).repeat_interleave(TOKENS_PER_DOC),
    )


def planted(
    carried: bool, seed: int = 0, concepts: int = 1
) -> tuple[StoredTokens, StoredTokens, StoredTokens]:
    """MoE, dense and untrained stored tokens of the same text: one sparse layer of top-1 routing. With
    ``carried``, neuron 5 of expert 2 equals the first concept's label (+1 / -1) on the tokens routed to
    it; every other neuron, and every concept but that one, is noise."""
    g = torch.Generator().manual_seed(seed)
    n = N_DOCS * TOKENS_PER_DOC
    labels = torch.rand(n, concepts, generator=g) < 0.3
    expert = torch.randint(EXPERTS, (n, 1), generator=g)
    post = torch.randn(n, 1, D_EXPERT, generator=g)
    if carried:
        mine = expert[:, 0] == PLANTED_EXPERT
        post[mine, 0, PLANTED_NEURON] = labels[mine, 0].float() * 2 - 1
    untrained_post = torch.randn(n, 1, D_EXPERT, generator=g)
    dense_rows = {get_act_name("neuron", 0): torch.randn(n, D_MLP, generator=g).half()}

    def moe_rows(values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {get_act_name("expert_post", 0): values.half(), get_act_name("topk_indices", 0): expert}

    return (
        _tokens(moe_rows(post), labels),
        _tokens(dense_rows, labels),
        _tokens(moe_rows(untrained_post), labels),
    )


STUDY = HeldOutProbing(
    layers=(0,),
    num_experts=EXPERTS,
    d_expert=D_EXPERT,
    n_layers=1,
    dense_layers=(0,),
    dense_n_layers=1,
    config=ProbingConfig(ks=(1,), held_out_min_examples=30),
    statistics=Statistics(seed=0, bootstrap_resamples=400, min_documents=20, permutations=99),
    by_group=False,
)


def test_a_concept_one_expert_carries_is_found_and_beats_every_control():
    found = STUDY(*planted(carried=True))
    chosen = found.arms["moe"].chosen.set_index("concept")
    assert chosen.loc["planted", "unit"] == f"L0E{PLANTED_EXPERT}"
    assert chosen.loc["planted", "test_balanced_accuracy"] == 1.0
    assert {"dense", "dense_on_routed_tokens", "untrained_moe", "dense_permuted_labels"} <= set(found.arms)
    for name in (
        "moe_vs_dense",
        "moe_vs_dense_on_routed_tokens",
        "moe_vs_dense_on_routed_tokens_matched_count",
        "moe_vs_untrained",
    ):
        record = found.comparison(name, k=1, metric="balanced_accuracy")
        # A perfect neuron (1.0) against noise (about 0.5): the difference is about 0.5, interval above 0.
        assert 0.4 < record["estimate"] <= 0.5 + 0.1, (name, record)
        assert record["interval_available"] and record["ci_low"] > 0.3, (name, record)
    null = found.comparison("permuted_labels", k=1, metric="balanced_accuracy")
    assert null["ci_low"] <= 0.0 <= null["ci_high"], null
    table = found.comparisons
    assert set(table["comparison"]) >= {"moe_vs_dense", "matched_count_minus_its_null"}
    assert (table["protocol"] == "held_out").all() and (table["interval_over"] == "test documents").all()


def test_no_carried_concept_gives_intervals_that_cover_zero():
    found = STUDY(*planted(carried=False, concepts=4))
    for name in ("moe_vs_dense", "moe_vs_dense_on_routed_tokens", "moe_vs_untrained"):
        record = found.comparison(name, k=1, metric="balanced_accuracy")
        assert abs(record["estimate"]) < 0.1, (name, record)
        assert record["ci_low"] <= 0.0 <= record["ci_high"], (name, record)


def test_the_paper_protocol_runs_on_the_same_tokens_and_reports_the_planted_expert():
    moe, dense, _ = planted(carried=True)
    found = PaperProtocol((0,), EXPERTS, dense_layers=(0,), config=ProbingConfig(ks=(1,)))(moe, dense)
    best = found.near_best.set_index("concept")
    assert (
        best.loc["planted", "best_expert"] == f"L0E{PLANTED_EXPERT}" and best.loc["planted", "best_f1"] == 1.0
    )
    assert [r["comparison"] for r in found.records] == ["moe_vs_dense", "moe_vs_matched_subsets"]


def test_a_study_built_from_the_models_configs_names_the_hooks_its_stores_keep():
    from tl_moe.models.config import MoEConfig

    moe = MoEConfig(
        "toy", n_layers=1, d_model=8, d_vocab=97, num_experts=EXPERTS, d_expert=D_EXPERT, sparse_layers=(0,)
    )
    dense = MoEConfig("toy", n_layers=1, d_model=8, d_vocab=97, d_mlp=D_MLP)
    built = HeldOutProbing.of(moe, dense, config=STUDY.config, statistics=STUDY.statistics, by_group=False)
    assert built == STUDY
    assert set(built.expert_store().hooks) == {
        get_act_name("expert_post", 0),
        get_act_name("topk_indices", 0),
    }
    assert set(built.dense_store().hooks) == {get_act_name("neuron", 0)}


def test_the_study_needs_no_pipeline_module():
    code = (
        "import sys, tl_moe.analysis.held_out_study, tl_moe.analysis.paper_study;"
        "assert not [m for m in sys.modules if m.startswith('tl_moe.pipeline')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_comparison_counts_stay_integers_beside_records_that_lack_them():
    import json

    import pandas as pd

    from tl_moe.analysis.held_out_comparisons import comparison_frame

    frame = comparison_frame(
        [
            {"protocol": "held_out", "comparison": "moe_vs_dense", "k": 1, "n_draws": 3, "estimate": 0.1},
            {"protocol": "paper", "comparison": "moe_vs_dense", "k": 1, "n_concepts_moe_higher": 47},
        ]
    )
    plain = frame.astype(object).where(frame.notna(), None).to_dict("records")  # as results.json writes it
    assert [r["n_concepts_moe_higher"] for r in plain] == [None, 47]
    assert [r["n_draws"] for r in plain] == [3, None]
    assert '"n_concepts_moe_higher": 47,' in json.dumps(plain[1]) and pd.isna(frame["estimate"].iloc[1])


def test_a_collapsed_layer_is_probed_and_indices_that_contradict_num_experts_are_refused():
    import dataclasses

    import pytest

    from tl_moe.errors import InputError

    moe, _, _ = planted(carried=False)
    post, index = get_act_name("expert_post", 0), get_act_name("topk_indices", 0)
    # Layer 1: the same neurons, but its router sends every token to expert 0 of 4 (a small model's
    # router can collapse so); layer 0 routes over all four.
    rows = {
        **moe.rows,
        get_act_name("expert_post", 1): moe.rows[post],
        get_act_name("topk_indices", 1): torch.zeros_like(moe.rows[index]),
    }
    two_layers = dataclasses.replace(moe, rows=rows)
    study = dataclasses.replace(STUDY, layers=(0, 1), n_layers=2)
    found = study(two_layers)
    probed = set(found.arms["moe"].units.dropna(subset=["selection_f1"])["unit"])
    assert probed == {f"L0E{e}" for e in range(EXPERTS)} | {"L1E0"}  # layer 1: the expert that saw tokens
    with pytest.raises(
        InputError, match=f"num_experts={EXPERTS - 1} contradicts .* run from 0 to {EXPERTS - 1}"
    ):
        dataclasses.replace(study, num_experts=EXPERTS - 1)(two_layers)  # an index past num_experts
    with pytest.raises(
        InputError, match=f"num_experts={2 * EXPERTS} contradicts .* a model with {EXPERTS} experts"
    ):
        dataclasses.replace(study, num_experts=2 * EXPERTS)(two_layers)  # no layer reaches the upper half
