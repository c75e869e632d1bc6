"""The document split every analysis uses: each document falls on one side, a pure function of its id.

:func:`document_split` gives each document id a pseudo-random key in [0, 1) under a seed and cuts
[0, 1) at the cumulative ``fractions``: side ``i`` holds the documents whose key lies in
``[f_0 + … + f_{i-1}, f_0 + … + f_i)``. The side of a document depends only on its id, the seed and
the key function, not on which other documents are present nor on their order, so two models
streamed over one corpus, a resumed pass and a sharded pass all split the same documents the same way.

The key function is named by ``key``; each analysis names the one it has always used, so results are
reproduced exactly:

- ``"splitmix64"`` (the default): the splitmix64 finalizer of ``id + (seed + 1) · φ`` (φ the 64-bit
  golden ratio), its top 53 bits as the key. The held-out probing protocol, the bounded token store and
  the logit-lens null use it.
- ``"avalanche32"``: :func:`~tl_moe.collect.hashing.uniform_priority` of the id under ``seed + 7919``
  (salted so that it is independent of the token priorities samplers draw under ``seed``, ``seed + 1``,
  …). The explanation splits (explain / score / causal) use it.
- ``"knuth"``: Knuth's multiplicative hash ``(id · 2654435761) mod 2³²``, over 2³² (takes no seed).
  The halves of drivers, associations and re-weighting use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from tl_moe.collect.hashing import uniform_priority
from tl_moe.errors import InputError

__all__ = ["KEYS", "document_split"]

KEYS = ("splitmix64", "avalanche32", "knuth")
"""The key functions :func:`document_split` can cut (see the module docstring)."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_AVALANCHE_SALT = 7919
_KNUTH = 2654435761
_FRACTION_TOLERANCE = 1e-9

Ids = TypeVar("Ids", np.ndarray, torch.Tensor)


def _splitmix64(ids: np.ndarray, seed: int) -> np.ndarray:
    """Key in [0, 1) of each non-negative id: the top 53 bits of splitmix64's finalizer."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(seed) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def _knuth(ids: np.ndarray, seed: int) -> np.ndarray:
    """Key in [0, 1) of each non-negative id: ``(id · 2654435761) mod 2³²`` over 2³² (exact in float64)."""
    if seed != 0:
        raise ValueError(f"the 'knuth' key takes no seed (seed=0); got seed={seed}.")
    hashed = (ids.astype(np.uint64) * np.uint64(_KNUTH)) % np.uint64(1 << 32)
    return hashed.astype(np.float64) / float(1 << 32)


def _keys(ids: Ids, seed: int, key: str) -> Ids:
    """The key in [0, 1) (float64) of each id, on the container and device of ``ids``."""
    if key == "avalanche32":
        tensor = torch.as_tensor(ids)
        keys = uniform_priority(tensor, seed + _AVALANCHE_SALT)
        return keys if isinstance(ids, torch.Tensor) else keys.numpy()
    values = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    keys = (_splitmix64 if key == "splitmix64" else _knuth)(values.astype(np.int64), seed)
    return torch.from_numpy(keys).to(ids.device) if isinstance(ids, torch.Tensor) else keys


def _check(fractions: Sequence[float], key: str) -> np.ndarray:
    """The cut points ``cumsum(fractions)[:-1]`` (InputError on fractions that are not a partition)."""
    if key not in KEYS:
        raise InputError(f"unknown document-split key {key!r}; accepted: {', '.join(KEYS)}.")
    values = np.asarray(fractions, dtype=np.float64)
    if values.ndim != 1 or len(values) < 2 or not (values > 0).all() or not np.isfinite(values).all():
        raise InputError(
            f"document-split fractions must be two or more positive numbers; got {list(fractions)}."
        )
    if abs(values.sum() - 1.0) > _FRACTION_TOLERANCE:
        raise InputError(
            f"document-split fractions must sum to 1; got {list(fractions)} (sum {values.sum()})."
        )
    return np.cumsum(values)[:-1]


def _check_sizes(sides: np.ndarray, fractions: Sequence[float], min_per_side: int) -> None:
    """InputError when a side holds fewer than ``min_per_side`` distinct documents (the documents it
    would take: the smallest side's expected share reaching ``min_per_side``, and a few more)."""
    n_sides = len(fractions)
    counts = np.bincount(sides, minlength=n_sides)
    if int(counts.min()) >= min_per_side:
        return
    total = int(counts.sum())
    if n_sides == 2:
        raise InputError(
            f"{total} documents split into {counts[0]} selection / {counts[1]} test documents; "
            f"held-out selection needs at least {min_per_side} on each side (about "
            f"{math.ceil(min_per_side / min(fractions)) + 4} "
            "documents): raise --max-tokens or use a corpus with more documents."
        )
    raise InputError(
        f"{total} documents split into {' / '.join(str(int(c)) for c in counts)} documents; each side "
        f"needs at least {min_per_side}: raise --max-tokens or use a corpus with more documents."
    )


def document_split(
    doc_ids: Ids,
    fractions: Sequence[float] = (0.5, 0.5),
    *,
    seed: int = 0,
    key: str = "splitmix64",
    min_per_side: int = 0,
) -> Ids:
    """The side (0, 1, …: an index into ``fractions``) of each document id.

    Args:
        doc_ids: non-negative document ids (corpus rows), any shape, numpy or torch (any device);
            repeated ids get the same side.
        fractions: the expected share of documents on each side, in side order (positive, sum 1).
        seed: changes every document's key (not accepted by ``key="knuth"``).
        key: the key function, one of :data:`KEYS` (module docstring).
        min_per_side: :class:`~tl_moe.errors.InputError` when a side holds fewer distinct documents.

    Returns:
        int64 sides of ``doc_ids``' shape, numpy for numpy input, else a tensor on ``doc_ids``' device.
    """
    bounds = _check(fractions, key)
    if bool((doc_ids < 0).any()):
        raise ValueError("document ids must be non-negative (mask padding positions out before splitting).")
    keys = _keys(doc_ids, seed, key)
    if isinstance(keys, torch.Tensor):
        sides = torch.bucketize(keys, torch.as_tensor(bounds, device=keys.device), right=True)
    else:
        sides = np.searchsorted(bounds, keys, side="right").astype(np.int64)
    if min_per_side > 0:
        unique = np.unique(np.asarray(torch.as_tensor(doc_ids).cpu()), return_index=True)[1]
        flat = sides.reshape(-1).cpu().numpy() if isinstance(sides, torch.Tensor) else sides.reshape(-1)
        _check_sizes(flat[unique], fractions, min_per_side)
    return sides
