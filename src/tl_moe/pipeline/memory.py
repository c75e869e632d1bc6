"""Memory: what one batch's forward (and backward) needs, and what the machine has free.

The one activation estimate (:func:`activation_bytes`) and the one free-memory probe
(:func:`available_memory`) that the sequence-length check, the runner's check before the first pass
and ``tl-moe plan`` all use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from tl_moe.pipeline.model_sizes import model_sizes

if TYPE_CHECKING:
    from tl_moe.models.config import MoEConfig
    from tl_moe.pipeline.options import RunOptions

__all__ = [
    "Batch",
    "BatchShape",
    "activation_bytes",
    "available_memory",
    "backward_bytes",
    "cgroup_memory_left",
]

#: Where this process's memory cgroup is mounted (a container sees its own cgroup here).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The host's memory counters (``MemAvailable``).
MEMINFO = Path("/proc/meminfo")
# (limit, usage) files of cgroup v2, then of cgroup v1's memory controller, under CGROUP_ROOT.
_CGROUP_FILES = (
    ("memory.max", "memory.current"),
    ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
)
# Attention kernels that work through the keys in blocks instead of materialising every score.
_BLOCK_WIDTH = 1024


class BatchShape(Protocol):
    """Anything with a batch's shape: :class:`~tl_moe.pipeline.options.RunOptions`, :class:`Batch`."""

    @property
    def batch_size(self) -> int: ...

    @property
    def seq_len(self) -> int: ...


@dataclass(frozen=True)
class Batch:
    """One batch's shape: ``batch_size`` windows of ``seq_len`` tokens (BOS included)."""

    batch_size: int
    seq_len: int


def activation_bytes(model_or_config: Any, batch: BatchShape, dtype_bytes: int = 4) -> int:
    """A generous estimate of the peak memory of one hooked forward of ``batch`` (weights excluded).

    Per token of the batch: the float32 logits and their log-softmax (``2 x vocab``); one layer's
    attention scores and probabilities (``2 x heads x keys``, keys the whole window for eager attention
    or an unknown implementation, a 1024-wide block for SDPA / flash kernels); sixteen residual-width
    tensors; four FFN-width tensors (the routed experts' intermediate activations); and the float32
    FFN activations of every hooked layer, which accumulators keep.

    Args:
        model_or_config: a bridge, an HF model/config, a MoEConfig or a dict (:func:`model_sizes`).
        batch: the batch's shape (a :class:`~tl_moe.pipeline.options.RunOptions` or a :class:`Batch`).
        dtype_bytes: bytes per element of the model's activations (4 for float32, 2 for bfloat16).
    """
    sizes = model_sizes(model_or_config)
    keys = batch.seq_len if sizes.attention in (None, "eager") else min(batch.seq_len, _BLOCK_WIDTH)
    logits = 2 * sizes.d_vocab * 4
    working = (2 * sizes.n_heads * keys + 16 * sizes.d_model + 4 * sizes.ffn_width) * dtype_bytes
    hooked = sizes.ffn_width * 4 * sizes.hooked_layers
    return int(batch.batch_size) * int(batch.seq_len) * (logits + working + hooked)


def backward_bytes(cfg: MoEConfig, options: RunOptions, dtype_bytes: int) -> int:
    """What one backward pass over a batch adds (the gradient passes of the first-order estimate):
    autograd keeps, for every layer, about ten residual-width tensors, the routed experts' three
    intermediate tensors and the attention probabilities, plus the float32 logits' gradient."""
    tokens = options.batch_size * options.seq_len
    width = (cfg.d_expert or 0) * cfg.experts_per_token if cfg.is_moe else (cfg.d_mlp or 0)
    attention = options.batch_size * cfg.n_heads * options.seq_len * options.seq_len * dtype_bytes
    per_layer = tokens * cfg.d_model * dtype_bytes * 10 + tokens * width * dtype_bytes * 3 + attention
    return cfg.n_layers * per_layer + tokens * cfg.d_vocab * 4


def cgroup_memory_left() -> int | None:
    """Bytes this process's memory cgroup still allows (its limit minus its usage, cgroup v2 or v1);
    None when no limit is set or the files cannot be read."""
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit = (CGROUP_ROOT / limit_file).read_text().strip()
            used = int((CGROUP_ROOT / usage_file).read_text())
            return None if limit == "max" else max(0, int(limit) - used)
        except (OSError, ValueError):
            continue
    return None


def _host_memory_available() -> int:
    """The host's ``MemAvailable``; its physical memory when ``/proc/meminfo`` cannot be read."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes free for a run on ``device``: a CUDA device's free memory (``mem_get_info``); otherwise
    the host's available memory, capped by what the memory cgroup still allows (a container's limit)."""
    if str(device or "").startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    free = _host_memory_available()
    left = cgroup_memory_left()
    return free if left is None else min(free, left)
