"""Resumable steps of an analysis's ``finalize``: each finished unit of work saved, so a rerun skips it.

A long analysis (probing: 70–80% of a run) calls ``step(key, compute)`` for each unit of work (one
layer's probes, one probe arm). :class:`ResumableSteps` returns the saved value when a checkpoint of
that step exists, else computes it and saves it before going on, so an interrupted run loses at most
the step it was in.

Files use the collection checkpoints' format (:func:`tl_moe.collect.checkpoint.write_verified`:
checksummed, atomic, read with ``weights_only=True``) under
``OUT/checkpoints/<analysis>/<fingerprint digest>/<key>.pt``. The fingerprint is the analysis's
settings plus the identity (:func:`~tl_moe.collect.checkpoint.fingerprint_digest` of the collection
fingerprint: weights digest, corpus digest, pass arguments) of every model pass it reads. A changed
model, corpus or option therefore names another folder: its steps are recomputed, never taken from
a stale run, and nothing finished is overwritten. A damaged file, or one whose stored fingerprint or
key is not the one its path promises, is refused in one line as the collection's checkpoints are
(:class:`~tl_moe.collect.checkpoint.CheckpointCorruptError` / ``CheckpointMismatchError``);
``fresh=True`` (``--fresh``) discards the folder first. The runner removes every checkpoint after a
successful run unless ``--keep-checkpoints``.

Values may hold tensors, NumPy arrays, pandas DataFrames and plain containers and scalars; they come
back equal, dtypes included (:func:`encode` / :func:`decode`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from tl_moe.collect.checkpoint import (
    START_OVER_HINT,
    CheckpointCorruptError,
    check_fingerprint,
    fingerprint_digest,
    read_verified,
    remove_checkpoints,
    write_verified,
)

__all__ = ["STEPS_VERSION", "RememberedSteps", "ResumableSteps", "Step", "decode", "encode", "run_now"]

T = TypeVar("T")

Step = Callable[[str, Callable[[], Any]], Any]
"""How a long computation runs each unit of work: ``step(key, compute) -> value`` (see :func:`run_now`)."""

STEPS_VERSION = 1
"""Bump when what a step saves changes, so that older step checkpoints are recomputed, not misread."""

_TAG = "__tl_moe__"


def run_now(key: str, compute: Callable[[], T]) -> T:
    """The step runner that saves nothing: computes every step (notebook runs, no ``--out``)."""
    return compute()


class RememberedSteps:
    """``steps(key, compute)``: ``inner(key, compute)`` the first time a key is asked, its value after.

    For steps that several computations of one process ask alike (whether or not ``inner`` saves them):
    the value is kept in memory, so callers must not modify it.
    """

    def __init__(self, inner: Step = run_now):
        self.inner = inner
        self.values: dict[str, Any] = {}

    def __call__(self, key: str, compute: Callable[[], T]) -> T:
        if key not in self.values:
            self.values[key] = self.inner(key, compute)
        return self.values[key]


# ------------------------------------------------------------------ values <-> weights_only payloads
def _encode_array(values: np.ndarray) -> dict[str, Any]:
    if values.dtype.kind in "biufc":
        return {_TAG: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(values).copy())}
    return {_TAG: "ndarray", "objects": [encode(v) for v in values.tolist()], "dtype": str(values.dtype)}


def _decode_array(payload: Mapping[str, Any]) -> np.ndarray:
    if "data" in payload:
        return payload["data"].numpy()
    values = [decode(v) for v in payload["objects"]]
    array = np.empty(len(values), dtype=payload["dtype"])
    array[:] = values
    return array


def _as_dtype(values: pd.Series | pd.Index, dtype: str) -> pd.Series | pd.Index:
    return values if str(values.dtype) == dtype else values.astype(dtype)


def _decode_frame(payload: Mapping[str, Any]) -> pd.DataFrame:
    """A DataFrame from :func:`encode`'s payload: columns, their dtypes (pandas' own, e.g. ``str``), index."""
    index = None
    if payload["index"] is not None:
        index = _as_dtype(pd.Index(_decode_array(payload["index"])), payload["index_dtype"])
    series = [
        _as_dtype(pd.Series(_decode_array(data), index=index), dtype)
        for data, dtype in zip(payload["data"], payload["dtypes"], strict=True)
    ]
    frame = pd.concat(series, axis=1) if series else pd.DataFrame(index=index)
    columns = pd.Index([decode(c) for c in payload["columns"]], dtype=object)
    frame.columns = _as_dtype(columns, payload["columns_dtype"])
    if index is None:
        frame.index = pd.RangeIndex(len(frame))
    return frame


def encode(value: Any) -> Any:
    """``value`` as tensors, plain containers and scalars only (what ``weights_only`` loading accepts)."""
    if isinstance(value, pd.DataFrame):
        index = value.index
        plain = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
        return {
            _TAG: "frame",
            "columns": [encode(c) for c in value.columns],
            "columns_dtype": str(value.columns.dtype),
            "data": [_encode_array(value.iloc[:, i].to_numpy()) for i in range(value.shape[1])],
            "dtypes": [str(dtype) for dtype in value.dtypes],
            "index": None if plain else _encode_array(index.to_numpy()),
            "index_dtype": str(index.dtype),
        }
    if isinstance(value, np.ndarray):
        return _encode_array(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()  # a view would save its whole storage
    if isinstance(value, tuple):
        return tuple(encode(v) for v in value)
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {_TAG: "dict", "items": [(encode(k), encode(v)) for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a step's value cannot hold a {type(value).__name__}; convert it to a table or tensor.")


def decode(payload: Any) -> Any:
    """The value :func:`encode` was given."""
    if isinstance(payload, dict):
        kind = payload.get(_TAG)
        if kind == "frame":
            return _decode_frame(payload)
        if kind == "ndarray":
            return _decode_array(payload)
        if kind == "dict":
            return {decode(k): decode(v) for k, v in payload["items"]}
        raise ValueError(f"unknown step payload {kind!r}")
    if isinstance(payload, tuple):
        return tuple(decode(v) for v in payload)
    if isinstance(payload, list):
        return [decode(v) for v in payload]
    return payload


# ------------------------------------------------------------------ the store
class ResumableSteps:
    """``steps(key, compute)``: the saved value of step ``key``, or ``compute()`` saved before returning.

    Args:
        directory: the analysis's checkpoint folder (``OUT/checkpoints/<analysis>``); None saves nothing.
        fields: JSON-able fingerprint of everything the steps' values depend on (settings and the
            identities of the passes they read).
        fresh: discard this fingerprint's saved steps first and recompute every step.

    Attributes:
        directory: where this fingerprint's steps are saved (None when nothing is).
        computed, loaded: the keys computed / taken from a checkpoint in this run, in order.
    """

    def __init__(self, directory: str | Path | None, fields: Mapping[str, Any], *, fresh: bool = False):
        self.fields = json.loads(json.dumps({"steps_version": STEPS_VERSION, **fields}))
        self.directory = None if directory is None else Path(directory) / fingerprint_digest(self.fields)
        self.computed: list[str] = []
        self.loaded: list[str] = []
        if fresh and self.directory is not None:
            remove_checkpoints(self.directory)

    def path(self, key: str) -> Path | None:
        """The checkpoint file of step ``key`` (None when nothing is saved)."""
        if self.directory is None:
            return None
        return self.directory / (re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".pt")

    def __call__(self, key: str, compute: Callable[[], T]) -> T:
        path = self.path(key)
        if path is not None and path.exists():
            value = self._load(path, key)
            self.loaded.append(key)
            return value
        value = compute()
        self.computed.append(key)
        if path is not None:
            write_verified(
                path, {"fingerprint": json.dumps(self.fields), "step": key, "value": encode(value)}
            )
        return value

    def _load(self, path: Path, key: str) -> Any:
        payload = read_verified(path)
        try:
            saved, step, value = json.loads(payload["fingerprint"]), payload["step"], payload["value"]
        except (TypeError, KeyError, ValueError) as error:
            raise CheckpointCorruptError(
                f"checkpoint at {path} does not hold a saved step ({error!r:.80}); {START_OVER_HINT}.",
                path=path,
                reason="unreadable",
            ) from error
        check_fingerprint(path, saved, self.fields)
        if step != key:
            raise CheckpointCorruptError(
                f"checkpoint at {path} holds step {step!r}, not {key!r}; {START_OVER_HINT}.",
                path=path,
                reason="unreadable",
            )
        try:
            return decode(value)
        except (TypeError, KeyError, ValueError) as error:
            raise CheckpointCorruptError(
                f"checkpoint at {path} holds an unreadable step value ({error!r:.80}); {START_OVER_HINT}.",
                path=path,
                reason="unreadable",
            ) from error
