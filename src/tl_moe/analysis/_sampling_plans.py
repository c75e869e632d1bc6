"""A bounded cache of :class:`~tl_moe.analysis.probing.KSparseProbe`'s sampling plans, keyed by their inputs.

A probe's sampling plan — its class counts per (unit, concept) and the train / test token lists of every
chunk of problems — depends only on the concept labels, the units' token masks, the concepts' token
masks and the sampling settings, not on the activations. Arms of the held-out protocol that probe other
neurons on the same tokens with the same labels (the dense neurons on each expert's routed tokens, all of
them and each draw of the matched-count control; the MoE's experts with permuted labels and that
control's permuted draws) have the very same plan, so it is computed once and reused: the same tensors,
hence the same fits.

Plans are kept only inside :func:`reuse_sampling_plans` (the held-out study's arms run in it), and
forgotten when it ends; elsewhere every fit computes its own. An entry is found only when every input has the content digest (BLAKE2b of its shape, dtype and bytes)
of the one it was computed from; the entries kept are bounded in bytes and the least recently used is
dropped first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
import torch

__all__ = ["PLAN_CACHE_BYTES", "SamplingPlan", "SamplingPlans", "reuse_sampling_plans", "sampling_plans"]

#: Bytes of class counts and token lists a cache keeps (the default run's held-out arms need about 150 MB).
PLAN_CACHE_BYTES = 256 << 20


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class SamplingPlan:
    """One fit's plan: its class counts (``counts``), units' token lists and each chunk's split, computed
    on first use (``owner``: the cache that keeps it; None: a plan of one fit, kept by nobody)."""

    def __init__(self, owner: SamplingPlans | None = None) -> None:
        self.counts: Any = None
        self.unit_tokens: Any = None
        self._splits: dict[bytes, Any] = {}
        self._owner: SamplingPlans | None = owner  # None once dropped from the cache

    def _grew(self, value: Any) -> None:
        if self._owner is not None:
            self._owner.grew(_nbytes(value))

    def keep(self, name: str, compute: Callable[[], Any]) -> Any:
        """``counts`` or ``unit_tokens``: the saved value, else ``compute()`` saved."""
        if getattr(self, name) is None:
            setattr(self, name, compute())
            self._grew(getattr(self, name))
        return getattr(self, name)

    def split(self, problems: torch.Tensor, compute: Callable[[], Any]) -> Any:
        """The split of the chunk of ``problems`` (``[problem, 2]`` (unit, concept) rows): saved, else computed."""
        if self._owner is None:  # kept by no cache: nothing to reuse it
            return compute()
        key = problems.cpu().numpy().tobytes()
        if key not in self._splits:
            self._splits[key] = compute()
            self._grew(self._splits[key])
        return self._splits[key]

    def nbytes(self) -> int:
        return _nbytes(self.counts) + _nbytes(self.unit_tokens) + _nbytes(list(self._splits.values()))


class SamplingPlans:
    """Sampling plans by settings and inputs, at most ``max_bytes`` of them (least recently used dropped)."""

    def __init__(self, max_bytes: int = PLAN_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._plans: OrderedDict[Hashable, SamplingPlan] = OrderedDict()
        self._bytes = 0

    def plan(self, settings: Hashable, inputs: tuple[torch.Tensor | None, ...]) -> SamplingPlan:
        """The plan of ``settings`` (hashable) and ``inputs`` (tensors, None allowed): the one kept for
        inputs of the same content, or a new empty one."""
        key = (settings, tuple(_digest(t) for t in inputs))
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        plan = self._plans[key] = SamplingPlan(self)
        return plan

    def grew(self, nbytes: int) -> None:
        """Account ``nbytes`` more; drop the least recently used plans while over the bound."""
        self._bytes += nbytes
        while self._bytes > self.max_bytes and len(self._plans) > 1:
            _, dropped = self._plans.popitem(last=False)
            self._bytes -= dropped.nbytes()
            dropped._owner = None

    def clear(self) -> None:
        """Forget every plan."""
        for plan in self._plans.values():
            plan._owner = None
        self._plans.clear()
        self._bytes = 0


def _digest(tensor: torch.Tensor | None) -> bytes | None:
    """BLAKE2b digest of a tensor's shape, dtype, device and values (bool tensors hashed bit-packed)."""
    if tensor is None:
        return None
    values = tensor.detach().cpu().contiguous().numpy()
    if values.dtype == np.bool_:
        values = np.packbits(values, axis=None)
    digest = hashlib.blake2b(
        repr((tuple(tensor.shape), str(tensor.dtype), str(tensor.device))).encode(), digest_size=20
    )
    digest.update(memoryview(np.ascontiguousarray(values)).cast("B"))
    return digest.digest()


_PLANS: ContextVar[SamplingPlans | None] = ContextVar("sampling_plans", default=None)


@contextmanager
def reuse_sampling_plans(max_bytes: int = PLAN_CACHE_BYTES) -> Iterator[SamplingPlans]:
    """Inside, :class:`~tl_moe.analysis.probing.KSparseProbe` fits with equal labels, masks and sampling
    settings share one sampling plan (at most ``max_bytes`` kept); an enclosing call's cache is reused."""
    plans = _PLANS.get()
    if plans is not None:
        yield plans
        return
    plans = SamplingPlans(max_bytes)
    token = _PLANS.set(plans)
    try:
        yield plans
    finally:
        _PLANS.reset(token)
        plans.clear()


def sampling_plans() -> SamplingPlans | None:
    """The cache of the enclosing :func:`reuse_sampling_plans`, or None outside one."""
    return _PLANS.get()
