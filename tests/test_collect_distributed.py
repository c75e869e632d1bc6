"""Two CPU processes (gloo) collect the same corpus as one process does, with the same result."""

from __future__ import annotations

import datasets
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformer_lens.model_bridge import TransformerBridge

from test_collect import (
    BATCH_SIZE,
    SEQ_LEN,
    assert_results_equal,
    build_model_dir,
    corpus_rows,
    make_accumulators,
    result_tensors,
)
from tl_moe.collect import collect, domain_names

WORLD_SIZE = 2


def collect_corpus(model_dir: str) -> dict:
    torch.set_num_threads(1)
    bridge = TransformerBridge.boot_transformers(model_dir, device="cpu")
    corpus = datasets.Dataset.from_dict(corpus_rows())
    accumulators = make_accumulators(len(domain_names(corpus)), len(bridge.tokenizer))
    return collect(bridge, corpus, accumulators, batch_size=BATCH_SIZE, seq_len=SEQ_LEN, progress=False)


def worker(rank: int, init_file: str, model_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = collect_corpus(model_dir)
        torch.save(result_tensors(results), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    model_dir = build_model_dir(tmp_path / "model")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mp.spawn(worker, args=(str(tmp_path / "init"), model_dir, str(out_dir)), nprocs=WORLD_SIZE, join=True)
    single = collect_corpus(model_dir)
    expected = result_tensors(single)
    for rank in range(WORLD_SIZE):
        reduced = torch.load(out_dir / f"rank{rank}.pt", weights_only=True)
        assert_results_equal(reduced, expected, exact=False)
    assert int(expected["mean_per_domain.counts"].sum()) > 0
