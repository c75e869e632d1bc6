"""Reading a user's own corpus from ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` / ``.txt`` files."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from tl_moe.errors import InputError

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TEXT_SUFFIXES = (".txt",)
ACCEPTED_SUFFIXES = TABLE_SUFFIXES + TEXT_SUFFIXES


FORMATS = {
    ".jsonl": "UTF-8 JSON Lines, one object per line with a string 'text'",
    ".json": "a UTF-8 JSON array of objects with a string 'text'",
    ".csv": "a UTF-8 CSV file with a header row and a 'text' column",
    ".parquet": "a Parquet file with a string 'text' column",
    ".txt": "a UTF-8 text file (one document)",
}
"""What each accepted suffix must hold, for one-line errors about a file."""


def _format_of(path: Path) -> str:
    return FORMATS.get(path.suffix.lower(), ", ".join(ACCEPTED_SUFFIXES))


def read_table_file(path: Path) -> pd.DataFrame:
    """One file as a table: JSON Lines, a JSON array of records, CSV, or Parquet.

    Raises:
        InputError: the file cannot be decoded or parsed (not UTF-8, invalid JSON, ...), or is empty.
    """
    try:
        frame = _parse_table_file(path)
    except UnicodeDecodeError as error:
        raise InputError(
            f"corpus file {str(path)!r} is not UTF-8 (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); accepted: {_format_of(path)}"
        ) from None
    except (ValueError, OSError, ImportError) as error:
        if isinstance(error, InputError):
            raise
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise InputError(
            f"corpus file {str(path)!r} cannot be read ({type(error).__name__}: {reason}); "
            f"accepted: {_format_of(path)}"
        ) from None
    if len(frame) == 0:
        raise InputError(f"corpus file {str(path)!r} holds no rows (empty); accepted: {_format_of(path)}")
    return frame


def read_utf8(path: Path) -> str:
    """A file's text, decoded strictly as UTF-8; a leading byte-order mark (as some editors write) is dropped."""
    return path.read_bytes().decode("utf-8").removeprefix("\ufeff")


def _parse_table_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix not in (".jsonl", ".json", ".csv"):
        raise InputError(
            f"{path}: unsupported table suffix {suffix!r}; accepted: {', '.join(TABLE_SUFFIXES)}"
        )
    # pandas reads some encodings leniently: decode as UTF-8, strictly, first.
    text = io.StringIO(read_utf8(path))
    if suffix == ".jsonl":
        return pd.read_json(text, lines=True, dtype=False)
    if suffix == ".json":
        return pd.read_json(text, dtype=False)
    return pd.read_csv(text, keep_default_na=False, dtype=str)  # every CSV cell is text


def read_text_file(path: Path, root: Path) -> pd.DataFrame:
    """A ``.txt`` file as one document; under a folder ``root``, its sub-folder names the domain.

    ``root/python/a.txt`` gets domain ``python``; a file directly in ``root`` (or given alone)
    gets no domain.
    """
    try:
        text = read_utf8(path)
    except UnicodeDecodeError as error:
        raise InputError(
            f"corpus file {str(path)!r} is not UTF-8 (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); accepted: {_format_of(path)}"
        ) from None
    row = {"text": text, "source": path.name}
    if root.is_dir() and path.parent != root:
        row["domain"] = path.relative_to(root).parts[0]
        row["source"] = path.relative_to(root).as_posix()
    return pd.DataFrame([row])


def corpus_files(path: Path) -> list[Path]:
    """The accepted files at ``path``: the file itself, or every accepted file below a folder, sorted."""
    if path.is_file():
        if path.suffix.lower() not in ACCEPTED_SUFFIXES:
            raise InputError(
                f"corpus file {str(path)!r} has an unsupported type {path.suffix!r}; accepted: "
                f"{', '.join(ACCEPTED_SUFFIXES)}"
            )
        return [path]
    if not path.is_dir():  # a device (/dev/null), a pipe or a socket: nothing to read documents from
        raise InputError(
            f"corpus {str(path)!r} is neither a regular file nor a folder; accepted: a file ending in "
            f"{', '.join(ACCEPTED_SUFFIXES)}, a folder of such files, or a folder written by datasets' save_to_disk"
        )
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in ACCEPTED_SUFFIXES)
    if not files:
        others = sorted(p.name for p in path.rglob("*") if p.is_file())[:3]
        found = f" (it holds {', '.join(others)})" if others else " (it is empty)"
        raise InputError(
            f"corpus folder {str(path)!r} holds no corpus file{found}; accepted: files ending in "
            f"{', '.join(ACCEPTED_SUFFIXES)}, or a folder written by datasets' save_to_disk"
        )
    return files


def read_corpus_files(path: Path) -> pd.DataFrame:
    """Every document found at ``path`` as one table; ``source`` defaults to each row's file name."""
    frames = []
    for file in corpus_files(path):
        if file.suffix.lower() in TEXT_SUFFIXES:
            frames.append(read_text_file(file, path))
            continue
        frame = read_table_file(file)
        if "text" not in frame.columns:
            raise InputError(
                f"corpus file {str(file)!r} has no 'text' column (columns: {sorted(map(str, frame.columns))}); "
                f"accepted: {_format_of(file)}"
            )
        if "source" not in frame.columns:
            frame["source"] = file.relative_to(path).as_posix() if path.is_dir() else file.name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
