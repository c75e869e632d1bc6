"""The model matrix: every registered analysis on every shipped toy MoE and on tiny random models whose
routing differs (softmax-top-k, top-k-softmax with biases, sigmoid with selection bias and shared
experts, gated shared experts, a hybrid with linear attention, 4 and 8 experts per layer, top-1).

Each run uses small budgets on a corpus of short documents (the embedded validation split, each
document cut to its first characters), so that the document-level analyses see enough documents
within a few thousand tokens. Every run must finish and write a section for every analysis it ran.
The ``sparsity`` analysis probes the whole toy family whatever the model, so it runs once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tl_moe.data.corpus import load_corpus
from tl_moe.models.build import save_model
from tl_moe.models.catalog import build_tiny
from tl_moe.pipeline import RunOptions, run
from tl_moe.pipeline.registry import analysis_names

CHARACTERS_PER_DOCUMENT = 300
EVERY_ANALYSIS = tuple(name for name in analysis_names() if name != "sparsity")

# name -> (model_type, config changes): routing rules and layouts that differ.
TINY = {
    "olmoe-8x2": ("olmoe", {}),
    "mixtral-4x2": ("mixtral", {"num_local_experts": 4}),
    "qwen3_moe-top1": ("qwen3_moe", {"num_experts_per_tok": 1}),
    "gpt_oss-biases": ("gpt_oss", {"num_local_experts": 4}),
    "deepseek_v3-sigmoid-shared": ("deepseek_v3", {}),
    "qwen2_moe-gated-shared": ("qwen2_moe", {}),
    "qwen3_next-hybrid": ("qwen3_next", {}),
}
TOYS = ("toy/moe-4x2", "toy/moe-8x2", "toy/moe-16x2", "toy/moe-32x2")


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory) -> Path:
    """The embedded validation documents cut to their first characters, as a JSON-lines file."""
    documents = load_corpus("embedded")["validation"]
    path = tmp_path_factory.mktemp("corpus") / "short.jsonl"
    with path.open("w") as file:
        for row in documents:
            record = {"text": row["text"][:CHARACTERS_PER_DOCUMENT], "domain": row["domain"]}
            file.write(json.dumps({**record, "split": "validation"}) + "\n")
    return path


def _tiny_model_dir(name: str, root: Path) -> str:
    """A tiny random model of the case ``name`` saved with the toy zoo's tokenizer (real text tokenizes)."""
    from transformers import PreTrainedTokenizerFast

    import tl_moe.zoo

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(Path(tl_moe.zoo.__file__).parent / "tokenizer.json")
    )
    tokenizer.add_special_tokens(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
    )
    model_type, changes = TINY[name]
    model = build_tiny(model_type, vocab_size=len(tokenizer), **changes)
    return str(save_model(model, tokenizer, root / name))


def _run(model: str, analyses: tuple[str, ...], corpus: Path, out: Path, **changes) -> dict:
    budgets = dict(max_tokens=4000, driver_tokens=4000, reweight_tokens=500)
    options = RunOptions(
        model=model,
        dense_baseline=None,
        corpus=str(corpus),
        analyses=analyses,
        out=out,
        **{**budgets, **changes},
        n_drivers=3,
        seq_len=32,
        batch_size=8,
        n_token_groups=4,
        probe_ks=(1, 4, 16),
        bootstrap_resamples=200,
        permutations=99,
        explain_causal_windows=8,
        threads=1,
        progress=False,
    )
    run(options)
    return json.loads((out / "results.json").read_text())


def _assert_every_section(results: dict, analyses: tuple[str, ...]) -> None:
    sections = results["sections"]
    missing = [name for name in analyses if name not in sections]
    assert not missing, f"no section for {missing}; sections: {sorted(sections)}"


def _assert_resumed(results: dict) -> None:
    """Every block got its own mask (a hybrid's linear / full attention, sliding windows): the
    drivers' edited forwards resumed from the edited layer, without the whole-model fallback."""
    assert results["sections"]["drivers"]["metrics"]["edited forwards"] == "resumed from the edited layer"


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_analysis_on_a_tiny_random_model(name, short_corpus, tmp_path):
    model = _tiny_model_dir(name, tmp_path)
    results = _run(model, EVERY_ANALYSIS, short_corpus, tmp_path / "report")
    _assert_every_section(results, EVERY_ANALYSIS)
    _assert_resumed(results)


@pytest.mark.parametrize("toy", TOYS)
def test_every_analysis_on_a_shipped_toy_moe(toy, short_corpus, tmp_path):
    analyses = EVERY_ANALYSIS + (("sparsity",) if toy == "toy/moe-8x2" else ())
    # probing on one layer without the untrained null keeps four toys inside the suite's budget
    results = _run(
        toy,
        analyses,
        short_corpus,
        tmp_path / "report",
        probe_layers=(1,),
        skip_untrained_null=True,
        max_tokens=3000,
        driver_tokens=1500,
        reweight_tokens=300,
    )
    _assert_every_section(results, analyses)
    _assert_resumed(results)
    experts = pd.read_csv(
        tmp_path / "report" / results["sections"]["drivers"]["tables"]["drivers_experts"]["csv"]
    )
    n_drivers = int(experts["driver"].sum())
    assert n_drivers > 0
    # every driver has its own matched control (none shared, none missing)
    assert int(experts["control for"].fillna("").ne("").sum()) == n_drivers
