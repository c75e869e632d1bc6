"""The numbers a GPU user needs, in one run: hooks, the default main job, probing, the logit lens.

On a CUDA device it runs, in order:

1. ``bench_hooks.py --gpu --olmoe-layer --arch olmoe``: forward time of an OLMoE-sized model with
   tl_moe's hooks idle and caching, relative to Hugging Face's forward;
2. the default main job, ``tl-moe analyze --device cuda`` (its per-pass and finalize timings are
   read from the run's ``results.json``);
3. probing one OLMoE-sized layer (64 experts x 1024 neurons, top-8 routing; ``bench_probing``'s
   synthetic layer): fits per second;
4. the logit lens's top-n ranking at a 50,304-token vocabulary (d_model 2048, 8 slots per token):
   seconds per 1,000 tokens (``bench_logit_lens``);

and writes everything, with the card's name, to ``docs/results/gpu.json``. ``--cpu`` runs the same
steps at tiny sizes on the CPU (a smoke test that keeps the script working; its numbers mean
nothing) and needs ``--out``; ``--steps`` picks some of the steps (default all).

Run: ``python benchmarks/gpu_suite.py [--out docs/results/gpu.json]`` or
``python benchmarks/gpu_suite.py --cpu --out /tmp/gpu_smoke.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_logit_lens  # noqa: E402  (a sibling script, importable once HERE is on the path)
import bench_probing  # noqa: E402

DEFAULT_OUT = HERE.parent / "docs" / "results" / "gpu.json"

# Sizes per mode: the real ones on CUDA, tiny ones for the CPU smoke run.
SIZES = {
    "cuda": {
        "hooks": ["--gpu", "--olmoe-layer", "--arch", "olmoe", "--tokens", "4096", "--repeats", "5"],
        "analyze": ["--device", "cuda"],
        "probing": {"n_experts": 64, "d_expert": 1024, "n_tokens": 20_000, "top_k": 8},
        "logit_lens": {"vocab": 50_304, "d_model": 2048, "tokens": 4000, "slots": 8},
    },
    "cpu": {
        "hooks": ["--arch", "olmoe", "--tokens", "512", "--repeats", "2", "--threads", "1"],
        "analyze": [
            "--device",
            "cpu",
            "--max-tokens",
            "1000",
            "--analyses",
            "probing",
            "--dense-baseline",
            "none",
            "--skip-untrained-null",
            "--threads",
            "1",
        ],
        "probing": {"n_experts": 2, "d_expert": 16, "n_tokens": 600, "top_k": 1},
        "logit_lens": {"vocab": 2000, "d_model": 16, "tokens": 50, "slots": 2},
    },
}


def _run(command: list[str]) -> dict:
    """Run a command; its wall time, return code and the tail of its output."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
    return {
        "command": " ".join(command[1:]),
        "returncode": done.returncode,
        "seconds": time.perf_counter() - start,
        "output": (done.stdout + done.stderr)[-4000:],
    }


def hooks(mode: str) -> dict:
    return _run([sys.executable, str(HERE / "bench_hooks.py"), *SIZES[mode]["hooks"]])


def main_job(mode: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = _run([sys.executable, "-m", "tl_moe.cli", "analyze", *SIZES[mode]["analyze"], "--out", out])
        results = Path(out) / "results.json"
        if results.exists():
            result["timings"] = json.loads(results.read_text()).get("metadata", {}).get("timings")
    return result


def probing(mode: str, device: str) -> dict:
    sizes = SIZES[mode]["probing"]
    activations, labels, unit_mask = bench_probing.toy_moe_layer(**sizes)
    probe = bench_probing.KSparseProbe(ks=bench_probing.KS, device=device)
    seconds = bench_probing.time_fit(probe, activations.to(device), labels, unit_mask, device, repeats=1)
    n_fits = int((probe.status_ == bench_probing.STATUS_OK).sum()) * len(probe.ks_)
    return {
        **sizes,
        "ks": list(probe.ks_),
        "fits": n_fits,
        "seconds": seconds,
        "fits_per_second": n_fits / seconds,
    }


def logit_lens(mode: str, device: str) -> dict:
    return bench_logit_lens.measure(**SIZES[mode]["logit_lens"], device=device, repeats=1)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())


STEPS = {
    "hooks": lambda mode, device: hooks(mode),
    "main_job": lambda mode, device: main_job(mode),
    "probing_olmoe_layer": probing,
    "logit_lens_50k": logit_lens,
}


def suite(mode: str, steps: list[str]) -> dict:
    """The chosen steps' results; a failing subprocess is recorded (return code, output), not raised."""
    device = "cuda" if mode == "cuda" else "cpu"
    header = {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke_run": mode == "cpu",
    }
    return header | {step: STEPS[step](mode, device) for step in steps}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (smoke test; needs --out)")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON to write (default {DEFAULT_OUT})")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {list(STEPS)}")
    args = parser.parse_args(argv)
    steps = [step for step in args.steps.split(",") if step]
    if not steps or any(step not in STEPS for step in steps):
        parser.error(f"--steps must name some of {list(STEPS)}; got {args.steps!r}.")
    if args.cpu and args.out is None:
        parser.error(
            "--cpu numbers are a smoke test, not GPU results: pass --out (e.g. /tmp/gpu_smoke.json)."
        )
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device is available; pass --cpu --out PATH for the smoke run.")
    result = suite("cpu" if args.cpu else "cuda", steps)
    out = args.out or DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    failed = [name for name in ("hooks", "main_job") if name in result and result[name]["returncode"] != 0]
    print(f"wrote {out}" + (f"; failed steps: {failed}" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
