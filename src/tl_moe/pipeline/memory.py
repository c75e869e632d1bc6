"""Memory estimates shared by the planner and the runner's check before the first pass."""

from __future__ import annotations

import os

import torch

from tl_moe.models.config import MoEConfig
from tl_moe.pipeline.options import RunOptions

__all__ = ["activation_bytes", "available_memory", "backward_bytes"]


def activation_bytes(cfg: MoEConfig, options: RunOptions, dtype_bytes: int) -> int:
    """One batch's peak activations: float32 logits, a few residual-width tensors per layer,
    the routed experts' intermediate activations, and the hooked tensors kept for accumulators."""
    tokens = options.batch_size * options.seq_len
    logits = tokens * cfg.d_vocab * 4
    hidden = tokens * cfg.d_model * dtype_bytes * 6
    width = (cfg.d_expert or 0) * cfg.experts_per_token if cfg.is_moe else (cfg.d_mlp or 0)
    ffn = tokens * width * dtype_bytes * 3
    hooked = tokens * width * 4 * max(1, len(cfg.sparse_layers) if cfg.is_moe else len(cfg.dense_layers))
    return logits + hidden + ffn + hooked


def backward_bytes(cfg: MoEConfig, options: RunOptions, dtype_bytes: int) -> int:
    """What one backward pass over a batch adds (the gradient passes of the first-order estimate):
    autograd keeps, for every layer, about ten residual-width tensors, the routed experts' three
    intermediate tensors and the attention probabilities, plus the float32 logits' gradient."""
    tokens = options.batch_size * options.seq_len
    width = (cfg.d_expert or 0) * cfg.experts_per_token if cfg.is_moe else (cfg.d_mlp or 0)
    attention = options.batch_size * cfg.n_heads * options.seq_len * options.seq_len * dtype_bytes
    per_layer = tokens * cfg.d_model * dtype_bytes * 10 + tokens * width * dtype_bytes * 3 + attention
    return cfg.n_layers * per_layer + tokens * cfg.d_vocab * 4


def available_memory(device: str | None = None) -> int:
    """Bytes free for a run: the GPU's free memory for a CUDA device, else the host's MemAvailable."""
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
