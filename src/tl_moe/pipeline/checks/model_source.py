"""The model named by ``--model`` / ``--dense-baseline``: a toy, a local folder or a hub id, checked
without loading weights."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tl_moe import errors
from tl_moe.pipeline.checks.errors import ModelSourceError

__all__ = ["check_hub_reachable", "check_model_folder_source", "check_model_path", "check_model_source"]

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
        raise ModelSourceError(f"{input_name} {name!r}: {error}", input_name=input_name) from None
    if model_type not in ARCHITECTURES and directory is not None:
        is_moe = _config_has_experts(directory)  # no spec: the config says whether it has experts
    if is_moe != expect_moe:
        wanted = "an MoE model" if expect_moe else "a dense model (no experts)"
        found = "an MoE" if is_moe else "a dense model"
        raise ModelSourceError(
            f"{input_name} {name!r} is {found} ({model_type}); accepted: {wanted}.", input_name=input_name
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
                f"{input_name} {name!r} is not a toy model; accepted: {', '.join(TOY_FAMILY)}.",
                input_name=input_name,
            )
        from tl_moe.zoo.registry import checkpoint_dir

        directory = checkpoint_dir(name)
        if not (directory / "metadata.json").exists():
            raise ModelSourceError(
                f"{input_name} {name!r} has no trained checkpoint at {directory}; "
                f"accepted: a trained toy (train it with `tl-moe zoo train {name}`).",
                input_name=input_name,
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
        raise ModelSourceError(
            f"{input_name} {name!r} does not exist; {_ACCEPTED_MODELS}.", input_name=input_name
        )
    if not _is_hub_id(name):
        raise ModelSourceError(
            f"{input_name} {name!r} is neither an existing local folder nor a valid hub id; {_ACCEPTED_MODELS}.",
            input_name=input_name,
        )
    if (_offline() if offline is None else offline) and not _cached_on_hub(name):
        raise ModelSourceError(
            f"{input_name} {name!r} is not a local folder and not in the Hugging Face cache, and the hub is "
            f"offline (HF_HUB_OFFLINE); accepted: a local folder, a toy name, or a cached hub id.",
            input_name=input_name,
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
        raise ModelSourceError(
            f"{input_name} {os.fspath(name)!r} is a file; {_ACCEPTED_MODELS}.", input_name=input_name
        )
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"{input_name} {os.fspath(name)!r} is a folder without config.json; {_ACCEPTED_MODELS}.",
            input_name=input_name,
        )


def _check_model_type(path: Path, input_name: str) -> None:
    """The folder's config.json readable and its model type known to transformers (before its kind)."""
    from tl_moe.models.folder import check_model_type, read_config

    label = f"{input_name} {os.fspath(path)!r}"
    try:
        check_model_type(read_config(path, label), label)
    except errors.InputError as error:
        raise ModelSourceError(str(error), input_name=input_name) from None


def check_model_folder_source(path: str | os.PathLike, *, input_name: str = "--model") -> None:
    """A local model folder checked from its files (:func:`tl_moe.models.folder.check_model_folder`):
    config, architecture, routing sizes, weights and tokenizer files; raises :class:`ModelSourceError`."""
    from tl_moe.models.folder import check_model_folder

    try:
        check_model_folder(path, f"{input_name} {os.fspath(path)!r}")
    except errors.InputError as error:
        raise ModelSourceError(str(error), input_name=input_name) from None


def check_hub_reachable(name: str, *, input_name: str = "--model", offline: bool | None = None) -> None:
    """A hub id that is cached, or whose hub answers within a few seconds (:func:`tl_moe.models.folder.check_hub_model`)."""
    from tl_moe.models.folder import check_hub_model

    try:
        check_hub_model(name, f"{input_name} {name!r}", offline=offline)
    except errors.InputError as error:
        raise ModelSourceError(str(error), input_name=input_name) from None
