"""Seeded pseudo-random priorities that depend only on an item's id.

``uniform_priority(ids, seed)`` maps each non-negative integer id to a number in
[0, 1) that behaves like an independent uniform draw, but is a pure function of
(id, seed): the same token gets the same priority on any device, in any process, in
any batch order. Sampling by "smallest priorities win" is therefore independent of
how the stream is split, which is what lets reservoir samples merge exactly.

The mixing function is a 32-bit integer avalanche (xor-shift / multiply rounds),
computed on int64 tensors with every product kept below 2**63, so no step relies on
integer overflow behaviour.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int

_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
_STREAM_SALTS = (0x9E3779B9, 0x85EBCA6B)


def _mul_mod32(x: Int[torch.Tensor, "..."], constant: int) -> Int[torch.Tensor, "..."]:
    """(x * constant) mod 2**32 for x in [0, 2**32), splitting the constant in 16-bit halves."""
    low = x * (constant & _MASK16)
    high = ((x * (constant >> 16)) & _MASK16) << 16
    return (low + high) & _MASK32


def _mix32(x: Int[torch.Tensor, "..."]) -> Int[torch.Tensor, "..."]:
    """A bijective avalanche of 32-bit values held in int64."""
    x = x ^ (x >> 16)
    x = _mul_mod32(x, _MULTIPLIERS[0])
    x = x ^ (x >> 15)
    x = _mul_mod32(x, _MULTIPLIERS[1])
    return x ^ (x >> 16)


def uniform_priority(ids: Int[torch.Tensor, "..."], seed: int) -> Float[torch.Tensor, "..."]:
    """Priority in [0, 1) (53 random bits, float64) of each id under ``seed``.

    Args:
        ids: non-negative int64 item ids (e.g. ``BatchMeta.token_index``).
        seed: any integer; different seeds give independent priorities.
    """
    ids = ids.to(torch.int64)
    if ids.numel() and bool((ids < 0).any()):
        raise ValueError("ids must be non-negative to be hashed into priorities.")
    seed_low, seed_high = seed & _MASK32, (seed >> 32) & _MASK32
    seed_key = _mix32(_mix32(torch.full_like(ids, seed_low ^ _STREAM_SALTS[0])) ^ seed_high)
    id_low, id_high = ids & _MASK32, ids >> 32
    key = _mix32(seed_key ^ id_high)
    first = _mix32(key ^ id_low)
    second = _mix32(_mix32(key ^ _STREAM_SALTS[1]) ^ id_low)
    bits53 = (first << 21) | (second >> 11)
    return bits53.to(torch.float64) / float(1 << 53)
