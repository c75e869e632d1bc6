"""The bounded probing store: the exact bottom-N sketch per (unit, concept, class, side), checked
against a brute-force reference; order, sharding and checkpoints do not change it; its memory stays
flat; when no key is full, probing on it gives exactly the unbounded store's results."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from tl_moe.analysis.activations import TokenActivationStore
from tl_moe.analysis.bounded_store import BoundedTokenStore
from tl_moe.analysis.splits import document_split
from tl_moe.collect.accumulator import state_nbytes
from tl_moe.collect.hashing import uniform_priority
from tl_moe.collect.meta import BatchMeta
from tl_moe.errors import InputError
from tl_moe.pipeline import RunOptions

DOMAINS = ("python", "prose")
CONCEPTS = ("code_keyword", "text_digit")  # defined on python only / on every domain
LAYERS = ("L0", "L1")
EXPERTS, K, WIDTH = 8, 2, 4


def synthetic_batches(n_batches, *, batch=4, seq=32, seed=0, first_batch=0):
    """Batches of windows with BOS, two documents per window, skewed routing over 8 experts."""
    generator = torch.Generator().manual_seed(seed + first_batch)
    batches = []
    for b in range(first_batch, first_batch + n_batches):
        window = torch.arange(b * batch, (b + 1) * batch)
        position = torch.arange(seq).expand(batch, seq)
        token_index = window[:, None] * seq + position
        doc = token_index // (seq // 2)
        doc_position = position.clone()
        doc_position[:, 0] = -1
        domain = doc % 2
        labels = torch.rand(batch, seq, 2, generator=generator) < torch.tensor([0.3, 0.1])
        labels[..., 0] &= domain == 0
        labels[:, 0] = False
        meta = BatchMeta(
            input_ids=torch.randint(0, 50, (batch, seq), generator=generator),
            attention_mask=torch.ones(batch, seq, dtype=torch.bool),
            position=position,
            doc_index=doc,
            doc_position=doc_position,
            domain=domain,
            token_index=token_index,
            window_index=window,
            batch_index=b,
            domain_names=DOMAINS,
            concept_labels=labels,
            concept_names=CONCEPTS,
        )
        acts = {}
        for layer in LAYERS:
            scores = torch.rand(batch * seq, EXPERTS, generator=generator) + torch.linspace(0, 0.6, EXPERTS)
            acts[f"{layer}.topk"] = scores.topk(K, dim=1).indices
            acts[f"{layer}.post"] = torch.randn(batch * seq, K, WIDTH, generator=generator)
        batches.append((acts, meta))
    return batches


def new_store(rows_per_class, seed=0):
    hooks = [f"{layer}.{what}" for layer in LAYERS for what in ("post", "topk")]
    return BoundedTokenStore(
        hooks,
        rows_per_class=rows_per_class,
        routing=[f"{layer}.topk" for layer in LAYERS],
        num_experts=EXPERTS,
        seed=seed,
    )


def fill(store, batches):
    for acts, meta in batches:
        store.update(acts, meta)
    return store


def memberships(token, doc, domain, labels, experts_by_layer, seed=0):
    """Every (unit, concept, class, side, token) membership, one row each, sorted by (priority, token)."""
    side = document_split(doc.numpy(), (0.5, 0.5), seed=0) == 0
    rows = []
    for i, experts in enumerate(experts_by_layer):
        for t in range(len(token)):
            for expert in experts[t].tolist():
                unit = i * EXPERTS + expert
                columns = [(2, 0)]  # the catch-all: every token, class 0
                if DOMAINS[int(domain[t])] == "python":
                    columns.append((0, int(labels[t, 0])))
                columns.append((1, int(labels[t, 1])))
                for concept, cls in columns:
                    rows.append((unit, concept, cls, int(side[t]), int(token[t])))
    frame = pd.DataFrame(rows, columns=["unit", "concept", "cls", "side", "token"])
    frame["priority"] = uniform_priority(torch.tensor(frame["token"].to_numpy()), seed).numpy()
    return frame.sort_values(["priority", "token"])


def stream_memberships(batches):
    parts = []
    for acts, meta in batches:
        real = (meta.doc_position >= 0).reshape(-1)
        parts.append(
            memberships(
                meta.token_index.reshape(-1)[real],
                meta.doc_index.reshape(-1)[real],
                meta.domain.reshape(-1)[real],
                meta.concept_labels.reshape(-1, 2)[real],
                [acts[f"{layer}.topk"][real] for layer in LAYERS],
            )
        )
    return pd.concat(parts).sort_values(["priority", "token"])


KEY = ["unit", "concept", "cls", "side"]


def reference_sketch(batches, n):
    """Brute force: each key's n smallest (priority, token) members, their union, members per key."""
    frame = stream_memberships(batches)
    return set(frame.groupby(KEY).head(n)["token"]), frame.groupby(KEY).size()


def test_the_kept_tokens_are_the_union_of_every_keys_n_smallest_priorities():
    batches = synthetic_batches(30)
    n = 12
    stored = fill(new_store(n), batches).finalize()
    expected, seen = reference_sketch(batches, n)
    assert set(stored.token_index.tolist()) == expected
    assert stored.n_capped > 0  # the bound is hit: the test exercises dropping
    for (unit, concept, cls, side), count in seen.items():
        assert int(stored.n_seen[unit, concept, cls, side]) == count
    # every kept token's rows are the ones streamed, stored once (float16)
    index = {int(t): i for i, t in enumerate(stored.token_index.tolist())}
    for acts, meta in batches[:3]:
        real = (meta.doc_position >= 0).reshape(-1)
        for t, row in zip(meta.token_index.reshape(-1)[real].tolist(), acts["L1.post"][real], strict=True):
            if t in index:
                assert torch.equal(stored.rows["L1.post"][index[t]], row.half())


def test_each_key_keeps_exactly_min_n_available_rows_of_its_own():
    batches = synthetic_batches(30)
    n = 12
    stored = fill(new_store(n), batches).finalize()
    streamed = stream_memberships(batches)
    kept = memberships(
        stored.token_index,
        stored.doc_index,
        stored.domain,
        stored.labels,
        [stored.rows[f"{layer}.topk"] for layer in LAYERS],
    )
    own = {key: set(group["token"]) for key, group in kept.groupby(KEY).head(n).groupby(KEY)}
    wanted = {key: set(group["token"]) for key, group in streamed.groupby(KEY).head(n).groupby(KEY)}
    assert own == wanted  # per key: its n smallest priorities of the whole stream are kept
    sizes = streamed.groupby(KEY).size().clip(upper=n)
    assert all(len(own[key]) == size for key, size in sizes.items())  # exactly min(N, available)
    assert (sizes < streamed.groupby(KEY).size()).any() and (sizes < n).any()  # both cases occur


def _state(store):
    state = store.state_dict()
    return {key: value for key, value in state["tensors"].items()}, state["n_seen"]


def test_order_sharding_and_checkpoints_do_not_change_the_store():
    batches = synthetic_batches(24)
    n = 10
    one = fill(new_store(n), batches).finalize()
    shuffled = batches[:]
    random.Random(1).shuffle(shuffled)
    other = fill(new_store(n), shuffled).finalize()
    left = fill(new_store(n), batches[0::2])
    right = fill(new_store(n), batches[1::2])
    merged = left.merge(right).finalize()
    for stored in (other, merged):
        assert torch.equal(stored.token_index, one.token_index)
        assert torch.equal(stored.labels, one.labels) and torch.equal(stored.n_seen, one.n_seen)
        assert all(torch.equal(stored.rows[key], one.rows[key]) for key in one.rows)

    # checkpoint: save half way, load into a fresh store (weights_only), continue
    import io

    first = fill(new_store(n), batches[:11])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = new_store(n)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed = fill(resumed, batches[11:]).finalize()
    assert torch.equal(resumed.token_index, one.token_index)
    assert all(torch.equal(resumed.rows[key], one.rows[key]) for key in one.rows)


def test_the_config_differs_from_the_unbounded_store_and_with_n():
    unbounded = TokenActivationStore(["L0.post"], max_tokens=1000)
    assert new_store(10).config() != new_store(11).config()
    assert new_store(10).config() != new_store(10, seed=1).config()
    assert "rows_per_class" in new_store(10).config() and "rows_per_class" not in unbounded.config()
    with pytest.raises(TypeError):
        new_store(10).merge(unbounded)
    with pytest.raises(ValueError):
        new_store(10).merge(new_store(11))


def test_memory_is_bounded_and_flat_for_a_long_stream():
    n = 8
    short = fill(new_store(n), synthetic_batches(40))  # 5,120 tokens
    long = new_store(n)
    for start in range(0, 400, 40):  # 51,200 tokens, ten times more
        fill(long, synthetic_batches(40, first_batch=start))
    per_token = sum(v[0].numel() * v[0].element_size() for v in long._concatenated().values())
    n_keys = 2 * EXPERTS * (len(CONCEPTS) + 1) * 2 * 2
    final = state_nbytes(long)["final"]
    assert final <= n_keys * n * per_token + long._n_seen.numel() * 16  # the sketch's hard bound
    assert final <= 1.2 * state_nbytes(short)["final"]  # flat: < 20% growth for 10x the tokens
    assert state_nbytes(long)["peak"] >= final


def test_bad_bounds_are_refused_in_one_line():
    with pytest.raises(ValueError):
        new_store(0)
    with pytest.raises(InputError, match="--probe-rows-per-class") as error:
        RunOptions(probe_rows_per_class=10).check()
    assert "\n" not in str(error.value)
    RunOptions(probe_rows_per_class=None).check()


def test_the_cli_flag_parses_none_and_integers():
    import argparse

    from tl_moe.pipeline.options import add_option_arguments, options_from_arguments

    parser = argparse.ArgumentParser()
    add_option_arguments(parser)
    assert (
        options_from_arguments(parser.parse_args(["--probe-rows-per-class", "none"])).probe_rows_per_class
        is None
    )
    assert (
        options_from_arguments(parser.parse_args(["--probe-rows-per-class", "500"])).probe_rows_per_class
        == 500
    )


def test_the_planned_store_does_not_grow_with_max_tokens():
    from test_plan import FLAGSHIPS, _config
    from tl_moe.pipeline.plan import plan_run

    settings, _, _ = FLAGSHIPS["OLMoE-1B-7B"]

    def store_bytes(max_tokens, rows=256):
        options = RunOptions(
            model="olmoe",
            dense_baseline=None,
            analyses=("probing",),
            max_tokens=max_tokens,
            probe_rows_per_class=rows,
        )
        sizes = plan_run(options, configs={"olmoe": _config(settings)}).models[0].accumulator_bytes
        return next(size for spec, size in sizes.items() if "ExpertNeurons" in spec)

    assert store_bytes(5_000_000) == store_bytes(50_000_000)
    assert store_bytes(5_000_000, rows=128) == pytest.approx(store_bytes(5_000_000) / 2, rel=1e-3)  # rows ∝ N
    unbounded = store_bytes(5_000_000, rows=None)
    assert store_bytes(5_000_000) < unbounded / 10


# ------------------------------------------------------------------ on a real model
@pytest.fixture(scope="module")
def toy_pass():
    """One pass of toy/moe-16x2 filling the unbounded store and two bounded ones (not hit, hit)."""
    import tl_moe
    from tl_moe.analysis.concept_probing import expert_probing_hooks
    from tl_moe.collect import collect
    from tl_moe.data import TokenConceptLabeler
    from tl_moe.models.hook_names import get_act_name
    from tl_moe.pipeline.context import RunContext

    model = tl_moe.load("toy/moe-16x2")
    cfg = model.moe_cfg
    layer = cfg.sparse_layers[-1]
    options = RunOptions(
        max_tokens=8000, skip_untrained_null=True, probe_ks=(1, 4), probe_layers=(layer,), min_documents=10
    )
    run = RunContext(options, models={"toy/moe-16x2": model})
    hooks = expert_probing_hooks(cfg, [layer])
    routing = [get_act_name("topk_indices", layer)]

    def bounded(n):
        return BoundedTokenStore(hooks, rows_per_class=n, routing=routing, num_experts=cfg.num_experts)

    stores = {
        "full": TokenActivationStore(hooks, max_tokens=8000),
        "big": bounded(8000),
        "small": bounded(60),
    }
    stored = collect(
        model, run.dataset, stores, max_tokens=8000, concept_labeler=TokenConceptLabeler(), progress=False
    )
    return run, stored


def test_probing_is_unchanged_while_no_key_is_full(toy_pass):
    from tl_moe.analysis.concept_probing import probe_experts
    from tl_moe.pipeline.sections.probing import held_out_probing, probe_settings

    run, stored = toy_pass
    full, big = stored["full"], stored["big"]
    assert big.n_capped == 0
    assert torch.equal(full.token_index, big.token_index) and torch.equal(full.labels, big.labels)
    layers = run.probed_layers()
    settings = probe_settings(run)
    paper_full = probe_experts(full, layers, 16, settings, min_positives=30, progress=False)
    paper_big = probe_experts(big, layers, 16, settings, min_positives=30, progress=False)
    pd.testing.assert_frame_equal(paper_full, paper_big)
    assert paper_full["f1"].notna().sum() > 20  # the tables compared hold real probes
    arms_full, records_full, _ = held_out_probing(run, full, None, None, layers)
    arms_big, records_big, _ = held_out_probing(run, big, None, None, layers)
    pd.testing.assert_frame_equal(arms_full["moe"].chosen, arms_big["moe"].chosen)  # same selected units
    pd.testing.assert_frame_equal(arms_full["moe"].units, arms_big["moe"].units)
    assert len(arms_full["moe"].chosen) > 0


def test_a_full_store_still_feeds_both_protocols(toy_pass):
    from tl_moe.analysis.concept_probing import probe_experts
    from tl_moe.pipeline.sections.probing import held_out_probing, probe_settings

    run, stored = toy_pass
    small = stored["small"]
    assert small.n_capped > 0 and len(small.token_index) < len(stored["full"].token_index)
    layers = run.probed_layers()
    paper = probe_experts(small, layers, 16, probe_settings(run), min_positives=30, progress=False)
    assert paper["f1"].notna().any()
    arms, _, _ = held_out_probing(run, small, None, None, layers)
    assert len(arms["moe"].chosen) > 0  # both document sides kept enough rows to select and test


def test_the_run_records_every_accumulators_memory(tmp_path, capsys):
    import json

    from tl_moe.cli import main

    flags = [
        "--analyses",
        "domains",
        "--dense-baseline",
        "none",
        "--max-tokens",
        "2000",
        "--n-token-groups",
        "4",
    ]
    main(["analyze", *flags, "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    metadata = json.loads((tmp_path / "results.json").read_text())["metadata"]
    sizes = metadata["accumulator_bytes"]["toy/moe-16x2"]
    domains, cfg = len(metadata["tokens_by_domain"]), metadata["moe_config"]
    assert sizes["TokensByDomain()"] == {"final": domains * 8, "peak": domains * 8}  # int64 counts [domain]
    # routed (token, slot) counts [sparse layer, expert, domain], int64
    routed = len(cfg["sparse_layers"]) * cfg["num_experts"] * domains * 8
    assert sizes["RoutedByDomain()"] == {"final": routed, "peak": routed}
    assert f"toy/moe-16x2: RoutedByDomain(): {routed / 2**20:.3g} / {routed / 2**20:.3g}" in printed
