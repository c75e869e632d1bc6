"""Benchmark of the collection pass on a small llama-like model (d_model 256, 4 layers), CPU.

(a) throughput: tokens/s of ``collect`` with a hook on every layer's ``mlp.hook_out``
    feeding one SumAccumulator (mean MLP output per layer and domain), against a plain
    loop of forwards over the same batches (already tokenized, no hooks).
(b) memory: peak resident memory of a collection over N and over 10N tokens, each in
    a fresh subprocess, measured above the process's footprint just before the pass.

Usage: python benchmarks/bench_collect.py [--tokens N] [--threads T] [--out docs/results/bench_collect.json]
(``--out`` writes a results file, ``bench_results``, that the README's Performance section is generated from)
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from tl_moe.collect import (
    BatchBuilder,
    GroupedValues,
    ReservoirSampler,
    SampleCandidates,
    ScoredEvents,
    SumAccumulator,
    TopKTracker,
    collect,
    domain_names,
    plan_batches,
)

D_MODEL, N_LAYERS, SEQ_LEN, BATCH_SIZE = 256, 4, 128, 8
DOMAINS = ("prose", "code", "math")


def synthetic_corpus(n_docs: int, seed: int = 0) -> datasets.Dataset:
    """Documents of 40-400 pseudo-words drawn from a per-domain word list."""
    rng = random.Random(seed)
    words = {
        "prose": "the a cat dog house river walked slowly under over bright morning light".split(),
        "code": "def return if else for in range print self import class lambda ( ) : =".split(),
        "math": "x y z + - = ^ 2 3 frac sum int dx limit over sqrt pi".split(),
    }
    texts, domains = [], []
    for i in range(n_docs):
        domain = DOMAINS[i % len(DOMAINS)]
        texts.append(" ".join(rng.choice(words[domain]) for _ in range(rng.randint(40, 400))))
        domains.append(domain)
    return datasets.Dataset.from_dict({"text": texts, "domain": domains})


def build_model_dir(directory: Path) -> str:
    corpus = synthetic_corpus(300, seed=1)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus["text"], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(fast),
        hidden_size=D_MODEL,
        intermediate_size=4 * D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=8,
        num_key_value_heads=8,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return str(directory)


def mlp_hooks(model) -> list[str]:
    return [f"blocks.{layer}.mlp.hook_out" for layer in range(len(model.blocks))]


def mean_mlp_out_per_layer_and_domain(model, n_domains: int) -> SumAccumulator:
    hooks = mlp_hooks(model)

    def extract(acts, meta) -> GroupedValues:
        stacked = torch.stack([meta.tokens(acts[name]) for name in hooks], dim=1)  # [tokens, layer, d]
        return GroupedValues(stacked, meta.tokens(meta.domain))

    return SumAccumulator(hooks, extract, n_groups=n_domains)


def _timed(run) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def throughput(model, corpus, max_tokens: int, repeats: int) -> dict[str, dict[str, float]]:
    """Best tokens/s (by wall clock and by this process's CPU time) of each way to run the batches.

    Runs are interleaved and the best of ``repeats`` is kept, because on a shared
    machine other processes slow some runs down; CPU time is the steadier measure.
    """
    tokenizer = model.tokenizer
    builder = BatchBuilder(tokenizer, seq_len=SEQ_LEN, domain_names=domain_names(corpus))
    batches = [
        builder.build(planned)
        for planned in plan_batches(
            corpus, tokenizer, batch_size=BATCH_SIZE, seq_len=SEQ_LEN, max_tokens=max_tokens
        )
    ]
    n_tokens = sum(meta.n_tokens for meta in batches)

    def plain_loop() -> None:
        with torch.inference_mode():
            for meta in batches:
                model(meta.input_ids, attention_mask=meta.attention_mask.long(), return_type=None)

    def collection(stop_early: bool):
        def run() -> None:
            accumulators = {"mean": mean_mlp_out_per_layer_and_domain(model, len(domain_names(corpus)))}
            results = collect(
                model,
                corpus,
                accumulators,
                batch_size=BATCH_SIZE,
                seq_len=SEQ_LEN,
                max_tokens=max_tokens,
                progress=False,
                stop_early=stop_early,
            )
            assert int(results["mean"].counts.sum()) == n_tokens

        return run

    runs = {
        "plain forward loop": plain_loop,
        "collect (stop_early)": collection(True),
        "collect (full forward)": collection(False),
    }
    plain_loop()  # warm-up
    best = {name: {"wall": 0.0, "cpu": 0.0} for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            wall, cpu = _timed(run)
            best[name]["wall"] = max(best[name]["wall"], n_tokens / wall)
            best[name]["cpu"] = max(best[name]["cpu"], n_tokens / cpu)
    best["n_tokens"] = {"wall": n_tokens, "cpu": n_tokens}
    return best


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def memory_child(model_dir: str, max_tokens: int, threads: int) -> None:
    """Run one collection in this (fresh) process; print baseline and peak RSS as JSON."""
    torch.set_num_threads(threads)
    model = TransformerBridge.boot_transformers(model_dir, device="cpu")
    corpus = synthetic_corpus(3000)
    hooks = mlp_hooks(model)
    last = hooks[-1]
    n_domains = len(domain_names(corpus))
    accumulators = {
        "mean": mean_mlp_out_per_layer_and_domain(model, n_domains),
        "top": TopKTracker(
            [last],
            lambda acts, meta: ScoredEvents(
                meta.tokens(meta.domain),
                meta.tokens(acts[last]).norm(dim=-1),
                meta.tokens(meta.token_index),
                meta.tokens(meta.input_ids),
            ),
            n_keys=n_domains,
            k=40,
        ),
        "sample": ReservoirSampler(
            [last],
            lambda acts, meta: SampleCandidates(meta.tokens(meta.token_index), meta.tokens(acts[last])),
            capacity=256,
        ),
    }
    # warm up allocator and kernels with one batch-sized pass before taking the baseline
    warmup = {"mean": mean_mlp_out_per_layer_and_domain(model, n_domains)}
    collect(
        model, corpus, warmup, batch_size=BATCH_SIZE, seq_len=SEQ_LEN, max_tokens=2 * SEQ_LEN, progress=False
    )
    baseline = peak_rss_mib()
    start = time.perf_counter()
    results = collect(
        model,
        corpus,
        accumulators,
        batch_size=BATCH_SIZE,
        seq_len=SEQ_LEN,
        max_tokens=max_tokens,
        progress=False,
    )
    elapsed = time.perf_counter() - start
    tokens = int(results["mean"].counts.sum())
    print(
        json.dumps(
            {"tokens": tokens, "baseline_mib": baseline, "peak_mib": peak_rss_mib(), "seconds": elapsed}
        )
    )


def memory(model_dir: str, n_tokens: int, threads: int) -> list[dict]:
    runs = []
    for cap in (n_tokens, 10 * n_tokens):
        command = [sys.executable, __file__, "--memory-child", str(cap), "--model-dir", model_dir]
        command += ["--threads", str(threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=20_000, help="N for the throughput run and memory runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="write the results file here (JSON)")
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.model_dir, args.memory_child, args.threads)
        return

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_results

    load_at_start = bench_results.load_average()
    with tempfile.TemporaryDirectory() as directory:
        model_dir = build_model_dir(Path(directory))
        model = TransformerBridge.boot_transformers(model_dir, device="cpu")
        corpus = synthetic_corpus(3000)
        speeds = throughput(model, corpus, args.tokens, args.repeats)
        runs = memory(model_dir, args.tokens, args.threads)

    print(
        f"\nllama-like d_model={D_MODEL}, {N_LAYERS} layers, seq_len={SEQ_LEN}, batch={BATCH_SIZE}, ", end=""
    )
    print(f"{args.threads} CPU thread(s), {speeds['n_tokens']['wall']} tokens")
    print(f"\n(a) throughput (best of {args.repeats}; CPU = tokens per second of this process's CPU time)")
    print(f"{'run':<26}{'wall tok/s':>12}{'ratio':>8}{'CPU tok/s':>12}{'ratio':>8}")
    plain = speeds["plain forward loop"]
    for name in ("plain forward loop", "collect (stop_early)", "collect (full forward)"):
        wall, cpu = speeds[name]["wall"], speeds[name]["cpu"]
        print(f"{name:<26}{wall:>12.0f}{wall / plain['wall']:>8.2f}{cpu:>12.0f}{cpu / plain['cpu']:>8.2f}")
    print("\n(b) peak memory, one subprocess per run")
    print(f"{'tokens':>10}{'baseline MiB':>14}{'peak MiB':>10}{'pass MiB':>10}{'seconds':>9}")
    for run in runs:
        added = run["peak_mib"] - run["baseline_mib"]
        print(
            f"{run['tokens']:>10}{run['baseline_mib']:>14.1f}{run['peak_mib']:>10.1f}{added:>10.1f}{run['seconds']:>9.1f}"
        )
    small, large = runs
    growth = (large["peak_mib"] - small["peak_mib"]) / small["peak_mib"]
    print(f"peak growth from N to 10N tokens: {100 * growth:+.1f}% (target < 20%)")
    if args.out is not None:
        rows = [
            {
                "run": name,
                "wall tokens/s": speeds[name]["wall"],
                "vs plain (wall)": speeds[name]["wall"] / plain["wall"],
                "vs plain (CPU time)": speeds[name]["cpu"] / plain["cpu"],
            }
            for name in ("plain forward loop", "collect (stop_early)", "collect (full forward)")
        ]
        columns = {
            "run": "",
            "wall tokens/s": ",.0f",
            "vs plain (wall)": ".2f×",
            "vs plain (CPU time)": ".2f×",
        }
        bench_results.write(
            args.out,
            title=(
                f"the collection pass on a llama-like model (d_model {D_MODEL}, {N_LAYERS} layers), a hook on "
                f"every layer's MLP output feeding one accumulator, {speeds['n_tokens']['wall']:,} tokens, best "
                f"of {args.repeats}, against a plain loop of forwards over the same batches"
            ),
            threads=args.threads,
            load_at_start=load_at_start,
            rows_table=bench_results.table(columns, rows),
            notes=[
                f"Peak memory of a collection over {large['tokens']:,} tokens vs {small['tokens']:,} tokens: "
                f"{100 * growth:+.1f}% (target below +20%)."
            ],
            extra={"memory runs": runs, "peak growth": growth},
        )


if __name__ == "__main__":
    main()
