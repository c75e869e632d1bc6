"""How a run probes its models: the probe settings, the resumable steps of probing, and the held-out
study of a run's MoE (the analyzed one, or a member of the sparsity family) against its dense baseline.
Shared by the probing and sparsity sections; the method itself is
:class:`~tl_moe.analysis.held_out_study.HeldOutProbing`."""

from __future__ import annotations

import dataclasses
from typing import Any

from tl_moe.analysis._step_values import PACKED_STEP_VALUES
from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.concept_probing import PAPER_PROTOCOL
from tl_moe.analysis.held_out_probing import HeldOutArm
from tl_moe.analysis.held_out_study import HeldOutProbing, probe_parameters
from tl_moe.analysis.paper_study import PaperProtocol
from tl_moe.collect.steps import Step, run_now
from tl_moe.pipeline.context import RunContext
from tl_moe.workers import WorkerPool

__all__ = [
    "dense_probing_steps",
    "held_out_probing",
    "held_out_study",
    "probe_settings",
    "probing_protocols",
    "probing_steps",
]


def probe_settings(run: RunContext) -> dict[str, Any]:
    """Keyword arguments of :class:`~tl_moe.analysis.probing.KSparseProbe` for this run."""
    return probe_parameters(run.options.config("probing"), run.options.seed)


def probing_steps(run: RunContext, analysis: str, models: list[str]) -> Step:
    """The resumable steps of probing ``models``: each finished layer / arm saved in ``OUT/checkpoints``,
    keyed by the probing options and the pass identities of ``models`` (docs/RUNS.md)."""
    return run.steps(analysis, _step_settings(run), models)


def dense_probing_steps(run: RunContext) -> Step:
    """The steps of the fits of the held-out arms on the dense baseline's own layers: keyed by the probing
    options and the dense pass alone, and shared by every analysis of the run (the probing analysis and
    each family member of the sparsity analysis fit them alike), so they are fitted once per run."""
    return run.shared_steps("probing", _step_settings(run), [run.dense])


def _step_settings(run: RunContext) -> dict[str, Any]:
    """What probing's steps depend on besides the passes: the probing options and the document split."""
    return {
        "probe": probe_settings(run),
        "paper_protocol": PAPER_PROTOCOL,
        "probe_layers": list(run.probed_layers()),
        "held_out_min_examples": run.options.config("probing").held_out_min_examples,
        "selection_fraction": run.options.selection_fraction,
        # 2: units, concepts and choices decided on the selection documents alone (saved steps of the
        # earlier rule, which also required test-side counts, are not reused).
        "held_out_rule": 2,
        # tables saved packed, the held-out probes as stacked tensors (saved steps of the earlier form are not reused)
        "step_values": PACKED_STEP_VALUES,
    }


def held_out_study(run: RunContext, layers: tuple[int, ...], model: str | None = None) -> HeldOutProbing:
    """:class:`HeldOutProbing` of ``model`` (default: the analyzed one; another expects no untrained null)
    and the run's dense baseline under the run's probing config and statistics."""
    config = run.options.config("probing")
    return HeldOutProbing.of(
        run.config(run.main if model is None else model),
        None if run.dense is None else run.config(run.dense),
        layers=layers,
        config=config if model is None else dataclasses.replace(config, skip_untrained_null=True),
        statistics=run.options.statistics,
    )


def probing_protocols(run: RunContext) -> tuple[PaperProtocol, HeldOutProbing]:
    """The probing analysis's two protocols for ``run``'s analyzed MoE and dense baseline: the paper's
    and the held-out one (the analysis runs them; ``tl-moe plan`` counts their fits)."""
    config, layers = run.options.config("probing"), run.probed_layers()
    study = held_out_study(run, layers)
    paper = PaperProtocol(layers, study.num_experts, study.dense_layers, config, run.options.statistics)
    return paper, study


def held_out_probing(
    run: RunContext,
    moe: StoredTokens,
    dense: StoredTokens | None,
    untrained: StoredTokens | None,
    layers: tuple[int, ...],
    step: Step = run_now,
    *,
    model: str | None = None,
    permuted: bool = True,
    routed_null: bool = True,
    pool: WorkerPool | None = None,
) -> tuple[dict[str, HeldOutArm], list[dict], list[str]]:
    """The held-out protocol's arms, comparison records and notes for ``model`` of ``run``
    (:class:`HeldOutProbing` with ``permuted`` / ``routed_null``, no per-group comparisons; the arms in
    ``pool``'s workers when given)."""
    study = held_out_study(run, layers, model).replace(
        permuted=permuted, routed_null=routed_null, by_group=False
    )
    found = study(
        moe,
        dense,
        untrained,
        step=step,
        dense_step=None if dense is None else dense_probing_steps(run),
        pool=pool,
    )
    return found.arms, list(found.records), list(found.notes)
