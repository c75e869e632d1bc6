"""The collection pass on a tiny random-init llama booted through TransformerBridge.

References are independent of the engine: windows and token counts are rebuilt by
hand from the tokenizer, hooked values are recomputed with the plain Hugging Face
model, and top-k / reservoir selections are recomputed by sorting in Python.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import fields, is_dataclass

import datasets
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from tl_moe.collect import (
    Accumulator,
    BatchBuilder,
    BinEvents,
    CheckpointMismatchError,
    CountAccumulator,
    GroupedValues,
    ReservoirSampler,
    SampleCandidates,
    ScoredEvents,
    SumAccumulator,
    TopKTracker,
    UnknownHookError,
    collect,
    domain_names,
    plan_batches,
    uniform_priority,
)

HOOK = "blocks.0.hook_resid_post"
SEQ_LEN = 12
BATCH_SIZE = 3
TOP_K = 4
CAPACITY = 9

SENTENCES = [
    "the cat sat on the mat and looked at the door",
    "def area(r): return 3.14 * r ** 2",
    "in 1999 the team won 3 games out of 12",
    "a dog ran in the park today with 2 friends",
    "x^2 + y^2 = z^2 holds for 3, 4 and 5",
    "for i in range(10): print(i + 1)",
    "she wrote a long letter to her old friend in the city",
]
DOMAINS = ["prose", "code", "prose", "prose", "math", "code", "prose"]


def corpus_rows() -> dict[str, list[str]]:
    """A small corpus: short and long documents, an empty one, three domains."""
    texts, domains = [], []
    for i in range(4):
        for sentence, domain in zip(SENTENCES, DOMAINS, strict=True):
            repeat = 1 + (i + len(sentence)) % 4
            texts.append(" ".join([sentence] * repeat))
            domains.append(domain)
    texts[5] = ""
    return {"text": texts, "domain": domains}


def build_model_dir(directory) -> str:
    """Save a byte-level BPE tokenizer and a 2-layer random llama to ``directory``."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return str(directory)


def make_accumulators(n_domains: int, vocab_size: int) -> dict[str, Accumulator]:
    """One of each building block, all reading the layer-0 residual stream."""
    return {
        "mean_per_domain": SumAccumulator([HOOK], extract_values, n_groups=n_domains, squares=True),
        "tokens_per_domain": CountAccumulator([HOOK], extract_token_bins, shape=(n_domains, vocab_size)),
        "top_norms": TopKTracker([HOOK], extract_norms, n_keys=n_domains, k=TOP_K),
        "sample": ReservoirSampler([HOOK], extract_rows, capacity=CAPACITY, seed=7, n_groups=n_domains),
    }


def extract_values(acts, meta) -> GroupedValues:
    return GroupedValues(meta.tokens(acts[HOOK]), meta.tokens(meta.domain))


def extract_token_bins(acts, meta) -> BinEvents:
    return BinEvents(torch.stack([meta.tokens(meta.domain), meta.tokens(meta.input_ids)], dim=1))


def extract_norms(acts, meta) -> ScoredEvents:
    return ScoredEvents(
        keys=meta.tokens(meta.domain),
        scores=meta.tokens(acts[HOOK]).norm(dim=-1),
        ids=meta.tokens(meta.token_index),
        payload=meta.tokens(meta.input_ids),
    )


def extract_rows(acts, meta) -> SampleCandidates:
    return SampleCandidates(meta.tokens(meta.token_index), meta.tokens(acts[HOOK]), meta.tokens(meta.domain))


def result_tensors(results: dict) -> dict[str, torch.Tensor]:
    """Flatten finalized results into name -> tensor, for comparisons."""
    flat = {}
    for name, result in results.items():
        if is_dataclass(result):
            for field in fields(result):
                value = getattr(result, field.name)
                if value is not None:
                    flat[f"{name}.{field.name}"] = value.cpu()
        else:
            flat[name] = result.cpu()
    return flat


def assert_results_equal(actual: dict, expected: dict, *, exact: bool = True) -> None:
    actual, expected = result_tensors(actual), result_tensors(expected)
    assert actual.keys() == expected.keys()
    for key in expected:
        if exact or not expected[key].is_floating_point():
            assert torch.equal(actual[key].nan_to_num(-9.0), expected[key].nan_to_num(-9.0)), key
        else:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-12, atol=1e-12, equal_nan=True)


class RecordEverything(Accumulator):
    """Keeps every real token's (domain, token_index, activation) — the brute-force reference."""

    def __init__(self) -> None:
        self.rows: list[tuple[torch.Tensor, ...]] = []

    def hook_names(self, model):
        return [HOOK]

    def update(self, acts, meta):
        self.rows.append(
            (meta.tokens(meta.domain), meta.tokens(meta.token_index), meta.tokens(acts[HOOK]).clone())
        )

    def merge(self, other):
        self.rows += other.rows
        return self

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        self.rows = list(state["rows"])

    def finalize(self):
        domain, token_index, values = (torch.cat(parts) for parts in zip(*self.rows, strict=True))
        return domain, token_index, values


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices run far faster single-threaded on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def bridge(model_dir):
    return TransformerBridge.boot_transformers(model_dir, device="cpu")


@pytest.fixture(scope="module")
def corpus():
    return datasets.Dataset.from_dict(corpus_rows())


def run(bridge, corpus, accumulators=None, **kwargs):
    if accumulators is None:
        accumulators = make_accumulators(len(domain_names(corpus)), len(bridge.tokenizer))
    options = {"batch_size": BATCH_SIZE, "seq_len": SEQ_LEN, "progress": False} | kwargs
    return collect(bridge, corpus, accumulators, **options)


def hand_windows(corpus, tokenizer, seq_len: int = SEQ_LEN) -> list[tuple[int, str, list[int]]]:
    """(doc_index, domain, [BOS, tokens...]) for every window, rebuilt from the tokenizer alone."""
    windows = []
    for doc_index, (text, domain) in enumerate(zip(corpus["text"], corpus["domain"], strict=True)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), seq_len - 1):
            windows.append((doc_index, domain, [tokenizer.bos_token_id] + ids[start : start + seq_len - 1]))
    return windows


def all_metas(corpus, tokenizer, concept_labeler=None, **kwargs):
    builder = BatchBuilder(
        tokenizer, seq_len=SEQ_LEN, domain_names=domain_names(corpus), concept_labeler=concept_labeler
    )
    planned = plan_batches(
        corpus,
        tokenizer,
        batch_size=BATCH_SIZE,
        seq_len=SEQ_LEN,
        with_offsets=concept_labeler is not None,
        **kwargs,
    )
    return [builder.build(batch) for batch in planned]


# ---------------------------------------------------------------- batching


def test_windows_match_hand_tokenization(corpus, bridge):
    tokenizer = bridge.tokenizer
    expected = hand_windows(corpus, tokenizer)
    metas = all_metas(corpus, tokenizer)
    rows = [(meta, row) for meta in metas for row in range(meta.batch_size)]
    assert len(rows) == len(expected)
    assert all(meta.batch_size == BATCH_SIZE for meta in metas[:-1])
    names = domain_names(corpus)
    assert names == ("code", "math", "prose")
    for window_index, ((meta, row), (doc_index, domain, ids)) in enumerate(zip(rows, expected, strict=True)):
        mask = meta.attention_mask[row]
        assert meta.input_ids[row][mask].tolist() == ids
        assert mask.tolist() == [True] * len(ids) + [False] * (SEQ_LEN - len(ids))
        assert set(meta.doc_index[row][mask].tolist()) == {doc_index}
        assert set(meta.domain[row][mask].tolist()) == {names.index(domain)}
        assert meta.position[row][mask].tolist() == list(range(len(ids)))
        assert int(meta.window_index[row]) == window_index
        assert meta.token_index[row][mask].tolist() == [window_index * SEQ_LEN + p for p in range(len(ids))]
        assert meta.doc_position[row][0] == -1


def test_doc_position_counts_tokens_within_document(corpus, bridge):
    tokenizer = bridge.tokenizer
    long_doc = max(range(len(corpus)), key=lambda i: len(corpus[i]["text"]))
    n_tokens = len(tokenizer(corpus[long_doc]["text"], add_special_tokens=False)["input_ids"])
    assert n_tokens > 2 * SEQ_LEN
    positions = []
    for meta in all_metas(corpus, tokenizer):
        real = meta.attention_mask & (meta.doc_index == long_doc) & (meta.doc_position >= 0)
        positions += meta.doc_position[real].tolist()
    assert positions == list(range(n_tokens))


def test_max_tokens_truncates_the_stream(corpus, bridge):
    tokenizer = bridge.tokenizer
    full = torch.cat([meta.input_ids[meta.attention_mask] for meta in all_metas(corpus, tokenizer)])
    for cap in (1 + SEQ_LEN, 50, 51):
        capped = torch.cat(
            [meta.input_ids[meta.attention_mask] for meta in all_metas(corpus, tokenizer, max_tokens=cap)]
        )
        assert cap - 1 <= capped.numel() <= cap
        assert torch.equal(capped, full[: capped.numel()])


def test_stream_restarted_from_a_cursor_continues_identically(corpus, bridge):
    tokenizer = bridge.tokenizer
    options = {"batch_size": BATCH_SIZE, "seq_len": SEQ_LEN, "max_tokens": 200}
    batches = list(plan_batches(corpus, tokenizer, **options))
    for split in (1, 4, len(batches) - 2):
        resumed = list(plan_batches(corpus, tokenizer, start=batches[split].cursor_after, **options))
        assert [b.batch_index for b in resumed] == [b.batch_index for b in batches[split + 1 :]]
        for a, b in zip(resumed, batches[split + 1 :], strict=True):
            assert [(w.document.doc_index, w.token_start, w.token_end) for w in a.windows] == [
                (w.document.doc_index, w.token_start, w.token_end) for w in b.windows
            ]


def digit_labeler(text: str, offsets: torch.Tensor) -> torch.Tensor:
    """Concept 0: the token's characters include a digit; concept 1: they include 'a'."""
    return torch.tensor(
        [[any(c.isdigit() for c in text[s:e]), "a" in text[s:e]] for s, e in offsets.tolist()]
    )


digit_labeler.concept_names = ("digit", "letter_a")


def test_concept_labels_follow_token_text(corpus, bridge):
    tokenizer = bridge.tokenizer
    n_checked = 0
    for meta in all_metas(corpus, tokenizer, concept_labeler=digit_labeler):
        assert meta.concept_names == ("digit", "letter_a")
        assert not meta.concept_labels[~meta.attention_mask].any()
        assert not meta.concept_labels[:, 0].any()  # BOS
        for row, pos in (meta.attention_mask & (meta.position > 0)).nonzero().tolist():
            piece = tokenizer.decode([int(meta.input_ids[row, pos])])
            expected = [any(c.isdigit() for c in piece), "a" in piece]
            assert meta.concept_labels[row, pos].tolist() == expected
            n_checked += 1
    assert n_checked > 300


def test_labeler_taking_domain_and_language_receives_them(bridge):
    rows = {
        "text": ["x = 1", "a cat", "b dog"],
        "domain": ["code", "prose", "code"],
        "language": ["py", "en", "py"],
    }
    corpus = datasets.Dataset.from_dict(rows)
    seen = []

    def labeler(text, offsets, *, domain, language):
        seen.append((text, domain, language))
        return torch.full((len(offsets), 1), domain == "code")

    metas = all_metas(corpus, bridge.tokenizer, concept_labeler=labeler)
    assert seen == list(zip(rows["text"], rows["domain"], rows["language"], strict=True))
    for meta in metas:
        real = meta.attention_mask & (meta.position > 0)
        is_code = meta.domain == domain_names(corpus).index("code")
        assert torch.equal(meta.concept_labels[..., 0], real & is_code)


def test_class_label_domains_keep_their_names(bridge):
    features = datasets.Features(
        {"text": datasets.Value("string"), "domain": datasets.ClassLabel(names=["z", "a"])}
    )
    corpus = datasets.Dataset.from_dict({"text": ["one", "two"], "domain": [1, 0]}, features=features)
    assert domain_names(corpus) == ("z", "a")
    (meta,) = all_metas(corpus, bridge.tokenizer)
    assert meta.domain[:, 0].tolist() == [1, 0]
    assert domain_names(datasets.Dataset.from_dict({"text": ["t"]})) == ("all",)


def test_batch_meta_aligns_flattened_tensors(corpus, bridge):
    meta = all_metas(corpus, bridge.tokenizer)[0]
    values = torch.arange(meta.batch_size * meta.seq_len * 2).reshape(meta.batch_size, meta.seq_len, 2)
    assert torch.equal(meta.tokens(values.reshape(-1, 2)), meta.tokens(values))
    assert meta.tokens(values).shape == (meta.n_tokens, 2)
    with pytest.raises(ValueError, match="cannot align"):
        meta.tokens(torch.zeros(5, 2))


# ---------------------------------------------------------------- results against references


@pytest.fixture(scope="module")
def full_results(bridge, corpus):
    return run(bridge, corpus)


def test_sums_and_counts_match_hugging_face_forward(full_results, model_dir, corpus, bridge):
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    names = domain_names(corpus)
    n_domains, width = len(names), reference.config.hidden_size
    sums = torch.zeros(n_domains, width, dtype=torch.float64)
    squares = torch.zeros_like(sums)
    counts = torch.zeros(n_domains, dtype=torch.long)
    token_counts = Counter()
    with torch.no_grad():
        for _, domain, ids in hand_windows(corpus, bridge.tokenizer):
            hidden = reference(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
            code = names.index(domain)
            sums[code] += hidden.double().sum(0)
            squares[code] += (hidden.double() ** 2).sum(0)
            counts[code] += len(ids)
            token_counts.update((code, token) for token in ids)
    result = full_results["mean_per_domain"]
    assert torch.equal(result.counts, counts)
    torch.testing.assert_close(result.sums, sums, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.means, sums / counts[:, None], rtol=1e-4, atol=1e-5)
    variances = squares / counts[:, None] - (sums / counts[:, None]) ** 2
    torch.testing.assert_close(result.variances, variances, rtol=1e-4, atol=1e-5)
    histogram = full_results["tokens_per_domain"]
    assert histogram.sum() == sum(token_counts.values())
    for (code, token), count in token_counts.items():
        assert histogram[code, token] == count


@pytest.fixture(scope="module")
def every_token(bridge, corpus):
    return run(bridge, corpus, {"all": RecordEverything()})["all"]


def test_top_k_matches_brute_force(full_results, every_token):
    domain, token_index, values = every_token
    norms = values.double().norm(dim=-1)
    result = full_results["top_norms"]
    for code in range(result.ids.shape[0]):
        members = (domain == code).nonzero().flatten().tolist()
        best = sorted(members, key=lambda i: (-float(norms[i]), int(token_index[i])))[:TOP_K]
        assert result.ids[code].tolist() == token_index[best].tolist()
        torch.testing.assert_close(result.scores[code], norms[best])
        assert int(result.n_seen[code]) == len(members)


def test_top_k_streamed_with_ties_and_merges_matches_sorting():
    generator = torch.Generator().manual_seed(1)
    n_events, n_keys, k = 400, 5, 6
    keys = torch.randint(0, n_keys, (n_events,), generator=generator)
    scores = torch.randint(0, 4, (n_events,), generator=generator).double()  # many ties
    ids = torch.randperm(n_events, generator=generator)
    payload = torch.stack([ids * 2, ids * 3], dim=1)
    parts = []
    for chunks in (torch.arange(n_events).tensor_split(3), torch.arange(n_events).flip(0).tensor_split(4)):
        tracker = TopKTracker([], None, n_keys=n_keys, k=k)
        for i, chunk in enumerate(chunks):
            part = TopKTracker([], None, n_keys=n_keys, k=k) if i % 2 else tracker
            for piece in chunk.tensor_split(5):
                part.store.offer(keys[piece], scores[piece], ids[piece], payload[piece])
            if part is not tracker:
                tracker.merge(part)
        parts.append(tracker.finalize())
    for result in parts:
        for key in range(n_keys):
            members = (keys == key).nonzero().flatten().tolist()
            best = sorted(members, key=lambda i: (-float(scores[i]), int(ids[i])))[:k]
            assert result.ids[key].tolist() == ids[best].tolist()
            assert torch.equal(result.payload[key], payload[best])
            assert int(result.n_seen[key]) == len(members)


def test_reservoir_matches_brute_force(full_results, every_token):
    domain, token_index, values = every_token
    priority = uniform_priority(token_index, seed=7)
    sample = full_results["sample"]
    for code in range(sample.ids.shape[0]):
        members = (domain == code).nonzero().flatten().tolist()
        chosen = sorted(members, key=lambda i: (float(priority[i]), int(token_index[i])))[:CAPACITY]
        assert sample.ids[code].tolist() == token_index[chosen].tolist()
        assert torch.equal(sample.group(code), values[chosen])
        assert int(sample.n_seen[code]) == len(members)


def test_reservoir_includes_every_item_with_equal_probability():
    n_items, capacity, n_seeds = 30, 6, 1200
    ids = torch.arange(n_items) * 1000 + 17
    rows = torch.arange(n_items, dtype=torch.float32)[:, None]
    included = torch.zeros(n_items)
    for seed in range(n_seeds):
        sampler = ReservoirSampler([], None, capacity=capacity, seed=seed)
        for chunk in torch.tensor_split(torch.arange(n_items), (7, 19)):
            sampler.add(ids[chunk], rows[chunk])
        kept = sampler.finalize().group(0).flatten().long()
        assert kept.numel() == capacity and kept.unique().numel() == capacity
        included[kept] += 1
    frequency = included / n_seeds
    # binomial standard error sqrt(0.2 * 0.8 / 1200) ~ 0.0115; allow ~5 of them
    assert (frequency - capacity / n_items).abs().max() < 0.055


def test_priorities_are_uniform_and_seed_dependent():
    ids = torch.arange(200_000)
    priority = uniform_priority(ids, seed=3)
    assert 0 <= priority.min() and priority.max() < 1
    counts = torch.histc(priority.float(), bins=20, min=0, max=1)
    assert (counts / ids.numel() - 0.05).abs().max() < 0.003
    other = uniform_priority(ids, seed=4)
    assert abs(torch.corrcoef(torch.stack([priority, other]))[0, 1]) < 0.01
    shuffled = torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(uniform_priority(ids[shuffled], seed=3), priority[shuffled])


# ---------------------------------------------------------------- merge, resume, early stop


def test_merging_two_half_runs_equals_one_pass(bridge, corpus, full_results):
    halves = []
    for position in range(2):
        accumulators = make_accumulators(len(domain_names(corpus)), len(bridge.tokenizer))
        run(bridge, corpus, accumulators, shard=(position, 2))
        halves.append(accumulators)
    for name, accumulator in halves[0].items():
        accumulator.merge(halves[1][name])
    merged = {name: accumulator.finalize() for name, accumulator in halves[0].items()}
    first_half = result_tensors({name: acc.finalize() for name, acc in halves[1].items()})
    assert (
        first_half["mean_per_domain.counts"].sum()
        < result_tensors(full_results)["mean_per_domain.counts"].sum()
    )
    assert_results_equal(merged, full_results, exact=False)


class Interrupt(Exception):
    pass


def forward_counter(limit: int | None = None):
    calls = []

    def hook(activation, hook):
        calls.append(1)
        if limit is not None and len(calls) > limit:
            raise Interrupt

    return calls, hook


def test_resume_after_interruption_equals_uninterrupted(bridge, corpus, full_results, tmp_path):
    n_batches = len(all_metas(corpus, bridge.tokenizer))
    _, bomb = forward_counter(limit=5)
    with bridge.hooks(fwd_hooks=[("embed.hook_out", bomb)]), pytest.raises(Interrupt):
        run(bridge, corpus, checkpoint_dir=tmp_path, checkpoint_every=2)
    calls, counter = forward_counter()
    with bridge.hooks(fwd_hooks=[("embed.hook_out", counter)]):
        resumed = run(bridge, corpus, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert len(calls) == n_batches - 4  # batches 1-4 were checkpointed, the 5th redone
    assert_results_equal(resumed, full_results)
    calls.clear()
    with bridge.hooks(fwd_hooks=[("embed.hook_out", counter)]):
        again = run(bridge, corpus, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert calls == []
    assert_results_equal(again, full_results)


def test_resume_refuses_a_checkpoint_from_other_arguments(bridge, corpus, tmp_path):
    run(bridge, corpus, checkpoint_dir=tmp_path, max_tokens=60)
    with pytest.raises(
        CheckpointMismatchError, match="different batch_size \\(3 in the checkpoint, 4 now\\)"
    ):
        run(bridge, corpus, checkpoint_dir=tmp_path, max_tokens=60, batch_size=4)
    with pytest.raises(CheckpointMismatchError, match="max_tokens"):
        run(bridge, corpus, checkpoint_dir=tmp_path, max_tokens=70)


def test_early_stop_skips_later_layers_without_changing_results(bridge, corpus, full_results):
    tokens = torch.tensor([[1, 40, 41, 42, 43]])
    logits_before = bridge(tokens)
    calls, counter = forward_counter()
    with bridge.hooks(fwd_hooks=[("blocks.1.hook_out", counter)]):
        stopped = run(bridge, corpus, stop_early=True)
        assert calls == []
        complete = run(bridge, corpus, stop_early=False)
        assert len(calls) == len(all_metas(corpus, bridge.tokenizer))
    assert_results_equal(stopped, full_results)
    assert_results_equal(complete, full_results)
    assert torch.equal(bridge(tokens), logits_before)


def test_accumulators_without_hooks_skip_the_forward(bridge, corpus, full_results):
    def domain_of_each_token(acts, meta):
        return BinEvents(meta.tokens(meta.domain))

    calls, counter = forward_counter()
    with bridge.hooks(fwd_hooks=[("embed.hook_out", counter)]):
        counts = run(bridge, corpus, {"n": CountAccumulator([], domain_of_each_token, shape=(3,))})["n"]
    assert calls == []
    assert torch.equal(counts, full_results["mean_per_domain"].counts)


# ---------------------------------------------------------------- errors


def test_clear_errors(bridge, corpus):
    def one_sum(hook):
        return {"s": SumAccumulator([hook], extract_values, n_groups=3)}

    with pytest.raises(ValueError, match="dataset is empty"):
        run(bridge, corpus.select([]), one_sum(HOOK))
    with pytest.raises(ValueError, match="zero tokens"):
        run(bridge, datasets.Dataset.from_dict({"text": ["", ""]}), one_sum(HOOK))
    with pytest.raises(ValueError, match="no 'text' column; its columns are \\['body'\\]"):
        run(bridge, datasets.Dataset.from_dict({"body": ["a cat"]}), one_sum(HOOK))
    with pytest.raises(UnknownHookError, match="did you mean blocks.0.hook_resid_post"):
        run(bridge, corpus, one_sum("blocks.0.hook_resid_psot"))
    with pytest.raises(ValueError, match="group codes must lie in \\[0, 2\\)"):
        run(bridge, corpus, {"s": SumAccumulator([HOOK], extract_values, n_groups=2)})
    with pytest.raises(ValueError, match="no accumulators"):
        run(bridge, corpus, {})


def test_merge_refuses_differently_configured_accumulators():
    a = TopKTracker([HOOK], extract_norms, n_keys=3, k=4)
    with pytest.raises(ValueError, match="configured differently"):
        a.merge(TopKTracker([HOOK], extract_norms, n_keys=3, k=5))
    with pytest.raises(TypeError, match="cannot merge"):
        a.merge(CountAccumulator([HOOK], extract_token_bins, shape=(3,)))
