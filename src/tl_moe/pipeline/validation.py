"""Checks of a run's inputs that need the model or the corpus, to call BEFORE any pass starts.

Each check raises an :class:`InputError` (a ``ValueError``) whose message is one line that
names the input (``--seq-len``, ``--device``, ...; pass ``input_name=`` to name it otherwise)
and says what is accepted, so that a front end can print it without a traceback. The single
exception is :func:`domain_coverage`, which returns a flag and a warning instead of raising:
a corpus with one domain is a valid input for every analysis except the domain ones, which
then have nothing to compare (the caller skips them, or stops, as it prefers).

===================================  =====================================================
check                                refuses
===================================  =====================================================
:func:`check_seq_len`                a length < 2, above the model's positions, or whose
                                     forward pass would not fit in the device's free memory
:func:`resolve_device`               ``banana``; ``cuda`` without CUDA; ``cuda:3`` of 1 GPU
:func:`check_model_source`           a missing local path; a name that is neither a folder
                                     nor a hub id; a hub id not cached while offline; an
                                     unknown or untrained toy; an MoE where a dense model is
                                     expected (and the reverse)
:func:`check_output_dir`             a file; a folder (or parent) that cannot be written
:func:`check_corpus_split`           a missing split; a split with no non-empty document
:func:`check_layers`                 layers that are not sparse layers of the model
:func:`check_n_token_groups`         more vocabulary clusters than the model has tokens
:func:`check_n_drivers`              more driver experts than half the experts (no distinct
                                     control left for each)
:func:`check_driver_budget`          a budget whose edited forwards reach fewer documents on
                                     a half than the drivers need (names the flag that helps)
:func:`check_reweight_budget`        a domain with no held-out document (names the flag)
===================================  =====================================================

:func:`check_driver_budget` and :func:`check_reweight_budget` also warn (one line, naming the flag
that helps) when the report documents fall short of ``MIN_DOCUMENTS``: the run goes on and its
intervals are reported unavailable.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tl_moe import errors
from tl_moe.collect.batching import DOMAIN_COLUMN, TEXT_COLUMN, domain_names


class InputError(errors.InputError):
    """An input that cannot work; ``.input`` names it (``"--seq-len"``). The message is one line."""

    def __init__(self, input_name: str, message: str) -> None:
        super().__init__(message)
        self.input = input_name


class SeqLenError(InputError):
    """A sequence length the model or the memory cannot take."""


class DeviceError(InputError):
    """A device string that is not a device, or a device this machine does not have."""


class ModelSourceError(InputError):
    """A model name or path that cannot be loaded."""


class OutputDirError(InputError):
    """An output folder that is a file or cannot be written."""


class CorpusSplitError(InputError):
    """A corpus split that is missing or has no documents."""


class LayersError(InputError):
    """Layers that are not (sparse) layers of the model."""


class BudgetError(InputError):
    """A token budget (or driver count) an analysis cannot run with on this corpus and model."""


# ------------------------------------------------------------------------- sequence length


def _sizes(model_or_config: Any) -> dict[str, Any]:
    """Positions, widths and vocabulary read from a bridge, an HF model/config, a MoEConfig or a dict."""
    sources = [model_or_config]
    for attribute in ("cfg", "config", "moe_cfg"):
        inner = getattr(model_or_config, attribute, None)
        if inner is not None and not callable(inner):
            sources.append(inner)
    original = getattr(model_or_config, "original_model", None)
    if original is not None and getattr(original, "config", None) is not None:
        sources.append(original.config)

    def first(*names: str) -> Any:
        for source in sources:
            for name in names:
                value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    return int(value)
        return None

    return {
        "positions": first("max_position_embeddings", "n_ctx", "n_positions", "max_sequence_length"),
        "d_model": first("d_model", "hidden_size"),
        "n_heads": first("n_heads", "num_attention_heads"),
        "n_layers": first("n_layers", "num_hidden_layers"),
        "d_vocab": first("d_vocab", "vocab_size"),
        "d_mlp": first("d_mlp", "intermediate_size", "d_expert", "moe_intermediate_size"),
        "k": first("experts_per_token", "num_experts_per_tok", "top_k") or 1,
        "attention": next(
            (
                str(value)
                for source in sources
                for value in [
                    source.get("_attn_implementation")
                    if isinstance(source, dict)
                    else getattr(source, "_attn_implementation", None)
                ]
                if isinstance(value, str)
            ),
            None,
        ),
    }


def max_positions(model_or_config: Any) -> int | None:
    """The model's context length (``max_position_embeddings`` / ``n_ctx``), None if it does not say."""
    return _sizes(model_or_config)["positions"]


def estimate_forward_bytes(model_or_config: Any, seq_len: int, batch_size: int, dtype_bytes: int = 4) -> int:
    """A generous estimate of the peak memory of one hooked forward of ``batch_size`` x ``seq_len``.

    Counts what grows with the batch: attention scores and probabilities of one layer
    (``2 x heads x seq_len^2`` for eager attention, or when the implementation is unknown; a
    1024-wide block per query for SDPA / flash kernels), the logits and their log-softmax
    (``2 x vocab``), and a dozen ``d_model``- and MLP-wide activations per token. Weights are
    not included (already loaded).
    """
    sizes = _sizes(model_or_config)
    heads, vocab = sizes["n_heads"] or 1, sizes["d_vocab"] or 0
    d_model, d_mlp = sizes["d_model"] or 0, sizes["d_mlp"] or 0
    keys = seq_len if sizes["attention"] in (None, "eager") else min(seq_len, 1024)
    per_token = 2 * heads * keys + 2 * vocab + 16 * d_model + 4 * sizes["k"] * d_mlp
    return int(batch_size) * int(seq_len) * per_token * dtype_bytes


def _memory_limit_of_cgroup() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        return None if limit == "max" else max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory on ``device`` (CUDA: ``mem_get_info``; CPU: MemAvailable, capped by cgroup); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        free = None
    cgroup = _memory_limit_of_cgroup()
    if cgroup is not None:
        free = cgroup if free is None else min(free, cgroup)
    return free


def _gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n < 1e12 else f"{n / 1e12:.1f} TB"


def check_seq_len_positions(
    seq_len: Any, model_or_config: Any = None, *, input_name: str = "--seq-len"
) -> int:
    """``seq_len`` if it is a window length the model's positions can hold; else a :class:`SeqLenError`.

    The part of :func:`check_seq_len` that needs only the config (``tl-moe plan`` uses it; memory is
    the plan's own estimate there). ``model_or_config`` as in :func:`check_seq_len`; None checks the
    type and lower bound only.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise SeqLenError(
            input_name,
            f"{input_name} {seq_len!r} is not a window length; accepted: an integer >= 2 (BOS + one token).",
        )
    if model_or_config is None:
        return seq_len
    positions = max_positions(model_or_config)
    if positions is not None and positions < 2:
        raise SeqLenError(
            input_name,
            f"{input_name} {seq_len} cannot fit: the model's context is {positions} position "
            f"(max_position_embeddings={positions}), too short to analyze; accepted: a model with at least 2 "
            "positions (BOS + one token).",
        )
    if positions is not None and seq_len > positions:
        raise SeqLenError(
            input_name,
            f"{input_name} {seq_len} is longer than the model's {positions} positions "
            f"(max_position_embeddings); accepted: 2..{positions}.",
        )
    return seq_len


def check_seq_len(
    seq_len: Any,
    model_or_config: Any = None,
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    memory_bytes: int | None = None,
    memory_fraction: float = 0.8,
    input_name: str = "--seq-len",
) -> int:
    """``seq_len`` if the model and the memory can take it; else a :class:`SeqLenError`.

    Args:
        seq_len: tokens per window, BOS included.
        model_or_config: a loaded model, an HF config / model, a :class:`~tl_moe.MoEConfig` or a
            dict with ``max_position_embeddings`` etc.; None checks the type and lower bound only.
        batch_size: windows per forward (memory grows with it).
        device: where the forward runs (default: CPU); its free memory bounds the estimate.
        memory_bytes: free memory to assume instead of measuring it.
        memory_fraction: share of the free memory one forward may take.
    """
    check_seq_len_positions(seq_len, model_or_config, input_name=input_name)
    if model_or_config is None:
        return seq_len
    free = memory_bytes if memory_bytes is not None else available_memory_bytes(device or "cpu")
    if free is not None:
        budget = memory_fraction * free
        needed = estimate_forward_bytes(model_or_config, seq_len, batch_size)
        if needed > budget:
            fits = _longest_that_fits(model_or_config, batch_size, budget, seq_len)
            where = torch.device(device or "cpu")
            accepted = (
                f"accepted: {input_name} up to {fits}" if fits >= 2 else "accepted: a smaller batch size"
            )
            raise SeqLenError(
                input_name,
                f"{input_name} {seq_len} with batch size {batch_size} needs about {_gigabytes(needed)} for one "
                f"forward pass, more than the {_gigabytes(free)} free on {where}; {accepted} "
                f"(or a smaller batch size).",
            )
    return seq_len


def _longest_that_fits(model_or_config: Any, batch_size: int, budget: float, upper: int) -> int:
    low, high = 1, upper
    while low < high:
        middle = (low + high + 1) // 2
        if estimate_forward_bytes(model_or_config, middle, batch_size) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


# ------------------------------------------------------------------------------ device

_DEVICES_ACCEPTED = "accepted: auto, cpu, cuda, cuda:N, mps"


def resolve_device(spec: str | torch.device | None = None, *, input_name: str = "--device") -> torch.device:
    """The ``torch.device`` for ``spec``, checked to exist on this machine.

    ``None`` or ``"auto"``: the first CUDA GPU if there is one, else Apple's MPS if available,
    else the CPU. Anything else must parse as a torch device and be present.

    Raises:
        DeviceError: ``spec`` is not a device (``"banana"``), or names one this machine lacks
            (``"cuda"`` without CUDA, ``"cuda:3"`` with one GPU, ``"mps"`` off a Mac).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "auto")):
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec.strip().lower() if isinstance(spec, str) else spec)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(
            input_name, f"{input_name} {str(spec)!r} is not a device; {_DEVICES_ACCEPTED}."
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "with" if torch.version.cuda else "without"
            raise DeviceError(
                input_name,
                f"{input_name} {str(spec)!r}: CUDA is not available here (torch {torch.__version__} built "
                f"{built} CUDA, no GPU visible); accepted: cpu or auto.",
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                input_name,
                f"{input_name} {str(spec)!r}: this machine has {count} CUDA device(s); accepted: "
                f"cuda:0..cuda:{count - 1}, cpu or auto.",
            )
        return device if device.index is not None else torch.device("cuda", 0)
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(
                input_name, f"{input_name} 'mps' is not available here; accepted: cpu, cuda or auto."
            )
        return device
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and is_available():
        return device
    raise DeviceError(
        input_name, f"{input_name} {str(spec)!r} is not a device this machine has; {_DEVICES_ACCEPTED}."
    )


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# ---------------------------------------------------------------------------- model source

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
_ACCEPTED_MODELS = (
    "accepted: a local folder saved with save_pretrained, a hub id (org/name), or a toy name (toy/...)"
)


def _looks_like_a_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or name.endswith(("/", "\\"))
        or name.count("/") > 1
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
    )


def _is_hub_id(name: str) -> bool:
    if not _HUB_ID.match(name) or "--" in name or ".." in name or name.endswith((".", "-")):
        return False
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def _cached_on_hub(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(name, "config.json")
    return isinstance(found, str)


def _model_type_of(directory: Path) -> str | None:
    try:
        return json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _config_has_experts(directory: Path) -> bool:
    """Whether a folder's config.json names more than one routed expert (any architecture's key)."""
    from tl_moe.models.folder import NUM_EXPERTS_KEYS, _config_value

    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    found = _config_value(config, NUM_EXPERTS_KEYS) if isinstance(config, dict) else None
    return found is not None and found[1] > 1


def _check_kind(
    name: str, model_type: str | None, expect_moe: bool | None, input_name: str, directory: Path | None = None
) -> None:
    if expect_moe is None or model_type is None:
        return
    from tl_moe.models.architectures import ARCHITECTURES, UnsupportedArchitectureError, get_spec

    try:
        is_moe = get_spec(model_type).is_moe
    except UnsupportedArchitectureError as error:
        raise ModelSourceError(input_name, f"{input_name} {name!r}: {error}") from None
    if model_type not in ARCHITECTURES and directory is not None:
        is_moe = _config_has_experts(directory)  # no spec: the config says whether it has experts
    if is_moe != expect_moe:
        wanted = "an MoE model" if expect_moe else "a dense model (no experts)"
        found = "an MoE" if is_moe else "a dense model"
        raise ModelSourceError(
            input_name, f"{input_name} {name!r} is {found} ({model_type}); accepted: {wanted}."
        )


def check_model_source(
    spec: Any,
    *,
    input_name: str = "--model",
    expect_moe: bool | None = None,
    offline: bool | None = None,
) -> str:
    """What ``spec`` is (``"toy"``, ``"local"``, ``"hub"`` or ``"object"``), checked without loading weights.

    Args:
        spec: what ``tl_moe.load`` receives: a toy name, a local folder, a hub id, or a model object
            (objects are not checked: ``"object"``).
        expect_moe: True to require an MoE, False a dense model (e.g. ``--dense-baseline``), None
            for either. Read from ``config.json``, so only toy and local models are checked.
        offline: whether the hub cannot be reached; default: ``HF_HUB_OFFLINE`` /
            ``TRANSFORMERS_OFFLINE``. Offline, a hub id must be in the local cache. Online, a
            hub id that is not cached needs the hub to accept a connection within a few seconds.

    Raises:
        ModelSourceError: a missing path, a malformed name, an unknown or untrained toy, a hub id
            that is not cached while offline, or a model of the wrong kind.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return "object"
    name = os.fspath(spec)
    if name.startswith("toy/"):
        from tl_moe.zoo.family import TOY_FAMILY

        if name not in TOY_FAMILY:
            raise ModelSourceError(
                input_name, f"{input_name} {name!r} is not a toy model; accepted: {', '.join(TOY_FAMILY)}."
            )
        from tl_moe.zoo.registry import checkpoint_dir

        directory = checkpoint_dir(name)
        if not (directory / "metadata.json").exists():
            raise ModelSourceError(
                input_name,
                f"{input_name} {name!r} has no trained checkpoint at {directory}; "
                f"accepted: a trained toy (train it with `tl-moe zoo train {name}`).",
            )
        _check_kind(name, _model_type_of(directory), expect_moe, input_name, directory)
        return "toy"
    path = Path(name).expanduser()
    if path.exists():
        check_model_path(name, input_name=input_name)
        _check_model_type(path, input_name)
        _check_kind(name, _model_type_of(path), expect_moe, input_name, path)
        check_model_folder_source(path, input_name=input_name)
        return "local"
    if _looks_like_a_path(name):
        raise ModelSourceError(input_name, f"{input_name} {name!r} does not exist; {_ACCEPTED_MODELS}.")
    if not _is_hub_id(name):
        raise ModelSourceError(
            input_name,
            f"{input_name} {name!r} is neither an existing local folder nor a valid hub id; {_ACCEPTED_MODELS}.",
        )
    if (_offline() if offline is None else offline) and not _cached_on_hub(name):
        raise ModelSourceError(
            input_name,
            f"{input_name} {name!r} is not a local folder and not in the Hugging Face cache, and the hub is "
            f"offline (HF_HUB_OFFLINE); accepted: a local folder, a toy name, or a cached hub id.",
        )
    check_hub_reachable(name, input_name=input_name, offline=offline)
    return "hub"


def check_model_path(name: str | os.PathLike, *, input_name: str = "--model") -> None:
    """An existing local path named as a model must be a folder holding config.json (weights unchecked:
    ``tl-moe plan`` reads the config alone); raises :class:`ModelSourceError`. Other names pass."""
    path = Path(os.fspath(name)).expanduser()
    if not path.exists():
        return
    if not path.is_dir():
        raise ModelSourceError(input_name, f"{input_name} {os.fspath(name)!r} is a file; {_ACCEPTED_MODELS}.")
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            input_name,
            f"{input_name} {os.fspath(name)!r} is a folder without config.json; {_ACCEPTED_MODELS}.",
        )


def _check_model_type(path: Path, input_name: str) -> None:
    """The folder's config.json readable and its model type known to transformers (before its kind)."""
    from tl_moe.models.folder import check_model_type, read_config

    label = f"{input_name} {os.fspath(path)!r}"
    try:
        check_model_type(read_config(path, label), label)
    except errors.InputError as error:
        raise ModelSourceError(input_name, str(error)) from None


def check_model_folder_source(path: str | os.PathLike, *, input_name: str = "--model") -> None:
    """A local model folder checked from its files (:func:`tl_moe.models.folder.check_model_folder`):
    config, architecture, routing sizes, weights and tokenizer files; raises :class:`ModelSourceError`."""
    from tl_moe.models.folder import check_model_folder

    try:
        check_model_folder(path, f"{input_name} {os.fspath(path)!r}")
    except errors.InputError as error:
        raise ModelSourceError(input_name, str(error)) from None


def check_hub_reachable(name: str, *, input_name: str = "--model", offline: bool | None = None) -> None:
    """A hub id that is cached, or whose hub answers within a few seconds (:func:`tl_moe.models.folder.check_hub_model`)."""
    from tl_moe.models.folder import check_hub_model

    try:
        check_hub_model(name, f"{input_name} {name!r}", offline=offline)
    except errors.InputError as error:
        raise ModelSourceError(input_name, str(error)) from None


# ---------------------------------------------------------------------------- output folder


def check_output_dir(path: str | os.PathLike, *, input_name: str = "--out") -> Path:
    """``path`` as a Path if it is (or can be created as) a writable folder; nothing is created.

    Writability is tested by creating and deleting a temporary file in the folder, or in its
    nearest existing parent when it does not exist yet (permission bits alone mislead as root
    and on read-only mounts).

    Raises:
        OutputDirError: ``path`` (or a parent) is a file, or the folder cannot be written.
    """
    path = Path(path).expanduser()
    accepted = "accepted: a writable folder, existing or to be created"
    if path.exists() and not path.is_dir():
        raise OutputDirError(input_name, f"{input_name} {str(path)!r} is a file, not a folder; {accepted}.")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputDirError(
            input_name, f"{input_name} {str(path)!r} cannot be created: {str(probe)!r} is a file; {accepted}."
        )
    try:
        handle, temporary = tempfile.mkstemp(prefix=".tl_moe-write-test-", dir=probe)
        os.close(handle)
        os.unlink(temporary)
    except OSError as error:
        what = "is not writable" if probe == path else f"cannot be created in {str(probe)!r}"
        reason = error.strerror or type(error).__name__
        raise OutputDirError(
            input_name, f"{input_name} {str(path)!r} {what} ({reason}); {accepted}."
        ) from None
    return path


# ---------------------------------------------------------------------------------- corpus


def check_corpus_split(corpus: Any, split: str | None = None, *, input_name: str = "--split") -> Any:
    """The split ``split`` of ``corpus`` (or ``corpus`` itself if it is one Dataset), checked to hold a document.

    Raises:
        CorpusSplitError: the split is missing, empty, has no ``text`` column, or only empty texts.
    """
    dataset = corpus
    label = "the corpus"
    is_dict = isinstance(getattr(corpus, "column_names", None), dict) or (
        hasattr(corpus, "keys") and not hasattr(corpus, "column_names")
    )
    if split is not None and is_dict:
        if split not in corpus:
            shown = split.item() if isinstance(split, np.generic) else split  # np.int64(0) -> 0
            raise CorpusSplitError(
                input_name,
                f"{input_name} {shown!r} is not a split of the corpus; accepted: {', '.join(map(str, corpus))}.",
            )
        dataset, label = corpus[split], f"{input_name} {split!r}"
    if TEXT_COLUMN not in getattr(dataset, "column_names", ()):
        raise CorpusSplitError(
            input_name,
            f"{label} has no {TEXT_COLUMN!r} column (columns: {list(getattr(dataset, 'column_names', []))}); "
            f"accepted: a corpus with a {TEXT_COLUMN!r} column.",
        )
    if len(dataset) == 0 or not any(
        text is not None and str(text).strip() for text in dataset.select_columns([TEXT_COLUMN])[TEXT_COLUMN]
    ):
        raise CorpusSplitError(
            input_name,
            f"{label} has no documents ({len(dataset)} rows, none with text); accepted: a split with at least "
            f"one non-empty document (add documents, or choose another split).",
        )
    return dataset


@dataclass(frozen=True)
class DomainCoverage:
    """How many domains a corpus has and whether domain analyses can compare them.

    Attributes:
        names: the domains, in code order (as :func:`~tl_moe.collect.domain_names`).
        documents: non-empty documents per domain.
        usable: True when at least two domains have a document each.
        warning: one line saying why domain analyses have nothing to compare, or None.
    """

    names: tuple[str, ...]
    documents: dict[str, int]
    usable: bool
    warning: str | None


def domain_coverage(dataset: Any, *, label: str = "the corpus") -> DomainCoverage:
    """Whether ``dataset`` has at least two domains with documents (a flag, never an error).

    Domain analyses (domain experts, routing specialization by domain) compare domains; with one
    domain they have no contrast. The caller decides: skip them with ``warning`` shown, or stop.
    """
    names = domain_names(dataset)
    documents: Counter[str] = Counter()
    columns = [c for c in (TEXT_COLUMN, DOMAIN_COLUMN) if c in dataset.column_names]
    view = dataset.select_columns(columns)
    feature = dataset.features.get(DOMAIN_COLUMN) if DOMAIN_COLUMN in columns else None
    for row in view:
        if row.get(TEXT_COLUMN) is None or not str(row[TEXT_COLUMN]).strip():
            continue
        if DOMAIN_COLUMN not in row:
            documents[names[0]] += 1
        elif hasattr(feature, "names"):
            documents[names[int(row[DOMAIN_COLUMN])]] += 1
        else:
            documents[str(row[DOMAIN_COLUMN])] += 1
    present = [name for name in names if documents[name] > 0]
    usable = len(present) >= 2
    warning = None
    if not usable:
        which = f"one domain ({present[0]!r})" if present else "no domain with documents"
        hint = "" if DOMAIN_COLUMN in dataset.column_names else f" (no {DOMAIN_COLUMN!r} column)"
        warning = (
            f"{label} has {which}{hint}: domain analyses have nothing to compare and are skipped; "
            f"give documents of at least two domains to run them."
        )
    return DomainCoverage(
        names=names, documents={n: documents[n] for n in names}, usable=usable, warning=warning
    )


# ----------------------------------------------------------------------------------- layers


def check_layers(
    layers: Sequence[Any] | None, allowed: Sequence[int], *, input_name: str = "--probe-layers"
) -> tuple[int, ...]:
    """``layers`` sorted and deduplicated if each is one of ``allowed`` (e.g. ``moe_cfg.sparse_layers``).

    ``None`` means all of ``allowed``.

    Raises:
        LayersError: a layer that is not an integer, or not in ``allowed``.
    """
    allowed = tuple(int(layer) for layer in allowed)
    if layers is None:
        return allowed
    bad_type = [layer for layer in layers if isinstance(layer, bool) or not isinstance(layer, int)]
    if bad_type:
        raise LayersError(
            input_name,
            f"{input_name} {bad_type} are not layer numbers; accepted: integers among {list(allowed)}.",
        )
    wrong = sorted({layer for layer in layers if layer not in allowed})
    if wrong:
        raise LayersError(
            input_name, f"{input_name} {wrong} are not among the model's layers {list(allowed)}."
        )
    if not layers:
        raise LayersError(input_name, f"{input_name} is empty; accepted: one or more of {list(allowed)}.")
    return tuple(sorted(set(layers)))


# ------------------------------------------------------------------------------- token groups


def check_n_token_groups(
    n_groups: int, vocabulary: int, model: str = "the model", *, input_name: str = "--n-token-groups"
) -> int:
    """``n_groups`` if the vocabulary clustering can make that many clusters of the ``vocabulary``
    rows of the model's unembedding (one token per cluster at most); else a :class:`BudgetError`."""
    if n_groups > vocabulary:
        raise BudgetError(
            input_name,
            f"{input_name} {n_groups} is more clusters than the {vocabulary} tokens of {model}'s vocabulary "
            f"(the clusters partition its unembedding rows); accepted: 1 to {vocabulary}.",
        )
    return n_groups


# ------------------------------------------------------------------------------- probe sizes


class ProbeSizeError(InputError):
    """Probe sizes (k neurons) that a probed unit does not have."""


def check_probe_ks(
    ks: Sequence[int], n_neurons: int, *, unit: str = "expert", input_name: str = "--probe-ks"
) -> tuple[int, ...]:
    """``ks`` if every k is at most ``n_neurons``, the neurons of the smallest probed unit.

    A k-sparse probe over more neurons than a unit has cannot be fitted: its rows would be
    empty estimates, so such a k is refused before the pass.

    Raises:
        ProbeSizeError: a k above ``n_neurons``.
    """
    too_large = sorted({int(k) for k in ks if int(k) > n_neurons})
    if too_large:
        raise ProbeSizeError(
            input_name,
            f"{input_name} {too_large} exceed the {n_neurons} neurons of each {unit}; accepted: "
            f"integers from 1 to {n_neurons}.",
        )
    return tuple(ks)


# ----------------------------------------------------------------------- document budgets


@dataclass(frozen=True)
class DocumentBudget:
    """Documents an analysis will see on each half of the :func:`~tl_moe.analysis.drivers.document_half`
    split, counted from the corpus and the budgets before any pass.

    Attributes:
        selection / report: documents on the selection (0) and report (1) half.
        flag: the option that raises them (e.g. ``--driver-tokens``), or None when only a larger
            corpus would.
        tokens: real tokens the budget reaches.
    """

    selection: int
    report: int
    flag: str | None
    tokens: int


def _document_halves(docs: Sequence[int]) -> tuple[int, int]:
    from tl_moe.analysis.drivers import document_half

    if not docs:
        return 0, 0
    half = document_half(torch.tensor(sorted(docs)))
    return int((half == 0).sum()), int((half == 1).sum())


def driver_documents(
    dataset: Any, tokenizer: Any, *, seq_len: int, batch_size: int, max_tokens: int, driver_tokens: int
) -> DocumentBudget:
    """Documents that the drivers' edited forwards reach: the batches of the collection pass (the
    stream capped at ``max_tokens``) until ``driver_tokens`` real tokens have been edited, counting
    the documents with a next-token position. Which flag helps: ``--driver-tokens`` while the stream
    goes on past the edited batches, ``--max-tokens`` when the stream ends first, none when the
    corpus ends first."""
    from tl_moe.collect.batching import plan_batches

    has_bos = int(tokenizer.bos_token_id is not None)
    seen, docs = 0, set()
    stream_ended = True
    for batch in plan_batches(
        dataset, tokenizer, batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens
    ):
        if seen >= driver_tokens:
            stream_ended = False
            break
        for window in batch.windows:
            length = window.token_end - window.token_start + has_bos
            seen += length
            if length >= 2:
                docs.add(window.document.doc_index)
    if not stream_ended:
        flag = "--driver-tokens"
    else:
        flag = "--max-tokens" if seen >= max_tokens - 1 else None  # the cap ended the stream, not the corpus
    selection, report = _document_halves(sorted(docs))
    return DocumentBudget(selection, report, flag, seen)


def check_n_drivers(
    n_drivers: int, n_layers: int, n_experts: int, *, input_name: str = "--n-drivers"
) -> None:
    """Refuse more driver experts than half the experts of the sparse layers: each needs a distinct
    control expert (:func:`~tl_moe.analysis.drivers.max_drivers`)."""
    from tl_moe.analysis.drivers import max_drivers

    most = max_drivers(n_layers, n_experts)
    if n_drivers > most:
        raise BudgetError(
            input_name,
            f"{input_name} {n_drivers} is more than half of the model's {n_layers * n_experts} experts "
            f"({n_layers} sparse layers × {n_experts}): each driver needs a distinct control; accepted: 1 to {most}.",
        )


def check_removable_experts(model_name: str, n_experts: int, experts_per_token: int) -> None:
    """Refuse the drivers (and associations and re-weighting, built on them) on a model whose tokens
    use every expert: removing one expert from a token's routing needs ``k < n_experts``."""
    if experts_per_token >= n_experts:
        raise InputError(
            "--analyses",
            f"drivers, associations and reweighting remove an expert from each token's routing, which needs "
            f"fewer experts per token than experts; {model_name} routes each token to {experts_per_token} of "
            f"its {n_experts} experts. Accepted: a model with num_experts_per_tok < num_experts, or --analyses "
            "without drivers, associations and reweighting.",
        )


# A short English sentence every text tokenizer splits into ordinary tokens.
TOKENIZER_PROBE_TEXT = "The cat sat on the mat."


def check_tokenizer(tokenizer: Any, model_name: str, *, input_name: str = "--model") -> None:
    """Refuse a tokenizer that turns a short English sentence into no tokens or into special tokens only
    (e.g. one saved without a vocabulary): every text of the corpus would then be empty."""
    ids = list(tokenizer(TOKENIZER_PROBE_TEXT, add_special_tokens=False)["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", ())) - {getattr(tokenizer, "unk_token_id", None)}
    if not ids or all(token in special for token in ids):
        raise InputError(
            input_name,
            f"the tokenizer of {model_name} ({type(tokenizer).__name__}, vocabulary of {len(tokenizer)}) turns "
            f"{TOKENIZER_PROBE_TEXT!r} into {len(ids)} ordinary tokens; accepted: a model folder whose "
            "tokenizer files (tokenizer.json or the vocabulary files) hold the model's vocabulary.",
        )


# A corpus with fewer tokens than this share of --max-tokens is "far smaller than the budget".
SMALL_CORPUS_SHARE = 0.5


def corpus_tokens_up_to(dataset: Any, tokenizer: Any, limit: int, *, batch: int = 64) -> int:
    """Tokens of the corpus texts, counted until ``limit`` is reached (each text cut to ``16 · limit``
    characters, so one huge text costs no more than the budget)."""
    counted = 0
    texts = dataset[TEXT_COLUMN]
    for start in range(0, len(texts), batch):
        chunk = [str(text)[: 16 * limit] for text in texts[start : start + batch]]
        counted += sum(len(ids) for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"])
        if counted >= limit:
            break
    return counted


def warn_small_corpus(dataset: Any, tokenizer: Any, max_tokens: int, split: str | None) -> None:
    """Warn, before the pass, when the corpus holds far fewer tokens than ``--max-tokens``: every
    analysis then sees only those, and the ones that need more report themselves unavailable."""
    import warnings

    threshold = int(SMALL_CORPUS_SHARE * max_tokens)
    found = corpus_tokens_up_to(dataset, tokenizer, threshold)
    if found < threshold:
        warnings.warn(
            f"the corpus split {split!r} holds {found} tokens ({len(dataset)} documents), far fewer than "
            f"--max-tokens {max_tokens}; analyses that need more tokens will report themselves unavailable.",
            stacklevel=2,
        )


def _advice(flag: str | None, what: str) -> str:
    if flag is None:
        return f"the corpus holds no more {what}: use a corpus with more documents"
    return f"raise {flag}"


def check_driver_budget(
    dataset: Any,
    tokenizer: Any,
    *,
    seq_len: int,
    batch_size: int,
    max_tokens: int,
    driver_tokens: int,
    min_documents: int = 2,
) -> DocumentBudget:
    """Refuse a budget whose edited forwards leave fewer than ``min_documents`` documents on a half
    (the drivers, and the associations and re-weighting built on them, then have nothing to select or
    report on); warn when the report half has fewer than ``MIN_DOCUMENTS`` (intervals unavailable).
    Both messages name the flag that raises the count (:func:`driver_documents`)."""
    import warnings

    from tl_moe.analysis.stats import MIN_DOCUMENTS

    budget = driver_documents(
        dataset,
        tokenizer,
        seq_len=seq_len,
        batch_size=batch_size,
        max_tokens=max_tokens,
        driver_tokens=driver_tokens,
    )
    found = (
        f"--driver-tokens {driver_tokens} within --max-tokens {max_tokens} reach {budget.selection} selection "
        f"and {budget.report} report documents"
    )
    if min(budget.selection, budget.report) < min_documents:
        raise BudgetError(
            budget.flag or "--corpus",
            f"the drivers need at least {min_documents} documents on each half; {found}: "
            f"{_advice(budget.flag, 'documents')}.",
        )
    if budget.report < MIN_DOCUMENTS:
        warnings.warn(
            f"{found}; the drivers' intervals need {MIN_DOCUMENTS} and will be reported unavailable: "
            f"{_advice(budget.flag, 'documents')}.",
            stacklevel=2,
        )
    return budget


def reweight_documents(
    dataset: Any, tokenizer: Any, *, seq_len: int, tokens_per_group: int, group_column: str = "domain"
) -> dict[str, tuple[int, int]]:
    """group -> (selection, held-out) documents of the re-weighting windows
    (:func:`~tl_moe.analysis.edit_windows.held_out_windows`, same rule, no model)."""
    from tl_moe.analysis.edit_windows import held_out_windows

    selection, evaluation = held_out_windows(
        dataset, tokenizer, seq_len=seq_len, tokens_per_group=tokens_per_group, group_column=group_column
    )
    counts: dict[str, list[set[int]]] = {}
    for side, windows in enumerate((selection, evaluation)):
        for doc, group in zip(windows.doc.tolist(), windows.group, strict=True):
            counts.setdefault(str(group), [set(), set()])[side].add(int(doc))
    return {group: (len(a), len(b)) for group, (a, b) in sorted(counts.items())}


def check_reweight_budget(
    dataset: Any, tokenizer: Any, *, seq_len: int, reweight_tokens: int, domains: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """Refuse a ``--reweight-tokens`` that leaves a domain without a selection or held-out document;
    warn when a domain has fewer than ``MIN_DOCUMENTS`` held-out documents (its interval is then
    unavailable), naming ``--reweight-tokens`` when more tokens would reach more documents and the
    corpus when the domain has no more."""
    import warnings

    from tl_moe.analysis.stats import MIN_DOCUMENTS

    counts = reweight_documents(dataset, tokenizer, seq_len=seq_len, tokens_per_group=reweight_tokens)
    empty = [d for d in domains if min(counts.get(str(d), (0, 0))) == 0]
    short = [d for d in domains if counts.get(str(d), (0, 0))[1] < MIN_DOCUMENTS and d not in empty]

    def advice(names: Sequence[str]) -> str:
        more = reweight_documents(dataset, tokenizer, seq_len=seq_len, tokens_per_group=10 * reweight_tokens)
        grows = [d for d in names if more.get(str(d), (0, 0)) > counts.get(str(d), (0, 0))]
        parts = [f"raise --reweight-tokens for {grows}"] if grows else []
        if len(grows) < len(names):
            parts.append(f"the corpus holds no more documents of {[d for d in names if d not in grows]}")
        return "; ".join(parts)

    if empty:
        raise BudgetError(
            "--reweight-tokens",
            f"re-weighting needs documents of every domain on both halves; --reweight-tokens {reweight_tokens} "
            f"reaches none on a half for {empty}: {advice(empty)}.",
        )
    if short:
        held_out = {d: counts[str(d)][1] for d in short}
        warnings.warn(
            f"--reweight-tokens {reweight_tokens} reaches fewer than {MIN_DOCUMENTS} held-out documents for "
            f"{held_out}; their intervals will be reported unavailable ({advice(short)}).",
            stacklevel=2,
        )
    return counts
