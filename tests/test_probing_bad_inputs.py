"""Bad inputs to the probing protocols (HeldOutProbing, PaperProtocol) and to cluster_vocabulary.

Each bad input raises a one-line :class:`~tl_moe.errors.InputError` naming it before any probe is
fitted; a concept no protocol can probe (no negative token) is left out like one with too few
positives. Small budgets: the toy MoE and its dense twin on a few thousand tokens of the embedded corpus.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tl_moe
from tl_moe.analysis import (
    HeldOutProbing,
    PaperProtocol,
    ProbingConfig,
    Statistics,
    cluster_vocabulary,
)
from tl_moe.analysis.bounded_store import BoundedStoredTokens
from tl_moe.collect import collect
from tl_moe.data import TokenConceptLabeler
from tl_moe.data.corpus import load_corpus
from tl_moe.errors import InputError

TOKENS = 4000
FEW = Statistics(seed=0, bootstrap_resamples=50, min_documents=5, permutations=19)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()["validation"].shuffle(seed=0)


@pytest.fixture(scope="module")
def stored(corpus):
    """The toy MoE's and its dense twin's stored tokens for held-out probing of the last layer."""
    model = tl_moe.load("toy/moe-8x2", device="cpu")
    dense = tl_moe.load("toy/dense", device="cpu")
    study = HeldOutProbing.of(model.moe_cfg, dense.moe_cfg, layers=(3,), config=ProbingConfig(ks=(1,)))
    concepts = TokenConceptLabeler()
    moe = collect(
        model,
        corpus,
        {"s": study.expert_store()},
        max_tokens=TOKENS,
        concept_labeler=concepts,
        progress=False,
    )["s"]
    dense_stored = collect(
        dense, corpus, {"s": study.dense_store()}, max_tokens=TOKENS, concept_labeler=concepts, progress=False
    )["s"]
    quick = study.replace(statistics=FEW, by_group=False, permuted=False, routed_null=False)
    return quick, moe, dense_stored


def one_line(error: pytest.ExceptionInfo) -> str:
    """The error's message, checked to be one line."""
    message = str(error.value)
    assert "\n" not in message
    return message


# --- held-out probing: what the stored tokens must hold ------------------------------------------


def test_held_out_probing_without_document_ids_is_an_input_error(stored):
    study, moe, _ = stored
    with pytest.raises(InputError, match="document ids") as error:
        study(dataclasses.replace(moe, doc_index=None))
    assert "MoE" in one_line(error)


def test_held_out_probing_dense_without_document_ids_is_an_input_error(stored):
    study, moe, dense = stored
    with pytest.raises(InputError, match="document ids") as error:
        study(moe, dataclasses.replace(dense, doc_index=None))
    assert "dense" in one_line(error)


@pytest.mark.parametrize("layers", [(2,), (9,)])
def test_held_out_probing_layer_not_stored_is_an_input_error(stored, layers):
    study, moe, _ = stored
    with pytest.raises(InputError, match="expert_post") as error:
        study.replace(layers=layers)(moe)
    assert str(layers[0]) in one_line(error)


def test_held_out_probing_dense_tokens_as_moe_is_an_input_error(stored):
    study, _, dense = stored
    with pytest.raises(InputError, match="expert_post"):
        study(dense)


@pytest.mark.parametrize("changes", [{"num_experts": 4}, {"num_experts": 16}, {"d_expert": 999}], ids=str)
def test_held_out_probing_facts_that_contradict_the_stored_tokens(stored, changes):
    """The stored expert_post of layer 3 has 8 experts x 128 neurons: a study told otherwise would probe
    half the experts, invent empty ones, or size the matched-count control wrongly."""
    study, moe, dense = stored
    ((name, value),) = changes.items()
    with pytest.raises(InputError, match=name) as error:
        study.replace(**changes)(moe, dense)
    message = one_line(error)
    assert str(value) in message and str({"num_experts": 8, "d_expert": 128}[name]) in message


@pytest.mark.parametrize("protocol", ["held_out", "paper"])
def test_probe_size_larger_than_the_units_is_an_input_error(stored, protocol):
    """k = 500 > 128 neurons per expert."""
    study, moe, _ = stored
    config = ProbingConfig(ks=(500,))
    run = study.replace(config=config) if protocol == "held_out" else PaperProtocol((3,), 8, config=config)
    with pytest.raises(InputError, match="500") as error:
        run(moe)
    one_line(error)


def test_paper_protocol_layer_not_stored_is_an_input_error(stored):
    _, moe, _ = stored
    with pytest.raises(InputError, match="expert_post") as error:
        PaperProtocol((2,), 8, config=ProbingConfig(ks=(1,)), statistics=FEW)(moe)
    one_line(error)


def test_paper_protocol_num_experts_contradicting_the_stored_tokens(stored):
    _, moe, _ = stored
    with pytest.raises(InputError, match="num_experts") as error:
        PaperProtocol((3,), 4, config=ProbingConfig(ks=(1,)), statistics=FEW)(moe)
    one_line(error)


# --- layers that are not sparse ------------------------------------------------------------------


def test_held_out_probing_of_a_dense_layer_is_an_input_error(hybrid):
    with pytest.raises(InputError, match="sparse") as error:
        HeldOutProbing.of(hybrid.moe_cfg, layers=(0,))
    one_line(error)
    assert HeldOutProbing.of(hybrid.moe_cfg, layers=(1,)).layers == (1,)


def test_held_out_probing_of_a_dense_model_is_an_input_error():
    with pytest.raises(InputError, match="sparse") as error:
        HeldOutProbing.of(tl_moe.load("toy/dense", device="cpu").moe_cfg)
    one_line(error)


# --- concepts no probe can learn -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["held_out", "paper"])
def test_a_concept_without_negatives_is_dropped_not_a_crash(stored, protocol):
    """A concept positive on every token (e.g. a one-domain slice) is left out, as are concepts with too
    few positives; the other concepts are still probed."""
    study, moe, _ = stored
    labels = moe.labels.clone()
    labels[:, 0] = True
    every = dataclasses.replace(moe, labels=labels)
    config = ProbingConfig(ks=(1,))
    if protocol == "held_out":
        found = study.replace(config=config)(every)
        probed = set(found.arms["moe"].units["concept"])
        assert any(moe.concept_names[0] in note and "negative" in note for note in found.notes), found.notes
    else:
        found = PaperProtocol((3,), 8, config=config, statistics=FEW)(every)
        probed = set(found.moe_units["concept"])
    assert moe.concept_names[0] not in probed
    assert probed  # the other concepts are probed


# --- the untrained null must be the MoE's own tokens ---------------------------------------------


def _tokens_of(stored, keep):
    """``stored`` restricted to the tokens where ``keep`` is True."""
    rows = {name: values[keep] for name, values in stored.rows.items()}
    return dataclasses.replace(
        stored,
        token_index=stored.token_index[keep],
        input_ids=stored.input_ids[keep],
        domain=stored.domain[keep],
        labels=stored.labels[keep],
        rows=rows,
        doc_index=stored.doc_index[keep],
    )


def test_held_out_probing_untrained_tokens_of_another_model(stored, corpus):
    """Untrained stored tokens of a 4-expert MoE beside a study of 8 experts."""
    study, moe, _ = stored
    smaller = tl_moe.load("toy/moe-4x2", device="cpu")
    untrained = collect(
        smaller,
        corpus,
        {"s": study.expert_store()},
        max_tokens=TOKENS,
        concept_labeler=TokenConceptLabeler(),
        progress=False,
    )["s"]
    with pytest.raises(InputError, match="untrained") as error:
        study(moe, untrained=untrained)
    one_line(error)


def test_held_out_probing_untrained_tokens_on_other_documents(stored):
    """The untrained null is paired with the MoE by test document: it must be stored on the same tokens."""
    study, moe, _ = stored
    docs = moe.doc_index.unique()
    first = torch.isin(moe.doc_index, docs[: len(docs) // 2])
    with pytest.raises(InputError, match="untrained") as error:
        study(_tokens_of(moe, first), untrained=_tokens_of(moe, ~first))
    one_line(error)


def test_held_out_probing_untrained_tokens_of_a_capped_store_are_accepted_with_a_note(stored):
    """Bounded probing stores that dropped rows keep each model's own sample of the same stream (routing
    differs): the untrained null is then probed on its own kept tokens, and the outcome says so."""
    study, moe, _ = stored
    keep = torch.ones(len(moe.token_index), dtype=torch.bool)
    keep[::3] = False  # another sample of the same documents
    fields = {f.name: getattr(moe, f.name) for f in dataclasses.fields(moe)}
    capped = BoundedStoredTokens(**fields, rows_per_class=1, n_seen=torch.full((1, 1, 2, 2), 5))
    kept = _tokens_of(moe, keep)
    other = BoundedStoredTokens(
        **{f.name: getattr(kept, f.name) for f in dataclasses.fields(kept)},
        rows_per_class=1,
        n_seen=torch.full((1, 1, 2, 2), 5),
    )
    found = study(capped, untrained=other)
    assert "untrained_moe" in found.arms
    assert any("untrained MoE's probing store kept other tokens" in note for note in found.notes), found.notes
    with pytest.raises(InputError, match="untrained"):
        study(moe, untrained=kept)  # the same sample without the bounded store's counts: refused


def test_held_out_probing_untrained_tokens_of_the_same_tokens_are_accepted(stored):
    """The planted valid case: the MoE's own stored tokens as the untrained null give an untrained arm
    equal to the MoE's (same tokens, same activations, same seed)."""
    study, moe, _ = stored
    found = study(moe, untrained=moe)
    assert (
        found.arms["untrained_moe"]
        .units.drop(columns="arm", errors="ignore")
        .equals(found.arms["moe"].units.drop(columns="arm", errors="ignore"))
    )


# --- the vocabulary clusters ---------------------------------------------------------------------


def test_cluster_vocabulary_takes_the_models_unembedding():
    """cluster_vocabulary(model.W_U, K), a parameter that requires grad, gives the same groups as its
    detached copy."""
    model = tl_moe.load("toy/moe-8x2", device="cpu")
    assert model.W_U.requires_grad
    groups = cluster_vocabulary(model.W_U, 4)
    assert groups.shape == (model.cfg.d_vocab,)
    assert torch.equal(torch.as_tensor(groups), torch.as_tensor(cluster_vocabulary(model.W_U.detach(), 4)))
