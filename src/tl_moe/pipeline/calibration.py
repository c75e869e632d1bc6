"""Wall-time estimates of a planned run, from throughputs measured on this machine.

``tl-moe plan`` first checks the run's inputs and memory (:mod:`tl_moe.pipeline.plan`); then, unless
``--no-calibration`` (``--no-calibrate``) is given, it loads the analyzed model (progress bars off) and:

- warns what ``tl-moe analyze`` warns before its first pass, from the same code (a small corpus, the
  fitted defaults, each analysis's checks — e.g. a split with fewer than 30 documents — and a stream of
  fewer documents than a chosen analysis's per-document gate needs at ``--min-documents``);
- runs a short collection pass of each pass's model, the untrained null included (at most
  :data:`CALIBRATION_BATCHES` batches and half the run's own stream, at its ``--batch-size`` x
  ``--seq-len``, ``--dtype`` and ``--device``, with the run's hooks, concept labels and accumulators,
  writing nothing), after one discarded forward of that model at the run's batch shape (its cold start),
  clocked after each batch (:class:`BatchClock`): its tokens per second, the median of the batches after
  the first (the warm-up), and the rest of the short pass (start-up, the first batch's extra, the
  accumulators' finalize) as its start-up seconds (:class:`PassRate`);
- when probing runs: counts the probe fits the probing analysis will make by running its two protocols'
  own code on the short pass's stored tokens, repeated to the run's length (new documents, the same
  labels and routing), with no fit made (:func:`counted_probing_fits`,
  :func:`~tl_moe.analysis.probe_work.count_probing_fits`): every decision — concepts kept, per-document
  balancing, uneven routing, the document split, ks above a unit's width — is the analysis's;
- when probing or the sparsity family runs: times a short
  :class:`~tl_moe.analysis.probing.KSparseProbe` fit, with the probing analysis's own parameters, on
  random activations of each unit width the run probes and as many tokens per fit as the counted fits
  probe on average, in fits per second (after a warm-up fit). Only fits the probe makes are counted,
  and every timed problem is planted to fit (:func:`measure_fit_rate`).

A pass is estimated as its start-up seconds + the tokens its stream reaches / its measured rate.
Probe fits are estimated as their expected number / the measured fit rate. Probing's expected number is
the count above; it follows the short pass's sample, so it moves with how the rest of the stream
differs from it. The sparsity family's other members, and a plan whose rates are injected (no short
pass), use a count from the shapes alone: the units of
:func:`~tl_moe.analysis.probe_work.probing_work` x probe sizes x the concepts whose rate in the short
pass's labels gives a unit's share of the tokens under balanced routing ``--min-examples`` positives and
negatives (the held-out protocol: ``--held-out-min-examples`` on its selection documents). Either way the
held-out protocol makes none when the run's documents are too few to split (decided by the same split
the protocol uses), and the summary also gives the upper bound (every unit seeing every token). The rest
of each analysis's finalize is named as not estimated. Every number is an estimate and the summary says
so, with its basis (the calibration's tokens, device, dtype and threads); :meth:`TimeEstimate.to_dict`
is the same as JSON (``tl-moe plan --json PATH``). The rates can be injected (:func:`calibrate`'s
``forward_rates`` and ``fit_rate``, :func:`estimate_times`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float

from tl_moe.analysis.probe_work import (
    ProbeWork,
    ProbingFits,
    count_probing_fits,
    eligible_concepts,
    family_work,
    probing_work,
    repeat_tokens,
    store_cap,
)
from tl_moe.collect.accumulator import Accumulator
from tl_moe.pipeline.context import UNTRAINED
from tl_moe.pipeline.plan import RunPlan

__all__ = [
    "CALIBRATION_BATCHES",
    "BatchClock",
    "PassRate",
    "ProbeWork",
    "RunDocuments",
    "TimeEstimate",
    "calibrate",
    "calibration_tokens",
    "concept_rates",
    "counted_probing_fits",
    "tally_work",
    "eligible_concepts",
    "eligible_work",
    "fit_rate_concepts",
    "rate_key",
    "estimate_times",
    "held_out_gate",
    "measure_fit_rate",
    "measure_pass",
    "warm_up",
    "planted_labels",
    "pass_rate",
    "probing_seconds",
    "probe_fit_counts",
    "quiet_loading",
    "relay_run_warnings",
    "run_documents",
]

#: Batches of each model's calibration pass: a warm-up batch, then the timed ones (their median rate).
CALIBRATION_BATCHES = 4
#: Units and concepts of the timed probe fit (each unit x concept x probe size is one fit).
CALIBRATION_UNITS, CALIBRATION_CONCEPTS = 4, 8
#: Positive rates of the timed fit's planted concepts (rare to common, as a corpus's concepts are).
CALIBRATION_RATES = (0.01, 0.3)
#: Most tokens per unit of the timed probe fit; a fit's cost is taken as proportional to its tokens above.
CALIBRATION_MAX_ROWS = 16384

Clock = Callable[[], float]


class BatchClock(Accumulator):
    """Reads a clock after each batch of a pass (fed after the pass's own accumulators, so a stamp
    marks the end of its batch's forward and updates) and counts the batch's real tokens.

    Attributes:
        stamps: the clock's reading after each batch, in order.
        tokens: each batch's real tokens (BOS included, padding excluded).
    """

    def __init__(self, clock: Clock = time.perf_counter, device: torch.device | None = None) -> None:
        self.clock, self.device = clock, device
        self.stamps: list[float] = []
        self.tokens: list[int] = []

    def hook_names(self, model: Any) -> list[str]:
        return []

    def update(self, acts: Any, meta: Any) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the batch's kernels finished before the stamp
        self.stamps.append(self.clock())
        self.tokens.append(meta.n_tokens)

    def merge(self, other: BatchClock) -> BatchClock:
        self._check_mergeable(other)
        self.stamps += other.stamps
        self.tokens += other.tokens
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"stamps": list(self.stamps), "tokens": list(self.tokens)}

    def load_state_dict(self, state: Any) -> None:
        self.stamps, self.tokens = list(state["stamps"]), list(state["tokens"])

    def finalize(self) -> tuple[list[float], list[int]]:
        return list(self.stamps), list(self.tokens)


@dataclass(frozen=True)
class PassRate:
    """A pass's measured cost: its tokens per second after a warm-up batch, and what it costs beyond
    its tokens (start-up: building its accumulators, planning its batches, the first batch's extra;
    and its accumulators' finalize).

    Attributes:
        tokens_per_second: real tokens per second of the batches after the first.
        overhead_seconds: the short pass's seconds less its tokens at that rate (at least 0).
    """

    tokens_per_second: float
    overhead_seconds: float = 0.0

    def seconds(self, tokens: int) -> float:
        """Estimated seconds of a pass of ``tokens`` real tokens."""
        return self.overhead_seconds + tokens / self.tokens_per_second


def pass_rate(start: float, end: float, stamps: list[float], tokens: list[int]) -> PassRate:
    """The :class:`PassRate` of a pass that began at ``start`` and ended at ``end`` (clock readings),
    whose batches of ``tokens`` real tokens ended at ``stamps``: the first batch is its warm-up
    (discarded), the rate is the median of the later batches' own rates (tokens over the seconds since
    the previous stamp), so one slow batch after it (a cold start that outlasts the first batch) does
    not set the rate; with one batch, the whole pass's rate."""
    import statistics

    total = max(end - start, 1e-9)
    if len(stamps) < 2:
        return PassRate(max(sum(tokens), 1) / total)
    rates = [n / max(b - a, 1e-9) for a, b, n in zip(stamps, stamps[1:], tokens[1:], strict=False)]
    rate = statistics.median(rates)
    return PassRate(rate, max(total - sum(tokens) / rate, 0.0))


def measure_pass(
    context: Any,
    name: str,
    specs: list[Any],
    clock: Clock = time.perf_counter,
    tokens: int | None = None,
) -> tuple[PassRate, dict[Any, Any]]:
    """The :class:`PassRate` of a short collection pass of model ``name`` filling ``specs``, as the
    run fills them (the corpus, the concept labels, the hooks and the accumulators), over the
    ``context``'s ``max_tokens`` (the model is loaded, and warmed up by one discarded forward, before the
    clock starts), timed after its first batch; and what the pass collected (spec -> value). ``tokens``: the pass's real tokens, used
    when no batch was clocked."""
    from tl_moe.pipeline.runner import _collect_model

    model = context.model(name)
    device = next(model.parameters()).device
    warm_up(model, context.options, device)
    batches = BatchClock(clock, device)
    start = clock()
    collected = _collect_model(context, name, specs, None, observers={"calibration clock": batches})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    end = clock()
    counted = batches.tokens or [context.options.max_tokens if tokens is None else tokens]
    return pass_rate(start, end, batches.stamps, counted), collected


def warm_up(model: Any, options: Any, device: torch.device) -> None:
    """One discarded forward of ``model`` on a batch of the run's shape (``--batch-size`` x
    ``--seq-len``, token 0) before its pass is timed, so that a model's cold start (first kernels,
    allocations) is in no timed batch even when the short pass has a single batch."""
    ids = torch.zeros(options.batch_size, options.seq_len, dtype=torch.long, device=device)
    with torch.no_grad():
        model(ids, attention_mask=torch.ones_like(ids), return_type=None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def concept_rates(collected: dict[Any, Any]) -> Float[torch.Tensor, " concept"] | None:
    """Each concept's positive rate over the tokens a calibration pass stored (None: none stored)."""
    for value in collected.values():
        labels = getattr(value, "labels", None)
        if isinstance(labels, torch.Tensor) and labels.ndim == 2 and len(labels):
            return labels.float().mean(0)
    return None


def measure_fit_rate(
    width: int,
    rows: int,
    ks: tuple[int, ...],
    device: str | torch.device | None = None,
    clock: Clock = time.perf_counter,
    rates: Float[torch.Tensor, " concept"] | None = None,
    params: dict[str, Any] | None = None,
) -> float:
    """Probe fits per second (one fit: a unit x a concept x a probe size, fitted) of a ``KSparseProbe`` —
    the probing analysis's own fit, with its keyword ``params``
    (:func:`~tl_moe.analysis.held_out_study.probe_parameters`) — on random activations ``[unit, rows,
    width]`` with concepts planted at positive ``rates`` (default: rare to common,
    :data:`CALIBRATION_RATES`), after one warm-up fit. Only the fits the probe makes count (its
    ``status_`` "ok" x its ``ks_``). So that every timed problem is one that fits, each concept gets
    exactly its rate's share of positive tokens, held within [min_examples, rows - min_examples], and
    ``rows`` is raised to twice ``min_examples`` when below it (the smallest problem the probe fits: the
    rate of a cell too small to fit at all is that of the smallest fittable problem)."""
    from tl_moe.analysis.probing import STATUS_OK, KSparseProbe

    params = params or {}
    least = int(params.get("min_examples", KSparseProbe().min_examples))
    rows = max(rows, 2 * least)
    if rates is None:
        rates = torch.linspace(*CALIBRATION_RATES, CALIBRATION_CONCEPTS)
    generator = torch.Generator().manual_seed(0)
    activations = torch.randn(CALIBRATION_UNITS, rows, width, generator=generator)
    labels = planted_labels(rates, rows, least, generator)
    activations[:, :, 0] += 2.0 * labels[:, 0].float()  # one neuron carries a concept: fits converge as usual
    activations = activations.to(device or "cpu")
    unit_mask = torch.ones(CALIBRATION_UNITS, rows, dtype=torch.bool)
    ks = tuple(k for k in ks if k <= width) or (1,)
    probe = KSparseProbe(**{**params, "ks": ks, "device": str(activations.device)})
    probe.fit(activations, labels, unit_mask)
    start = clock()
    probe.fit(activations, labels, unit_mask)
    seconds = clock() - start
    fits = int((probe.status_ == STATUS_OK).sum()) * len(probe.ks_)
    if not fits:  # planted to fit: never reached unless the probe's rule changes
        raise RuntimeError(f"the timed probe fit made no fit at {width} neurons x {rows} tokens")
    return fits / max(seconds, 1e-9)


def planted_labels(
    rates: Float[torch.Tensor, " concept"], rows: int, least: int, generator: torch.Generator
) -> Bool[torch.Tensor, "rows concept"]:
    """``[rows, concept]`` labels with exactly ``round(rate x rows)`` positives per concept (held within
    ``[least, rows - least]``, so each concept has ``least`` of each class) at random tokens."""
    positives = (rates.double() * rows).round().long().clamp(min=least, max=rows - least)
    order = torch.rand(len(rates), rows, generator=generator).argsort(dim=1)
    return (order < positives[:, None]).T.contiguous()


def fit_rate_concepts(
    rates: Float[torch.Tensor, " concept"], rows: int, min_examples: int
) -> Float[torch.Tensor, " picked"] | None:
    """At most :data:`CALIBRATION_CONCEPTS` of the run's concept ``rates`` to time fits at: evenly spaced
    quantiles of the rates a unit of ``rows`` tokens is fitted for (:func:`eligible_concepts`'s rule),
    so the timed fits cost what the run's fits cost on average (None: no concept is eligible)."""
    positives = rates * rows
    eligible = rates[(positives >= min_examples) & (rows - positives >= min_examples)].sort().values
    if not len(eligible):
        return None
    picks = torch.linspace(0, len(eligible) - 1, min(CALIBRATION_CONCEPTS, len(eligible))).round().long()
    return eligible[picks]


@dataclass(frozen=True)
class RunDocuments:
    """What a run's token stream reaches, from the corpus and the tokenizer alone (no model).

    Attributes:
        tokens: tokens the stream emits (BOS included), at most ``--max-tokens`` and at most the corpus's.
        doc_ids: the ids of the documents it reaches.
    """

    tokens: int
    doc_ids: tuple[int, ...]


def run_documents(dataset: Any, tokenizer: Any, options: Any) -> RunDocuments:
    """The tokens and documents of the run's collection stream (its batches, as the pass plans them)."""
    from tl_moe.collect.batching import plan_batches

    has_bos = int(tokenizer.bos_token_id is not None)
    tokens, docs = 0, set()
    for batch in plan_batches(
        dataset,
        tokenizer,
        batch_size=options.batch_size,
        seq_len=options.seq_len,
        max_tokens=options.max_tokens,
    ):
        for window in batch.windows:
            tokens += window.token_end - window.token_start + has_bos
            docs.add(int(window.document.doc_index))
    return RunDocuments(tokens, tuple(sorted(docs)))


def held_out_gate(doc_ids: tuple[int, ...], options: Any) -> str | None:
    """Why the held-out protocol will be unavailable on these documents (None: it runs): the same
    document split, and the same refusal, as the probing analysis's held-out protocol."""
    import numpy as np

    from tl_moe.analysis.splits import document_split
    from tl_moe.errors import InputError

    try:
        document_split(
            np.asarray(doc_ids, dtype=np.int64),
            (options.selection_fraction, 1 - options.selection_fraction),
            seed=options.seed,
            min_per_side=options.min_documents,
        )
    except InputError as error:
        return str(error)
    return None


def _store_cap(options: Any, concepts: int) -> int | None:
    """Most tokens the probing store keeps per unit under ``--probe-rows-per-class`` (None: every token)."""
    return store_cap(options.config("probing").rows_per_class, concepts)


def probe_fit_counts(plan: RunPlan, concepts: int, tokens: int | None = None) -> list[ProbeWork]:
    """Units probing (and the sparsity family, when chosen) fits per width and protocol (per concept
    and probe size), from the run's shapes, for a stream of ``tokens`` (default: ``--max-tokens``):
    :func:`~tl_moe.analysis.probe_work.probing_work` of the analyzed MoE (the untrained null when the
    run passes it, the dense baseline when given) and
    :func:`~tl_moe.analysis.probe_work.family_work` of each other member of the sparsity family.
    ``concepts`` bounds the stored rows with ``--probe-rows-per-class``."""
    options = plan.options
    tokens = options.max_tokens if tokens is None else tokens
    main = plan.models[0]
    names = [model.name for model in plan.models]
    dense = next((m.config for m in plan.models if m.name == options.dense_baseline), None)
    config = options.config("probing")
    layers = len(config.layers or main.config.sparse_layers)
    work = probing_work(
        main.config,
        layers,
        tokens,
        concepts,
        config.rows_per_class,
        dense_cfg=dense,
        untrained=UNTRAINED + main.name in names,
    )
    if "sparsity" in plan.analyses:
        cap = _store_cap(options, concepts)
        for member in plan.models[1:]:
            if member.name != options.dense_baseline and not member.name.startswith(UNTRAINED):
                work += family_work(member.config, tokens, cap, concepts, dense)
    return work


def eligible_work(
    work: list[ProbeWork],
    rates: Float[torch.Tensor, " concept"] | None,
    options: Any,
    held_out_runs: bool,
) -> list[ProbeWork]:
    """``work`` with the tokens each fit uses and the concepts each unit is expected to be fitted for,
    as the run decides them: the paper protocol's units need ``--min-examples`` positives and negatives
    among their tokens; the held-out protocol's are fitted on their selection documents (the share
    ``--selection-fraction`` of their tokens) and need ``--held-out-min-examples`` of each there; with
    ``held_out_runs`` False (too few documents to split) the held-out protocol fits nothing. Without
    concept ``rates`` (none measured) every concept is counted."""
    config = options.config("probing")
    fitted = []
    for w in work:
        rows = int(w.rows * options.selection_fraction) if w.held_out else w.rows
        least = config.held_out_min_examples if w.held_out else config.min_examples
        concepts = w.concepts if rates is None else eligible_concepts(rates, rows, least)
        if w.held_out and not held_out_runs:
            concepts = 0
        fitted.append(dataclasses.replace(w, rows=rows, concepts=min(concepts, w.concepts)))
    return fitted


@dataclass(frozen=True)
class TimeEstimate:
    """Estimated seconds of each pass and of the probe fits of each analysis's finalize, with the
    measured rates they rest on.

    Attributes:
        pass_seconds / forward_rates / overhead_seconds: per pass, its estimated seconds, its model's
            measured tokens per second (after a warm-up batch) and its measured start-up and finalize.
        fit_seconds / fits / fits_at_most / held_out_fits: per analysis that fits probes (probing, the
            sparsity family), its seconds, its expected probe fits, their upper bound (every unit sees
            every token of the run) and the held-out protocol's share of the expected fits.
        fit_rates: measured probe fits per second by (unit width, tokens per unit).
        held_out_unavailable: why the held-out protocol makes no fit (too few documents), or None.
        tokens: tokens the run's stream reaches, when the corpus holds fewer than ``--max-tokens``.
        pass_tokens: real tokens each pass streams.
        calibration_tokens: real tokens of each calibration pass (None: rates given, not measured).
        device / dtype / threads: where the rates were measured.
        counted: probing's expected fits were counted by its own protocols on the calibration's stored
            tokens (else from the run's shapes alone, at balanced routing).
        analyses: the run's analyses (the summary names the finalize work it does not estimate).
    """

    pass_seconds: dict[str, float]
    forward_rates: dict[str, float]
    fit_seconds: dict[str, float] = field(default_factory=dict)
    fits: dict[str, int] = field(default_factory=dict)
    fits_at_most: dict[str, int] = field(default_factory=dict)
    held_out_fits: dict[str, int] = field(default_factory=dict)
    fit_rates: dict[tuple[int, int], float] = field(default_factory=dict)
    held_out_unavailable: str | None = None
    tokens: int | None = None
    device: str = "cpu"
    threads: int = 1
    analyses: tuple[str, ...] = ()
    pass_tokens: dict[str, int] = field(default_factory=dict)
    overhead_seconds: dict[str, float] = field(default_factory=dict)
    calibration_tokens: int | None = None
    dtype: str = "float32"
    counted: bool = False

    def not_estimated(self) -> str:
        """What the total leaves out: every finalize step but the probe fits."""
        fitting = [a for a in self.analyses if a in self.fit_seconds]
        others = [a for a in self.analyses if a not in self.fit_seconds]
        parts = [f"{', '.join(fitting)} besides the probe fits (sampling, intervals)"] if fitting else []
        if others:
            parts.append(f"the finalize of {', '.join(others)}")
        return "not estimated: " + "; ".join(parts) if parts else "finalize not estimated"

    @property
    def probing_seconds(self) -> float | None:
        """Seconds of every probe fit (None: the run fits none)."""
        return sum(self.fit_seconds.values()) if self.fit_seconds else None

    @property
    def probe_fits(self) -> int:
        return sum(self.fits.values())

    @property
    def total_seconds(self) -> float:
        return sum(self.pass_seconds.values()) + (self.probing_seconds or 0.0)

    def count_basis(self) -> str:
        """How the expected probe fits were counted."""
        if self.counted:
            counted = (
                "probing's, counted by its own protocols on the calibration's stored tokens repeated to the "
                "run's length (no fit made), so they follow that sample"
            )
            if "sparsity" in self.fit_seconds:
                counted += "; the sparsity family's other members' from their shapes: " + _SHAPE_COUNT
            return counted
        return _SHAPE_COUNT

    def basis(self) -> str:
        """What the estimate rests on: the calibration's tokens, device, dtype and threads."""
        measured = (
            "rates given, not measured"
            if self.calibration_tokens is None
            else f"a calibration of {self.calibration_tokens:,} tokens per pass, the median batch after a warm-up forward and batch"
        )
        return f"{measured}, on {self.device} ({self.dtype}, {self.threads} CPU thread(s))"

    def pass_frame(self) -> pd.DataFrame:
        """One row per pass: its tokens, measured tokens/s, start-up and finalize s, estimated s."""
        return pd.DataFrame(
            [
                {
                    "pass": name,
                    "tokens": self.pass_tokens.get(name),
                    "tokens/s": self.forward_rates[name],
                    "start-up s": self.overhead_seconds.get(name, 0.0),
                    "estimated s": seconds,
                }
                for name, seconds in self.pass_seconds.items()
            ]
        )

    def summary(self) -> str:
        lines = [f"Estimated wall time (an estimate, from {self.basis()}):"]
        if self.tokens is not None:
            lines.append(
                f"  the corpus holds fewer tokens than --max-tokens: each pass streams {self.tokens:,}"
            )
        table = self.pass_frame().to_string(
            index=False,
            formatters={
                "tokens": lambda n: f"{n:,}",
                "tokens/s": lambda r: f"{r:,.0f}",
                "start-up s": lambda x: f"{x:.3g}",
                "estimated s": lambda x: f"{x:.3g}",
            },
        )
        lines += ["  " + line for line in table.splitlines()]
        rates = ", ".join(
            f"{rate:,.0f} fits/s at {width} neurons x {rows:,} tokens"
            for (width, rows), rate in self.fit_rates.items()
        )
        for analysis, seconds in self.fit_seconds.items():
            lines.append(
                f"  {analysis} finalize, probe fits: {_duration(seconds)} ({self.fits[analysis]:,} probe fits "
                f"expected, {self.held_out_fits[analysis]:,} of them held-out; at most "
                f"{self.fits_at_most[analysis]:,} if every unit saw every token; measured {rates})"
            )
        if self.fit_seconds:
            lines.append("  expected fits: " + self.count_basis())
            lines += [f"  caveat: {caveat}" for caveat in FIT_ESTIMATE_CAVEATS]
        if self.held_out_unavailable is not None:
            lines.append(f"  held-out protocol unavailable, so it makes 0 fits: {self.held_out_unavailable}")
        lines.append(f"  total of these: {_duration(self.total_seconds)} ({self.not_estimated()})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The estimate as JSON-ready values (seconds unrounded), with its basis."""
        return {
            "basis": {
                "calibration_tokens": self.calibration_tokens,
                "device": self.device,
                "dtype": self.dtype,
                "threads": self.threads,
                "fit_rates": [
                    {"width": width, "rows": rows, "fits_per_second": rate}
                    for (width, rows), rate in self.fit_rates.items()
                ],
            },
            "passes": self.pass_frame()
            .rename(
                columns={
                    "tokens/s": "tokens_per_second",
                    "start-up s": "overhead_seconds",
                    "estimated s": "estimated_seconds",
                }
            )
            .to_dict(orient="records"),
            "probe_fits": {
                analysis: {
                    "fits": self.fits[analysis],
                    "held_out_fits": self.held_out_fits[analysis],
                    "fits_at_most": self.fits_at_most[analysis],
                    "estimated_seconds": seconds,
                }
                for analysis, seconds in self.fit_seconds.items()
            },
            "fits_counted_by": self.count_basis() if self.fit_seconds else None,
            "fit_caveats": list(FIT_ESTIMATE_CAVEATS) if self.fit_seconds else [],
            "held_out_unavailable": self.held_out_unavailable,
            "total_seconds": self.total_seconds,
            "not_estimated": self.not_estimated(),
        }


#: What the probe fits' estimate is known to miss (printed beside it, and in the JSON): both measured on
#: the toy zoo on CPU, comparing the plan with the fits ``tl-moe analyze`` made with the same flags.
FIT_ESTIMATE_CAVEATS = (
    "the count can run low on a run much longer than the calibration, or at low --min-examples: the short "
    "sample, repeated, holds fewer of the rare concepts a whole run meets (toy/moe-4x2, --max-tokens 12000 "
    "--batch-size 4 --seq-len 64 --min-documents 3: 28,441 expected, 36,715 made)",
    "the time can be low by about 2-2.5x: the fits are timed on random activations in one call per width, "
    "not as the protocols call them (in chunks, with masks); in CPU time, toy/moe-8x2 --max-tokens 3000 "
    "--min-documents 3 --analyses probing, one thread: about 8,700 fits/s timed, 3,700 fits/s in the run",
    "the time is the fits' in one process at the run's threads: with --workers above 1 (the default where "
    "the thread budget allows) the held-out arms and the paper protocol run in several processes at once, "
    "so the wall time can be up to that many times shorter",
)

#: How fits are counted from the run's shapes alone (no stored tokens).
_SHAPE_COUNT = (
    "the concepts each unit's share of the tokens gives --min-examples positives and negatives "
    "(--held-out-min-examples on the selection documents), at the short pass's concept rates and balanced "
    "routing; the paper protocol's per-document balancing and uneven routing usually leave fewer"
)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"about {seconds:.3g} s"
    if seconds < 7200:
        return f"about {seconds / 60:.3g} min"
    return f"about {seconds / 3600:.3g} h"


def _as_rate(rate: float | PassRate) -> PassRate:
    return rate if isinstance(rate, PassRate) else PassRate(float(rate))


def probing_seconds(
    work: list[ProbeWork], fit_rates: dict[tuple[int, int], float], n_ks: int
) -> tuple[dict[str, float], dict[str, int], dict[str, int]]:
    """Per analysis: seconds, fits and held-out fits of ``work`` (each unit x concept x probe size is a
    fit) at ``fit_rates`` (``(width, rows) -> fits/s``, rows capped at :data:`CALIBRATION_MAX_ROWS`;
    a work of more rows is scaled up in proportion)."""
    seconds: dict[str, float] = {}
    fits: dict[str, int] = {}
    held_out: dict[str, int] = {}
    for w in work:
        n = w.fits(n_ks)
        key = rate_key(w)
        scale = w.rows / key[1] if w.rows > key[1] else 1.0
        cost = n * scale / fit_rates[key] if n else 0.0  # no fit: no rate was measured
        seconds[w.analysis] = seconds.get(w.analysis, 0.0) + cost
        fits[w.analysis] = fits.get(w.analysis, 0) + n
        held_out[w.analysis] = held_out.get(w.analysis, 0) + n * w.held_out
    return seconds, fits, held_out


def estimate_times(
    plan: RunPlan,
    forward_rates: dict[str, float | PassRate],
    fit_rates: dict[tuple[int, int], float] | None = None,
    probe_work: list[ProbeWork] | None = None,
    device: str = "cpu",
    threads: int = 1,
    *,
    bound_work: list[ProbeWork] | None = None,
    held_out_unavailable: str | None = None,
    tokens: int | None = None,
    calibration_tokens: int | None = None,
    counted: bool = False,
) -> TimeEstimate:
    """Seconds per pass (its measured start-up and finalize, plus its tokens — ``tokens`` when the corpus
    ends first — over its model's tokens per second; ``forward_rates``: name -> tokens/s or a
    :class:`PassRate`) and per analysis's probe fits (:func:`probing_seconds`); ``bound_work``: the
    same work at its upper bound of concepts; ``counted``: probing's work was counted by its own
    protocols (:func:`counted_probing_fits`). Every input rate may be injected, so the estimate is
    a function of the plan and the rates alone."""
    rates = {m.name: _as_rate(forward_rates[m.name]) for m in plan.models}
    streamed = {m.name: tokens or m.tokens for m in plan.models}
    short = tokens if tokens is not None and tokens < plan.options.max_tokens else None
    basis = dict(
        device=device,
        threads=threads,
        tokens=short,
        analyses=plan.analyses,
        pass_tokens=streamed,
        overhead_seconds={n: r.overhead_seconds for n, r in rates.items()},
        calibration_tokens=calibration_tokens,
        dtype=str(plan.options.dtype),
        counted=counted,
    )
    passes = {n: r.seconds(streamed[n]) for n, r in rates.items()}
    per_second = {n: r.tokens_per_second for n, r in rates.items()}
    if not fit_rates or not probe_work:
        return TimeEstimate(passes, per_second, **basis)
    ks = len(plan.options.config("probing").ks)
    seconds, fits, held_out = probing_seconds(probe_work, fit_rates, ks)
    at_most: dict[str, int] = {}
    for work in bound_work or probe_work:
        at_most[work.analysis] = at_most.get(work.analysis, 0) + work.fits(ks)
    return TimeEstimate(
        passes,
        per_second,
        seconds,
        fits,
        at_most,
        held_out,
        dict(fit_rates),
        held_out_unavailable,
        **basis,
    )


def rate_key(work: ProbeWork) -> tuple[int, int]:
    """The (width, rows) a work's fit rate is measured at: its own, rows capped at :data:`CALIBRATION_MAX_ROWS`."""
    return work.width, max(min(work.rows, CALIBRATION_MAX_ROWS), 1)


def _concepts_of(options: Any) -> int:
    from tl_moe.data.concepts import TokenConceptLabeler, concepts_for_corpus

    return len(TokenConceptLabeler(concepts_for_corpus(options.corpus)).concept_names)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Transformers' progress bars (weight loading, shard writing) off inside, as they were after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def relay_run_warnings(context: Any, chosen: list[Any]) -> Any:
    """Warn what ``tl-moe analyze`` warns before its first pass, with the same code: a corpus far smaller
    than ``--max-tokens``, the size defaults fitted to the models, each analysis's own checks (e.g. a
    split with fewer than ``MIN_DOCUMENTS`` documents, whose intervals will be unavailable) and a stream
    of fewer documents than the per-document gates of the chosen analyses need (``--min-documents``). Refusals
    are raised as analyze raises them. Returns the run's options as analyze fits them."""
    from tl_moe.pipeline.checks import warn_small_corpus
    from tl_moe.pipeline.checks.corpus import warn_few_documents
    from tl_moe.pipeline.runner import _fit_defaults

    options = context.options
    tokenizer = context.model(context.main).tokenizer
    warn_small_corpus(context.dataset, tokenizer, options.max_tokens, options.split)
    _fit_defaults(context, chosen)
    for analysis in chosen:
        analysis.check(context)
    warn_few_documents(context.dataset, tokenizer, context.options, [a.name for a in chosen])
    return context.options


def calibration_tokens(options: Any, run_tokens: int) -> int:
    """Tokens of each calibration pass: ``CALIBRATION_BATCHES`` batches, at most half the run's own
    stream (so the plan costs less than the passes it plans), and at least the fewest a run accepts."""
    from tl_moe.pipeline.options import _LEAST_INTEGERS

    batches = CALIBRATION_BATCHES * options.batch_size * options.seq_len
    return max(min(batches, run_tokens // 2), _LEAST_INTEGERS["max_tokens"])


def _measure_fit_rates(
    work: list[ProbeWork], rates: Any, options: Any, device: str, clock: Clock
) -> dict[tuple[int, int], float]:
    """Fits per second at each (width, rows) of the work that fits anything: for counted work (rows:
    the tokens a fit probes) on concepts half positive, so each problem probes its rows; else with
    concepts planted at the run's own rates (:func:`fit_rate_concepts`) when the short pass labeled any."""
    from tl_moe.analysis.held_out_study import probe_parameters

    config = options.config("probing")
    params = probe_parameters(config, options.seed)
    probed = {rate_key(w) for w in work if w.fits(1) and w.rows_probed}
    fit_rates = {}
    for width, rows in sorted({rate_key(w) for w in work if w.fits(1)}):
        if (width, rows) in probed:
            picked = torch.full((CALIBRATION_CONCEPTS,), 0.5)
        else:
            picked = None if rates is None else fit_rate_concepts(rates, rows, config.min_examples)
        fit_rates[(width, rows)] = measure_fit_rate(
            width, rows, config.ks, device, clock=clock, rates=picked, params=params
        )
    return fit_rates


def calibrate(
    plan: RunPlan,
    clock: Clock = time.perf_counter,
    *,
    forward_rates: dict[str, float | PassRate] | None = None,
    fit_rate: float | None = None,
) -> TimeEstimate:
    """Relay analyze's pre-pass warnings, run a short collection pass of each model of ``plan``
    (:func:`calibration_tokens`, as the run collects, the untrained null included), time probe fits
    per unit width and rows when the run fits probes, and estimate the run's wall time from those rates.

    ``forward_rates`` (pass name -> tokens/s or :class:`PassRate`) and ``fit_rate`` (fits/s at every
    width) replace the measured rates, so the estimate is deterministic: given forward rates, no
    short pass runs and every concept counts as probed (no concept rates are measured)."""
    from tl_moe.pipeline.context import RunContext
    from tl_moe.pipeline.runner import _chosen_analyses
    from tl_moe.runtime import set_threads

    threads = set_threads(plan.options.threads)
    with quiet_loading():
        context = RunContext(plan.options.replace(progress=False))
        options = relay_run_warnings(context, _chosen_analyses(context.options, None))
        tokenizer = context.model(context.main).tokenizer
        stream = run_documents(context.dataset, tokenizer, options)
        short = options.replace(max_tokens=calibration_tokens(options, stream.tokens))
        short_tokens = run_documents(context.dataset, tokenizer, short).tokens
        device = str(next(context.model(context.main).parameters()).device)
        rates, collected, measured = None, None, forward_rates is None
        if measured:
            forward_rates, rates, collected = _measure_passes(context, short, short_tokens, clock)
    plan = dataclasses.replace(plan, options=options)
    basis = dict(tokens=stream.tokens, calibration_tokens=short_tokens if measured else None)
    if not {"probing", "sparsity"} & set(plan.analyses):
        return estimate_times(plan, forward_rates, device=device, threads=threads, **basis)
    concepts = _concepts_of(options)
    work = probe_fit_counts(plan, concepts, stream.tokens)
    whole = min(stream.tokens, _store_cap(options, concepts) or stream.tokens)
    bound = [dataclasses.replace(w, rows=whole) for w in work]  # every unit sees every token
    gate = held_out_gate(stream.doc_ids, options)
    work = eligible_work(work, rates, options, held_out_runs=gate is None)
    bound = eligible_work(bound, rates, options, held_out_runs=gate is None)
    if collected is not None and "probing" in plan.analyses:
        with quiet_loading():
            counted = counted_probing_fits(context, collected, stream.tokens / short_tokens, gate)
        work = tally_work(counted) + [w for w in work if w.analysis != "probing"]
        gate = gate or counted.held_out_unavailable
        basis["counted"] = True
    if fit_rate is None:
        fit_rates = _measure_fit_rates(work, rates, options, device, clock)
    else:
        fit_rates = {rate_key(w): fit_rate for w in work}
    return estimate_times(
        plan,
        forward_rates,
        fit_rates,
        work,
        device,
        threads,
        bound_work=bound,
        held_out_unavailable=gate,
        **basis,
    )


def counted_probing_fits(
    context: Any, collected: dict[str, dict[Any, Any]], scale: float, gate: str | None
) -> ProbingFits:
    """The probing analysis's fits in the run, counted by its own code (:func:`count_probing_fits`) on
    the calibration pass's stored tokens repeated to the run's length (``scale``: the run's stream
    over the calibration's, :func:`repeat_tokens`); none held-out when the run's own documents are too
    few to split (``gate``: why)."""
    from tl_moe.pipeline.probing_run import probing_protocols
    from tl_moe.pipeline.registry import get_analysis

    section = get_analysis("probing")()
    stored = section.stored(
        context, {need: collected[need.model][need.spec] for need in section.needs(context)}
    )
    moe, dense, untrained = (
        None if tokens is None else repeat_tokens(tokens, round(len(tokens.token_index) * scale))
        for tokens in stored
    )
    paper, study = probing_protocols(context)
    if gate is not None:
        study = _Unavailable(gate)
    return count_probing_fits(paper, study, moe, dense, untrained)


@dataclass(frozen=True)
class _Unavailable:
    """A held-out study that refuses with ``reason`` (the run's documents are too few to split)."""

    reason: str

    def arms(self, *args: Any, **kwargs: Any) -> Any:
        from tl_moe.errors import InputError

        raise InputError(self.reason)


def tally_work(counted: ProbingFits) -> list[ProbeWork]:
    """The probing analysis's counted fits as :class:`ProbeWork` per unit width and protocol: its
    problems (a unit x a concept) with the probe sizes fitted, ``rows`` the mean tokens a problem probes."""
    grouped: dict[tuple[int, bool, int], list[int]] = {}
    for held_out, tally in ((False, counted.paper), (True, counted.held_out)):
        for width, problems, tokens, ks in tally.calls:
            totals = grouped.setdefault((width, held_out, ks), [0, 0])
            totals[0] += problems
            totals[1] += tokens
    return [
        ProbeWork(width, problems, max(round(tokens / problems), 1), 1, held_out, ks=ks, rows_probed=True)
        for (width, held_out, ks), (problems, tokens) in sorted(grouped.items())
        if problems
    ]


def _measure_passes(
    context: Any, short: Any, short_tokens: int, clock: Clock
) -> tuple[dict[str, PassRate], Float[torch.Tensor, " concept"] | None, dict[str, dict[Any, Any]]]:
    """A short pass of each model the run passes (options ``short``), as the run collects and releases
    them: each pass's :class:`PassRate`, the concept rates the first labeled pass stored, and what each
    pass collected (model -> spec -> value)."""
    from tl_moe.pipeline.context import RunContext
    from tl_moe.pipeline.runner import _chosen_analyses, _needs_by_model

    short_context = RunContext(
        short, dataset=context.dataset, models={context.main: context.model(context.main)}
    )
    needs = _needs_by_model(short_context, _chosen_analyses(short, None))
    forward_rates: dict[str, PassRate] = {}
    rates = None
    collected_by_model: dict[str, dict[Any, Any]] = {}
    for name, specs in needs.items():
        forward_rates[name], collected = measure_pass(
            short_context, name, specs, clock=clock, tokens=short_tokens
        )
        collected_by_model[name] = collected
        rates = concept_rates(collected) if rates is None else rates
        if name not in (short_context.main, short_context.dense):  # as the run releases them
            short_context.release(name)
    return forward_rates, rates, collected_by_model
