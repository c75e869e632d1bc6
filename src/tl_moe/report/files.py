"""Files of a report directory: figure PNGs, table CSV/parquet pairs, atomic text writes, safe names."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

__all__ = [
    "FIGURE_DPI",
    "check_name",
    "column_label",
    "has_default_index",
    "save_figure",
    "save_table",
    "write_text",
]

FIGURE_DPI = 150
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str, what: str) -> str:
    """``name`` unchanged if it is safe as a file name and an HTML anchor; otherwise a ValueError."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} is not accepted: use 1-128 characters from letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (it becomes a file name and an HTML anchor)."
        )
    return name


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.chmod(tmp, _new_file_mode())  # mkstemp makes it 0600; a report is as readable as any new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig: Figure, path: Path) -> None:
    """Save ``fig`` as a PNG at :data:`FIGURE_DPI`, then close it (drops it from pyplot if pyplot made it)."""
    if not isinstance(fig, Figure):
        raise TypeError(f"Expected a matplotlib.figure.Figure, got {type(fig).__name__}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI, format="png", bbox_inches="tight", facecolor="white")
    if getattr(fig.canvas, "manager", None) is not None:
        # Only pyplot gives a figure a manager, so pyplot is already imported and its state is the caller's.
        import matplotlib.pyplot as plt

        plt.close(fig)


def column_label(label: object) -> str:
    """A column label as text: MultiIndex tuples joined by ' / '."""
    if isinstance(label, tuple):
        return " / ".join(str(part) for part in label)
    return str(label)


def has_default_index(frame: pd.DataFrame) -> bool:
    """Whether ``frame``'s index is the unnamed 0..n-1 range, which carries no information worth saving."""
    index = frame.index
    return isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and index.name is None


def save_table(frame: pd.DataFrame, csv_path: Path, parquet_path: Path) -> None:
    """Save the full ``frame`` as CSV and parquet (the index too, unless it is the default range).

    Column labels are written as text. An object column that parquet cannot type (mixed Python
    types) is written to parquet as strings; the CSV always holds the values as pandas prints them.
    """
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table = frame.copy(deep=False)
    table.columns = [column_label(label) for label in frame.columns]
    table.to_csv(csv_path, index=not has_default_index(frame))
    try:
        table.to_parquet(parquet_path, index=None)
    except (ValueError, TypeError, NotImplementedError):  # pyarrow's ArrowInvalid / ArrowTypeError / ...
        parquet_path.unlink(missing_ok=True)
        as_text = {
            name: table[name].astype("string") for name in table.columns if table[name].dtype == object
        }
        table.assign(**as_text).to_parquet(parquet_path, index=None)
