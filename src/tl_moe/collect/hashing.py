"""Seeded pseudo-random priorities, and content digests of weights and corpora.

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

import hashlib
from collections.abc import Sequence
from typing import Any

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


# ------------------------------------------------------------------ content digests
#
# The checkpoint fingerprint (``tl_moe.collect.checkpoint.fingerprint``) keys a resumable
# pass by the *content* of its inputs, not by their names: the bytes of every weight and the
# text / domain / language of every corpus row. Both digests are streaming SHA-256 and cost a
# small fraction of one forward pass (measured in docs/RUNS.md).

_DIGEST_CHARS = 16
_CORPUS_COLUMNS = ("text", "domain", "language")
_CORPUS_ROWS_PER_READ = 2048
_WEIGHTS_CACHE_ATTRIBUTE = "_tl_moe_weights_digest"


def _named_tensors(model: Any) -> list[tuple[str, torch.Tensor]]:
    """Every distinct parameter and buffer of ``model`` by name (a tied tensor once)."""
    tensors: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for getter in ("named_parameters", "named_buffers"):
        if not hasattr(model, getter):
            continue
        for name, tensor in getattr(model, getter)():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                tensors.append((name, tensor))
    return tensors


def _version_key(tensors: list[tuple[str, torch.Tensor]]) -> str | None:
    """A key that changes whenever a tensor is replaced or edited in place (None if untrackable)."""
    parts = []
    try:
        for name, tensor in tensors:
            storage = tensor.data_ptr() if tensor.device.type != "meta" else 0
            parts.append(
                f"{name}:{id(tensor)}:{storage}:{tensor._version}:{tensor.dtype}:{tuple(tensor.shape)}"
            )
    except RuntimeError:  # inference tensors keep no version counter
        return None
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def weights_digest(model: Any) -> str:
    """SHA-256 (first 16 hex digits) of the names, dtypes, shapes and bytes of every weight.

    Covers all parameters and buffers of ``model`` (a TransformerBridge, a Hugging Face model,
    any ``nn.Module``), so it changes when the weights change, whatever path or name they were
    loaded from. The digest is cached on the model object and reused while no tensor has been
    replaced or edited in place (tracked by torch's version counters; an edit through
    ``param.data`` bypasses them, see docs/RUNS.md). Tensors on the ``meta`` device (offloaded
    weights) contribute their name, dtype and shape only.
    """
    tensors = _named_tensors(model)
    key = _version_key(tensors)
    cached = getattr(model, _WEIGHTS_CACHE_ATTRIBUTE, None)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.device.type == "meta":
            continue
        flat = tensor.detach().reshape(-1)
        if flat.dtype.is_complex:
            flat = torch.view_as_real(flat).reshape(-1)
        data = flat.to("cpu").contiguous().view(torch.uint8)
        digest.update(memoryview(data.numpy()))
    value = digest.hexdigest()[:_DIGEST_CHARS]
    if key is not None:
        try:
            object.__setattr__(model, _WEIGHTS_CACHE_ATTRIBUTE, (key, value))
        except (AttributeError, TypeError):
            pass
    return value


def _feature_description(dataset: Any, column: str) -> str:
    features = getattr(dataset, "features", None)
    return repr(features[column]) if features is not None and column in features else ""


def corpus_digest(dataset: Any, columns: Sequence[str] = _CORPUS_COLUMNS) -> str:
    """SHA-256 (first 16 hex digits) of every row's values in ``columns`` that the dataset has.

    Hashes the row count, each hashed column's name and feature type (so ``ClassLabel`` names
    count) and, in row order, every value with its length (so no two corpora collide by moving
    text across a boundary). By default the columns a collection pass reads: ``text``,
    ``domain`` and ``language``; other columns (``source``) do not change a pass's result and
    are not hashed. Streams the rows in chunks: about 6 ms for the 1.7 MB embedded train split.
    """
    present = [column for column in columns if column in dataset.column_names]
    digest = hashlib.sha256()
    digest.update(f"rows={len(dataset)}|".encode())
    for column in present:
        digest.update(f"column={column}|{_feature_description(dataset, column)}|".encode())
    if present:
        view = dataset.select_columns(present)
        for start in range(0, len(view), _CORPUS_ROWS_PER_READ):
            rows = view[start : start + _CORPUS_ROWS_PER_READ]
            for column in present:
                for value in rows[column]:
                    if value is None:
                        digest.update(b"\xff" * 8)
                        continue
                    encoded = str(value).encode("utf-8", "surrogatepass")
                    digest.update(len(encoded).to_bytes(8, "little"))
                    digest.update(encoded)
    return digest.hexdigest()[:_DIGEST_CHARS]
