"""Evaluates the shipped toy family from its weights: the numbers behind the README's zoo section.

    python -m tl_moe.zoo.evaluate --out docs/results/toy_zoo.json     # or: tl-moe zoo evaluate

For every shipped model it recomputes, on the saved float16 weights, the loss of every validation
document of the corpus the family was trained on, and the loss on the held-out texts of
:mod:`tl_moe.zoo.held_out_texts`. Each MoE is compared with the dense twin (same active neurons)
per domain as a paired difference over documents, with a document-bootstrap interval; the unigram
baseline (fit on the train split) is the floor every model must clear.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_moe.analysis.stats import paired_difference
from tl_moe.zoo.family import TOY_FAMILY
from tl_moe.zoo.held_out_texts import HELD_OUT_TEXTS, MAX_LOSS_FRACTION_OF_UNIFORM, held_out_text_losses
from tl_moe.zoo.registry import checkpoint_dir

DENSE_TWIN = "toy/dense"
ALL_DOMAINS = "all domains"


@torch.no_grad()
def document_losses(model, tokenizer, dataset, seq_len: int = 256, batch_size: int = 16) -> pd.DataFrame:
    """Summed next-token cross-entropy (nats) and predicted tokens of every document of ``dataset``.

    Each document is encoded with an end-of-text token in front and cut into consecutive windows of
    ``seq_len`` predictions; every token of the document is predicted exactly once.

    Returns:
        one row per document, in ``dataset`` order: ``domain``, ``loss_sum``, ``n_tokens``.
    """
    device = next(model.parameters()).device
    windows: list[tuple[int, torch.Tensor]] = []
    for index, text in enumerate(dataset["text"]):
        ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - 1, seq_len):
            window = torch.tensor(ids[start : start + seq_len + 1])
            if window.numel() > 1:
                windows.append((index, window))
    loss_sum = np.zeros(len(dataset["text"]))
    n_tokens = np.zeros(len(dataset["text"]), dtype=np.int64)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        width = max(window.numel() for _, window in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        valid = torch.zeros(len(chunk), width - 1, dtype=torch.bool)
        for row, (_, window) in enumerate(chunk):
            ids[row, : window.numel()] = window
            valid[row, : window.numel() - 1] = True
        logits = model(input_ids=ids[:, :-1].to(device)).logits.float()
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), ids[:, 1:].to(device), reduction="none"
        ).cpu()
        for row, (index, _) in enumerate(chunk):
            loss_sum[index] += float(losses[row][valid[row]].sum())
            n_tokens[index] += int(valid[row].sum())
    return pd.DataFrame({"domain": list(dataset["domain"]), "loss_sum": loss_sum, "n_tokens": n_tokens})


def domain_means(losses: pd.DataFrame) -> dict[str, float]:
    """Token-weighted mean loss per domain (and over all domains) of :func:`document_losses` rows."""
    grouped = losses.groupby("domain")[["loss_sum", "n_tokens"]].sum()
    means = (grouped["loss_sum"] / grouped["n_tokens"]).to_dict()
    means[ALL_DOMAINS] = float(losses["loss_sum"].sum() / losses["n_tokens"].sum())
    return {domain: float(value) for domain, value in means.items()}


def paired_loss_difference(
    losses_a: pd.DataFrame, losses_b: pd.DataFrame, n_resamples: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """Per domain (and over all domains): mean loss of ``a`` minus mean loss of ``b`` on the same documents.

    Both frames hold the same documents in the same order (:func:`document_losses` on one dataset).
    The interval is a 95% percentile bootstrap over documents, the same documents drawn for both
    models in each resample (:func:`tl_moe.analysis.stats.paired_difference`).
    """
    if list(losses_a["n_tokens"]) != list(losses_b["n_tokens"]):
        raise ValueError("the two loss tables do not hold the same documents")
    records = []
    domains = sorted(losses_a["domain"].unique())
    for domain in [*domains, ALL_DOMAINS]:
        rows = losses_a.index if domain == ALL_DOMAINS else losses_a.index[losses_a["domain"] == domain]
        a_sum = losses_a.loc[rows, "loss_sum"].to_numpy()
        b_sum = losses_b.loc[rows, "loss_sum"].to_numpy()
        counts = losses_a.loc[rows, "n_tokens"].to_numpy().astype(np.float64)
        interval = paired_difference(
            lambda w, s=a_sum, n=counts: (w @ s) / (w @ n),
            lambda w, s=b_sum, n=counts: (w @ s) / (w @ n),
            len(rows),
            n_resamples=n_resamples,
            seed=seed,
            on_too_few="unavailable",
            what=f"the loss difference on {domain}",
        )
        records.append({"domain": domain, "n_tokens": int(counts.sum()), **interval.to_dict()})
    return records


def evaluate_zoo(names: list[str] | None = None, n_resamples: int = 2000, progress: bool = True) -> dict:
    """Every shipped toy model's validation and held-out-text losses, and each MoE minus the dense twin."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    from tl_moe.data.corpus import load_corpus
    from tl_moe.zoo.registry import metadata
    from tl_moe.zoo.tokenizer import load_tokenizer
    from tl_moe.zoo.train import token_stream, unigram_loss_by_domain

    names = names or [name for name in TOY_FAMILY if (checkpoint_dir(name) / "metadata.json").exists()]
    recipes = {json.dumps(metadata(name)["train"], sort_keys=True) for name in names}
    if len(recipes) != 1:
        raise ValueError(f"the toy models {names} were not trained with one recipe; retrain them together")
    train = metadata(names[0])["train"]
    corpus = load_corpus(train.get("corpus"))
    tokenizer = load_tokenizer()
    losses, models = {}, {}
    for name in tqdm(names, desc="evaluate toy zoo", disable=not progress):
        hf_model = AutoModelForCausalLM.from_pretrained(checkpoint_dir(name), dtype=torch.float32).eval()
        losses[name] = document_losses(hf_model, tokenizer, corpus["validation"], train["seq_len"])
        meta = metadata(name)
        models[name] = {
            "architecture": meta["config"]["architecture"],
            "experts": meta["config"]["num_experts"],
            "top_k": meta["config"]["experts_per_token"],
            "d_expert": meta["config"]["d_expert"],
            "d_mlp": meta["config"]["d_mlp"],
            "parameters": meta["n_parameters"],
            "fp16_bytes": (checkpoint_dir(name) / "model.safetensors").stat().st_size,
            "train_tokens": meta["train_tokens"],
            "train_seconds": meta["train_seconds"],
            "train_device": meta["device"],
            "validation_loss": domain_means(losses[name]),
            "recorded_validation_loss": meta["validation_loss"],
            "held_out_text_loss": held_out_text_losses(hf_model, tokenizer),
        }
        del hf_model
    vocab_size = len(tokenizer)
    stream = token_stream(corpus["train"]["text"], tokenizer)
    comparisons = []
    if DENSE_TWIN in losses:
        for name in names:
            if name != DENSE_TWIN:
                for record in paired_loss_difference(losses[name], losses[DENSE_TWIN], n_resamples):
                    comparisons.append({"model": name, **record})
    return {
        "title": "Toy zoo: validation loss, held-out texts, MoE vs dense twin",
        "models": models,
        "unigram_validation_loss": unigram_loss_by_domain(stream, tokenizer, corpus["validation"]),
        "moe_minus_dense": comparisons,
        "held_out_texts": {
            "names": list(HELD_OUT_TEXTS),
            "characters": {k: len(v) for k, v in HELD_OUT_TEXTS.items()},
        },
        "held_out_bound": {
            "fraction_of_uniform": MAX_LOSS_FRACTION_OF_UNIFORM,
            "vocab_size": vocab_size,
            "nats": MAX_LOSS_FRACTION_OF_UNIFORM * math.log(vocab_size),
        },
        "metadata": {
            "command": "python -m tl_moe.zoo.evaluate --out docs/results/toy_zoo.json",
            "corpus": train.get("corpus") or "embedded",
            "split": "validation",
            "documents_by_domain": losses[names[0]]["domain"].value_counts().sort_index().to_dict(),
            "train": train,
            "bootstrap_resamples": n_resamples,
            "versions": {package: _version(package) for package in ("tl_moe", "torch", "transformers")},
        },
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate the shipped toy family from its weights.")
    parser.add_argument("--out", type=Path, default=Path("docs/results/toy_zoo.json"))
    parser.add_argument("--bootstrap-resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    results = evaluate_zoo(n_resamples=args.bootstrap_resamples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
