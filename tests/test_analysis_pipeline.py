"""The glue between the collection pass and the analyses: stored activations, routing counts, probing blocks."""

from __future__ import annotations

import datasets
import pytest
import torch

import tl_moe
from tl_moe.analysis.activations import StoredTokens, TokenActivationStore
from tl_moe.analysis.concept_probing import concept_populations, expert_activation_block
from tl_moe.analysis.routing_stats import routed_tokens_by_domain, tokens_by_domain
from tl_moe.collect import collect


@pytest.fixture(scope="module")
def word_corpus():
    generator = torch.Generator().manual_seed(0)
    texts, domains = [], []
    for doc in range(12):
        length = int(torch.randint(5, 40, (1,), generator=generator))
        words = torch.randint(3, 96, (length,), generator=generator).tolist()
        texts.append(" ".join(f"w{w}" for w in words))
        domains.append(["alpha", "beta", "gamma"][doc % 3])
    return datasets.Dataset.from_dict({"text": texts, "domain": domains})


def _store(cfg):
    hooks = {}
    for layer in cfg.sparse_layers:
        hooks[f"indices{layer}"] = tl_moe.get_act_name("topk_indices", layer)
        hooks[f"post{layer}"] = tl_moe.get_act_name("expert_post", layer)
    return TokenActivationStore(hooks)


def test_stored_rows_merge_across_shards_to_the_single_pass(tiny_bridge, word_corpus):
    bridge = tiny_bridge("olmoe")
    settings = dict(batch_size=2, seq_len=16, progress=False)
    whole = collect(bridge, word_corpus, {"s": _store(bridge.moe_cfg)}, **settings)["s"]
    first, second = _store(bridge.moe_cfg), _store(bridge.moe_cfg)
    collect(bridge, word_corpus, {"s": first}, shard=(0, 2), **settings)  # accumulators update in place
    collect(bridge, word_corpus, {"s": second}, shard=(1, 2), **settings)
    merged = first.merge(second).finalize()
    assert torch.equal(merged.token_index, whole.token_index)
    for key in whole.rows:
        assert torch.equal(merged.rows[key], whole.rows[key]), key


def test_routed_counts_equal_the_stored_routing(tiny_bridge, word_corpus):
    bridge = tiny_bridge("olmoe")
    cfg = bridge.moe_cfg
    results = collect(
        bridge,
        word_corpus,
        {"counts": routed_tokens_by_domain(cfg, 3), "tokens": tokens_by_domain(3), "store": _store(cfg)},
        batch_size=3,
        seq_len=16,
        progress=False,
    )
    stored: StoredTokens = results["store"]
    assert int(results["tokens"].sum()) == stored.token_index.numel()
    for position, layer in enumerate(cfg.sparse_layers):
        indices = stored.rows[f"indices{layer}"].long()
        expected = torch.zeros(cfg.num_experts, 3, dtype=torch.long)
        for token in range(indices.shape[0]):
            for expert in indices[token].tolist():
                expected[expert, stored.domain[token]] += 1
        assert torch.equal(results["counts"][position], expected)


def test_expert_activation_block_places_each_slot_at_its_expert():
    post = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(6, 2, 4)
    indices = torch.tensor([[0, 2], [1, 3], [2, 0], [3, 1], [0, 1], [2, 3]])
    block, routed = expert_activation_block(post, indices, range(1, 3))  # experts 1 and 2
    for local, expert in enumerate((1, 2)):
        for token in range(6):
            slots = (indices[token] == expert).nonzero().flatten().tolist()
            assert bool(routed[local, token]) == bool(slots)
            expected = post[token, slots[0]] if slots else torch.zeros(4)
            assert torch.equal(block[local, token], expected)


def test_concepts_are_probed_only_on_the_domains_they_are_defined_on():
    stored = StoredTokens(
        token_index=torch.arange(4),
        input_ids=torch.arange(4),
        domain=torch.tensor([0, 0, 1, 1]),
        labels=torch.zeros(4, 2, dtype=torch.bool),
        rows={},
        domain_names=("python", "prose"),
        concept_names=("code_keyword", "text_capitalized_word"),
    )
    populations = {tuple(columns): mask.tolist() for columns, mask in concept_populations(stored)}
    assert populations[(0,)] == [True, True, False, False]
    assert populations[(1,)] == [True, True, True, True]
