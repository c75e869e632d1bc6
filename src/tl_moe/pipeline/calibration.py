"""Wall-time estimates of a planned run, from throughputs measured on this machine.

``tl-moe plan`` first checks the run's inputs and memory (:mod:`tl_moe.pipeline.plan`); then, unless
``--no-calibration`` is given, it measures:

- each pass's model: a short collection pass (a few batches of the run's corpus at its
  ``--batch-size`` x ``--seq-len``, ``--dtype`` and ``--device``, with the run's hooks, concept labels
  and accumulators), in tokens per second;
- probing: a short :class:`~tl_moe.analysis.probing.KSparseProbe` fit on random activations of the
  run's unit width (an expert's neurons; a dense layer's, with a dense baseline), the run's probe sizes
  and about as many tokens per unit as the run gives a unit, in fits per second.

A pass is estimated as its tokens / the measured rate (the short pass's start-up included, so the
rate errs slow), probing's finalize as its number of probe fits / the measured fit rate (every unit x
concept x probe size is counted, for the concepts whose rate in the short pass's labels gives a unit at
least ``--min-examples`` positives and negatives; routing that concentrates a concept moves this). Every number is
an estimate and the summary says so, with its basis.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float

from tl_moe.pipeline.plan import ModelPlan, RunPlan

__all__ = [
    "CALIBRATION_BATCHES",
    "TimeEstimate",
    "calibrate",
    "estimate_times",
    "measure_fit_rate",
    "measure_pass",
    "concept_rates",
    "eligible_concepts",
    "probe_fit_counts",
]

#: Batches of each model's timed calibration pass.
CALIBRATION_BATCHES = 4
#: Units and concepts of the timed probe fit (each unit x concept x probe size is one fit).
CALIBRATION_UNITS, CALIBRATION_CONCEPTS = 4, 8
#: Positive rates of the timed fit's planted concepts (rare to common, as a corpus's concepts are).
CALIBRATION_RATES = (0.01, 0.3)
#: Most tokens per unit of the timed probe fit; a fit's cost is taken as proportional to its tokens above.
CALIBRATION_MAX_ROWS = 16384

Clock = Callable[[], float]
UNTRAINED = "untrained:"


def measure_pass(
    context: Any,
    name: str,
    specs: list[Any],
    clock: Clock = time.perf_counter,
) -> tuple[float, dict[Any, Any]]:
    """Tokens per second of a short collection pass of model ``name`` filling ``specs``, as the run
    fills them (the corpus, the concept labels, the hooks and the accumulators), over the
    ``context``'s ``max_tokens`` (the model is loaded before the clock starts); and what the pass
    collected (spec -> value)."""
    from tl_moe.pipeline.runner import _collect_model

    model = context.model(name)
    device = next(model.parameters()).device
    start = clock()
    collected = _collect_model(context, name, specs, None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return context.options.max_tokens / max(clock() - start, 1e-9), collected


def concept_rates(collected: dict[Any, Any]) -> Float[torch.Tensor, " concept"] | None:
    """Each concept's positive rate over the tokens a calibration pass stored (None: none stored)."""
    for value in collected.values():
        labels = getattr(value, "labels", None)
        if isinstance(labels, torch.Tensor) and labels.ndim == 2 and len(labels):
            return labels.float().mean(0)
    return None


def eligible_concepts(rates: Float[torch.Tensor, " concept"], rows: int, min_examples: int) -> int:
    """Concepts a unit seeing ``rows`` tokens is probed for: expected positives and negatives (at the
    concepts' ``rates``) both at least ``min_examples``; the rest the run skips."""
    positives = rates * rows
    return int(((positives >= min_examples) & (rows - positives >= min_examples)).sum())


def measure_fit_rate(
    width: int,
    rows: int,
    ks: tuple[int, ...],
    device: str | torch.device | None = None,
    clock: Clock = time.perf_counter,
) -> float:
    """Probe fits per second (one fit: a unit x a concept x a probe size) of a ``KSparseProbe`` on
    random activations ``[unit, rows, width]`` with concepts of rare to common positive rates
    (:data:`CALIBRATION_RATES`), after one warm-up fit."""
    from tl_moe.analysis.probing import KSparseProbe

    generator = torch.Generator().manual_seed(0)
    activations = torch.randn(CALIBRATION_UNITS, rows, width, generator=generator)
    rates = torch.linspace(*CALIBRATION_RATES, CALIBRATION_CONCEPTS)
    labels = torch.rand(rows, CALIBRATION_CONCEPTS, generator=generator) < rates
    activations[:, :, 0] += 2.0 * labels[:, 0].float()  # one neuron carries a concept: fits converge as usual
    activations = activations.to(device or "cpu")
    unit_mask = torch.ones(CALIBRATION_UNITS, rows, dtype=torch.bool)
    ks = tuple(k for k in ks if k <= width) or (1,)
    probe = KSparseProbe(ks=ks, device=str(activations.device))
    probe.fit(activations, labels, unit_mask)
    start = clock()
    probe.fit(activations, labels, unit_mask)
    seconds = clock() - start
    return CALIBRATION_UNITS * CALIBRATION_CONCEPTS * len(ks) / max(seconds, 1e-9)


@dataclass(frozen=True)
class ProbeWork:
    """Probe units of one width that probing's finalize fits, and the tokens each unit sees."""

    width: int
    units: int
    rows: int
    concepts: int


def probe_fit_counts(plan: RunPlan, concepts: int) -> list[ProbeWork]:
    """Units probing fits per width (per concept and probe size), from the run's shapes.

    The MoE's experts (its probed layers x experts) are fitted by the paper protocol and the held-out
    arm, and with a dense baseline by the permuted-label arm, the matched-count routed-token draws and
    their permuted null; the untrained null by its held-out arm; a dense baseline's layers by the paper
    protocol (whole layers and one draw per expert), its held-out and permuted arms, and its neurons on
    each expert's routed tokens (two arms). ``concepts`` bounds the stored rows with
    ``--probe-rows-per-class``.
    """
    from tl_moe.analysis.held_out_probing import ROUTED_COUNT_DRAWS

    options = plan.options
    main = plan.models[0]
    cfg = main.config
    layers = len(options.config("probing").layers or cfg.sparse_layers)
    experts = layers * cfg.num_experts
    routed = options.max_tokens * cfg.experts_per_token // max(cfg.num_experts, 1)
    rows = options.config("probing").rows_per_class
    cap = None if rows is None else rows * 4 * concepts
    rows = min(routed, cap or routed)
    names = [model.name for model in plan.models]
    dense = next((m for m in plan.models if m.name == options.dense_baseline), None)
    expert_rounds = 2 + (1 + 2 * ROUTED_COUNT_DRAWS if dense is not None else 0)
    work = [ProbeWork(cfg.d_expert, experts * expert_rounds, rows, concepts)]
    if UNTRAINED + main.name in names:
        work.append(ProbeWork(cfg.d_expert, experts, rows, concepts))
    if dense is not None:
        dense_layers = len(dense.config.dense_layers)
        whole = min(options.max_tokens, cap or options.max_tokens)
        width = dense.config.d_mlp
        work.append(ProbeWork(width, dense_layers * 3, whole, concepts))  # paper, held-out, permuted arms
        work.append(ProbeWork(width, dense_layers * cfg.num_experts + 2 * experts, rows, concepts))
    return work


@dataclass(frozen=True)
class TimeEstimate:
    """Estimated seconds of each pass and of probing's finalize, with the measured rates they rest on."""

    pass_seconds: dict[str, float]
    forward_rates: dict[str, float]
    probing_seconds: float | None = None
    probe_fits: int = 0
    fit_rates: dict[int, float] = field(default_factory=dict)
    device: str = "cpu"
    threads: int = 1

    @property
    def total_seconds(self) -> float:
        return sum(self.pass_seconds.values()) + (self.probing_seconds or 0.0)

    def summary(self) -> str:
        lines = [
            f"Estimated wall time (an estimate, from throughputs measured on this machine: {self.device}, "
            f"{self.threads} CPU thread(s)):"
        ]
        for name, seconds in self.pass_seconds.items():
            lines.append(
                f"  pass {name}: {_duration(seconds)} (measured {self.forward_rates[name]:,.0f} tokens/s in a "
                "short pass)"
            )
        if self.probing_seconds is not None:
            rates = ", ".join(
                f"{rate:,.0f} fits/s at {width} neurons" for width, rate in self.fit_rates.items()
            )
            lines.append(
                f"  probing finalize: {_duration(self.probing_seconds)} ({self.probe_fits:,} probe fits; measured "
                f"{rates})"
            )
        lines.append(
            f"  total of these: {_duration(self.total_seconds)} (other analyses' finalize is not estimated)"
        )
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"about {seconds:.3g} s"
    if seconds < 7200:
        return f"about {seconds / 60:.3g} min"
    return f"about {seconds / 3600:.3g} h"


def estimate_times(
    plan: RunPlan,
    forward_rates: dict[str, float],
    fit_rates: dict[int, float] | None = None,
    probe_work: list[ProbeWork] | None = None,
    rate_rows: dict[int, int] | None = None,
    device: str = "cpu",
    threads: int = 1,
) -> TimeEstimate:
    """Seconds per pass (its tokens / its model's tokens per second) and for probing (each work's
    units x concepts x probe sizes fits / its width's fits per second, scaled by the unit's tokens over
    the tokens the rate was measured at, ``rate_rows``, when more)."""
    passes = {m.name: m.tokens / forward_rates[_rate_key(m)] for m in plan.models}
    rates = {m.name: forward_rates[_rate_key(m)] for m in plan.models}
    if not fit_rates or not probe_work:
        return TimeEstimate(passes, rates, device=device, threads=threads)
    ks = len(plan.options.config("probing").ks)
    seconds, fits = 0.0, 0
    for work in probe_work:
        n = work.units * work.concepts * ks
        scale = max(1.0, work.rows / (rate_rows or {}).get(work.width, work.rows))
        seconds += n * scale / fit_rates[work.width]
        fits += n
    return TimeEstimate(passes, rates, seconds, fits, dict(fit_rates), device, threads)


def _rate_key(model: ModelPlan) -> str:
    """The model whose measured rate a pass uses: an untrained null runs at its model's rate."""
    return model.name.removeprefix(UNTRAINED)


def _concepts_of(plan: RunPlan) -> int:
    from tl_moe.data.concepts import TokenConceptLabeler, concepts_for_corpus

    return len(TokenConceptLabeler(concepts_for_corpus(plan.options.corpus)).concept_names)


def calibrate(plan: RunPlan, clock: Clock = time.perf_counter) -> TimeEstimate:
    """Run a short collection pass of each model of ``plan`` (``CALIBRATION_BATCHES`` batches, or the
    fewest tokens a run accepts, as the run collects), time a probe fit when the run probes, and estimate the run's wall time from those rates."""
    from tl_moe.pipeline.context import RunContext
    from tl_moe.pipeline.options import _LEAST_INTEGERS
    from tl_moe.pipeline.runner import _chosen_analyses, _needs_by_model
    from tl_moe.runtime import set_threads

    options = plan.options
    threads = set_threads(options.threads)
    tokens = max(CALIBRATION_BATCHES * options.batch_size * options.seq_len, _LEAST_INTEGERS["max_tokens"])
    short = options.replace(max_tokens=min(tokens, options.max_tokens), progress=False)
    context = RunContext(short)
    needs = _needs_by_model(context, _chosen_analyses(short, None))
    forward_rates: dict[str, float] = {}
    rates = None
    device = "cpu"
    for name, specs in needs.items():
        key = name.removeprefix(UNTRAINED)
        if key in forward_rates:  # an untrained null runs at its model's rate
            continue
        device = str(next(context.model(key).parameters()).device)
        forward_rates[key], collected = measure_pass(context, key, needs.get(key, specs), clock=clock)
        rates = concept_rates(collected) if rates is None else rates
        context.release(key)
    if "probing" not in plan.analyses:
        return estimate_times(plan, forward_rates, device=device, threads=threads)
    work = probe_fit_counts(plan, _concepts_of(plan))
    if rates is not None:  # the concepts each unit is probed for, at the rates the short pass labeled
        minimum = options.config("probing").min_examples
        work = [dataclasses.replace(w, concepts=eligible_concepts(rates, w.rows, minimum)) for w in work]
    rows = {w.width: min(CALIBRATION_MAX_ROWS, max(x.rows for x in work if x.width == w.width)) for w in work}
    fit_rates = {
        width: measure_fit_rate(width, n, options.config("probing").ks, device, clock=clock)
        for width, n in rows.items()
    }
    return estimate_times(plan, forward_rates, fit_rates, work, rows, device, threads)
