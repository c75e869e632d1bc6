"""The zoo's evaluation: per-document losses against direct forwards, paired MoE − dense intervals, README block."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from readme_results import zoo_markdown
from test_zoo import TINY as ZOO_TINY
from tl_moe.models.build import build_model
from tl_moe.zoo import train as training
from tl_moe.zoo.evaluate import ALL_DOMAINS, document_losses, domain_means, paired_loss_difference
from tl_moe.zoo.held_out_texts import HELD_OUT_TEXTS, held_out_text_losses, loss_bound
from tl_moe.zoo.tokenizer import load_tokenizer

TINY = dataclasses.replace(ZOO_TINY, max_position_embeddings=512)  # the held-out texts fit in one window
DOCS = {
    "text": [
        "def add(a, b):\n    return a + b\n",
        "The river was high after the rain.",
        "x = [i for i in y]",
    ],
    "domain": ["python", "prose", "python"],
}


@pytest.fixture(scope="module")
def tiny():
    return build_model(TINY, seed=3).eval(), load_tokenizer()


def _direct_loss_sum(model, tokenizer, text: str) -> tuple[float, int]:
    ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")), ids.shape[1] - 1


def test_document_losses_equal_a_forward_over_each_whole_document(tiny):
    model, tokenizer = tiny
    losses = document_losses(model, tokenizer, DOCS, seq_len=256, batch_size=2)
    for row, text in zip(losses.itertuples(), DOCS["text"], strict=True):
        expected_sum, expected_tokens = _direct_loss_sum(model, tokenizer, text)
        assert row.n_tokens == expected_tokens
        assert row.loss_sum == pytest.approx(expected_sum, rel=1e-5)


def test_windows_predict_every_token_once_and_domain_means_equal_the_training_evaluation(tiny):
    model, tokenizer = tiny
    losses = document_losses(model, tokenizer, DOCS, seq_len=5, batch_size=3)
    for row, text in zip(losses.itertuples(), DOCS["text"], strict=True):
        assert row.n_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    means = domain_means(losses)
    reference = training.loss_by_domain(model, tokenizer, DOCS, seq_len=5, batch_size=3)
    for domain, value in reference.items():
        assert means[domain] == pytest.approx(value, abs=1e-4)
    assert means[ALL_DOMAINS] == pytest.approx(losses["loss_sum"].sum() / losses["n_tokens"].sum())


def _frames(seed: int, n: int = 80, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 200, n)
    a = pd.DataFrame(
        {
            "domain": np.where(np.arange(n) % 2, "c", "legal"),
            "loss_sum": tokens * rng.uniform(3, 6, n),
            "n_tokens": tokens,
        }
    )
    b = a.copy()
    b["loss_sum"] = a["loss_sum"] + shift * tokens + rng.normal(0, 5, n)
    return a, b


def test_paired_difference_recovers_a_planted_per_token_gap():
    a, b = _frames(0, shift=0.5)
    b["loss_sum"] = a["loss_sum"] + 0.5 * a["n_tokens"]  # exactly 0.5 nats/token worse on every document
    records = {r["domain"]: r for r in paired_loss_difference(a, b, n_resamples=200)}
    for domain in ("c", "legal", ALL_DOMAINS):
        assert records[domain]["estimate"] == pytest.approx(-0.5)
        assert records[domain]["ci_low"] == pytest.approx(-0.5) and records[domain][
            "ci_high"
        ] == pytest.approx(-0.5)


def test_paired_difference_estimate_is_the_token_weighted_gap_and_its_interval_covers_it():
    a, b = _frames(1, shift=0.1)
    records = {r["domain"]: r for r in paired_loss_difference(a, b, n_resamples=500)}
    for domain in ("c", "legal"):
        rows = a["domain"] == domain
        expected = a.loc[rows, "loss_sum"].sum() / a.loc[rows, "n_tokens"].sum() - (
            b.loc[rows, "loss_sum"].sum() / b.loc[rows, "n_tokens"].sum()
        )
        record = records[domain]
        assert record["estimate"] == pytest.approx(expected)
        assert record["ci_low"] <= expected <= record["ci_high"]
        assert record["n_documents"] == int(rows.sum())
    with pytest.raises(ValueError, match="same documents"):
        paired_loss_difference(a, b.iloc[:-1])


def test_held_out_text_losses_equal_direct_forwards(tiny):
    model, tokenizer = tiny
    losses = held_out_text_losses(model, tokenizer)
    assert set(losses) == set(HELD_OUT_TEXTS)
    for name, text in HELD_OUT_TEXTS.items():
        total, count = _direct_loss_sum(model, tokenizer, text)
        assert losses[name] == pytest.approx(total / count, abs=1e-4)
    assert loss_bound(4096) == pytest.approx(0.65 * math.log(4096))


def _results(worst: float) -> dict:
    names = ["toy/moe-4x2", "toy/dense"]
    texts = list(HELD_OUT_TEXTS)
    models = {
        name: {
            "experts": 4 if "moe" in name else None,
            "top_k": 2 if "moe" in name else None,
            "d_expert": 128 if "moe" in name else None,
            "d_mlp": None if "moe" in name else 256,
            "parameters": 2_000_000,
            "fp16_bytes": 4_000_000,
            "train_tokens": 10_240_000,
            "train_seconds": 1800.0,
            "train_device": "cpu",
            "validation_loss": {"c": 3.0 + i, "legal": 4.0 + i, ALL_DOMAINS: 3.5 + i},
            "held_out_text_loss": {t: (worst if (i, t) == (1, texts[0]) else 3.0) for t in texts},
        }
        for i, name in enumerate(names)
    }
    record = {
        "model": "toy/moe-4x2",
        "estimate": -1.0,
        "ci_low": -1.2,
        "ci_high": -0.8,
        "interval_available": True,
    }
    return {
        "models": models,
        "unigram_validation_loss": {"c": 7.0, "legal": 7.5},
        "moe_minus_dense": [{**record, "domain": d} for d in ("c", "legal", ALL_DOMAINS)],
        "held_out_texts": {"names": texts, "characters": {t: len(HELD_OUT_TEXTS[t]) for t in texts}},
        "held_out_bound": {"fraction_of_uniform": 0.65, "vocab_size": 4096, "nats": loss_bound(4096)},
        "metadata": {
            "command": "python -m tl_moe.zoo.evaluate",
            "corpus": "embedded:v2",
            "split": "validation",
            "documents_by_domain": {"c": 10, "legal": 12},
            "train": dict(
                steps=2500,
                batch_size=16,
                seq_len=256,
                lr=3e-3,
                warmup=100,
                aux_loss_coef=0.01,
                seed=0,
                corpus="embedded:v2",
            ),
        },
    }


def test_zoo_block_says_what_the_numbers_show_whichever_way_they_come_out():
    good = zoo_markdown(_results(worst=5.0), "docs/results/toy_zoo.json")
    assert "5.00: within the bound" in good
    assert "-1.000 [-1.200, -0.800]" in good
    assert "lower loss in 2 of 2 cases, with an interval below 0 in 2;" in good
    bad = zoo_markdown(_results(worst=6.0), "x.json")
    assert "6.00: **above** the bound" in bad
    worse = copy.deepcopy(_results(worst=5.0))
    worse["moe_minus_dense"][0].update(estimate=0.3, ci_low=0.1, ci_high=0.5)
    assert "lower loss in 1 of 2 cases, with an interval below 0 in 1 and above 0 in 1" in zoo_markdown(
        worse, "x"
    )
