"""The settings of an analysis run: the run-wide options, and one config per analysis.

:class:`RunOptions` holds what concerns the whole run (models, corpus, budget, devices, seed,
checkpoints, the analyses to run) and the run's statistical standards; each analysis owns its settings
in its own frozen config dataclass (``tl_moe/analysis/configs/``, or a plugin's ``config_class``),
reached as ``options.config("probing")``. Every default is written once, in the dataclass that owns
it; the ``tl-moe analyze`` command line and the README's options table are generated from the fields'
metadata (:func:`tl_moe.settings.option`)::

    options = RunOptions(max_tokens=20_000, probing=dict(ks=(1, 8)))
    options.config("probing").ks                   # (1, 8)
    RunOptions(probe_ks=(1, 8)) == options.replace(max_tokens=60_000)   # the flat names still work

The flat names a setting had before it moved to its analysis (``probe_ks``, ``driver_tokens``,
``reweight_draws``, ...: each config field's ``legacy``) stay accepted as keywords and flags, are read
as attributes (``options.probe_ks``), and are the keys of ``results.json``'s ``metadata.options``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_moe.analysis.configs.statistics import SEED_MAX, Statistics
from tl_moe.defaults import MAX_DEFAULT_WORKERS
from tl_moe.errors import InputError
from tl_moe.pipeline import catalog
from tl_moe.settings import (
    ModelDefault,
    check_keys,
    config_from,
    is_integer,
    is_real,
    name_list,
    option,
)

__all__ = [
    "SEED_MAX",
    "RunOptions",
    "add_option_arguments",
    "fit_defaults",
    "is_default",
    "option",
    "option_specs",
    "options_from_arguments",
]


#: The defaults of the run's statistical standards (written once, in :class:`Statistics`).
_STATISTICS = Statistics()

DTYPES = ("float32", "bfloat16", "float16")

_name_list = name_list
_is_integer = is_integer
_is_real = is_real


def _optional_model(text: str) -> str | None:
    return None if text.lower() == "none" else text


#: Integer run-wide options and their least accepted value.
_LEAST_INTEGERS = {
    "max_tokens": 1000,  # fewer: no meaningful statistics
    "batch_size": 1,
    "seq_len": 2,  # BOS and one token
    "n_token_groups": 1,
    "checkpoint_every": 1,
}


#: The placement strategies accelerate accepts as ``device_map`` (beside a device name or a dict).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_device_map(device_map: Any) -> None:
    """Refuse a ``--device-map`` accelerate cannot place with, in one line, before any model loads."""
    accepted = (
        f"accepted: {', '.join(repr(name) for name in DEVICE_MAP_STRATEGIES)}, a device name (cpu, cuda:0, "
        "...), a GPU index, or a dict of module name -> device"
    )
    if device_map is None or isinstance(device_map, Mapping):
        return
    if _is_integer(device_map) and device_map >= 0:  # a GPU index, as accelerate takes it
        return
    if isinstance(device_map, str) and device_map.strip() in DEVICE_MAP_STRATEGIES:
        return
    if isinstance(device_map, str) and device_map.strip():
        import torch

        try:
            torch.device(device_map.strip())
            return
        except (RuntimeError, TypeError, ValueError):
            pass
    raise InputError(f"--device-map {device_map!r} is not a placement; {accepted}.")


def _check_threads(threads: Any) -> None:
    """``--threads`` by the same rule as :func:`tl_moe.runtime.resolve_threads` (a positive integer, or
    None / 'auto' for the default), so the command line and the API refuse the same values."""
    from tl_moe.runtime import check_threads

    check_threads(threads)


def is_default(options: RunOptions, name: str) -> bool:
    """Whether the setting ``name`` (a flat name, e.g. ``probe_ks``) holds its default because the user
    did not give it."""
    return isinstance(getattr(options, name), ModelDefault)


@dataclass(frozen=True)
class RunOptions:
    """What configures a run as a whole (the run-wide flags of ``tl-moe analyze``), and each analysis's
    own config (:meth:`config`).

    A field here is run-wide: it concerns the models, the corpus, the pass, the machine or the report,
    or it is one of the run's **statistical standards** (``selection_fraction``, ``bootstrap_resamples``,
    ``min_documents``, ``permutations``, ``fdr``, and ``seed``), which every analysis applies alike. Those
    standards are one flat group here rather than a nested config per analysis on purpose: one run has one
    document split, one bootstrap count, one permutation count and one false-discovery rate, so that the
    intervals and tests its report sets side by side are comparable; a copy per analysis would let one
    report mix them, and a nested object would add a level to every read for no choice it adds.
    ``n_token_groups`` is run-wide too: the vocabulary clustering is an input of accumulators that
    several analyses share (domains, logit lens, specialization). A setting read by one analysis only is
    that analysis's (tests/test_layering.py holds this class to it).

    Keywords besides the fields: an analysis's name with its config or a dict of its fields
    (``probing=dict(ks=(1, 8))``), or a setting's flat legacy name (``probe_ks=(1, 8)``); anything else
    is refused in one line.
    """

    model: str = option(
        "toy/moe-16x2", "MoE to analyze: toy-zoo name, hub id or local directory", positional=True
    )
    dense_baseline: str | None = option(
        "toy/dense", "dense model to compare with, or 'none'", parse=_optional_model
    )
    corpus: str | None = option(
        None,
        "corpus: 'embedded' (default), 'embedded:v2' (larger; adds part-of-speech concepts), a saved "
        "datasets dir, a hub dataset id, or data files",
    )
    split: str = option("validation", "corpus split to analyze")
    out: Path = option(Path("tl_moe_report"), "output directory of the report", parse=Path)
    max_tokens: int = option(60_000, "tokens to stream through each model", parse=int)
    batch_size: int = option(16, "windows per forward pass", parse=int)
    seq_len: int = option(128, "tokens per window, BOS included", parse=int)
    device: str | None = option(None, "device to run on (default: the model's)")
    dtype: str = option("float32", "parameter dtype: float32, bfloat16 or float16")
    device_map: str | None = option(
        None, "spread a large model over devices with accelerate (e.g. 'auto'); hooked tensors are gathered"
    )
    analyses: tuple[str, ...] | None = option(
        None, "comma-separated analyses to run (default: every default analysis)", parse=_name_list
    )
    sparsity_family: bool = option(
        False, "also probe every toy MoE and plot F1 vs active ratio (adds the 'sparsity' analysis)"
    )
    seed: int = option(
        _STATISTICS.seed, "seed of every random choice (clustering, probe splits, baselines)", parse=int
    )
    n_token_groups: int = option(
        50,
        "spherical k-means clusters of the unembedding (shared by domains, logit lens, specialization)",
        parse=int,
    )
    selection_fraction: float = option(
        _STATISTICS.selection_fraction,
        "held-out protocol: fraction of documents that select the unit (the rest report it); the one "
        "document split of the run (probing, logit lens)",
        parse=float,
    )
    bootstrap_resamples: int = option(
        _STATISTICS.bootstrap_resamples, "document-level bootstrap resamples behind every interval", parse=int
    )
    min_documents: int = option(
        _STATISTICS.min_documents,
        "fewest documents on each side of the split and behind each interval "
        "(fewer: the interval is reported unavailable, with the reason)",
        parse=int,
    )
    fdr: float = option(
        _STATISTICS.fdr,
        "false-discovery rate of the Benjamini–Hochberg tests (domain experts, associations)",
        parse=float,
    )
    permutations: int = option(
        _STATISTICS.permutations,
        "document-level permutations behind each permutation p-value, except the held-out swap tests, which use the larger of this and 20,000",
        parse=int,
    )
    fresh: bool = option(False, "ignore (and overwrite) checkpoints of an earlier run in --out")
    keep_checkpoints: bool = option(False, "keep OUT/checkpoints after the run succeeds (default: removed)")
    threads: int | None = option(
        None,
        "CPU threads for torch and BLAS (default: TL_MOE_THREADS, OMP_NUM_THREADS, else the idle cores)",
        parse=int,
    )
    workers: int | None = option(
        None,
        "worker processes for probing's independent pieces (the held-out arms, the paper protocol; the "
        "sparsity family's arms); each gets threads / workers threads, at least 1; 1 computes them in the "
        f"main process (default: the thread budget, at most {MAX_DEFAULT_WORKERS}: 1 on a busy machine; 1 "
        "where processes cannot be forked)",
        parse=int,
    )
    checkpoint_every: int = option(20, "batches between checkpoints", parse=int, cli=False)
    progress: bool = option(True, "show progress bars", cli=False)
    #: Each analysis's config given for this run, by analysis name (the others take their defaults).
    configs: Mapping[str, Any] = field(default_factory=dict, metadata={"cli": False, "configs": True})

    def config(self, analysis: str) -> Any:
        """The config of the analysis ``analysis`` in this run: the one given, else its defaults."""
        config_class = catalog.config_class(analysis)
        if config_class is None:
            raise LookupError(f"the analysis {analysis!r} has no settings (its config_class is None).")
        given = self.configs.get(analysis)
        return given if given is not None else config_class()

    @property
    def statistics(self) -> Statistics:
        """The run's statistical standards as the analyses take them."""
        return Statistics(**{spec.name: getattr(self, spec.name) for spec in dataclasses.fields(Statistics)})

    def __eq__(self, other: object) -> bool:
        """Equal settings: the same run-wide values and the same config of every analysis (a config
        given at its defaults equals one left out)."""
        if not isinstance(other, RunOptions):
            return NotImplemented
        names = set(self.configs) | set(other.configs)
        return all(getattr(self, s.name) == getattr(other, s.name) for s in run_wide_fields()) and all(
            self.config(name) == other.config(name) for name in names
        )

    __hash__ = None  # type: ignore[assignment]  (the configs mapping is not hashable)

    def __getattr__(self, name: str) -> Any:
        """A setting by its flat legacy name (``options.probe_ks`` is ``options.config("probing").ks``)."""
        if name.startswith("_"):
            raise AttributeError(name)
        owner = legacy_names().get(name)
        if owner is None:
            raise AttributeError(f"{type(self).__name__} has no option {name!r}.")
        return getattr(self.config(owner[0]), owner[1])

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` applied (fields, flat legacy names, or ``NAME=dict(...)`` per analysis)."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        if isinstance(self.analyses, str):  # "probing" or "probing,drivers": names, as on the command line
            object.__setattr__(self, "analyses", _name_list(self.analyses))
        if isinstance(self.dense_baseline, str) and self.dense_baseline.strip().lower() == "none":
            object.__setattr__(self, "dense_baseline", None)  # the command line's spelling, from Python too
        self.check()

    def check(self) -> None:
        """Refuse settings no run can use, each with one line naming the option (before any pass).

        Runs when the options are made (and again by :func:`~tl_moe.pipeline.run`), so the command
        line, :func:`~tl_moe.pipeline.run` and :func:`~tl_moe.pipeline.analyze` share every rule; each
        analysis's config checks its own fields the same way.
        """
        self._check_names()
        self._check_integers()
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        if self.device_map is not None and self.device is not None:
            raise InputError("give --device or --device-map, not both.")
        _check_device_map(self.device_map)
        _check_threads(self.threads)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if self.workers is not None and (not _is_integer(self.workers) or not 1 <= self.workers <= cpus):
            raise InputError(
                f"--workers {self.workers!r} is not a worker count here; accepted: an integer from 1 to "
                f"{cpus} (the CPUs this process may use), or left out."
            )
        for config in self.configs.values():
            if hasattr(config, "check"):
                config.check()

    def _check_names(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError(
                f"--model must name a model (a toy name, a hub id or a local folder), got {self.model!r}."
            )
        if self.dense_baseline is not None and (
            not isinstance(self.dense_baseline, str) or not self.dense_baseline.strip()
        ):
            raise InputError(
                f"--dense-baseline must name a dense model or be None ('none'), got {self.dense_baseline!r}."
            )
        if self.analyses is not None and (
            not isinstance(self.analyses, (tuple, list))
            or not self.analyses
            or not all(isinstance(name, str) and name for name in self.analyses)
        ):
            raise InputError(
                f"--analyses takes one or more analysis names (a name, a comma list, or a list of names), "
                f"got {self.analyses!r}."
            )

    def _check_integers(self) -> None:
        for name, least in _LEAST_INTEGERS.items():
            value = getattr(self, name)
            if not _is_integer(value) or value < least:
                what = "a positive integer" if least == 1 else f"an integer of at least {least}"
                raise InputError(f"--{name.replace('_', '-')} must be {what}, got {value!r}.")
        self.statistics.check()  # the statistical standards' rules, written once in Statistics

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values (for the report's metadata): the run-wide fields, then every
        registered analysis's settings under their flat legacy names (``probe_ks``, ...), or
        ``NAME.FIELD`` for a field without one (a plugin's)."""
        values = {
            spec.name: str(value) if isinstance(value := getattr(self, spec.name), Path) else value
            for spec in run_wide_fields()
        }
        for key, (analysis, spec) in option_specs().items():
            values[key] = getattr(self.config(analysis), spec.name)
        return values


def run_wide_fields() -> list[dataclasses.Field]:
    """The run-wide fields of :class:`RunOptions` (every field but the per-analysis ``configs``)."""
    return [spec for spec in dataclasses.fields(RunOptions) if not spec.metadata.get("configs")]


def option_specs() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every registered analysis's settings: flat key (its legacy name, else ``NAME.FIELD``) ->
    (analysis name, config field), in registry order."""
    specs: dict[str, tuple[str, dataclasses.Field]] = {}
    for analysis in catalog.analysis_names():
        config_class = catalog.config_class(analysis)
        for spec in dataclasses.fields(config_class) if config_class is not None else ():
            specs[spec.metadata.get("legacy") or f"{analysis}.{spec.name}"] = (analysis, spec)
    return specs


def legacy_names() -> dict[str, tuple[str, str]]:
    """Flat legacy name (``probe_ks``) -> (analysis, field) (``("probing", "ks")``)."""
    return {
        spec.metadata["legacy"]: (analysis, spec.name)
        for analysis, spec in option_specs().values()
        if spec.metadata.get("legacy")
    }


def _route_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keywords of :class:`RunOptions` as its fields: per-analysis keywords (``probing=dict(...)``)
    and flat legacy names (``probe_ks=...``) merged into ``configs`` (legacy names last, over the
    dicts); anything else refused in one line naming it and what is accepted."""
    run_wide = {spec.name for spec in dataclasses.fields(RunOptions)}
    configs = dict(kwargs.pop("configs", None) or {})
    legacy = legacy_names()
    by_analysis: dict[str, Any] = {}
    flat: dict[str, dict[str, Any]] = {}
    for key in [key for key in kwargs if key not in run_wide]:
        value = kwargs.pop(key)
        if key in legacy:
            analysis, name = legacy[key]
            flat.setdefault(analysis, {})[name] = value
        elif key in catalog.TABLE and catalog.config_class(key) is not None:
            by_analysis[key] = value
        else:
            with_config = [
                name for name in catalog.analysis_names() if catalog.config_class(name) is not None
            ]
            raise InputError(
                f"there is no option {key!r}; accepted: the run-wide options ({', '.join(sorted(run_wide - {'configs'}))}), "
                f"an analysis with a dict of its settings ({', '.join(with_config)}, e.g. probing=dict(ks=(1, 8))), "
                "or a setting's flat name as in `tl-moe analyze --help` (e.g. probe_ks)."
            )
    for analysis, value in (*by_analysis.items(), *flat.items()):
        config_class = catalog.config_class(analysis)
        base = configs.get(analysis)
        if isinstance(value, Mapping) and base is not None:
            check_keys(config_class, value, analysis)
            configs[analysis] = dataclasses.replace(config_from(config_class, base, analysis), **value)
        else:
            configs[analysis] = config_from(config_class, value, analysis)
    kwargs["configs"] = {
        analysis: config_from(_config_class_of(analysis), value, analysis)
        for analysis, value in configs.items()
    }
    return kwargs


def _config_class_of(analysis: str) -> type:
    """The config class of ``analysis``, refusing in one line an analysis that takes no settings."""
    config_class = catalog.config_class(analysis)
    if config_class is None:
        raise InputError(
            f"the analysis {analysis!r} takes no settings; give settings of an analysis that has them."
        )
    return config_class


_dataclass_init = RunOptions.__init__


def _init(self: RunOptions, *args: Any, **kwargs: Any) -> None:
    _dataclass_init(self, *args, **_route_settings(kwargs))


_init.__doc__ = _dataclass_init.__doc__
RunOptions.__init__ = _init  # type: ignore[method-assign]


@dataclass(frozen=True)
class OptionLimit:
    """The largest value of an option that the run's models allow, and why (``"the 32 neurons of an expert"``)."""

    most: int
    because: str


def fit_defaults(options: RunOptions, limits: Mapping[str, OptionLimit]) -> tuple[RunOptions, dict[str, Any]]:
    """``options`` with each value the user left at its default brought within ``limits`` (option name
    -> the largest value the run's models allow), and what changed: option -> ``{"default", "used",
    "because"}``. Explicit values are left as given (the analyses' checks refuse them). ``probe_ks``
    keeps the default sizes up to the limit; ``n_drivers`` becomes the limit."""
    changes: dict[str, Any] = {}
    fitted: dict[str, Any] = {}
    for name, limit in limits.items():
        value = getattr(options, name)
        if not is_default(options, name) or limit.most < 1:
            continue
        if name == "probe_ks" and max(value) > limit.most:
            fitted[name] = tuple(k for k in value if k <= limit.most)
        elif name == "n_drivers" and value > limit.most:
            fitted[name] = limit.most
        else:
            continue
        shown = list(fitted[name]) if isinstance(fitted[name], tuple) else fitted[name]
        changes[name] = {
            "default": list(value) if isinstance(value, tuple) else int(value),
            "used": shown,
            "because": limit.because,
        }
    return (options.replace(**fitted) if fitted else options), changes


def fitted_defaults_note(changes: Mapping[str, Any]) -> str:
    """One line saying which defaults were fitted to the model, to what, and why."""
    parts = []
    for name, change in changes.items():
        flag = "--" + name.replace("_", "-")
        used = ",".join(map(str, change["used"])) if isinstance(change["used"], list) else change["used"]
        default = (
            ",".join(map(str, change["default"]))
            if isinstance(change["default"], list)
            else change["default"]
        )
        parts.append(f"{flag} {used} instead of the default {default} ({change['because']})")
    return "defaults fitted to the model: " + "; ".join(parts) + "; give the option to choose otherwise."


def _flags(analysis: str | None, spec: dataclasses.Field) -> list[str]:
    """The flags of a setting: a run-wide field's ``--name``; an analysis's ``--analysis.field`` and,
    as an alias, its legacy flag (``--probing.ks``, ``--probe-ks``)."""
    if analysis is None:
        return ["--" + spec.name.replace("_", "-")]
    namespaced = f"--{analysis.replace('_', '-')}.{spec.name.replace('_', '-')}"
    legacy = spec.metadata.get("legacy")
    return [namespaced] + (["--" + legacy.replace("_", "-")] if legacy else [])


def _dest(analysis: str | None, spec: dataclasses.Field) -> str:
    return spec.name if analysis is None else f"{analysis}.{spec.name}"


def _cli_specs() -> list[tuple[str | None, dataclasses.Field]]:
    """Every command-line setting: (None, run-wide field), then (analysis, config field)."""
    run_wide = [(None, spec) for spec in run_wide_fields() if spec.metadata.get("cli", True)]
    return run_wide + [
        (analysis, spec) for analysis, spec in option_specs().values() if spec.metadata.get("cli", True)
    ]


def _shown_default(default: Any) -> str:
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)


def add_option_arguments(parser: argparse.ArgumentParser, analysis_help: str = "") -> None:
    """Add one command-line argument per run-wide field and per field of each registered analysis's
    config (those under ``--ANALYSIS.FIELD``, with their legacy flag as an alias), with default and help."""
    groups: dict[str, Any] = {}
    for analysis, spec in _cli_specs():
        target = parser
        if analysis is not None:  # each analysis's settings under its own heading of --help
            if analysis not in groups:
                groups[analysis] = parser.add_argument_group(f"settings of the {analysis} analysis")
            target = groups[analysis]
        meta = spec.metadata
        help_text = meta["help"] + (f": {analysis_help}" if spec.name == "analyses" and analysis_help else "")
        if spec.default is not None and not isinstance(spec.default, bool):
            help_text += f" (default: {_shown_default(spec.default)})"
        dest = _dest(analysis, spec)
        if meta.get("positional"):
            target.add_argument(spec.name, nargs="?", default=argparse.SUPPRESS, help=help_text)
        elif isinstance(spec.default, bool):
            target.add_argument(
                *_flags(analysis, spec),
                dest=dest,
                action="store_true",
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            metavar = (meta.get("legacy") or spec.name).upper()
            target.add_argument(
                *_flags(analysis, spec), dest=dest, default=argparse.SUPPRESS, help=help_text, metavar=metavar
            )


def _parsed(spec: dataclasses.Field, raw: Any, flag: str) -> Any:
    parse = spec.metadata.get("parse")
    if parse is None or not isinstance(raw, str):
        return raw
    try:
        return parse(raw)
    except InputError:
        raise
    except ValueError:
        kind = {"int": "an integer", "Path": "a path"}.get(parse.__name__, f"a {parse.__name__} value")
        raise InputError(f"{flag} takes {kind}, got {raw!r}.") from None


def options_from_arguments(arguments: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` of parsed command-line arguments (unset flags keep their defaults)."""
    given = vars(arguments)
    values: dict[str, Any] = {}
    for analysis, spec in _cli_specs():
        dest = _dest(analysis, spec)
        if dest not in given:
            continue
        value = _parsed(spec, given[dest], _flags(analysis, spec)[-1])
        if analysis is None:
            values[spec.name] = value
        else:
            values.setdefault(analysis, {})[spec.name] = value
    return RunOptions(**values)


def options_table_markdown() -> str:
    """The README's table of ``tl-moe analyze`` options, generated from :class:`RunOptions` and the
    registered analyses' configs (an analysis's setting: its flag, then its namespaced spelling)."""
    rows = ["| flag | default | what it sets |", "|---|---|---|"]
    for analysis, spec in _cli_specs():
        flags = _flags(analysis, spec)
        if spec.metadata.get("positional"):
            shown_flags = f"`{spec.name}`"
        else:
            shown_flags = ", ".join(f"`{flag}`" for flag in reversed(flags))
        default = spec.default
        if isinstance(default, bool) or default is None:
            shown = "off" if default is False else "–"
        else:
            shown = f"`{_shown_default(default)}`"
        rows.append(f"| {shown_flags} | {shown} | {spec.metadata['help']} |")
    return "\n".join(rows)
