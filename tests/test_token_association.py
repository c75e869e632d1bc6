"""Token–expert association and the position effect: hand computations, scipy references, planted
streams with known answers (and their nulls), sentence / statement splitting, and the pipeline section."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from tl_moe.analysis.drivers import HALVES_KEY
from tl_moe.analysis.positions import expert_set_hits, position_effect
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.token_association import (
    RoutingRecords,
    cooccurrence_counts,
    token_expert_associations,
    within_document_pvalues,
)
from tl_moe.collect.meta import BatchMeta
from tl_moe.data.segments import segment_starts, segmentation_for_domain, token_segment_positions
from tl_moe.errors import InputError
from tl_moe.models.hook_names import get_act_name

LAYERS, E, K = (1, 3), 8, 2


# ---------------------------------------------------------------------------------------------- streams
def _random_routing(rng, n: int, n_layers: int = len(LAYERS)) -> np.ndarray:
    """``[n, layer, K]`` distinct experts per token and block, uniformly at random."""
    return np.argsort(rng.random((n, n_layers, E)), axis=-1)[..., :K]


def _stream_records(doc_lengths, token_ids, experts, batch_windows: int = 4):
    """Feed a synthetic routing stream to :class:`RoutingRecords` through BatchMeta batches (one window per
    document, BOS first) and return its result."""
    acc = RoutingRecords(LAYERS)
    seq = max(doc_lengths) + 1
    starts = np.r_[0, np.cumsum(doc_lengths)]
    docs = list(range(len(doc_lengths)))
    for b0 in range(0, len(docs), batch_windows):
        rows = docs[b0 : b0 + batch_windows]
        B = len(rows)
        ids = torch.full((B, seq), 1)
        mask = torch.zeros(B, seq, dtype=torch.bool)
        doc_index = torch.zeros(B, seq, dtype=torch.long)
        doc_position = torch.full((B, seq), -1)
        topk = torch.zeros(len(LAYERS), B, seq, K, dtype=torch.long)
        for r, d in enumerate(rows):
            n = doc_lengths[d]
            ids[r, 0], ids[r, 1 : n + 1] = 2, torch.as_tensor(token_ids[starts[d] : starts[d + 1]])
            mask[r, : n + 1] = True
            doc_index[r] = d
            doc_position[r, 1 : n + 1] = torch.arange(n)
            topk[:, r, 1 : n + 1] = torch.as_tensor(experts[starts[d] : starts[d + 1]]).permute(1, 0, 2)
        meta = BatchMeta(
            input_ids=ids,
            attention_mask=mask,
            position=torch.arange(seq).expand(B, seq),
            doc_index=doc_index,
            doc_position=doc_position,
            domain=torch.zeros(B, seq, dtype=torch.long),
            token_index=(torch.arange(B)[:, None] + b0) * seq + torch.arange(seq),
            window_index=torch.arange(B) + b0,
            batch_index=b0 // batch_windows,
            domain_names=("all",),
        )
        acts = {
            get_act_name("topk_indices", layer): topk[i].reshape(B * seq, K) for i, layer in enumerate(LAYERS)
        }
        acc.update(acts, meta)
    return acc


def _corpus(seed: int, n_docs: int = 80, vocab: int = 30):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(30, 60, size=n_docs).tolist()
    tokens = rng.integers(3, vocab, size=sum(lengths))
    return rng, lengths, tokens


# ------------------------------------------------------------------------------------- association math
def test_lift_pmi_and_within_document_expectation_equal_a_pandas_hand_computation():
    rng, lengths, tokens = _corpus(0, n_docs=40, vocab=8)
    experts = _random_routing(rng, len(tokens))
    records = _stream_records(lengths, tokens, experts).finalize()
    out = token_expert_associations(records, E, min_count=5, min_documents=2, n_resamples=200)
    # hand computation on the selection half, with pandas
    doc = np.repeat(np.arange(len(lengths)), lengths)
    rows = []
    for i in range(len(tokens)):
        for li, layer in enumerate(LAYERS):
            for e in experts[i, li]:
                rows.append((doc[i], tokens[i], layer, int(e)))
    routed = pd.DataFrame(rows, columns=["doc", "token", "layer", "expert"])
    half = document_split(np.asarray(routed["doc"].to_numpy()), key=HALVES_KEY)
    sel = routed[half == 0]
    sel_docs = document_split(np.asarray(doc), key=HALVES_KEY) == 0
    N = int(sel_docs.sum())
    n_t = pd.Series(tokens[sel_docs]).value_counts()
    n_e = sel.groupby(["layer", "expert"]).size()
    n_te = sel.groupby(["token", "layer", "expert"]).size()
    size_d = pd.Series(doc[sel_docs]).value_counts()
    t_d = pd.DataFrame({"doc": doc[sel_docs], "token": tokens[sel_docs]}).groupby(["doc", "token"]).size()
    e_d = sel.groupby(["doc", "layer", "expert"]).size()
    tested = out.tested.set_index(["token id", "layer", "expert"])
    assert len(tested) == out.summary["tested triples"] > 0
    for (t, layer, e), row in tested.sample(40, random_state=0).iterrows():
        co = n_te.get((t, layer, e), 0)
        lift = (co / n_t[t]) / (n_e[(layer, e)] / N)
        assert row["count"] == n_t[t] and row["routed to expert"] == co
        assert row["lift"] == pytest.approx(lift)
        assert row["PMI (bits)"] == pytest.approx(np.log2(lift)) if co else row["PMI (bits)"] == -np.inf
        expected = sum(t_d.get((d, t), 0) * e_d.get((d, layer, e), 0) / size_d[d] for d in size_d.index)
        assert row["O/E within documents"] == pytest.approx(co / expected)


def test_q_values_are_scipys_benjamini_hochberg():
    rng, lengths, tokens = _corpus(1, n_docs=40, vocab=8)
    out = token_expert_associations(
        _stream_records(lengths, tokens, _random_routing(rng, len(tokens))).finalize(),
        E,
        min_count=5,
        min_documents=2,
        n_resamples=100,
    )
    q = scipy.stats.false_discovery_control(out.tested["p"].to_numpy(), method="bh")
    np.testing.assert_allclose(out.tested["q"].to_numpy(), q)


def _monte_carlo_pvalues(slots, experts, documents, n_slots, permutations, seed):
    """The definition, by brute force: token ids shuffled among each document's positions, B times."""
    rng = np.random.default_rng(seed)
    observed = cooccurrence_counts(slots, experts, n_slots, E)
    exceed = np.zeros(observed.shape)
    for _ in range(permutations):
        shuffled = slots[np.lexsort((rng.random(len(slots)), documents))]
        order = np.argsort(documents, kind="stable")
        permuted = np.empty_like(slots)
        permuted[order] = shuffled
        exceed += cooccurrence_counts(permuted, experts, n_slots, E) >= observed
    return observed, (1 + exceed) / (1 + permutations)


def _document_tables(slots, experts, documents, n_slots):
    n_docs = int(documents.max()) + 1
    t_doc = np.zeros((n_docs, n_slots))
    np.add.at(t_doc, (documents[slots >= 0], slots[slots >= 0]), 1)
    e_doc = np.zeros((n_docs, experts.shape[1] * E))
    for layer in range(experts.shape[1]):
        for j in range(K):
            np.add.at(e_doc, (documents, layer * E + experts[:, layer, j]), 1)
    return t_doc, e_doc, np.bincount(documents).astype(float)


def test_the_exact_within_document_null_is_the_hypergeometric_tail_and_the_permutation_limit():
    rng = np.random.default_rng(3)
    # one document: the null count is hypergeometric(N, n_e, n_t), as in scipy
    n = 200
    slots = (rng.random(n) < 0.2).astype(np.int64) - 1  # slot 0 for the token, -1 otherwise
    experts = _random_routing(rng, n, n_layers=1)
    documents = np.zeros(n, dtype=np.int64)
    observed = cooccurrence_counts(slots, experts, 1, E)
    p = within_document_pvalues(observed.reshape(1, -1), *_document_tables(slots, experts, documents, 1))
    n_e = (experts[:, 0] == np.arange(E)[:, None, None]).any(-1).sum(-1)
    exact = scipy.stats.hypergeom.sf(observed[0, 0] - 1, n, n_e, int((slots == 0).sum()))
    np.testing.assert_allclose(p[0], exact, rtol=1e-9)
    # many documents, two token ids, two blocks, an enriched cell: brute-force permutations agree
    slots = rng.integers(-1, 2, size=600)
    documents = np.sort(rng.integers(0, 12, size=600))
    experts = _random_routing(rng, 600, n_layers=2)
    experts[(slots == 1) & (rng.random(600) < 0.3), 1, 0] = 6
    experts[..., 1] = np.where(experts[..., 1] == experts[..., 0], (experts[..., 0] + 1) % E, experts[..., 1])
    observed = cooccurrence_counts(slots, experts, 2, E)
    p = within_document_pvalues(observed.reshape(2, -1), *_document_tables(slots, experts, documents, 2))
    _, brute = _monte_carlo_pvalues(slots, experts, documents, 2, 3000, seed=0)
    np.testing.assert_allclose(p, brute.reshape(2, -1), atol=0.035)
    assert p[1, E + 6] < 1e-4  # the enriched cell


def test_a_planted_association_is_found_with_its_hand_lift_and_confirmed_held_out():
    rng, lengths, tokens = _corpus(2)
    experts = _random_routing(rng, len(tokens))
    planted_token, planted_layer, planted_expert = 7, 1, 5
    force = tokens == planted_token
    experts[force, planted_layer, 0] = planted_expert
    experts[force, planted_layer, 1] = np.where(
        experts[force, planted_layer, 1] == planted_expert, 0, experts[force, planted_layer, 1]
    )
    out = token_expert_associations(_stream_records(lengths, tokens, experts).finalize(), E, n_resamples=500)
    row = out.tested.set_index(["token id", "layer", "expert"]).loc[
        (planted_token, LAYERS[planted_layer], planted_expert)
    ]
    doc = np.repeat(np.arange(len(lengths)), lengths)
    for half, column in ((0, "lift"), (1, "report lift")):
        on = document_split(np.asarray(doc), key=HALVES_KEY) == half
        share = (experts[on, planted_layer] == planted_expert).any(-1).mean()
        assert row[column] == pytest.approx(1.0 / share)  # P(e | t) = 1 by construction
    assert row["discovered"] and row["q"] <= 0.05 and row["confirmed"]
    assert row["report ci low"] > 1 and row["report ci low"] <= row["report lift"] <= row["report ci high"]
    assert out.table.iloc[0]["token id"] == planted_token  # the smallest q
    assert out.summary["mean report lift | discoveries − others"]["ci_low"] > 0


def test_without_association_almost_nothing_survives_fdr_and_document_confounds_are_not_associations():
    """Routing independent of the token inside documents: few discoveries over seeds, even when one
    group of documents both holds token 9 and sends more tokens to expert 4 (raw lift well above 1)."""
    discoveries, raw_lifts = 0, []
    for seed in range(4):
        rng, lengths, tokens = _corpus(10 + seed)
        doc = np.repeat(np.arange(len(lengths)), lengths)
        group = doc % 2 == 0  # "domain A": token 9 is frequent there, and expert 4 too (document-level)
        tokens = np.where(group & (rng.random(len(tokens)) < 0.15), 9, tokens)
        experts = _random_routing(rng, len(tokens))
        boost = group & (rng.random(len(tokens)) < 0.5)
        experts[boost, 0, 0] = 4
        experts[boost, 0, 1] = np.where(experts[boost, 0, 1] == 4, 0, experts[boost, 0, 1])
        out = token_expert_associations(
            _stream_records(lengths, tokens, experts).finalize(), E, n_resamples=100
        )
        discoveries += out.summary["discoveries"]
        raw_lifts.append(out.tested.set_index(["token id", "layer", "expert"]).loc[(9, LAYERS[0], 4), "lift"])
    assert min(raw_lifts) > 1.15  # the confound makes a raw association ...
    assert discoveries <= 2  # ... that the within-document null does not call one


# -------------------------------------------------------------------------------------- position effect
def _position_stream(seed: int, planted: float, n_docs: int = 60, confound: bool = False):
    """Documents of sentences of 8 tokens; driver = expert 0 of block 0, control = expert 1 of block 0.
    ``planted``: extra probability that a token at sentence position < 3 is routed to the driver.
    ``confound``: token 3 sits at sentence starts and always goes to the driver (no position effect
    once the token is fixed)."""
    rng, lengths, tokens = _corpus(seed, n_docs=n_docs)
    positions = np.concatenate([np.arange(n) % 8 for n in lengths])
    experts = _random_routing(rng, len(tokens))
    bias = (positions < 3) & (rng.random(len(tokens)) < planted)
    if confound:
        tokens = np.where((positions == 0) & (rng.random(len(tokens)) < 0.7), 3, tokens)
        tokens = np.where((positions > 0) & (rng.random(len(tokens)) < 0.05), 3, tokens)
        bias = tokens == 3
    experts[bias, 0, 0] = 0
    experts[bias, 0, 1] = np.where(experts[bias, 0, 1] == 0, 2, experts[bias, 0, 1])
    records = _stream_records(lengths, tokens, experts).finalize()
    assert torch.equal(records.token_id, torch.as_tensor(tokens))
    drivers = np.zeros((len(LAYERS), E), dtype=bool)
    controls = np.zeros_like(drivers)
    drivers[0, 0], controls[0, 1] = True, True
    return position_effect(
        records.experts.numpy().astype(np.int64),
        positions,
        records.token_id.numpy(),
        records.doc_index.numpy(),
        drivers,
        controls,
        n_resamples=500,
        seed=seed,
    )


def _effect(result, name):
    return result.effects.set_index("effect").loc[name]


def test_a_planted_early_position_bias_is_recovered_against_controls_and_within_token_ids():
    result = _position_stream(0, planted=0.3)
    for name in (
        "drivers: early − late",
        "drivers − controls: early − late",
        "drivers − controls: early − late, within token id",
    ):
        row = _effect(result, name)
        assert row["ci low"] > 0, name
    # the planted size: P(hit | early) − P(hit | late) = 0.3 * (1 − p0), p0 = P(hit) under uniform routing
    p0 = K / E  # expert 0 among the K of E routed in block 0
    assert _effect(result, "drivers: early − late")["estimate"] == pytest.approx(0.3 * (1 - p0), abs=0.05)
    controls = _effect(result, "controls: early − late")
    assert controls["ci high"] < 0.05  # the control loses the slots the driver takes early
    curve = result.curve.set_index("position")
    assert curve.loc["0", "drivers rate"] > curve.loc["3–4", "drivers rate"]


def test_without_a_planted_effect_the_intervals_contain_zero():
    misses = 0
    for seed in range(5):
        result = _position_stream(20 + seed, planted=0.0)
        for name in ("drivers − controls: early − late", "drivers − controls: early − late, within token id"):
            row = _effect(result, name)
            misses += not (row["ci low"] <= 0 <= row["ci high"])
    assert misses <= 1


def test_token_identity_control_removes_an_effect_carried_by_which_tokens_come_first():
    result = _position_stream(5, planted=0.0, confound=True)
    assert _effect(result, "drivers: early − late")["ci low"] > 0  # raw: early tokens hit more ...
    within = _effect(result, "drivers: early − late, within token id")
    assert within["ci low"] <= 0 <= within["ci high"]  # ... because token 3 comes first


def test_hit_rates_average_over_the_blocks_that_hold_a_member():
    experts = np.array([[[0, 1], [2, 3], [4, 5]], [[4, 5], [6, 7], [0, 1]]])  # 2 tokens, 3 blocks
    members = np.zeros((3, E), dtype=bool)
    members[1, 3], members[2, 1] = True, True  # blocks 1 and 2 hold members, block 0 none
    np.testing.assert_allclose(expert_set_hits(experts, members), [0.5, 0.5])
    members[0, 4] = True
    np.testing.assert_allclose(expert_set_hits(experts, members), [1 / 3, 2 / 3])


def test_records_merge_to_the_single_pass():
    rng, lengths, tokens = _corpus(4, n_docs=12)
    experts = _random_routing(rng, len(tokens))
    whole = _stream_records(lengths, tokens, experts).finalize()
    first = _stream_records(lengths[:6], tokens[: sum(lengths[:6])], experts[: sum(lengths[:6])])
    # a second shard: the remaining documents, with stream-wide ids after the first shard's
    acc = RoutingRecords(LAYERS)
    acc.load_state_dict(first.state_dict())
    state = _stream_records(lengths, tokens, experts).state_dict()
    later = {name: value[state["doc_index"] >= 6] for name, value in state.items()}
    other = RoutingRecords(LAYERS)
    other.load_state_dict(later)
    merged = other.merge(acc).finalize()
    for name in ("token_index", "doc_index", "doc_position", "token_id", "experts"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name


# ------------------------------------------------------------------------------------------ segmentation
def test_prose_is_split_into_sentences_by_pysbd_and_wrapped_lines_are_not_boundaries():
    text = (
        "Dr. Smith met Mr. Jones at 5 p.m. on Monday. They talked\nabout the U.S. economy! Was it fun?\n\n"
        "A heading without a stop\n\nThe value is 3.14 here."
    )
    starts = segment_starts(text, "sentences")
    assert [text[s : s + 8] for s in starts] == ["Dr. Smit", "They tal", "Was it f", "A headin", "The valu"]


def test_python_is_split_into_statements_and_c_into_lines():
    code = (
        'import os\n\ndef f(a,\n      b):\n    # note\n    x = """doc\n    more"""\n    return x\ny = (1,\n'
    )
    starts = segment_starts(code, "python")
    assert [code[s : s + 6] for s in starts] == ["import", "def f(", "# note", 'x = ""', "return", "y = (1"]
    c = "#include <stdio.h>\n\nint f(void);\n  /* a\n  comment */\n"
    assert [c[s : s + 4] for s in segment_starts(c, "lines")] == ["#inc", "int ", "/* a", "comm"]
    chat = "Hola. ¿Qué tal?\nBien"
    assert [chat[s : s + 3] for s in segment_starts(chat, "lines_then_sentences", "es")] == [
        "Hol",
        "¿Qu",
        "Bie",
    ]
    assert segmentation_for_domain("python") == "python" and segmentation_for_domain("c") == "lines"
    assert segmentation_for_domain("prose") == "sentences" == segmentation_for_domain("biomedical")
    with pytest.raises(InputError, match="segmentation"):
        segment_starts("x", "paragraphs")


def test_token_positions_count_non_whitespace_tokens_inside_each_segment():
    text = "One two. Three\n  four."
    offsets = [
        (0, 3),
        (3, 7),
        (7, 8),
        (8, 14),
        (14, 17),
        (17, 21),
        (21, 22),
    ]  # "One"," two","."," Three","\n  ","four","."
    starts = segment_starts(text, "sentences")
    np.testing.assert_array_equal(token_segment_positions(text, offsets, starts), [0, 1, 2, 0, -1, 1, 2])


# ------------------------------------------------------------------------------------- pipeline section
def test_the_associations_analysis_runs_after_drivers_and_renders(tiny_run_options, tmp_path):
    import json

    from tl_moe.pipeline import run

    generator = np.random.default_rng(0)
    texts, domains = [], []
    for i in range(60):
        lines = [
            " ".join(f"w{w}" for w in generator.integers(3, 40, size=generator.integers(3, 7)))
            for _ in range(4)
        ]
        texts.append("\n".join(lines))
        domains.append("c" if i % 2 else "prose")
    corpus = datasets.Dataset.from_dict({"text": texts, "domain": domains})
    options = tiny_run_options(
        ("associations",), max_tokens=1500, driver_tokens=1500, seq_len=32, bootstrap_resamples=200
    )
    results = run(options, dataset=corpus)
    assert "drivers" in results.results  # the dependency ran first
    result = results["associations"]
    assert set(result.segmentation["segmentation"]) == {"lines", "sentences"}
    assert result.positions.n_documents >= 10 and len(result.positions.effects) == 6
    saved = json.loads((tmp_path / "results.json").read_text())["sections"]["associations"]
    assert "position | drivers − controls: early − late | 95% CI" in saved["metrics"]
    assert (tmp_path / "figures" / "associations_position_curve.png").exists()
    assert any("Position effect" in finding for finding in results.findings)


def test_the_normal_approximation_of_frequent_tokens_agrees_with_the_exact_law(monkeypatch):
    import tl_moe.analysis.token_association as module

    rng = np.random.default_rng(8)
    slots = rng.integers(-1, 1, size=3000)
    documents = np.sort(rng.integers(0, 30, size=3000))
    experts = _random_routing(rng, 3000, n_layers=1)
    experts[(slots == 0) & (rng.random(3000) < 0.12), 0, 0] = 2
    experts[..., 1] = np.where(experts[..., 1] == experts[..., 0], (experts[..., 0] + 1) % E, experts[..., 1])
    observed = cooccurrence_counts(slots, experts, 1, E).reshape(1, -1)
    tables = _document_tables(slots, experts, documents, 1)
    exact = within_document_pvalues(observed, *tables)
    monkeypatch.setattr(module, "EXACT_MAX_COUNT", 10)
    normal = within_document_pvalues(observed, *tables)
    np.testing.assert_allclose(normal, exact, atol=0.02)
    assert exact.min() < 0.05  # the enriched cell is in the comparison


def test_selection_never_sees_report_documents():
    """An association planted only in report-half documents is never selected; one planted only in
    selection-half documents is selected and then fails to replicate on the report half."""
    rng, lengths, tokens = _corpus(6)
    doc = np.repeat(np.arange(len(lengths)), lengths)
    report = document_split(np.asarray(doc), key=HALVES_KEY) == 1
    experts = _random_routing(rng, len(tokens))
    for token, expert, where in ((5, 6, report), (8, 7, ~report)):
        force = (tokens == token) & where
        experts[force, 0, 0] = expert
        experts[force, 0, 1] = np.where(experts[force, 0, 1] == expert, 0, experts[force, 0, 1])
    out = token_expert_associations(_stream_records(lengths, tokens, experts).finalize(), E, n_resamples=300)
    rows = out.tested.set_index(["token id", "layer", "expert"])
    hidden, selected = rows.loc[(5, LAYERS[0], 6)], rows.loc[(8, LAYERS[0], 7)]
    assert not hidden["discovered"] and hidden["report lift"] > 2  # strong, but only where selection is blind
    assert selected["discovered"] and not selected["confirmed"]
    assert selected["report ci low"] <= 1 <= selected["report ci high"]


# ------------------------------------------------------------------- report-half lifts: gate and multiplicity
def _force(experts, where, layer, expert):
    experts[where, layer, 0] = expert
    other = (expert + 1) % E  # keep the two routed experts distinct
    experts[where, layer, 1] = np.where(experts[where, layer, 1] == expert, other, experts[where, layer, 1])


def test_a_report_lift_behind_fewer_than_min_documents_has_no_interval_never_a_number():
    from tl_moe.analysis.stats import MIN_DOCUMENTS

    rng, lengths, tokens = _corpus(4)
    doc = np.repeat(np.arange(len(lengths)), lengths)
    rare = (doc % 4 == 0) & (rng.random(len(tokens)) < 0.3)  # token 50: in a quarter of the documents
    tokens = np.where(rare, 50, tokens)
    experts = _random_routing(rng, len(tokens))
    _force(experts, tokens == 50, 0, 3)
    out = token_expert_associations(_stream_records(lengths, tokens, experts).finalize(), E, n_resamples=200)
    row = out.tested.set_index(["token id", "layer", "expert"]).loc[(50, LAYERS[0], 3)]
    assert row["discovered"] and 0 < row["report documents with token"] < MIN_DOCUMENTS
    assert np.isfinite(row["report lift"]) and row["report lift"] > 1  # the estimate is shown ...
    assert np.isnan(row["report ci low"]) and np.isnan(row["report ci high"])  # ... never an interval
    assert f"at least {MIN_DOCUMENTS}" in row["report interval unavailable"]
    assert not row["confirmed"] and np.isnan(row["report p"])
    assert out.summary["discoveries without a report interval"] >= 1


def test_report_confirmation_is_bh_over_the_measured_discoveries_and_rejects_a_selection_only_effect():
    """Planted: token 7 goes to expert 5 of block 1 on both halves (a real association); tokens 10-17
    each go to their own expert of block 0 on the selection half only (no effect on the report half: the
    planted "no effect" for the confirmation). Only token 7's association is confirmed."""
    rng, lengths, tokens = _corpus(6)
    doc = np.repeat(np.arange(len(lengths)), lengths)
    selection = document_split(np.asarray(doc), key=HALVES_KEY) == 0
    experts = _random_routing(rng, len(tokens))
    _force(experts, tokens == 7, 1, 5)
    for token in range(10, 18):
        _force(experts, (tokens == token) & selection, 0, token - 10)
    out = token_expert_associations(_stream_records(lengths, tokens, experts).finalize(), E, n_resamples=400)
    tested = out.tested.set_index(["token id", "layer", "expert"])
    selection_only = [(t, LAYERS[0], t - 10) for t in range(10, 18)]
    assert tested.loc[selection_only, "discovered"].all()  # found on the selection half ...
    assert not tested.loc[selection_only, "confirmed"].any()  # ... and not confirmed held out
    assert not tested.loc[selection_only, "confirmed (BY)"].any()
    assert tested.loc[
        (7, LAYERS[1], 5), "confirmed"
    ]  # (BY: its p sits at the floor 2 / 401 of 400 resamples)
    family = out.tested[out.tested["discovered"] & out.tested["report p"].notna()]
    assert len(family) == out.summary["discoveries measured on the report half"] >= 5
    np.testing.assert_allclose(
        family["report q"], scipy.stats.false_discovery_control(family["report p"], method="bh")
    )
    assert (
        out.summary["confirmed"]
        == int(out.tested["confirmed"].sum())
        <= out.summary["report interval above 1 (unadjusted)"]
    )
    assert (family["report q (BY)"] >= family["report q"] - 1e-12).all()
