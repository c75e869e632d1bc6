"""Cost of tl_moe's hook points: forward time relative to Hugging Face's own forward.

Prints one table of median forward times and ratios, all measured in this run:

- HF: ``AutoModelForCausalLM`` with its default experts implementation (eager attention,
  as TransformerBridge forces eager attention too);
- TransformerBridge without tl_moe;
- tl_moe attached, hooks idle;
- tl_moe caching every per-expert and router hook point;
- on a TransformerLens that declares ``hook_expert_pre/post/out`` itself (the patch in
  ``upstream/``), the bridge caching those, without tl_moe.

Usage: ``python benchmarks/bench_hooks.py [--gpu] [--olmoe-layer] [--arch olmoe|qwen3_next|all]
[--threads N] [--tokens N] [--out docs/results/bench_hooks.json]``; ``--out`` writes a results file
(``bench_results``, one table per architecture) that the README's Performance section is generated from.
``--olmoe-layer`` uses an OLMoE-sized MoE layer (d_model 2048, 64 experts, top-8, d_expert 1024).
``--arch qwen3_next`` benchmarks a hybrid (linear-attention + MoE with a gated shared expert) model:
4 layers, d_model 512, 16 experts, top-2, d_expert 512.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def build(directory: str, olmoe_sized: bool, arch: str = "olmoe") -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tl_moe import MoEConfig, build_model, save_model

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>"
    )
    if arch == "qwen3_next":
        from transformers import AutoModelForCausalLM

        from tl_moe.models.catalog import tiny_hf_config

        config = tiny_hf_config(
            "qwen3_next",
            hidden_size=512,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=64,
            vocab_size=8192,
            num_experts=16,
            num_experts_per_tok=2,
            moe_intermediate_size=512,
            shared_expert_intermediate_size=512,
            linear_num_key_heads=4,
            linear_num_value_heads=8,
            linear_key_head_dim=64,
            linear_value_head_dim=64,
            max_position_embeddings=4096,
            layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        )
        torch.manual_seed(0)
        save_model(AutoModelForCausalLM.from_config(config).eval(), tokenizer, directory)
        return

    if olmoe_sized:
        cfg = MoEConfig(
            "olmoe",
            n_layers=2,
            d_model=2048,
            d_vocab=8192,
            n_heads=16,
            num_experts=64,
            experts_per_token=8,
            d_expert=1024,
            sparse_layers=(0, 1),
            max_position_embeddings=4096,
        )
    else:
        cfg = MoEConfig(
            "olmoe",
            n_layers=4,
            d_model=512,
            d_vocab=8192,
            n_heads=8,
            num_experts=16,
            experts_per_token=2,
            d_expert=1024,
            sparse_layers=(0, 1, 2, 3),
            max_position_embeddings=4096,
        )
    save_model(build_model(cfg), tokenizer, directory)


def median_time(fn, device: str, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="run on CUDA")
    parser.add_argument(
        "--olmoe-layer", action="store_true", help="OLMoE-sized layers instead of the small MoE"
    )
    parser.add_argument("--arch", choices=["olmoe", "qwen3_next", "all"], default="all")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results file here (JSON)")
    args = parser.parse_args()
    import bench_results

    load_at_start = bench_results.load_average()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.gpu else "cpu"
    torch.set_grad_enabled(False)
    tables = [
        run(arch, args, device) for arch in (["olmoe", "qwen3_next"] if args.arch == "all" else [args.arch])
    ]
    if args.out is not None:
        rows = [row for shape, results in tables for row in _rows(shape, results)]
        columns = {"model": "", "forward": "", "median s": ".3f", "vs HF": ".2f×"}
        bench_results.write(
            args.out,
            title=(
                f"forward time with tl_moe's hook points, relative to Hugging Face's own forward (eager attention, as "
                f"the bridge uses), {args.tokens:,} tokens, median of {args.repeats} forwards, on {device} "
                "(targets: hooks idle at most 1.10×, caching every router and expert hook at most 1.5×)"
            ),
            threads=torch.get_num_threads(),
            load_at_start=load_at_start,
            rows_table=bench_results.table(columns, rows),
        )


def _rows(shape: str, results: list[tuple[str, float]]) -> list[dict]:
    """One row per forward of a model: median seconds and the ratio to Hugging Face's forward."""
    base = results[0][1]
    return [{"model": shape, "forward": label, "median s": s, "vs HF": s / base} for label, s in results]


def run(arch: str, args, device: str) -> tuple[str, list[tuple[str, float]]]:
    """Time the forwards of one architecture; print and return (its shape, (label, median s) rows)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    import tl_moe

    with tempfile.TemporaryDirectory() as directory:
        build(directory, args.olmoe_layer, arch)
        hf = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").to(device).eval()
        tokens = torch.randint(0, 8192, (args.tokens // 512, 512), device=device)
        bridge = TransformerBridge.boot_transformers(directory, device=device)
        hooked = tl_moe.load(directory, device=device)
        cfg = hooked.moe_cfg
        kinds = [
            "router_logits",
            "router_probs",
            "topk_indices",
            "topk_weights",
            "expert_pre",
            "expert_post",
            "expert_out",
            "shared_post",
            "shared_out",
            "shared_gate",
        ]
        names = {tl_moe.get_act_name(kind, layer) for layer in cfg.sparse_layers for kind in kinds}
        names &= set(hooked.hook_dict)

        rows = [
            (f"HF forward ({hf.config._experts_implementation} experts)", lambda: hf(tokens)),
            ("TransformerBridge, no tl_moe", lambda: bridge(tokens)),
            ("tl_moe attached, hooks idle", lambda: hooked(tokens)),
            (
                "tl_moe caching every expert/router hook",
                lambda: hooked.run_with_cache(tokens, names_filter=lambda n: n in names),
            ),
        ]
        expert_hooks = ("hook_expert_pre", "hook_expert_post", "hook_expert_out")
        upstream = [name for name in bridge.hook_dict if name.rsplit(".", 1)[-1] in expert_hooks]
        if upstream:  # TransformerLens fires the expert hooks itself
            rows.append(
                (
                    "TransformerBridge caching its hook_expert_*",
                    lambda: bridge.run_with_cache(tokens, names_filter=lambda n: n in upstream),
                )
            )
        results = [(label, median_time(fn, device, args.repeats)) for label, fn in rows]

    base = results[0][1]
    shape = (
        "qwen3_next hybrid (3 linear-attention + 1 attention layers; d_model 512, 16 experts, top-2, "
        "d_expert 512, gated shared expert)"
        if arch == "qwen3_next"
        else "OLMoE-sized (d_model 2048, 64 experts, top-8, d_expert 1024, 2 layers)"
        if args.olmoe_layer
        else "olmoe: d_model 512, 16 experts, top-2, d_expert 1024, 4 layers"
    )
    print(
        f"\n{shape}; {args.tokens} tokens; {device}; torch {torch.__version__}; {torch.get_num_threads()} threads"
    )
    print(f"{'forward':45s} {'median s':>10s} {'vs HF':>7s}")
    for label, seconds in results:
        print(f"{label:45s} {seconds:10.4f} {seconds / base:6.2f}x")
    return shape, results


if __name__ == "__main__":
    main()
