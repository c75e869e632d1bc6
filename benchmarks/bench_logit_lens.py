"""Benchmark: the logit lens's top-n ranking of every routed slot over a 50k vocabulary.

The expert logit lens ranks, for every routed (token, slot), the whole vocabulary by the raw-lens
logits of the expert's output and keeps the ``top_n`` tokens. A random unembedding (50,304 tokens,
small ``d_model``) and random expert outputs stand in for a model; both variants must give the same tokens:

- before: the logits of chunks of up to 2^24 (the accumulator's raw-lens logits,
  ``logit_lens_accumulator._vocab_logits``), each ranked by ``topk`` over the whole vocabulary;
- after: :func:`tl_moe.analysis.logit_lens_accumulator.top_n_vocab` (chunks of up to 2^22 logits, each
  ranked by :func:`tl_moe.analysis._vocab_top.vocab_topk`: block maxima screen the vocabulary and only the
  best blocks are ranked, verified exact, ties ranked by ``topk`` itself).

Prints the time per 1,000 tokens (each with ``--slots`` routed slots) and the ratio.

Run: ``python benchmarks/bench_logit_lens.py [--vocab 50304] [--d-model 64] [--tokens 2000]
[--slots 8] [--top-n 3] [--device cpu] [--threads 1] [--out docs/results/bench_logit_lens.json]``;
``--out`` writes a results file (``bench_results``) that the README's Performance section is generated from.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tl_moe.analysis.logit_lens_accumulator import _vocab_logits, top_n_vocab
from tl_moe.analysis.readout import LogitReadout

LOGITS_PER_CHUNK = 1 << 24


def top_n_before(readout: LogitReadout, rows: torch.Tensor, top_n: int) -> torch.Tensor:
    """The ranking as the accumulator did it before the screen: ``topk`` of every chunk's logits."""
    chunk = max(1, LOGITS_PER_CHUNK // readout.d_vocab)
    return torch.cat([_vocab_logits(readout, part).topk(top_n, dim=-1).indices for part in rows.split(chunk)])


def random_readout(vocab: int, d_model: int, device: str, seed: int = 0) -> LogitReadout:
    """A final RMSNorm + unembedding with random weights."""
    g = torch.Generator().manual_seed(seed)
    return LogitReadout(
        unembed=torch.randn(vocab, d_model, generator=g).to(device),
        unembed_bias=None,
        gain=(torch.rand(d_model, generator=g) + 0.5).to(device),
        norm_bias=None,
        centered=False,
        eps=1e-6,
    )


def _timed(fn, device: str, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` calls (after one warm-up) and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure(
    vocab: int = 50_304,
    d_model: int = 64,
    tokens: int = 2000,
    slots: int = 8,
    top_n: int = 3,
    device: str = "cpu",
    repeats: int = 2,
) -> dict:
    """Seconds per 1,000 tokens before and after, and whether both ranked the same tokens."""
    readout = random_readout(vocab, d_model, device)
    rows = torch.randn(tokens * slots, d_model, generator=torch.Generator().manual_seed(1)).to(device)
    before, top_before = _timed(lambda: top_n_before(readout, rows, top_n), device, repeats)
    after, top_after = _timed(lambda: top_n_vocab(readout, rows, top_n), device, repeats)
    return {
        "vocab": vocab,
        "d_model": d_model,
        "tokens": tokens,
        "slots": slots,
        "top_n": top_n,
        "device": device,
        "seconds_per_1000_tokens_before": before * 1000 / tokens,
        "seconds_per_1000_tokens_after": after * 1000 / tokens,
        "speedup": before / after,
        "same_tokens": bool(torch.equal(top_before, top_after)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50_304)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=8, help="routed slots per token (top-k)")
    parser.add_argument("--top-n", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    parser.add_argument("--out", type=Path, default=None, help="write the results file here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = load_average()
    out = measure(args.vocab, args.d_model, args.tokens, args.slots, args.top_n, args.device, args.repeats)
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"logit lens top-{out['top_n']} of {out['slots']} slots x {out['vocab']} vocabulary, d_model "
        f"{out['d_model']}, {out['tokens']} tokens on {out['device']} ({args.threads} thread(s))"
    )
    print(f"before (2^24 chunks + topk):  {out['seconds_per_1000_tokens_before']:.3f} s per 1,000 tokens")
    print(f"after  (top_n_vocab, screen): {out['seconds_per_1000_tokens_after']:.3f} s per 1,000 tokens")
    print(f"speedup {out['speedup']:.2f}x; same top tokens: {out['same_tokens']}")
    if args.out is not None:
        write_results(args.out, out, args.threads, load_at_start)


def load_average() -> float | None:
    import bench_results

    return bench_results.load_average()


def write_results(path: Path, out: dict, threads: int, load_at_start: float | None) -> None:
    """The results file: seconds per 1,000 tokens before and after, in one run."""
    import bench_results

    rows = [
        {
            "ranking": "before: topk of every chunk of 2^24 logits",
            "s per 1,000 tokens": out["seconds_per_1000_tokens_before"],
        },
        {
            "ranking": "after: top_n_vocab (2^22-logit chunks, block-maxima screen, exact)",
            "s per 1,000 tokens": out["seconds_per_1000_tokens_after"],
        },
    ]
    same = "the same tokens" if out["same_tokens"] else "**different tokens**"
    bench_results.write(
        path,
        title=(
            f"the logit lens's top-{out['top_n']} of {out['slots']} routed slots per token over a "
            f"{out['vocab']:,}-token random unembedding (d_model {out['d_model']}), {out['tokens']:,} tokens, "
            f"on {out['device']}"
        ),
        threads=threads,
        load_at_start=load_at_start,
        rows_table=bench_results.table({"ranking": "", "s per 1,000 tokens": ".3f"}, rows),
        notes=[f"After is {out['speedup']:.2f}× faster than before, ranking {same}."],
        extra={"measured": out},
    )


if __name__ == "__main__":
    main()
