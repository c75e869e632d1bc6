"""Splitting the batch stream over processes, and reducing accumulators afterwards.

Shard ``i`` of ``n`` takes the batches whose stream index is ``i`` modulo ``n`` — a
deterministic split that needs no communication. Every process walks the same
window stream (tokenizing is cheap next to the forward) and builds tensors, concept
labels and forwards only for its own batches.

Reduction: every process sends its accumulators' CPU state dicts to all others
(``all_gather_object``); each then merges shard 0, 1, ..., n-1 in that order, so
all processes end with identical accumulators. With the NCCL backend the caller must
have set each process's CUDA device (``torch.cuda.set_device``) beforehand, as
``all_gather_object`` requires.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch.distributed as dist

from tl_moe.collect.accumulator import Accumulator
from tl_moe.collect.checkpoint import move_tensors


@dataclass(frozen=True)
class Shard:
    """This process's share of the batch stream: batches with ``index % count == position``."""

    position: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.position < self.count:
            raise ValueError(f"a shard needs 0 <= position < count, got {self.position} of {self.count}.")

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.count == self.position


def distributed_is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def process_shard() -> Shard:
    """The shard of this process: its rank among the ``torch.distributed`` world, or the whole stream."""
    if distributed_is_active():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def reduce_across_processes(accumulators: Mapping[str, Accumulator]) -> None:
    """Replace each accumulator's state with the merge of all processes' states (in rank order).

    Collective: every process of the default group must call it with accumulators
    of the same names and configurations. Merging happens on the CPU.
    """
    local_states = {name: move_tensors(acc.state_dict(), "cpu") for name, acc in accumulators.items()}
    gathered: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, local_states)
    for name, acc in accumulators.items():
        merged = _accumulator_with_state(acc, gathered[0][name])
        for states in gathered[1:]:
            merged.merge(_accumulator_with_state(acc, states[name]))
        acc.load_state_dict(merged.state_dict())


def _accumulator_with_state(template: Accumulator, state: Mapping) -> Accumulator:
    """A copy of ``template`` holding ``state``; callables it holds (extract functions,
    which may reference a model) are shared rather than copied."""
    shared = {id(value): value for value in vars(template).values() if callable(value)}
    fresh = copy.deepcopy(template, memo=shared)
    fresh.load_state_dict(state)
    return fresh
