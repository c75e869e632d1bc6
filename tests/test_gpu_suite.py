"""benchmarks/gpu_suite.py keeps working without a GPU: its --cpu smoke run and its command lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_suite  # noqa: E402


def test_cpu_smoke_run_writes_every_in_process_step(tmp_path):
    out = tmp_path / "gpu.json"
    gpu_suite.main(["--cpu", "--out", str(out), "--steps", "probing_olmoe_layer,logit_lens_50k"])
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["smoke_run"] is True and result["device_name"]
    probing = result["probing_olmoe_layer"]
    assert probing["fits"] > 0 and probing["fits_per_second"] > 0
    lens = result["logit_lens_50k"]
    assert lens["same_tokens"] is True and lens["seconds_per_1000_tokens_after"] > 0


@pytest.mark.parametrize("mode", ["cuda", "cpu"])
def test_the_main_job_command_line_parses(mode):
    """The suite's analyze flags are flags tl-moe accepts (a renamed flag fails here, not on the GPU)."""
    from tl_moe.cli import build_parser

    args = build_parser().parse_args(["analyze", *gpu_suite.SIZES[mode]["analyze"], "--out", "x"])
    assert args.func is not None


@pytest.mark.parametrize("mode", ["cuda", "cpu"])
def test_the_hooks_benchmark_accepts_the_suites_flags(mode):
    code = (
        "import sys, argparse; sys.argv = ['bench_hooks.py', *sys.argv[1:]]; "
        "import bench_hooks; parse = argparse.ArgumentParser.parse_args; "
        "argparse.ArgumentParser.parse_args = lambda self, a=None, n=None: (print('parsed', parse(self, a, n)), "
        "sys.exit(0))[1]; bench_hooks.main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *gpu_suite.SIZES[mode]["hooks"]],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "parsed" in done.stdout


def test_without_cuda_or_out_it_refuses(tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        gpu_suite.main(["--cpu"])  # smoke numbers never land in docs/results/gpu.json
    monkeypatch.setattr(gpu_suite.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu_suite.main(["--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        gpu_suite.main(["--cpu", "--out", str(tmp_path / "x.json"), "--steps", "nope"])
