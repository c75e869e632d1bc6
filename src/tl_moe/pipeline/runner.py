"""The pipeline: analyses' needs -> ONE collection pass per model -> finalize -> report.

:func:`run` is what ``tl-moe analyze`` calls; :func:`analyze` is the notebook entry point on a model
already loaded. Both validate every input before the first pass starts.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tl_moe.collect import collect, remove_checkpoints
from tl_moe.collect.accumulator import Accumulator, state_nbytes
from tl_moe.data.concepts import TokenConceptLabeler, concepts_for_corpus
from tl_moe.errors import AnalysisUnavailable, InputError
from tl_moe.pipeline import catalog
from tl_moe.pipeline.checks import (
    check_model_source,
    check_output_dir,
    check_seq_len,
    resolve_device,
    warn_few_documents,
    warn_small_corpus,
)
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.machine import cpu_seconds, load_average, machine
from tl_moe.pipeline.needs import TokensByDomain
from tl_moe.pipeline.options import RunOptions, legacy_names, run_wide_fields
from tl_moe.pipeline.protocol import (
    AccumulatorSpec,
    Analysis,
    Inputs,
    OptionLimit,
    Result,
    UnavailableResult,
    section_intro,
)
from tl_moe.pipeline.registry import resolve
from tl_moe.report import Report, package_versions

__all__ = ["RunResults", "analyze", "run"]


@dataclass(frozen=True)
class RunResults(Mapping[str, Result]):
    """What a run produced; read-only mapping of analysis name -> its result (``results["domains"]``,
    ``"domains" in results``, ``list(results)``, ``results.items()``), in report order.

    Attributes:
        options: the settings it ran with.
        results: analysis name -> its :class:`~tl_moe.pipeline.protocol.Result`, in report order.
        report: path of the written ``index.html`` (None when no report was written).
        timings: seconds per phase (one entry per model pass, ``finalize NAME`` per analysis, ``finalize``,
            ``total``).
        tokens_by_domain: real tokens of each domain streamed through the analyzed model.
        findings: the one-line findings of every analysis.
        accumulator_bytes: model -> accumulator (its spec's repr) -> ``{"final", "peak"}`` bytes of
            its state after the pass (:func:`~tl_moe.collect.accumulator.state_nbytes`).
    """

    options: RunOptions
    results: dict[str, Result]
    report: Path | None
    timings: dict[str, float] = field(default_factory=dict)
    tokens_by_domain: dict[str, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    accumulator_bytes: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Result:
        if name not in self.results:
            raise KeyError(f"No result of analysis {name!r}; this run has {list(self.results)}.")
        return self.results[name]

    def __iter__(self) -> Iterator[str]:
        """The names of the analyses that ran, in report order."""
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __contains__(self, name: object) -> bool:
        return name in self.results


def _analysis_list(analyses: Any) -> tuple[str, ...] | list[Analysis] | None:
    """``analyses`` as given to :func:`run` / :func:`analyze`: None, a name or comma list (as on the
    command line), or a non-empty list of names or of :class:`Analysis` instances; else one line."""
    if analyses is None:
        return None
    if isinstance(analyses, str):
        analyses = [part.strip() for part in analyses.split(",") if part.strip()]
    accepted = (
        "accepted: an analysis name, a comma-separated string of names, or a non-empty list of names "
        "or Analysis instances"
    )
    if not isinstance(analyses, (list, tuple)):
        raise InputError(f"analyses={analyses!r:.60} (of type {type(analyses).__name__}); {accepted}.")
    if not analyses:
        raise InputError(f"analyses={analyses!r} names no analysis; {accepted}.")
    if all(isinstance(a, Analysis) for a in analyses):
        return list(analyses)
    if not all(isinstance(a, str) and a for a in analyses):
        raise InputError(f"analyses={list(analyses)!r:.80} mixes names with other values; {accepted}.")
    return tuple(analyses)


def _chosen_analyses(options: RunOptions, analyses: Sequence[str | Analysis] | str | None) -> list[Analysis]:
    analyses = _analysis_list(analyses)
    if isinstance(analyses, list):
        return analyses
    names = options.analyses if analyses is None else analyses
    if options.sparsity_family:
        names = (*(names if names is not None else _default_names()), "sparsity")
    return resolve(names)


def _default_names() -> tuple[str, ...]:
    from tl_moe.pipeline.registry import default_analyses

    return default_analyses()


def _pass_name(spec: AccumulatorSpec) -> str:
    """The accumulator's name inside its model's pass (and checkpoint): the spec's own repr."""
    return repr(spec)


def _checkpoint_dir(out: Path, model_name: str) -> Path:
    return out / "checkpoints" / re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)


def _needs_by_model(run_context: RunContext, analyses: list[Analysis]) -> dict[str, list[AccumulatorSpec]]:
    """The union of every analysis's needs, grouped by model (main model first), without repeats."""
    by_model: dict[str, list[AccumulatorSpec]] = {run_context.main: [TokensByDomain()]}
    for analysis in analyses:
        for need in analysis.needs(run_context):
            specs = by_model.setdefault(need.model, [])
            if need.spec not in specs:
                specs.append(need.spec)
    return by_model


def fitted_options(run_context: RunContext, analyses: list[Analysis]) -> tuple[RunOptions, dict[str, Any]]:
    """The run's options with the size options the user left at their defaults fitted to the models (the
    tightest limit of the chosen analyses, :meth:`Analysis.option_limits`), and what changed; no warning."""
    from tl_moe.pipeline.options import fit_defaults

    limits: dict[str, OptionLimit] = {}
    for analysis in analyses:
        for name, limit in analysis.option_limits(run_context).items():
            if name not in limits or limit.most < limits[name].most:
                limits[name] = limit
    return fit_defaults(run_context.options, limits)


def _fit_defaults(run_context: RunContext, analyses: list[Analysis]) -> dict[str, Any]:
    """Fit the size options the user left at their defaults to the models (the tightest limit of the
    chosen analyses, :meth:`Analysis.option_limits`), warn once in one line, and return what changed
    (recorded in ``results.json``'s metadata; the fitted values are the run's options)."""
    import warnings

    from tl_moe.pipeline.options import fitted_defaults_note

    run_context.options, changes = fitted_options(run_context, analyses)
    if changes and _rank() == 0:
        warnings.warn(fitted_defaults_note(changes), stacklevel=3)
    return changes


def _check_memory(run_context: RunContext, needs: dict[str, list[AccumulatorSpec]]) -> None:
    """Refuse, before any pass, a run whose accumulators and batch activations cannot fit."""
    from tl_moe.pipeline.memory import activation_bytes, available_memory

    options = run_context.options
    kept, peak, worst = 0, 0, ""
    for model_name, specs in needs.items():
        cfg = run_context.config(model_name)
        accumulators = sum(spec.estimate_bytes(cfg, run_context) for spec in specs)
        this_pass = kept + accumulators + activation_bytes(cfg, options, dtype_bytes=4)
        if this_pass > peak:
            peak, worst = this_pass, model_name
        kept += accumulators
    available = available_memory(options.device)
    if peak > available:
        raise InputError(
            f"the pass over {worst} needs about {peak / 2**30:.1f} GiB for accumulators and activations, but "
            f"{available / 2**30:.1f} GiB are free; lower --max-tokens, --batch-size or --probe-rows-per-class, or choose --probe-layers "
            "(`tl-moe plan` shows the breakdown)."
        )


def _collect_model(
    run_context: RunContext,
    model_name: str,
    specs: list[AccumulatorSpec],
    out: Path | None,
    memory: dict[str, dict[str, int]] | None = None,
    observers: dict[str, Accumulator] | None = None,
) -> dict[AccumulatorSpec, Any]:
    """One collection pass of ``model_name`` filling every spec's accumulator; spec -> finalized value.

    ``memory``, when given, receives each accumulator's state bytes after the pass (by pass name).
    ``observers``: accumulators fed after the specs' in each batch (e.g. a clock per batch), not returned.
    """
    options = run_context.options
    model = run_context.model(model_name)
    accumulators: dict[str, Accumulator] = {
        _pass_name(spec): spec.build(model, run_context) for spec in specs
    }
    accumulators.update(observers or {})
    labeler = TokenConceptLabeler(concepts_for_corpus(options.corpus))
    if out is not None:
        run_context.pass_identities[model_name] = _pass_identity(model, run_context, accumulators, labeler)
    finished = collect(
        model,
        run_context.dataset,
        accumulators,
        batch_size=options.batch_size,
        seq_len=options.seq_len,
        max_tokens=options.max_tokens,
        concept_labeler=labeler,
        checkpoint_dir=None if out is None else _checkpoint_dir(out, model_name),
        checkpoint_every=options.checkpoint_every,
        progress=options.progress,
        fresh=options.fresh,
        settings=_pass_settings(options),
    )
    if memory is not None:
        memory.update({name: state_nbytes(accumulator) for name, accumulator in accumulators.items()})
    return {spec: finished[_pass_name(spec)] for spec in specs}


def _pass_settings(options: RunOptions) -> dict[str, Any]:
    """The run's settings that shape a pass's input before it starts: the seed shuffles the corpus
    split (:attr:`RunContext.dataset`), so a resume with another ``--seed`` is refused naming it."""
    return {"seed": options.seed}


def _pass_identity(
    model: Any, run_context: RunContext, accumulators: dict[str, Accumulator], labeler: Any
) -> str:
    """Digest of the content fingerprint :func:`~tl_moe.collect.collect` keys this pass's checkpoint
    with (weights, corpus, tokenizer, pass arguments, accumulators): what later resumable steps of
    the analyses that read the pass are keyed by."""
    from tl_moe.collect.checkpoint import fingerprint, fingerprint_digest
    from tl_moe.collect.distributed import process_shard

    options = run_context.options
    shard = process_shard()
    fields = fingerprint(
        model=model,
        dataset=run_context.dataset,
        tokenizer=model.tokenizer,
        accumulators=accumulators,
        batch_size=options.batch_size,
        seq_len=options.seq_len,
        max_tokens=options.max_tokens,
        concept_labeler=labeler,
        shard=(shard.position, shard.count),
        settings=_pass_settings(options),
    )
    return fingerprint_digest(fields)


def run(
    options: RunOptions | None = None,
    *,
    analyses: Sequence[str | Analysis] | str | None = None,
    dataset: Any = None,
    models: dict[str, Any] | None = None,
    write_report: bool = True,
) -> RunResults:
    """Run the analyses: one collection pass per model, then every analysis, then the report.

    Args:
        options: the settings (default: :class:`RunOptions` defaults, i.e. ``tl-moe analyze``).
        analyses: analysis names or instances, or one name or comma-separated names as a string
            (default: ``options.analyses``, else the defaults).
        dataset: the corpus split to analyze (default: ``options.corpus`` / ``options.split``).
        models: already loaded models by name; any other model named in the options is loaded.
        write_report: write ``index.html``, ``results.json``, figures and tables to ``options.out``.

    Returns:
        :class:`RunResults` with every analysis's typed result.
    """
    started = time.perf_counter()
    load_at_start = load_average()
    options = options or RunOptions()
    options.check()
    created_group = _join_process_group_from_environment()
    if not created_group:
        return _run(options, analyses, dataset, models, write_report, started, load_at_start)
    import torch.distributed as dist

    try:
        results = _run(options, analyses, dataset, models, write_report, started, load_at_start)
        dist.barrier()  # rank 0 has written the report when every rank leaves
        return results
    finally:
        dist.destroy_process_group()


def _join_process_group_from_environment() -> bool:
    """Under ``torchrun`` (WORLD_SIZE > 1 in the environment) start the default process group if the
    caller has not; returns whether this call started it. Each rank then collects its shard of the
    corpus, the accumulators reduce exactly across ranks, and rank 0 alone finalizes and writes."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def run_layout(options: RunOptions, model: Any) -> dict[str, Any]:
    """Where and how the run ran: world size, each rank's node, local rank and device, dtype, device.

    Under ``torchrun`` every rank must call this (the layout is gathered from all of them); nodes are
    numbered in the order their first rank appears, so no host name is written.
    """
    import socket

    import torch.distributed as dist

    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = str(parameter.device) if parameter is not None else str(options.device)
    dtype = str(parameter.dtype).removeprefix("torch.") if parameter is not None else options.dtype
    entry = {
        "rank": _rank(),
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "host": socket.gethostname(),
        "device": device,
    }
    distributed = dist.is_available() and dist.is_initialized()
    entries = [entry]
    if distributed:
        entries = [None] * dist.get_world_size()
        dist.all_gather_object(entries, entry)
    nodes: dict[str, int] = {}
    for item in entries:
        item["node"] = nodes.setdefault(item.pop("host"), len(nodes))
    return {
        "world_size": len(entries),
        "nodes": len(nodes),
        "backend": dist.get_backend() if distributed else None,
        "ranks": entries,
        "device": device,
        "dtype": dtype,
        "device_requested": options.device,
        "dtype_requested": options.dtype,
    }


def check_inputs_before_loading(
    options: RunOptions, models: dict[str, Any] | None = None, *, write_report: bool = True
) -> None:
    """The inputs that need no weights, each refused in one line before anything loads (``tl-moe analyze``
    and ``tl-moe plan`` alike): the device, the model and dense baseline (not those handed in as
    ``models``), and the output folder when a report is written."""
    models = models or {}
    resolve_device(options.device)
    if options.model not in models:
        check_model_source(options.model, expect_moe=True)
    if options.dense_baseline is not None and options.dense_baseline not in models:
        check_model_source(options.dense_baseline, expect_moe=False, input_name="--dense-baseline")
    if write_report:
        check_output_dir(Path(options.out))


def _run(options, analyses, dataset, models, write_report, started, load_at_start) -> RunResults:
    chosen = _chosen_analyses(options, analyses)
    models = dict(models or {})
    check_inputs_before_loading(options, models, write_report=write_report)
    out = Path(options.out)
    concepts_for_corpus(options.corpus)  # '--corpus embedded:v2' needs the tagger of its concepts
    run_context = RunContext(options, dataset=dataset, models=models, analyses=[a.name for a in chosen])
    if write_report:  # a notebook run without a report writes nothing, checkpoints included
        run_context.checkpoint_dir = out / "checkpoints"
    if not run_context.domain_names:  # loads and checks the corpus before any model
        raise InputError(f"The corpus split {options.split!r} has no documents.")
    if not run_context.config(run_context.main).is_moe:
        raise InputError(
            f"{run_context.main} is a dense model; the analyses need an MoE (pass the dense one as --dense-baseline)."
        )
    check_seq_len(options.seq_len, run_context.model(run_context.main), batch_size=options.batch_size)
    run_context.check_tokenizer(run_context.main)  # a model handed in was not checked when loaded
    if _rank() == 0:
        warn_small_corpus(
            run_context.dataset,
            run_context.model(run_context.main).tokenizer,
            options.max_tokens,
            options.split,
        )
    fitted = _fit_defaults(run_context, chosen)
    options = run_context.options
    for analysis in chosen:
        analysis.check(run_context)
    if _rank() == 0:
        warn_few_documents(
            run_context.dataset,
            run_context.model(run_context.main).tokenizer,
            options,
            [a.name for a in chosen],
        )
    needs = _needs_by_model(run_context, chosen)
    if any(spec.uses_token_groups for specs in needs.values() for spec in specs):
        run_context.check_token_groups()
    _check_memory(run_context, needs)

    timings: dict[str, float] = {}
    collected: dict[tuple[str, AccumulatorSpec], Any] = {}
    memory: dict[str, dict[str, dict[str, int]]] = {}
    cpu = {"passes": -cpu_seconds()}
    for model_name, specs in needs.items():
        tic = time.perf_counter()
        checkpoints = out if write_report else None  # a notebook run without a report writes nothing
        memory[model_name] = {}
        passed = _collect_model(run_context, model_name, specs, checkpoints, memory[model_name])
        for spec, value in passed.items():
            collected[(model_name, spec)] = value
        timings[f"pass {model_name} (s)"] = round(time.perf_counter() - tic, 1)
        if model_name not in (run_context.main, run_context.dense):
            run_context.release(model_name)

    cpu["passes"] += cpu_seconds()
    runtime = run_layout(options, run_context.model(run_context.main))  # every rank takes part
    if _rank() != 0:  # every rank holds the reduced accumulators; rank 0 alone finalizes and writes
        return RunResults(options, {}, None, timings)

    tic, cpu["finalize"] = time.perf_counter(), -cpu_seconds()
    results: dict[str, Result] = {}
    for analysis in chosen:
        started_analysis = time.perf_counter()
        results[analysis.name] = _finalize(analysis, run_context, Inputs(collected, results), results)
        timings[f"finalize {analysis.name} (s)"] = round(time.perf_counter() - started_analysis, 1)
    timings["finalize (s)"] = round(time.perf_counter() - tic, 1)
    cpu["finalize"] += cpu_seconds()
    tokens = collected[(run_context.main, TokensByDomain())]
    tokens_by_domain = dict(zip(run_context.domain_names, (int(n) for n in tokens.tolist()), strict=True))

    findings = [finding for result in results.values() for finding in result.findings()]
    report_path = None
    if write_report:
        report = Report(f"tl_moe analysis of {options.model}", out)
        report.add_findings(findings)
        for analysis in chosen:
            section = report.add_section(
                analysis.title,
                key=analysis.name,
                intro=section_intro(analysis, options.statistics.min_documents),
            )
            _render(analysis, results[analysis.name], section, run_context)
        timings["total (s)"] = round(time.perf_counter() - started, 1)
        report.add_metadata(
            {
                "options": options.to_dict(),
                "analyses": [analysis.name for analysis in chosen],
                "moe_config": run_context.config(run_context.main).to_dict(),
                "timings": timings,
                # CPU time of the passes and of finalize, worker processes included (`cpu_seconds`).
                "cpu_seconds": {phase: round(value, 1) for phase, value in cpu.items()},
                "versions": package_versions(),
                "tokens_by_domain": tokens_by_domain,
                "accumulator_bytes": memory,
                "runtime": runtime,
                "workers": run_context.workers(),
                "machine": machine(None, load_at_start),
                "fitted_defaults": fitted,
            }
        )
        report_path = report.write()
        (out / "run.json").write_text(json.dumps({"timings": timings}, indent=2))
        if not options.keep_checkpoints:  # the report is self-contained; resume data is no longer needed
            remove_checkpoints(out / "checkpoints")
    else:
        timings["total (s)"] = round(time.perf_counter() - started, 1)
    return RunResults(options, results, report_path, timings, tokens_by_domain, findings, memory)


def _finalize(
    analysis: Analysis, run_context: RunContext, inputs: Inputs, results: dict[str, Result]
) -> Result:
    """The analysis's result, or an :class:`UnavailableResult` saying why it has none (it raised
    :class:`~tl_moe.errors.AnalysisUnavailable`, or an analysis it depends on is unavailable)."""
    for name in analysis.depends_on:
        if isinstance(results.get(name), UnavailableResult):
            return UnavailableResult(
                f"it needs the {name} analysis, which is unavailable: {results[name].reason}"
            )
    try:
        return analysis.finalize(run_context, inputs)
    except AnalysisUnavailable as error:
        return UnavailableResult(str(error))


def _render(analysis: Analysis, result: Result, section: Any, run_context: RunContext) -> None:
    """The analysis's own rendering, or one paragraph saying why it is unavailable."""
    if isinstance(result, UnavailableResult):
        section.add_text(f"**Unavailable in this run**: {result.reason}")
        section.add_metrics(result.metrics())
        return
    analysis.render(result, section, run_context)


def _check_setting_names(settings: Mapping[str, Any]) -> None:
    """Refuse, in one line before any model loads, a keyword of :func:`analyze` that is no setting."""
    accepted = (
        {spec.name for spec in run_wide_fields()}
        | set(legacy_names())
        | {name for name in catalog.analysis_names() if catalog.config_class(name) is not None}
    )
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise InputError(
            f"analyze() has no setting {', '.join(map(repr, unknown))}; accepted: the run-wide RunOptions "
            "fields (max_tokens, seq_len, seed, ...), an analysis with a dict of its settings "
            "(probing=dict(ks=(1, 8)), a plugin's name=dict(...)), or a setting's flat name, as in "
            "`tl-moe analyze --help`."
        )


def analyze(
    model: Any,
    *,
    analyses: Sequence[str] | str | None = None,
    dataset: Any = None,
    dense_baseline: Any = None,
    out: str | Path | None = None,
    **settings: Any,
) -> RunResults:
    """Run analyses on a model a notebook already holds (or a model name); returns typed results.

    ``tl_moe.pipeline.analyze(model, analyses=["domains"], max_tokens=20_000)`` runs one pass and
    returns ``results["domains"]``; give ``out=`` to also write the report there. ``settings`` are
    :class:`RunOptions` fields (``max_tokens``, ``seq_len``, ``seed``, ...), an analysis's settings as a
    dict of its config's fields (``probing=dict(ks=(1, 8))``, a plugin's ``my_plugin=dict(...)``) or a
    setting's flat name (``probe_ks=(1, 8)``); ``analyses`` takes a list of
    names, one name, or comma-separated names (``"domains,drivers"``). Every setting is checked, in
    one line each, before any model loads.
    """
    models: dict[str, Any] = {}

    def named(value: Any, default_name: str) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, torch.nn.Module):
            raise InputError(
                f"analyze() cannot analyze {value!r:.60} (of type {type(value).__name__}) as its "
                f"{default_name}; accepted: a model name (toy/..., a hub id, a local folder), a path, a "
                "TransformerBridge or a transformers PreTrainedModel."
            )
        name = str(getattr(getattr(value, "cfg", None), "model_name", None) or default_name)
        models[name] = value
        return name

    if model is None:
        raise InputError(
            "analyze() needs a model, got None; accepted: a model name (toy/..., a hub id, a local folder), "
            "a path, a TransformerBridge or a transformers PreTrainedModel."
        )
    _check_setting_names(settings)
    _analysis_list(analyses)  # refused here, before any model loads
    main = named(model, "model")
    dense = named(dense_baseline, "dense baseline")
    options = RunOptions(
        model=main,
        dense_baseline=dense,
        out=Path(out) if out is not None else Path("tl_moe_report"),
        **settings,
    )
    return run(options, analyses=analyses, dataset=dataset, models=models, write_report=out is not None)
