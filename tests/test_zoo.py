"""The toy zoo: the training recipe runs and resumes; shipped checkpoints load and reproduce their losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tl_moe
from tl_moe.cli import main as cli
from tl_moe.data.corpus import load_corpus
from tl_moe.models.config import MoEConfig
from tl_moe.zoo import train as training
from tl_moe.zoo.family import TOY_FAMILY
from tl_moe.zoo.held_out_texts import held_out_text_losses, loss_bound
from tl_moe.zoo.registry import checkpoint_dir, list_models, metadata
from tl_moe.zoo.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [name for name in TOY_FAMILY if (checkpoint_dir(name) / "metadata.json").exists()]
TINY = MoEConfig(
    "olmoe",
    n_layers=1,
    d_model=32,
    d_vocab=4096,
    n_heads=2,
    num_experts=4,
    experts_per_token=2,
    d_expert=16,
    sparse_layers=(0,),
    max_position_embeddings=64,
    tie_word_embeddings=True,
)


@pytest.fixture(scope="module")
def small_corpus():
    corpus = load_corpus()
    return {split: corpus[split].select(range(0, len(corpus[split]), 25)) for split in corpus}


def test_training_recipe_runs_and_writes_metadata(tmp_path, small_corpus):
    cfg = training.TrainConfig(steps=3, batch_size=2, seq_len=32, warmup=1)
    out = training.train_model(TINY, tmp_path, cfg, corpus=small_corpus, device="cpu", progress=False)
    meta = json.loads((out / "metadata.json").read_text())
    assert set(meta["validation_loss"]) == set(small_corpus["validation"]["domain"])
    assert not (out / "train_state.pt").exists()
    model = tl_moe.load(out, device="cpu")
    assert model.moe_cfg.num_experts == 4


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, small_corpus, monkeypatch):
    cfg = training.TrainConfig(steps=4, batch_size=2, seq_len=32, warmup=1, checkpoint_every=2)
    whole = training.train_model(
        TINY, tmp_path / "whole", cfg, corpus=small_corpus, device="cpu", progress=False
    )

    real_batch, calls = training._batch, {"n": 0}

    def failing_batch(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_batch(*args)

    monkeypatch.setattr(training, "_batch", failing_batch)
    with pytest.raises(KeyboardInterrupt):
        training.train_model(
            TINY, tmp_path / "resumed", cfg, corpus=small_corpus, device="cpu", progress=False
        )
    assert (tmp_path / "resumed" / "train_state.pt").exists()
    monkeypatch.setattr(training, "_batch", real_batch)
    resumed = training.train_model(
        TINY, tmp_path / "resumed", cfg, corpus=small_corpus, device="cpu", progress=False
    )
    from safetensors.torch import load_file

    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_unigram_baseline_by_hand():
    tokenizer = load_tokenizer()
    stream = torch.tensor([5, 5, 7])
    dataset = {"text": [tokenizer.decode([5, 7])], "domain": ["d"]}
    counts = torch.bincount(stream, minlength=len(tokenizer)).double() + 1
    p = counts / counts.sum()
    expected = -(torch.log(p[5]) + torch.log(p[7])) / 2
    assert training.unigram_loss_by_domain(stream, tokenizer, dataset)["d"] == pytest.approx(
        float(expected), abs=1e-4
    )


@pytest.mark.skipif(not SHIPPED, reason="no toy checkpoint is shipped")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_beats_unigram_on_every_domain(name):
    meta = metadata(name)
    for domain, loss in meta["validation_loss"].items():
        assert loss < meta["unigram_validation_loss"][domain] - 0.5, domain


@pytest.mark.skipif(not SHIPPED, reason="no toy checkpoint is shipped")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reproduces_its_recorded_validation_loss(name):
    model = tl_moe.load(name, device="cpu")
    meta = metadata(name)
    corpus = load_corpus(meta["train"]["corpus"])  # validated on the corpus it was trained on
    domains = ["math", "chat"]  # the smallest two domains of corpus v2's validation split
    subset = corpus["validation"].filter(lambda row: row["domain"] in domains)
    with torch.no_grad():
        losses = training.loss_by_domain(
            model.original_model, model.tokenizer, subset, seq_len=meta["train"]["seq_len"]
        )
    for domain in domains:
        assert losses[domain] == pytest.approx(meta["validation_loss"][domain], abs=0.02), domain


@pytest.mark.skipif(not SHIPPED, reason="no toy checkpoint is shipped")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_models_held_out_text_within_the_bound(name):
    """Texts written for this project (code, prose, LaTeX), recomputed from the shipped weights."""
    model = tl_moe.load(name, device="cpu")
    losses = held_out_text_losses(model.original_model, model.tokenizer)
    bound = loss_bound(len(model.tokenizer))
    recorded = metadata(name)["held_out_text_loss"]
    for text, loss in losses.items():
        assert loss == pytest.approx(recorded[text], abs=0.02), text
        assert loss <= bound, f"{name} scores {loss:.2f} nats/token on {text}, above {bound:.2f}"


@pytest.mark.skipif("toy/dense" not in SHIPPED, reason="the dense twin is not shipped")
@pytest.mark.parametrize("name", [name for name in SHIPPED if name != "toy/dense"])
def test_every_moe_beats_the_dense_twin_on_validation_loss(name):
    moe, dense = metadata(name)["validation_loss"], metadata("toy/dense")["validation_loss"]
    assert moe.keys() == dense.keys()
    for domain in moe:
        assert moe[domain] < dense[domain], domain


def test_the_zoo_results_file_is_the_shipped_family_evaluated():
    """docs/results/toy_zoo.json (the README's zoo block) recomputed each model's recorded numbers."""
    results = json.loads((ROOT / "docs" / "results" / "toy_zoo.json").read_text())
    assert list(results["models"]) == SHIPPED
    for name, record in results["models"].items():
        meta = metadata(name)
        assert record["recorded_validation_loss"] == meta["validation_loss"]
        for domain, loss in meta["validation_loss"].items():
            assert record["validation_loss"][domain] == pytest.approx(loss, abs=0.005), (name, domain)
        assert record["held_out_text_loss"] == pytest.approx(meta["held_out_text_loss"], abs=0.005)
        assert record["parameters"] == meta["n_parameters"]


def test_zoo_list_command(capsys):
    cli(["zoo", "list"])
    out = capsys.readouterr().out
    for name in TOY_FAMILY:
        assert name in out
    assert len(list_models()) == len(TOY_FAMILY)
    assert (
        "mean_val_loss: validation loss (nats/token) averaged over the corpus domains with equal weight"
        in out
    )


def test_mean_val_loss_is_the_unweighted_mean_of_the_domain_losses():
    from tl_moe.zoo.registry import loss_table

    domains = loss_table().drop(columns="unigram baseline")
    listed = list_models().set_index("name")["mean_val_loss"]
    assert len(domains) == 7
    for name in domains.columns:
        assert listed[name] == pytest.approx(round(sum(domains[name]) / 7, 3), abs=1e-9)


def test_unknown_toy_model_is_a_clear_error():
    with pytest.raises(KeyError, match="toy/moe-16x2"):
        tl_moe.load("toy/moe-3x1")
