"""The accumulator contract: what the collection pass asks of every analysis.

An accumulator says which hooks it needs, folds in one batch of hooked tensors at a
time, and can be saved, restored and merged. Merging two accumulators that saw
disjoint parts of a corpus must give the same result as one accumulator that saw
both: that is what makes checkpoint/resume and multi-process collection exact.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from tl_moe.collect.meta import BatchMeta

Activations = Mapping[str, torch.Tensor]
"""Hooked tensors of one forward pass, keyed by the hook name as the accumulator asked for it."""

HookSpec = Sequence[str] | Callable[[Any], Sequence[str]]
"""Hook names, or a function of the model returning them (e.g. one hook per layer)."""


class Accumulator(ABC):
    """Base class of everything ``collect`` feeds.

    Subclasses keep all state as tensors (and plain ints/floats/strings/lists/dicts)
    so that ``state_dict()`` can be written to a checkpoint and loaded back with
    ``torch.load(..., weights_only=True)``. State tensors should be updated
    out-of-place (``x = x + y``): the pass runs under ``torch.inference_mode`` and
    in-place updates of inference tensors are refused outside it.
    """

    @abstractmethod
    def hook_names(self, model: Any) -> list[str]:
        """Names of the hook points whose activations ``update`` reads."""

    @abstractmethod
    def update(self, acts: Activations, meta: BatchMeta) -> None:
        """Fold in one batch: ``acts[name]`` is the tensor hooked at ``name`` for this batch."""

    @abstractmethod
    def merge(self, other: Accumulator) -> Accumulator:
        """Fold in the state of ``other`` (same configuration, disjoint data); returns ``self``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue accumulating, as tensors and plain values."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the current state with one produced by ``state_dict``."""

    @abstractmethod
    def finalize(self) -> Any:
        """The result of everything folded in so far (does not change the state)."""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings that change the result; a resumed run must match them."""
        return {}

    def _check_mergeable(self, other: Accumulator) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}.")
        if other.config() != self.config():
            raise ValueError(
                f"cannot merge {type(self).__name__}s configured differently: "
                f"{self.config()} vs {other.config()}."
            )


class HookedAccumulator(Accumulator, ABC):
    """An accumulator whose per-batch input comes from a user function of the hooked tensors.

    Args:
        hooks: hook names to read, or a function ``model -> hook names``.
        extract: ``(acts, meta) -> ...`` turning one batch into what the accumulator
            folds in (each subclass documents the tuple it expects). Use
            ``meta.tokens(x)`` to drop padding.
    """

    def __init__(self, hooks: HookSpec, extract: Callable[[Activations, BatchMeta], Any]) -> None:
        if isinstance(hooks, str):
            raise TypeError(f"hooks must be a list of hook names, got the single string {hooks!r}.")
        self.hooks = hooks
        self.extract = extract

    def hook_names(self, model: Any) -> list[str]:
        names = self.hooks(model) if callable(self.hooks) else self.hooks
        return list(names)


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def state_nbytes(accumulator: Accumulator) -> dict[str, int]:
    """Memory of an accumulator's state: ``{"final": bytes now, "peak": most bytes it held}``.

    Uses the accumulator's ``nbytes()`` / ``peak_nbytes`` when it has them (stores), else the bytes
    of the tensors of its ``state_dict()``; ``peak`` is ``final`` for accumulators that only grow.
    """
    nbytes = getattr(accumulator, "nbytes", None)
    final = int(nbytes()) if callable(nbytes) else _tensor_bytes(accumulator.state_dict())
    return {"final": final, "peak": max(final, int(getattr(accumulator, "peak_nbytes", 0)))}


def same_device(state: torch.Tensor, incoming: torch.Tensor) -> torch.Tensor:
    """``state`` moved to the device of ``incoming`` when they differ."""
    return state if state.device == incoming.device else state.to(incoming.device)
