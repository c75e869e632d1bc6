"""The settings of an analysis run: one dataclass, the single source of every default.

The ``tl-moe analyze`` command line is built from the fields of :class:`RunOptions` (their help
text, flag names and parsers live in the field metadata), and the Python API takes the same
object, so a default is written exactly once::

    options = RunOptions(max_tokens=20_000, analyses=("domains", "specialization"))
    results = tl_moe.pipeline.run(options)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_moe.analysis.stats import MIN_DOCUMENTS
from tl_moe.defaults import MIN_EXAMPLES
from tl_moe.errors import InputError

__all__ = ["RunOptions", "add_option_arguments", "fit_defaults", "is_default", "options_from_arguments"]


DTYPES = ("float32", "bfloat16", "float16")
#: Default of ``--probe-rows-per-class`` (see docs/METHODS.md, "Bounded probing store").
PROBE_ROWS_PER_CLASS = 65_536
#: Default of ``--explain-causal-windows``: one window per document, enough to reach every document of
#: the embedded corpus's ``causal`` split (56 of the validation split), so that the causal checks'
#: document bootstrap has at least 30 documents (docs/EXPLAIN.md, "Causal checks").
EXPLAIN_CAUSAL_WINDOWS = 64


def _int_list(flag: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise InputError(f"{flag} takes comma-separated integers (e.g. 1,3), got {text!r}.") from None
        if not values:
            raise InputError(f"{flag} needs at least one integer, got {text!r}.")
        return values

    return parse


def _float_list(flag: str) -> Callable[[str], tuple[float, ...]]:
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise InputError(f"{flag} takes comma-separated numbers (e.g. 0.5,2), got {text!r}.") from None
        if not values:
            raise InputError(f"{flag} needs at least one number, got {text!r}.")
        return values

    return parse


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _optional_model(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


#: Largest ``--seed``: every seed (and the seed + 1, + 2 of derived streams) fits numpy's and torch's seeds.
SEED_MAX = 2**31 - 1

#: Integer options and their least accepted value.
_LEAST_INTEGERS = {
    "max_tokens": 1000,  # fewer: no meaningful statistics
    "batch_size": 1,
    "seq_len": 2,  # BOS and one token
    "n_token_groups": 1,
    "min_examples": 1,
    "held_out_min_examples": 1,
    "bootstrap_resamples": 1,
    "min_documents": 2,
    "permutations": 1,
    "min_expert_tokens": 1,
    "driver_tokens": 1,
    "n_drivers": 1,
    "explain_concurrency": 1,
    "explain_retries": 0,
    "explain_causal_windows": 0,
    "reweight_tokens": 1,
    "reweight_draws": 1,
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


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


class ModelDefault:
    """Marks an option value the user left at its default (see :func:`is_default`): a run fits such a
    value to a model too small for it (fewer probe sizes, fewer drivers) and says so; a value given
    explicitly, even an equal one, is never changed (a model too small for it is refused)."""


class _DefaultInt(int, ModelDefault):
    pass


class _DefaultInts(tuple, ModelDefault):
    pass


def is_default(options: RunOptions, name: str) -> bool:
    """Whether the option ``name`` holds its default because the user did not give it."""
    return isinstance(getattr(options, name), ModelDefault)


#: Default of ``--probe-ks``: fitted to the neurons of a model's experts when left unset.
PROBE_KS = _DefaultInts((1, 2, 4, 8, 16, 32, 64))
#: Default of ``--n-drivers``: fitted to half a model's experts when left unset.
N_DRIVERS = _DefaultInt(8)


def option(default: Any, help: str, *, parse: Callable[[str], Any] | None = None, cli: bool = True, **extra):
    """A :class:`RunOptions` field: its default, its ``--help`` text, and how the CLI parses it."""
    return field(default=default, metadata={"help": help, "parse": parse, "cli": cli, **extra})


@dataclass(frozen=True)
class RunOptions:
    """Everything that configures a run of the analyses (the flags of ``tl-moe analyze``)."""

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
    seed: int = option(0, "seed of every random choice (clustering, probe splits, baselines)", parse=int)
    n_token_groups: int = option(50, "spherical k-means clusters of the unembedding", parse=int)
    probe_ks: tuple[int, ...] = option(
        PROBE_KS,
        "neurons per probe (comma-separated); left unset, sizes above an expert's neurons are dropped",
        parse=_int_list("--probe-ks"),
    )
    min_examples: int = option(
        MIN_EXAMPLES, "paper protocol: least positives / negatives a unit needs to be probed", parse=int
    )
    held_out_min_examples: int = option(
        MIN_EXAMPLES,
        "held-out protocol: least positives / negatives a unit needs on each side of the document split",
        parse=int,
    )
    selection_fraction: float = option(
        0.5, "held-out protocol: fraction of documents that select the unit (the rest report it)", parse=float
    )
    bootstrap_resamples: int = option(
        2000, "document-level bootstrap resamples behind every interval", parse=int
    )
    min_documents: int = option(
        MIN_DOCUMENTS,
        "held-out probing: fewest documents on each side of the split and behind each interval "
        "(fewer: the interval is reported unavailable, with the reason)",
        parse=int,
    )
    fdr: float = option(
        0.05, "false-discovery rate of the Benjamini–Hochberg tests (domain experts)", parse=float
    )
    permutations: int = option(
        999,
        "document-level permutations behind each permutation p-value, except the held-out swap tests, which use the larger of this and 20,000",
        parse=int,
    )
    min_expert_tokens: int = option(
        50, "experts with fewer routed tokens are listed, not averaged (specialization, domains)", parse=int
    )
    skip_untrained_null: bool = option(
        False, "leave out the untrained-model null of probing (saves one collection pass)"
    )
    probe_layers: tuple[int, ...] | None = option(
        None,
        "comma-separated sparse layers to probe (default: all; bounds memory)",
        parse=_int_list("--probe-layers"),
    )
    probe_rows_per_class: int | None = option(
        PROBE_ROWS_PER_CLASS,
        "probing store: tokens kept per (unit, concept, class, document side), so its memory does not grow "
        "with --max-tokens; 'none' keeps every token",
        parse=_optional_int,
    )
    sparsity_family: bool = option(
        False, "also probe every toy MoE and plot F1 vs active ratio (adds the 'sparsity' analysis)"
    )
    driver_tokens: int = option(
        20_000, "tokens on which the drivers analysis runs its edited forwards", parse=int
    )
    n_drivers: int = option(
        N_DRIVERS,
        "driver experts reported (largest removal effects on the selection half); left unset, at most "
        "half the experts",
        parse=int,
    )
    fresh: bool = option(False, "ignore (and overwrite) checkpoints of an earlier run in --out")
    keep_checkpoints: bool = option(False, "keep OUT/checkpoints after the run succeeds (default: removed)")
    threads: int | None = option(
        None,
        "CPU threads for torch and BLAS (default: TL_MOE_THREADS, OMP_NUM_THREADS, else the idle cores)",
        parse=int,
    )
    explainer: str = option(
        "offline", "labeler of the 'explain' analysis: offline (concept dissection), openai:URL or local:PATH"
    )
    explain_model: str | None = option(
        None, "model name at an openai: endpoint (default: TL_MOE_OPENAI_MODEL, else the server's first)"
    )
    explain_scorers: tuple[str, ...] | None = option(
        None,
        "comma-separated scorers of the labels: concept, detection, fuzzing, intruder "
        "(default: concept offline, detection with a language model)",
        parse=_name_list,
    )
    explain_concurrency: int = option(
        8, "requests in flight at once when labeling with a language model", parse=int
    )
    explain_timeout: float = option(60.0, "seconds per language-model request attempt", parse=float)
    explain_retries: int = option(
        4, "retries of a rate-limited or failed request (capped exponential backoff)", parse=int
    )
    explain_causal_windows: int = option(
        EXPLAIN_CAUSAL_WINDOWS,
        "windows (one per document) of held-out documents for the causal checks of the labels "
        "(0: no causal checks)",
        parse=int,
    )
    reweight_tokens: int = option(
        6000,
        "re-weighting / steering: tokens of each domain on each document half (selection, held out)",
        parse=int,
    )
    reweight_factors: tuple[float, ...] = option(
        (0.5, 0.8, 1.25, 1.5, 2.0),
        "re-weighting: mixing-weight factors tried on the selection half (comma-separated)",
        parse=_float_list("--reweight-factors"),
    )
    reweight_draws: int = option(
        20, "re-weighting / steering: random routing-rate-matched expert sets behind each control", parse=int
    )
    steer_contrast: tuple[str, ...] | None = option(
        None,
        "steering: two domains to contrast (A,B), or two languages of one domain (DOMAIN:A,B); "
        "default: the two domains with the most documents among those whose held-out half can reach 30 (fewer than two such: the two largest, reported as untestable)",
        parse=_name_list,
    )
    checkpoint_every: int = option(20, "batches between checkpoints", parse=int, cli=False)
    progress: bool = option(True, "show progress bars", cli=False)

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        if isinstance(self.analyses, str):  # "probing" or "probing,drivers": names, as on the command line
            object.__setattr__(self, "analyses", _name_list(self.analyses))
        self.check()

    def check(self) -> None:
        """Refuse settings no run can use, each with one line naming the option (before any pass).

        Runs when the options are made (and again by :func:`~tl_moe.pipeline.run`), so the command
        line, :func:`~tl_moe.pipeline.run` and :func:`~tl_moe.pipeline.analyze` share every rule.
        """
        self._check_names()
        self._check_integers()
        self._check_fractions()
        self._check_probe_ks()
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        if self.device_map is not None and self.device is not None:
            raise InputError("give --device or --device-map, not both.")
        _check_device_map(self.device_map)
        _check_threads(self.threads)
        self._check_reweight_factors()
        if self.steer_contrast is not None and (
            len(self.steer_contrast) != 2 or len(set(self.steer_contrast)) != 2
        ):
            raise InputError(
                f"--steer-contrast takes two different names (A,B or DOMAIN:A,B), got {self.steer_contrast!r}."
            )
        rows = self.probe_rows_per_class
        needed = max(self.min_examples, self.held_out_min_examples)
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < needed):
            raise InputError(
                f"--probe-rows-per-class must be 'none' or an integer of at least --min-examples and "
                f"--held-out-min-examples ({needed}), got {rows!r}."
            )
        if self.probe_layers is not None and not self.probe_layers:
            raise InputError("--probe-layers needs at least one layer.")

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
        if not _is_integer(self.seed) or not 0 <= self.seed <= SEED_MAX:
            raise InputError(f"--seed must be an integer from 0 to {SEED_MAX}, got {self.seed!r}.")

    def _check_fractions(self) -> None:
        for name in ("fdr", "selection_fraction"):
            value = getattr(self, name)
            if not _is_real(value) or not 0 < value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a number in (0, 1), got {value!r}.")
        if not _is_real(self.explain_timeout) or not 0 < self.explain_timeout < math.inf:
            raise InputError(
                f"--explain-timeout must be a positive number of seconds, got {self.explain_timeout!r}."
            )

    def _check_probe_ks(self) -> None:
        ks = self.probe_ks
        if not isinstance(ks, (tuple, list)) or not ks or not all(_is_integer(k) and k >= 1 for k in ks):
            raise InputError(f"--probe-ks must be one or more positive integers (e.g. 1,2,4), got {ks!r}.")

    def _check_reweight_factors(self) -> None:
        factors = self.reweight_factors
        accepted = "accepted: positive numbers other than 1 (1 leaves the weights unchanged), each once"
        if not isinstance(factors, (tuple, list)) or not factors:
            raise InputError(f"--reweight-factors needs at least one factor, got {factors!r}; {accepted}.")
        bad = [f for f in factors if not _is_real(f) or not 0 < f < math.inf or f == 1]
        if bad:
            raise InputError(f"--reweight-factors {bad} are not usable factors; {accepted}.")
        repeated = sorted({f for f in factors if list(factors).count(f) > 1})
        if repeated:
            raise InputError(f"--reweight-factors repeats {repeated}; {accepted}.")

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values (for the report's metadata)."""
        return {
            f.name: str(value) if isinstance(value := getattr(self, f.name), Path) else value
            for f in dataclasses.fields(self)
        }


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


def add_option_arguments(parser: argparse.ArgumentParser, analysis_help: str = "") -> None:
    """Add one command-line argument per :class:`RunOptions` field, with its default and help."""
    for spec in dataclasses.fields(RunOptions):
        meta = spec.metadata
        if not meta.get("cli", True):
            continue
        flag = "--" + spec.name.replace("_", "-")
        help_text = meta["help"] + (f": {analysis_help}" if spec.name == "analyses" and analysis_help else "")
        if spec.default is not None and not isinstance(spec.default, bool):
            shown = ",".join(map(str, spec.default)) if isinstance(spec.default, tuple) else spec.default
            help_text += f" (default: {shown})"
        if meta.get("positional"):
            parser.add_argument(spec.name, nargs="?", default=argparse.SUPPRESS, help=help_text)
        elif isinstance(spec.default, bool):
            parser.add_argument(
                flag, dest=spec.name, action="store_true", default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(
                flag, dest=spec.name, default=argparse.SUPPRESS, help=help_text, metavar=spec.name.upper()
            )


def options_from_arguments(arguments: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` of parsed command-line arguments (unset flags keep their defaults)."""
    values = {}
    for spec in dataclasses.fields(RunOptions):
        if spec.name not in vars(arguments):
            continue
        raw = getattr(arguments, spec.name)
        parse = spec.metadata.get("parse")
        if parse is not None and isinstance(raw, str):
            try:
                raw = parse(raw)
            except InputError:
                raise
            except ValueError:
                flag = "--" + spec.name.replace("_", "-")
                kind = {"int": "an integer", "Path": "a path"}.get(
                    parse.__name__, f"a {parse.__name__} value"
                )
                raise InputError(f"{flag} takes {kind}, got {raw!r}.") from None
        values[spec.name] = raw
    return RunOptions(**values)


def options_table_markdown() -> str:
    """The README's table of ``tl-moe analyze`` options, generated from :class:`RunOptions`."""
    rows = ["| flag | default | what it sets |", "|---|---|---|"]
    for spec in dataclasses.fields(RunOptions):
        if not spec.metadata.get("cli", True):
            continue
        flag = spec.name if spec.metadata.get("positional") else "--" + spec.name.replace("_", "-")
        default = spec.default
        if isinstance(default, bool) or default is None:
            shown = "off" if default is False else "–"
        else:
            shown = f"`{','.join(map(str, default)) if isinstance(default, tuple) else default}`"
        rows.append(f"| `{flag}` | {shown} | {spec.metadata['help']} |")
    return "\n".join(rows)
