"""Atomic checkpoints of a collection pass, and the fingerprint that guards resuming.

A checkpoint holds every accumulator's ``state_dict``, the stream cursor after the
last folded-in batch, and the Python / NumPy / torch RNG states. It is written to a
temporary file, flushed to disk, then renamed over the previous one, so a run killed
at any moment leaves either the old or the new checkpoint, never a torn one.

The fingerprint records everything that changes the result (corpus sample, tokenizer,
window/batch sizes, token cap, accumulators and their settings, concept labeler,
shard). A checkpoint whose fingerprint differs from the current run's is refused with
the list of differences.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tl_moe.collect.batching import TEXT_COLUMN, StreamCursor

_TOKENIZER_PROBE = "The quick brown fox, 42 {x_1} über."
_ROWS_HASHED = 16


class CheckpointMismatchError(ValueError):
    """The checkpoint on disk was written by a run with different arguments."""


@dataclass(frozen=True)
class Checkpoint:
    cursor: StreamCursor
    states: dict[str, dict[str, Any]]
    rng: dict[str, Any]
    complete: bool


def checkpoint_path(directory: str | os.PathLike, shard_index: int, shard_count: int) -> Path:
    return Path(directory) / f"collect-shard{shard_index}-of-{shard_count}.pt"


def _corpus_digest(dataset: Any) -> str:
    """Hash of the row count, columns and a spread of rows' text (cheap on any corpus size)."""
    n_rows = len(dataset)
    picks = sorted(
        set(range(min(_ROWS_HASHED, n_rows)))
        | set(range(max(0, n_rows - _ROWS_HASHED), n_rows))
        | {i * n_rows // _ROWS_HASHED for i in range(_ROWS_HASHED)}
    )
    digest = hashlib.sha256(json.dumps([n_rows, sorted(dataset.column_names)]).encode())
    for row in dataset.select(picks):
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _tokenizer_summary(tokenizer: Any) -> dict[str, Any]:
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "probe": list(tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]),
    }


def _model_summary(model: Any) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    return {
        "class": type(model).__name__,
        "name": str(getattr(cfg, "model_name", "")),
        "n_parameters": sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0,
    }


def fingerprint(
    *,
    model: Any,
    dataset: Any,
    tokenizer: Any,
    accumulators: Mapping[str, Any],
    batch_size: int,
    seq_len: int,
    max_tokens: int | None,
    concept_labeler: Any,
    shard: tuple[int, int],
) -> dict[str, Any]:
    """JSON-serialisable description of everything that determines a pass's result."""
    labeler = None
    if concept_labeler is not None:
        labeler = {
            "type": getattr(concept_labeler, "__qualname__", type(concept_labeler).__qualname__),
            "concepts": list(getattr(concept_labeler, "concept_names", []) or []),
        }
    return {
        "model": _model_summary(model),
        "corpus": _corpus_digest(dataset),
        "text_column": TEXT_COLUMN,
        "tokenizer": _tokenizer_summary(tokenizer),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "max_tokens": max_tokens,
        "concept_labeler": labeler,
        "shard": list(shard),
        "accumulators": {
            name: {
                "class": type(acc).__qualname__,
                "hooks": acc.hook_names(model),
                "config": acc.config(),
            }
            for name, acc in sorted(accumulators.items())
        },
    }


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [
        f"  {key}: {saved.get(key)!r} (checkpoint) vs {current.get(key)!r} (this run)"
        for key in keys
        if json.dumps(saved.get(key), sort_keys=True) != json.dumps(current.get(key), sort_keys=True)
    ]


def capture_rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def save_checkpoint(
    path: Path,
    *,
    fields: Mapping[str, Any],
    cursor: StreamCursor,
    states: Mapping[str, Mapping[str, Any]],
    complete: bool,
) -> None:
    """Write a checkpoint atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "fingerprint": json.dumps(fields, sort_keys=True),
        "cursor": cursor.as_dict(),
        "states": {name: dict(state) for name, state in states.items()},
        "rng": capture_rng_state(),
        "complete": complete,
    }
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def move_tensors(value: Any, device: torch.device | str) -> Any:
    """``value`` with every tensor inside (nested dicts/lists/tuples) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: move_tensors(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(move_tensors(item, device) for item in value)
    return value


def load_checkpoint(path: Path, *, fields: Mapping[str, Any], device: torch.device) -> Checkpoint | None:
    """The checkpoint at ``path`` (None if there is none); refuses one from a different run.

    Accumulator states come back on ``device``; RNG states stay on the CPU.
    """
    if not path.exists():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(payload["fingerprint"])
    current = json.loads(json.dumps(fields, sort_keys=True))
    if saved != current:
        raise CheckpointMismatchError(
            f"the checkpoint {path} was written by a collection run with different arguments:\n"
            + "\n".join(_differences(saved, current))
            + "\nRerun with the original arguments to resume, or use an empty checkpoint_dir to start over."
        )
    return Checkpoint(
        cursor=StreamCursor(**payload["cursor"]),
        states=move_tensors(payload["states"], device),
        rng=payload["rng"],
        complete=bool(payload["complete"]),
    )
