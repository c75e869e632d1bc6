"""Cost of the interventional pass: the effect of every expert of a layer on per-token loss.

For each case it times, in this run (median of ``--repeats``):

- **separate**: one ``model.run_with_hooks(tokens, return_type="loss", loss_per_token=True,
  fwd_hooks=remove_experts(model, layer, [e]))`` forward per expert (the clean forward the
  baseline also needs for a loss *change* is not counted: this favours the baseline);
- **interventional**: :func:`tl_moe.collect.run_interventions` with one Intervention per expert
  (its clean forward included): resumes from the edited layer, runs many edits per forward,
  reads out only positions whose final residual changed;

and prints the ratio, the max abs difference of the per-token losses, and the peak resident
memory added by each (sampled from ``/proc/self/statm``).

Usage: ``python benchmarks/bench_interventional.py [--model toy|deep] [--tokens 8192]
[--threads N] [--repeats 3] [--layers both|last|first] [--out docs/results/bench_interventional.json]``;
``--out`` writes a results file (``bench_results``) that the README's Performance section is generated from. ``toy`` is ``toy/moe-16x2`` (d_model 128, vocab 8192, 4 layers:
the unembedding dominates a forward); ``deep`` is a random OLMoE-shaped model where the layers
dominate (16 layers, d_model 256, 16 experts top-4, d_expert 256, vocab 8192).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def load(kind: str, directory: str):
    import tl_moe

    if kind == "toy":
        return tl_moe.load("toy/moe-16x2", device="cpu")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    cfg = tl_moe.MoEConfig(
        "olmoe",
        n_layers=16,
        d_model=256,
        d_vocab=8192,
        n_heads=8,
        num_experts=16,
        experts_per_token=4,
        d_expert=256,
        sparse_layers=tuple(range(16)),
        max_position_embeddings=512,
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>"
    )
    tl_moe.save_model(tl_moe.build_model(cfg), tokenizer, directory)
    return tl_moe.load(directory, device="cpu")


class PeakMemory:
    """Peak resident set size while inside, minus the size on entry (bytes), sampled every 2 ms."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())
        self.added = self.peak - self.start


def timed(fn, repeats: int):
    """(median seconds over ``repeats`` calls after one warm-up, peak added memory, last result)."""
    result = fn()
    times, peak = [], 0
    for _ in range(repeats):
        with PeakMemory() as memory:
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        peak = max(peak, memory.added)
    return statistics.median(times), peak, result


def breakdown(model, tokens, repeats: int) -> tuple[float, float]:
    """(full forward seconds, of which final norm + unembedding + log-softmax)."""
    from tl_moe.collect.interventional import FINAL_RESIDUAL

    captured = {}

    def grab(x, hook):
        captured["final"] = x

    def forward():
        return model.run_with_hooks(
            tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(FINAL_RESIDUAL, grab)]
        )

    full, _, _ = timed(forward, repeats)
    final = captured["final"]

    def readout():
        logits = model.unembed(model.ln_final(final))
        return torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, tokens[:, 1:, None])

    unembed, _, _ = timed(readout, repeats)
    return full, unembed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["toy", "deep"], default="toy")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-budget", type=int, default=1 << 30, help="bytes per interventional forward")
    parser.add_argument(
        "--layers", choices=["both", "last", "first"], default="both", help="which sparse layer(s) to edit"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results file here (JSON)")
    args = parser.parse_args()
    import bench_results

    load_at_start = bench_results.load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    from tl_moe.collect import run_interventions
    from tl_moe.interventions import Intervention

    with tempfile.TemporaryDirectory() as directory:
        model = load(args.model, directory)
        cfg = model.moe_cfg
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(
            3, cfg.d_vocab, (args.tokens // args.seq_len, args.seq_len), generator=generator
        )
        full, unembed = breakdown(model, tokens, args.repeats)
        print(
            f"\n{args.model}: {cfg.architecture}, {cfg.n_layers} layers, d_model {cfg.d_model}, "
            f"{cfg.num_experts} experts top-{cfg.experts_per_token}, d_expert {cfg.d_expert}, vocab {cfg.d_vocab}; "
            f"{tokens.numel()} tokens ({tokens.shape[0]}x{tokens.shape[1]}); torch {torch.__version__}; "
            f"{torch.get_num_threads()} threads"
        )
        print(
            f"one forward with loss: {full:.3f} s, of which final norm + unembedding + log-softmax "
            f"{unembed:.3f} s ({unembed / full:.0%})"
        )
        header = (
            f"{'case':34s} {'separate s':>10s} {'interv. s':>10s} {'speed-up':>9s} "
            f"{'max|diff|':>10s} {'mem sep MB':>10s} {'mem int MB':>10s}"
        )
        print(header)
        cases = [
            ("remove", cfg.sparse_layers[-1], "last"),
            ("zero", cfg.sparse_layers[-1], "last"),
            ("remove", cfg.sparse_layers[0], "first"),
            ("zero", cfg.sparse_layers[0], "first"),
        ]
        cases = [case for case in cases if args.layers in ("both", case[2])]
        rows = []
        for kind, layer, where in cases:
            edits = [Intervention(kind, layer, (e,)) for e in range(cfg.num_experts)]

            def separate(edits=edits):
                return torch.stack(
                    [
                        model.run_with_hooks(
                            tokens, return_type="loss", loss_per_token=True, fwd_hooks=e.hooks(model)
                        )
                        for e in edits
                    ]
                )

            def interventional(edits=edits):
                return run_interventions(model, tokens, edits, memory_budget=args.memory_budget).loss[
                    :, :, :-1
                ]

            sep_s, sep_mem, sep_loss = timed(separate, args.repeats)
            int_s, int_mem, int_loss = timed(interventional, args.repeats)
            diff = float((sep_loss - int_loss).abs().max())
            label = f"{kind} each expert, {where} layer ({layer})"
            print(
                f"{label:34s} {sep_s:10.3f} {int_s:10.3f} {sep_s / int_s:8.2f}x {diff:10.2e} "
                f"{sep_mem / 2**20:10.0f} {int_mem / 2**20:10.0f}"
            )
            rows.append(
                {
                    "case": label,
                    "separate forwards (s)": sep_s,
                    "interventional (s)": int_s,
                    "speed-up": sep_s / int_s,
                    "max |diff| of losses": diff,
                }
            )
        if args.out is not None:
            columns = {
                "case": "",
                "separate forwards (s)": ".3f",
                "interventional (s)": ".3f",
                "speed-up": ".2f×",
                "max |diff| of losses": ".1e",
            }
            bench_results.write(
                args.out,
                title=(
                    f"the effect on per-token loss of removing (or zeroing) each of the {cfg.num_experts} experts "
                    f"of a layer of `{'toy/moe-16x2' if args.model == 'toy' else 'a random 16-layer OLMoE shape'}`, "
                    f"{tokens.numel():,} tokens: the interventional pass vs one `run_with_hooks` forward per "
                    "expert, same numbers"
                ),
                threads=args.threads,
                load_at_start=load_at_start,
                rows_table=bench_results.table(columns, rows),
            )


if __name__ == "__main__":
    main()
