"""Atomic, checksummed checkpoints of a collection pass, and the fingerprint that guards resuming.

A checkpoint holds every accumulator's ``state_dict``, the stream cursor after the
last folded-in batch, and the Python / NumPy / torch RNG states. It is written to a
temporary file, flushed to disk, then renamed over the previous one, so a run killed
at any moment leaves either the old or the new checkpoint, never a torn one.

File format (:func:`write_verified` / :func:`read_verified`, reusable for any state a
resumable step keeps): one ASCII header line
``tl_moe-checkpoint v1 sha256=<64 hex> bytes=<n>`` followed by the ``torch.save`` bytes
of the payload, which are loaded with ``weights_only=True`` only after their length and
SHA-256 match the header. An empty, truncated, overwritten or foreign file is refused
with :class:`CheckpointCorruptError` (one line, naming the file and how to start over);
it is never silently replaced, so no finished work is thrown away without the user asking.

The fingerprint records everything that changes the result, by content: the model's
weights digest (:func:`~tl_moe.collect.hashing.weights_digest`), a digest of every corpus
row (:func:`~tl_moe.collect.hashing.corpus_digest`), the tokenizer, window/batch sizes,
token cap, accumulators and their settings, concept labeler and shard. A checkpoint whose
fingerprint differs from the current run's is refused with :class:`CheckpointMismatchError`,
whose one-line message names the first differing field. See docs/RUNS.md.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import pickle
import random
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tl_moe.collect.batching import TEXT_COLUMN, StreamCursor
from tl_moe.collect.hashing import corpus_digest, weights_digest
from tl_moe.errors import InputError

_TOKENIZER_PROBE = "The quick brown fox, 42 {x_1} über."
FINGERPRINT_VERSION = 3
"""Bump when the fingerprint's fields change, so that older checkpoints are refused, not misread."""

START_OVER_HINT = "rerun with --fresh (collect(fresh=True)) to start over, or choose another --out"
"""How to get past a refused checkpoint; ends every refusal message."""

_MAGIC = b"tl_moe-checkpoint v1 "
_HEADER = re.compile(rb"tl_moe-checkpoint v1 sha256=([0-9a-f]{64}) bytes=([0-9]+)\n")
_MAX_HEADER = 128


class CheckpointError(InputError):
    """A checkpoint cannot be used; ``.path`` is the file. Messages are one line."""

    def __init__(self, message: str, *, path: str | os.PathLike) -> None:
        super().__init__(message)
        self.path = Path(path)


class CheckpointMismatchError(CheckpointError):
    """The checkpoint on disk was written by a run with different inputs or arguments.

    Attributes:
        path: the checkpoint file.
        field: dotted name of the first differing fingerprint field (``"max_tokens"``,
            ``"model.weights"``, ``"corpus.digest"``, ``"accumulators.store.config.max_tokens"``).
        saved, current: that field's value in the checkpoint and in this run.
        differences: every differing field as ``(field, saved, current)``, most telling first.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike,
        differences: list[tuple[str, Any, Any]],
    ) -> None:
        super().__init__(message, path=path)
        self.differences = differences
        self.field, self.saved, self.current = differences[0]


class CheckpointCorruptError(CheckpointError):
    """The checkpoint file is empty, truncated, damaged or not a tl_moe checkpoint; ``.reason`` says which."""

    def __init__(self, message: str, *, path: str | os.PathLike, reason: str) -> None:
        super().__init__(message, path=path)
        self.reason = reason


@dataclass(frozen=True)
class Checkpoint:
    cursor: StreamCursor
    states: dict[str, dict[str, Any]]
    rng: dict[str, Any]
    complete: bool


def checkpoint_path(directory: str | os.PathLike, shard_index: int, shard_count: int) -> Path:
    return Path(directory) / f"collect-shard{shard_index}-of-{shard_count}.pt"


_CONFIG_KEYS_IGNORED = ("_name_or_path", "name_or_path", "transformers_version", "_commit_hash")
"""Where a model was loaded from and which library wrote it: no effect on a pass's result."""


def _digest_of(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _tokenizer_summary(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer by content: its whole definition for fast tokenizers, else vocabulary and specials."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        content = backend.to_str()
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        content = json.dumps(sorted(vocab.items()), default=str)
    specials = getattr(tokenizer, "special_tokens_map", {})
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "content": _digest_of([content, specials]),
        "probe": list(tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]),
    }


def _config_digest(model: Any) -> str | None:
    """Digest of the Hugging Face config (routing flags, rope, norms...), without path and version."""
    config = getattr(getattr(model, "original_model", model), "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    values = {key: value for key, value in config.to_dict().items() if key not in _CONFIG_KEYS_IGNORED}
    return _digest_of(values)


def _model_summary(model: Any) -> dict[str, Any]:
    """The model by content (class, size, config, weights), not by the path it was loaded from."""
    return {
        "class": type(model).__name__,
        "n_parameters": sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0,
        "config": _config_digest(model),
        "weights": weights_digest(model),
    }


def _corpus_summary(dataset: Any) -> dict[str, Any]:
    return {"rows": len(dataset), "digest": corpus_digest(dataset)}


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
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """JSON-serialisable description of everything that determines a pass's result.

    Keys are in the order a mismatch is reported: the run's own arguments first (what a
    user changes on the command line), then the inputs' content, then the accumulators.
    ``settings`` are the caller's settings that shaped the inputs before the pass (e.g. ``seed``,
    the seed the corpus was shuffled with): recorded first, so a resume with another seed is
    refused naming the seed rather than the corpus digest the seed changed.
    """
    labeler = None
    if concept_labeler is not None:
        labeler = {
            "type": getattr(concept_labeler, "__qualname__", type(concept_labeler).__qualname__),
            "concepts": list(getattr(concept_labeler, "concept_names", []) or []),
        }
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        **dict(settings or {}),
        "max_tokens": max_tokens,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "shard": list(shard),
        "model": _model_summary(model),
        "corpus": _corpus_summary(dataset),
        "text_column": TEXT_COLUMN,
        "tokenizer": _tokenizer_summary(tokenizer),
        "concept_labeler": labeler,
        "accumulators": {
            name: {
                "class": type(acc).__qualname__,
                "hooks": acc.hook_names(model),
                "config": acc.config(),
            }
            for name, acc in sorted(accumulators.items())
        },
    }


_ABSENT = object()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _leaf_differences(saved: Any, current: Any, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    """Differing leaves as ``(dotted field, saved, current)``, in ``current``'s key order."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        for key in list(current) + [key for key in saved if key not in current]:
            yield from _leaf_differences(
                saved.get(key, _ABSENT), current.get(key, _ABSENT), f"{prefix}.{key}" if prefix else key
            )
    elif saved is _ABSENT or current is _ABSENT or _canonical(saved) != _canonical(current):
        yield prefix, saved, current


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = _canonical(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fingerprint_differences(saved: Any, current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every differing field as ``(dotted field, saved, current)`` (``_ABSENT`` where missing)."""
    return list(_leaf_differences(saved, json.loads(json.dumps(current)), ""))


def fingerprint_digest(fields: Mapping[str, Any]) -> str:
    """16 hex digits naming a fingerprint (its canonical JSON's SHA-256): the identity of a pass or step."""
    return hashlib.sha256(_canonical(json.loads(json.dumps(fields))).encode()).hexdigest()[:16]


def check_fingerprint(path: str | os.PathLike, saved: Any, current: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose saved fingerprint differs from ``current`` (one line, first field first).

    Raises:
        CheckpointMismatchError: naming the first differing field and how to start over.
    """
    differences = _fingerprint_differences(saved, current)
    if differences:
        raise CheckpointMismatchError(
            mismatch_message(Path(path), differences),
            path=path,
            differences=[
                (f, None if a is _ABSENT else a, None if b is _ABSENT else b) for f, a, b in differences
            ],
        )


def mismatch_message(path: Path, differences: list[tuple[str, Any, Any]]) -> str:
    """One line: which field differs, its two values, how many others differ, how to start over."""
    field, saved, current = differences[0]
    others = [name for name, _, _ in differences[1:]]
    more = ""
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        more = f" and {len(others)} more field{'s' if len(others) > 1 else ''} ({listed})"
    return (
        f"checkpoint at {path} was made with a different {field} "
        f"({_shown(saved)} in the checkpoint, {_shown(current)} now){more}; {START_OVER_HINT}."
    )


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


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.n_bytes = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.n_bytes += view.nbytes
        return self.handle.write(view)

    def flush(self) -> None:
        self.handle.flush()


def _header(sha256_hex: str, n_bytes: int) -> bytes:
    return _MAGIC + f"sha256={sha256_hex} bytes={n_bytes:020d}\n".encode()


def write_verified(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` (tensors, containers, numbers, strings) as a checksummed file, atomically.

    The payload is streamed once to a temporary file of its own in the same folder
    (``<name>.<random>.tmp``, so concurrent writers never share one) while being hashed, the
    header is written last, then fsync and rename: a reader sees the old file or a new one,
    never a torn one. Read it back with :func:`read_verified`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(_header("0" * 64, 0))  # placeholder of the same length
            writer = _HashingWriter(handle)
            torch.save(payload, writer)
            handle.seek(0)
            handle.write(_header(writer.sha256.hexdigest(), writer.n_bytes))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _corrupt(path: Path, reason: str, what: str, hint: str = START_OVER_HINT) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"checkpoint at {path} {what}; {hint}.", path=path, reason=reason)


def read_verified(path: str | os.PathLike, *, map_location: Any = "cpu", hint: str = START_OVER_HINT) -> Any:
    """The payload of a file written by :func:`write_verified`, after checking its length and checksum.

    Loads with ``torch.load(weights_only=True)``: no code in the file can run. ``hint`` ends
    every refusal message (how to start over).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointCorruptError: the file is empty, truncated, damaged (checksum mismatch), not a
            tl_moe checkpoint (or one from before checksums), or unreadable for another reason.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(_MAX_HEADER)
        if not head:
            raise _corrupt(path, "empty", "is empty (0 bytes)", hint)
        match = _HEADER.match(head)
        if match is None:
            raise _corrupt(
                path,
                "foreign",
                "is not a tl_moe checkpoint (no checksum header; garbage, another program's file, "
                "or written by a tl_moe version before checksums)",
                hint,
            )
        handle.seek(match.end())
        body = handle.read()
    expected_sha, expected_bytes = match.group(1).decode(), int(match.group(2))
    if len(body) != expected_bytes:
        raise _corrupt(
            path,
            "truncated",
            f"is truncated or overlong ({len(body)} of {expected_bytes} payload bytes)",
            hint,
        )
    if hashlib.sha256(body).hexdigest() != expected_sha:
        raise _corrupt(path, "checksum", "is damaged: its checksum does not match its contents", hint)
    try:
        return torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise _corrupt(
            path,
            "unsafe",
            "could not be read: it holds objects other than tensors and plain values, "
            "refused because loading them could run code",
            hint,
        ) from error
    except (RuntimeError, EOFError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _corrupt(path, "unreadable", f"could not be read ({first_line[:120]})", hint) from error


def is_checkpoint_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts like one written by :func:`write_verified`."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def remove_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Delete every tl_moe checkpoint under ``directory`` (recursively); returns the removed files.

    Only files that start with the checkpoint header are removed (finished or in-progress
    checkpoints and their ``.tmp`` leftovers); anything else is kept. Folders left empty are
    removed too, ``directory`` included. A missing ``directory`` removes nothing.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.rglob("*")):
        leftover = (
            _TEMPORARY.match(path.name) is not None and (path.parent / path.name.rsplit(".", 2)[0]).exists()
        )
        if path.is_file() and not path.is_symlink() and (is_checkpoint_file(path) or leftover):
            path.unlink()
            removed.append(path)
    for folder in sorted(
        (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(root.iterdir()):
        root.rmdir()
    return removed


_TEMPORARY = re.compile(r"^.+\.[A-Za-z0-9_]{8}\.tmp$")
"""Names :func:`write_verified` gives its temporary files (``<name>.<8 random characters>.tmp``)."""


def remove_stale_temporaries(path: str | os.PathLike, *, older_than: float) -> list[Path]:
    """Delete the temporary files of checkpoint ``path`` last modified before ``older_than`` (a time.time()).

    A process killed while :func:`write_verified` wrote ``path`` leaves ``<name>.<random>.tmp``
    behind (empty, or a partial checkpoint). A resumed run removes those its own writes cannot own:
    the ones older than its start (a concurrent writer's file is newer, and is kept).
    """
    path = Path(path)
    removed = []
    for leftover in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        try:
            if leftover.is_file() and not leftover.is_symlink() and leftover.stat().st_mtime < older_than:
                leftover.unlink()
                removed.append(leftover)
        except FileNotFoundError:
            continue
    return removed


def discard_checkpoint(path: str | os.PathLike) -> None:
    """Delete one checkpoint file and its ``.tmp`` leftover (if any), then its folder if left empty."""
    path = Path(path)
    path.unlink(missing_ok=True)
    for leftover in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        if is_checkpoint_file(leftover):
            leftover.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass


def save_checkpoint(
    path: Path,
    *,
    fields: Mapping[str, Any],
    cursor: StreamCursor,
    states: Mapping[str, Mapping[str, Any]],
    complete: bool,
) -> None:
    """Write a collection checkpoint atomically, with a checksum (see :func:`write_verified`)."""
    payload = {
        "fingerprint": json.dumps(fields),
        "cursor": cursor.as_dict(),
        "states": {name: dict(state) for name, state in states.items()},
        "rng": capture_rng_state(),
        "complete": complete,
    }
    write_verified(path, payload)


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
    """The checkpoint at ``path`` (None if there is none); refuses a damaged one or one from a different run.

    Accumulator states come back on ``device``; RNG states stay on the CPU.

    Raises:
        CheckpointCorruptError: the file is empty, truncated, damaged or not a checkpoint.
        CheckpointMismatchError: the file was written by a run with other inputs or arguments.
    """
    path = Path(path)
    if not path.exists():
        return None
    payload = read_verified(path)
    try:
        saved = json.loads(payload["fingerprint"])
        cursor = StreamCursor(**payload["cursor"])
        states, rng, complete = payload["states"], payload["rng"], bool(payload["complete"])
    except (TypeError, KeyError, ValueError) as error:
        raise _corrupt(
            path, "unreadable", f"does not hold a collection checkpoint ({error!r:.80})"
        ) from error
    check_fingerprint(path, saved, fields)
    return Checkpoint(cursor=cursor, states=move_tensors(states, device), rng=rng, complete=complete)
