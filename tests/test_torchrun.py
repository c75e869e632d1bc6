"""`torchrun --nproc-per-node 2 tl-moe analyze` on CPU (gloo): the same results.json as one process, written once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tl_moe.zoo.registry import checkpoint_dir

SHIPPED = (checkpoint_dir("toy/moe-16x2") / "metadata.json").exists()
FLAGS = [
    "--analyses",
    "domains,specialization",
    "--max-tokens",
    "3000",
    "--batch-size",
    "4",
    "--keep-checkpoints",
]


def _tl_moe(out: Path, launcher: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [*launcher, "-m", "tl_moe.cli", "analyze", *FLAGS, "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(
    not SHIPPED
    or shutil.which("torchrun") is None
    and not Path(sys.executable).with_name("torchrun").exists(),
    reason="needs the toy checkpoints and torchrun",
)
def test_two_ranks_write_the_one_process_results_once(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    _tl_moe(tmp_path / "single", [sys.executable])
    _tl_moe(
        tmp_path / "pair",
        [torchrun, "--nproc-per-node", "2", "--master-port", "29517", "--no-python", sys.executable],
    )
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    pair = json.loads((tmp_path / "pair" / "results.json").read_text())
    assert pair["sections"] == single["sections"]
    assert pair["metadata"]["tokens_by_domain"] == single["metadata"]["tokens_by_domain"]
    assert single["metadata"]["runtime"]["world_size"] == 1
    runtime = pair["metadata"]["runtime"]  # the provenance says it ran on two processes, and how
    assert runtime["world_size"] == 2 and runtime["nodes"] == 1 and runtime["backend"] == "gloo"
    assert [(r["rank"], r["local_rank"], r["node"]) for r in runtime["ranks"]] == [(0, 0, 0), (1, 1, 0)]
    assert runtime["device"] == "cpu" and runtime["dtype"] == "float32"
    shards = sorted(p.name for p in (tmp_path / "pair" / "checkpoints").rglob("*") if p.is_file())
    assert "collect-shard0-of-2.pt" in shards and "collect-shard1-of-2.pt" in shards  # one per rank
