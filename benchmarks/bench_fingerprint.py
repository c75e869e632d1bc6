"""Cost of the content fingerprint that keys resumable passes, against one forward pass.

For each toy model: the weights digest (first call: hashes every parameter and buffer; second
call: the cached value behind a version-counter check), the corpus digest of the embedded
corpus (each split and all of them), a checkpoint write + verified read of a collection state,
and one forward of the default batch (16 x 128 tokens, as ``tl-moe analyze``), all on the CPU.

Usage: python benchmarks/bench_fingerprint.py [--threads 1] [--models toy/moe-16x2 toy/moe-32x2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import datasets
import torch

import tl_moe
from tl_moe.collect import hashing
from tl_moe.collect.checkpoint import read_verified, write_verified
from tl_moe.data.corpus import load_corpus
from tl_moe.runtime import set_threads


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure_model(name: str, corpus) -> float:
    """Print the weights digest's cost for toy model ``name``; returns one forward's seconds."""
    model = tl_moe.load(name, device="cpu")
    n_bytes = sum(t.numel() * t.element_size() for _, t in hashing._named_tensors(model))
    ids = model.tokenizer(" ".join(corpus["validation"]["text"][:200]))["input_ids"][: 16 * 128]
    tokens = torch.tensor(ids).reshape(16, 128)

    def forward():
        with torch.inference_mode():
            model(tokens, return_type=None)

    forward()
    forward_s = best_of(forward)

    def fresh_digest():
        model.__dict__.pop(hashing._WEIGHTS_CACHE_ATTRIBUTE, None)
        hashing.weights_digest(model)

    weights_s = best_of(fresh_digest)
    cached_s = best_of(lambda: hashing.weights_digest(model))
    print(
        f"{name}: {n_bytes / 1e6:.1f} MB of weights; forward 16x128 {forward_s * 1e3:.1f} ms; "
        f"weights digest {weights_s * 1e3:.1f} ms ({weights_s / forward_s:.2f} forwards, "
        f"{n_bytes / weights_s / 1e9:.2f} GB/s); cached {cached_s * 1e3:.2f} ms ({cached_s / forward_s:.3f} forwards)"
    )
    return forward_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1")
    parser.add_argument("--models", nargs="+", default=["toy/moe-16x2", "toy/moe-32x2"])
    args = parser.parse_args()
    print(f"threads: {set_threads(args.threads)}")
    corpus = load_corpus()
    everything = datasets.concatenate_datasets([corpus[split] for split in corpus])
    forward_s = 0.0
    for name in args.models:
        forward_s = measure_model(name, corpus)
    for label, dataset in [*((split, corpus[split]) for split in corpus), ("all splits", everything)]:
        chars = sum(len(t) for t in dataset["text"])
        seconds = best_of(lambda dataset=dataset: hashing.corpus_digest(dataset))
        print(
            f"corpus digest, {label}: {len(dataset)} rows, {chars / 1e6:.2f} M chars, {seconds * 1e3:.1f} ms "
            f"({seconds / forward_s:.2f} forwards of the last model)"
        )
    with tempfile.TemporaryDirectory() as directory:
        state = {"counts": torch.zeros(64, 1024, dtype=torch.float64), "n": 3}
        path = Path(directory) / "state.pt"
        write_s = best_of(lambda: write_verified(path, state))
        read_s = best_of(lambda: read_verified(path))
        size = path.stat().st_size
        print(
            f"checkpoint of {size / 1e6:.1f} MB: write {write_s * 1e3:.1f} ms, verified read {read_s * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
