"""Memory of the bounded probing store vs the stream length: 20,000 vs 500,000 tokens.

Feeds synthetic batches (BatchMeta + probing hooks: 2 sparse layers of 16 experts, top-2 as in
``toy/moe-16x2``, d_expert 64 by default) straight to a
:class:`~tl_moe.analysis.bounded_store.BoundedTokenStore` and prints the store's bytes
(deterministic: the kept tensors, not the process's RSS) after each stream length, the growth ratio
(target < 20%), and what the unbounded store would hold. Two scenarios:

- ``full``: 6 concepts with positive rates 20–50%, N = 50 (the pipeline's smallest N): almost every
  key is full by 20,000 tokens, so the store is at its bound and must stay flat;
- ``labeler``: the labeler's 73 concept names with rates from 0.05% to 50%, N = 256: rare concepts'
  keys are not full at 20,000 tokens, so the store grows until they fill (bounded, not yet flat).

    python benchmarks/bench_bounded_store.py [--scenario full|labeler|both] [--tokens 20000,500000]
        [--out docs/results/bench_bounded_store.json]

``--out`` writes a results file (``bench_results``) that the README's Performance section is generated from.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import bench_results
import torch

from tl_moe.analysis.bounded_store import BoundedTokenStore
from tl_moe.collect.meta import BatchMeta
from tl_moe.data.concepts import TokenConceptLabeler

DOMAINS = ("python", "c", "legal", "biomedical", "chat", "math", "prose")


def batches(
    n_tokens: int,
    *,
    concepts: tuple[str, ...],
    rates: torch.Tensor,
    layers: int,
    experts: int,
    k: int,
    width: int,
    skew: float,
    batch: int = 16,
    seq: int = 128,
):
    """Synthetic batches of windows (BOS first), 4 documents per window, routing skewed by ``skew``."""
    generator = torch.Generator().manual_seed(0)
    skew = torch.linspace(0, skew, experts)
    for b in range(-(-n_tokens // (batch * seq))):
        window = torch.arange(b * batch, (b + 1) * batch)
        position = torch.arange(seq).expand(batch, seq)
        token_index = window[:, None] * seq + position
        doc = token_index // (seq // 4)
        doc_position = position.clone()
        doc_position[:, 0] = -1
        labels = torch.rand(batch, seq, len(concepts), generator=generator) < rates
        labels[:, 0] = False
        meta = BatchMeta(
            input_ids=torch.randint(0, 1000, (batch, seq), generator=generator),
            attention_mask=torch.ones(batch, seq, dtype=torch.bool),
            position=position,
            doc_index=doc,
            doc_position=doc_position,
            domain=doc % len(DOMAINS),
            token_index=token_index,
            window_index=window,
            batch_index=b,
            domain_names=DOMAINS,
            concept_labels=labels,
            concept_names=concepts,
        )
        acts = {}
        for layer in range(layers):
            scores = torch.rand(batch * seq, experts, generator=generator) + skew
            acts[f"blocks.{layer}.mlp.hook_topk_indices"] = scores.topk(k, dim=1).indices
            acts[f"blocks.{layer}.mlp.hook_expert_post"] = torch.randn(
                batch * seq, k, width, generator=generator
            )
        yield acts, meta


def scenario(name: str) -> tuple[tuple[str, ...], torch.Tensor, int, float]:
    """(concept names, positive rate of each, N, routing skew) of a scenario."""
    if name == "full":
        names = (
            "text_lowercase_word",
            "text_capitalized_word",
            "text_punctuation",
            "text_whitespace_led_word",
        )
        names += ("text_long_word", "text_line_start")
        return names, torch.linspace(0.2, 0.5, len(names)), 50, 0.3
    names = TokenConceptLabeler().concept_names
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(0))
    return names, torch.logspace(-3.3, -0.3, len(names))[order], 256, 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("full", "labeler", "both"), default="both")
    parser.add_argument("--tokens", default="20000,500000")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="write the results file here (JSON)")
    args = parser.parse_args()
    load_at_start = bench_results.load_average()
    rows = []
    for name in ("full", "labeler") if args.scenario == "both" else (args.scenario,):
        rows += run_scenario(name, args)
    if args.out is not None:
        columns = {
            "scenario": "",
            "tokens": ",",
            "final MiB": ".3g",
            "peak MiB": ".3g",
            "unbounded MiB": ".3g",
            "final growth": "+.1%",
            "peak growth": "+.1%",
        }
        bench_results.write(
            args.out,
            title=(
                f"the bounded probing store (`--probe-rows-per-class`) fed synthetic batches ({args.layers} layers "
                f"× {args.experts} experts, top-{args.k}, d_expert {args.width}); store bytes (the kept tensors, "
                "deterministic) after each stream length, growth relative to the shortest stream (target below "
                "+20% once every key is full). Scenario full: 6 common concepts, N = 50; labeler: the labeler's "
                "73 concepts (rates 0.05–50%), N = 256, whose rare keys are not yet full"
            ),
            threads=torch.get_num_threads(),
            load_at_start=load_at_start,
            rows_table=bench_results.table(columns, rows),
        )


def run_scenario(name: str, args: argparse.Namespace) -> list[dict]:
    """Print the store's bytes after each stream length of scenario ``name``; one row per length."""
    concepts, rates, rows_per_class, skew = scenario(name)
    sizes = [int(part) for part in args.tokens.split(",")]
    hooks = [
        f"blocks.{layer}.mlp.hook_{what}"
        for layer in range(args.layers)
        for what in ("expert_post", "topk_indices")
    ]
    routing = [f"blocks.{layer}.mlp.hook_topk_indices" for layer in range(args.layers)]
    unbounded_per_token = args.layers * args.k * (2 * args.width + 8) + 4 * 8 + len(concepts)
    print(
        f"scenario {name}: N = {rows_per_class} rows per (unit, concept, class, side); {len(concepts)} "
        f"concepts; {args.layers} layers x {args.experts} experts, top-{args.k}, d_expert {args.width}"
    )
    results = {}
    for n_tokens in sizes:
        store = BoundedTokenStore(
            hooks, rows_per_class=rows_per_class, routing=routing, num_experts=args.experts
        )
        tic = time.perf_counter()
        stream = batches(
            n_tokens,
            concepts=concepts,
            rates=rates,
            layers=args.layers,
            experts=args.experts,
            k=args.k,
            width=args.width,
            skew=skew,
        )
        for acts, meta in stream:
            store.update(acts, meta)
        stored = store.finalize()
        results[n_tokens] = (store.nbytes(), store.peak_nbytes)
        print(
            f"{n_tokens:>9,} tokens: store {store.nbytes() / 2**20:7.2f} MiB final, "
            f"{store.peak_nbytes / 2**20:7.2f} MiB peak, {len(stored.token_index):,} tokens kept, "
            f"{stored.n_capped:,} of {stored.n_seen.numel():,} keys full; unbounded store "
            f"{n_tokens * unbounded_per_token / 2**20:7.2f} MiB; {time.perf_counter() - tic:.1f} s"
        )
    first, last = results[sizes[0]], results[sizes[-1]]
    print(
        f"growth {sizes[0]:,} -> {sizes[-1]:,} tokens: final {last[0] / first[0] - 1:+.1%}, "
        f"peak {last[1] / first[1] - 1:+.1%} (target < 20% once every key is full)"
    )
    n_keys = len(routing) * args.experts * (len(concepts) + 1) * 4
    print(f"hard bound (every key's N rows distinct): {n_keys * rows_per_class:,} tokens\n")
    return [
        {
            "scenario": name,
            "tokens": n_tokens,
            "final MiB": final / 2**20,
            "peak MiB": peak / 2**20,
            "unbounded MiB": n_tokens * unbounded_per_token / 2**20,
            "final growth": final / first[0] - 1,
            "peak growth": peak / first[1] - 1,
        }
        for n_tokens, (final, peak) in results.items()
    ]


if __name__ == "__main__":
    main()
