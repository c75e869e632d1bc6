"""The window length: within the model's positions, and one forward of a batch within the free memory."""

from __future__ import annotations

from typing import Any

import torch

from tl_moe.pipeline.checks.errors import SeqLenError
from tl_moe.pipeline.memory import Batch, activation_bytes, available_memory
from tl_moe.pipeline.model_sizes import model_sizes

__all__ = ["check_seq_len", "check_seq_len_positions", "max_positions"]


def max_positions(model_or_config: Any) -> int | None:
    """The model's context length (``max_position_embeddings`` / ``n_ctx``), None if it does not say."""
    return model_sizes(model_or_config).positions


def _gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n < 1e12 else f"{n / 1e12:.1f} TB"


def check_seq_len_positions(
    seq_len: Any, model_or_config: Any = None, *, input_name: str = "--seq-len"
) -> int:
    """``seq_len`` if it is a window length the model's positions can hold; else a :class:`SeqLenError`.

    The part of :func:`check_seq_len` that needs only the config (``tl-moe plan`` uses it; memory is
    the plan's own estimate there). ``model_or_config`` as in :func:`check_seq_len`; None checks the
    type and lower bound only.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise SeqLenError(
            f"{input_name} {seq_len!r} is not a window length; accepted: an integer >= 2 (BOS + one token).",
            input_name=input_name,
        )
    if model_or_config is None:
        return seq_len
    positions = max_positions(model_or_config)
    if positions is not None and positions < 2:
        raise SeqLenError(
            f"{input_name} {seq_len} cannot fit: the model's context is {positions} position "
            f"(max_position_embeddings={positions}), too short to analyze; accepted: a model with at least 2 "
            "positions (BOS + one token).",
            input_name=input_name,
        )
    if positions is not None and seq_len > positions:
        raise SeqLenError(
            f"{input_name} {seq_len} is longer than the model's {positions} positions "
            f"(max_position_embeddings); accepted: 2..{positions}.",
            input_name=input_name,
        )
    return seq_len


def check_seq_len(
    seq_len: Any,
    model_or_config: Any = None,
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    memory_bytes: int | None = None,
    memory_fraction: float = 0.8,
    input_name: str = "--seq-len",
) -> int:
    """``seq_len`` if the model and the memory can take it; else a :class:`SeqLenError`.

    Args:
        seq_len: tokens per window, BOS included.
        model_or_config: a loaded model, an HF config / model, a :class:`~tl_moe.MoEConfig` or a
            dict with ``max_position_embeddings`` etc.; None checks the type and lower bound only.
        batch_size: windows per forward (memory grows with it).
        device: where the forward runs (default: CPU); its free memory bounds the estimate.
        memory_bytes: free memory to assume instead of measuring it.
        memory_fraction: share of the free memory one forward may take.
    """
    check_seq_len_positions(seq_len, model_or_config, input_name=input_name)
    if model_or_config is None:
        return seq_len
    free = memory_bytes if memory_bytes is not None else available_memory(device or "cpu")
    if free is not None:
        budget = memory_fraction * free
        needed = activation_bytes(model_or_config, Batch(batch_size, seq_len))
        if needed > budget:
            fits = _longest_that_fits(model_or_config, batch_size, budget, seq_len)
            where = torch.device(device or "cpu")
            accepted = (
                f"accepted: {input_name} up to {fits}" if fits >= 2 else "accepted: a smaller batch size"
            )
            raise SeqLenError(
                f"{input_name} {seq_len} with batch size {batch_size} needs about {_gigabytes(needed)} for one "
                f"forward pass, more than the {_gigabytes(free)} free on {where}; {accepted} "
                f"(or a smaller batch size).",
                input_name=input_name,
            )
    return seq_len


def _longest_that_fits(model_or_config: Any, batch_size: int, budget: float, upper: int) -> int:
    low, high = 1, upper
    while low < high:
        middle = (low + high + 1) // 2
        if activation_bytes(model_or_config, Batch(batch_size, middle)) <= budget:
            low = middle
        else:
            high = middle - 1
    return low
