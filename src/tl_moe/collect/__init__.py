"""The collection pass: corpus -> batches -> one hooked forward per batch -> accumulators.

Entry point: :func:`collect`. Analyses plug in by subclassing :class:`Accumulator`
or by configuring one of the reusable building blocks (:class:`SumAccumulator`,
:class:`CountAccumulator`, :class:`ReservoirSampler`, :class:`TopKTracker`).

Resumable runs: checkpoints are keyed by content (:func:`weights_digest`,
:func:`corpus_digest`), checksummed (:func:`write_verified` / :func:`read_verified`) and
refused in one line (:class:`CheckpointMismatchError`, :class:`CheckpointCorruptError`);
``collect(fresh=True)`` starts over, :func:`remove_checkpoints` cleans up. Input checks to
run before a pass live in :mod:`tl_moe.pipeline.checks`. See docs/RUNS.md.
"""

from tl_moe.collect.accumulator import Accumulator, Activations, HookedAccumulator
from tl_moe.collect.batching import (
    BatchBuilder,
    ConceptLabeler,
    PlannedBatch,
    StreamCursor,
    domain_names,
    iter_windows,
    plan_batches,
)
from tl_moe.collect.capture import UnknownHookError
from tl_moe.collect.checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    read_verified,
    remove_checkpoints,
    write_verified,
)
from tl_moe.collect.counts import BinEvents, CountAccumulator
from tl_moe.collect.distributed import Shard, reduce_across_processes
from tl_moe.collect.engine import collect, model_device
from tl_moe.collect.expert_effects import ExpertEffects, ExpertEffectsResult
from tl_moe.collect.hashing import corpus_digest, uniform_priority, weights_digest
from tl_moe.collect.interventional import (
    InterventionalAccumulator,
    InterventionEffects,
    InterventionRunner,
    run_interventions,
)
from tl_moe.collect.meta import BatchMeta
from tl_moe.collect.reservoir import ReservoirSample, ReservoirSampler, SampleCandidates
from tl_moe.collect.sums import GroupedValues, SumAccumulator, SumResult
from tl_moe.collect.topk import KeyedTopN, ScoredEvents, TopKResult, TopKTracker

__all__ = [
    "Accumulator",
    "Activations",
    "BatchBuilder",
    "BatchMeta",
    "BinEvents",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointMismatchError",
    "ConceptLabeler",
    "CountAccumulator",
    "ExpertEffects",
    "ExpertEffectsResult",
    "GroupedValues",
    "HookedAccumulator",
    "InterventionEffects",
    "InterventionRunner",
    "InterventionalAccumulator",
    "KeyedTopN",
    "PlannedBatch",
    "ReservoirSample",
    "ReservoirSampler",
    "SampleCandidates",
    "ScoredEvents",
    "Shard",
    "StreamCursor",
    "SumAccumulator",
    "SumResult",
    "TopKResult",
    "TopKTracker",
    "UnknownHookError",
    "collect",
    "corpus_digest",
    "domain_names",
    "iter_windows",
    "model_device",
    "plan_batches",
    "read_verified",
    "reduce_across_processes",
    "remove_checkpoints",
    "run_interventions",
    "uniform_priority",
    "weights_digest",
    "write_verified",
]
