"""Reading a user's own corpus from ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` / ``.txt`` files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TEXT_SUFFIXES = (".txt",)
ACCEPTED_SUFFIXES = TABLE_SUFFIXES + TEXT_SUFFIXES


def read_table_file(path: Path) -> pd.DataFrame:
    """One file as a table: JSON Lines, a JSON array of records, CSV, or Parquet."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if suffix == ".json":
        return pd.read_json(path, dtype=False)
    if suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unsupported table suffix {suffix!r}; accepted: {', '.join(TABLE_SUFFIXES)}")


def read_text_file(path: Path, root: Path) -> pd.DataFrame:
    """A ``.txt`` file as one document; under a folder ``root``, its sub-folder names the domain.

    ``root/python/a.txt`` gets domain ``python``; a file directly in ``root`` (or given alone)
    gets no domain.
    """
    row = {"text": path.read_text(encoding="utf-8"), "source": path.name}
    if root.is_dir() and path.parent != root:
        row["domain"] = path.relative_to(root).parts[0]
        row["source"] = path.relative_to(root).as_posix()
    return pd.DataFrame([row])


def corpus_files(path: Path) -> list[Path]:
    """The accepted files at ``path``: the file itself, or every accepted file below a folder, sorted."""
    if path.is_file():
        if path.suffix.lower() not in ACCEPTED_SUFFIXES:
            raise ValueError(
                f"{path}: unsupported file type {path.suffix!r}; accepted: {', '.join(ACCEPTED_SUFFIXES)}"
            )
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in ACCEPTED_SUFFIXES)
    if not files:
        raise ValueError(
            f"{path}: folder holds no corpus file; accepted suffixes: {', '.join(ACCEPTED_SUFFIXES)}"
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
            raise ValueError(f"{file}: no 'text' column (columns: {sorted(map(str, frame.columns))})")
        if "source" not in frame.columns:
            frame["source"] = file.relative_to(path).as_posix() if path.is_dir() else file.name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
