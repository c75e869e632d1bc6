"""Summaries of tables too long for the page: counts by status, score quantiles per group, top rows.

The rule (:meth:`tl_moe.report.Section.add_table`): a table with more rows than it may show
(``max_rows``) is not cut to its first rows; the page shows its summary and links the full CSV and
parquet files. What the summary holds is a :class:`TableSummary`, which a section may give for its
own tables (which column is the score, which columns group it, which identify a row); without one,
every numeric column's quantiles and the table's first rows are shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["QUANTILES", "TableSummary", "summarize"]

#: Quantiles of the score shown per group (with n, missing values and the mean).
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
_QUANTILE_NAMES = {0.0: "min", 1.0: "max"}


@dataclass(frozen=True)
class TableSummary:
    """How the page summarizes a long table.

    Attributes:
        score: the column whose distribution and top rows are shown (None: the quantiles of every
            numeric column, and the table's first rows in its own order).
        by: columns the score's quantiles are grouped by (e.g. ``("layer", "k")``; empty: one row).
        counts: columns whose rows are counted per value, most frequent first, missing values as
            ``(missing)`` (None: a column named ``status`` if the table has one).
        columns: the columns shown of the top rows (None: all).
        top: how many top rows are shown (None: the table's ``max_rows``).
        largest: top rows are the largest scores (False: the smallest).
        max_values: values listed per counted column (the rest are counted together as "(other)").
    """

    score: str | None = None
    by: tuple[str, ...] = ()
    counts: tuple[str, ...] | None = None
    columns: tuple[str, ...] | None = None
    top: int | None = 10
    largest: bool = True
    max_values: int = 12

    def check(self, frame: pd.DataFrame, name: str) -> None:
        """Refuse a summary that names columns the table lacks (one line, naming the table)."""
        named = [self.score, *self.by, *(self.counts or ()), *(self.columns or ())]
        missing = [column for column in named if column is not None and column not in frame.columns]
        if missing:
            raise ValueError(
                f"The summary of table {name!r} names columns {missing} it does not have; "
                f"its columns: {[str(c) for c in frame.columns]}."
            )
        if self.score is not None and not _is_number(frame[self.score]):
            raise ValueError(f"The summary score {self.score!r} of table {name!r} is not a numeric column.")


def _is_number(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _quantile_row(values: pd.Series) -> dict[str, float | int]:
    present = values.dropna().to_numpy(dtype=float)
    row: dict[str, float | int] = {"n": int(len(present)), "missing": int(values.isna().sum())}
    for q in QUANTILES:
        name = _QUANTILE_NAMES.get(q, f"q{round(q * 100):02d}")
        row[name] = float(np.quantile(present, q)) if len(present) else float("nan")
    row["mean"] = float(present.mean()) if len(present) else float("nan")
    return row


def _counts(frame: pd.DataFrame, column: str, max_values: int) -> pd.DataFrame:
    counts = frame[column].value_counts(dropna=False)
    shown = counts.iloc[:max_values]
    rows = [
        {column: "(missing)" if pd.isna(value) else value, "rows": int(n), "share": n / len(frame)}
        for value, n in shown.items()
    ]
    rest = int(counts.iloc[max_values:].sum())
    if rest:
        rows.append(
            {column: f"(other {len(counts) - max_values} values)", "rows": rest, "share": rest / len(frame)}
        )
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame, summary: TableSummary, max_rows: int) -> list[tuple[str, pd.DataFrame]]:
    """The parts the page shows instead of a long ``frame``: ``(title, small table)`` in order.

    1. per counted column: rows per value (``rows``, ``share`` of all rows);
    2. the score's n, missing values, quantiles (:data:`QUANTILES`, linear interpolation as
       ``numpy.quantile``) and mean, per group of ``summary.by``; without a score, the same for
       every numeric column over the whole table;
    3. the top rows by the score (missing scores never ranked), else the first rows.
    """
    parts: list[tuple[str, pd.DataFrame]] = []
    counted = summary.counts
    if counted is None:
        counted = ("status",) if "status" in frame.columns else ()
    for column in counted:
        parts.append((f"Rows by {column}", _counts(frame, column, summary.max_values)))
    if summary.score is not None:
        if summary.by:
            rows = [
                {
                    **dict(zip(summary.by, key if isinstance(key, tuple) else (key,), strict=True)),
                    **_quantile_row(group),
                }
                for key, group in frame.groupby(list(summary.by), sort=True, dropna=False)[summary.score]
            ]
            title = f"{summary.score} by {', '.join(summary.by)}"
        else:
            rows = [_quantile_row(frame[summary.score])]
            title = f"{summary.score} over all rows"
        parts.append((f"Distribution of {title}", pd.DataFrame(rows)))
    else:
        numeric = [c for c in frame.columns if _is_number(frame[c])]
        if numeric:
            rows = [{"column": str(c), **_quantile_row(frame[c])} for c in numeric]
            parts.append(("Distribution of every numeric column", pd.DataFrame(rows)))
    top = summary.top if summary.top is not None else max_rows
    columns = list(summary.columns) if summary.columns is not None else list(frame.columns)
    if summary.score is not None:
        ranked = frame.dropna(subset=[summary.score])
        ranked = (
            ranked.nlargest(top, summary.score) if summary.largest else ranked.nsmallest(top, summary.score)
        )
        order = "largest" if summary.largest else "smallest"
        parts.append((f"Top {len(ranked)} rows by {summary.score} ({order})", ranked[columns]))
    else:
        parts.append((f"First {min(top, len(frame))} rows (in the table's order)", frame.head(top)[columns]))
    return parts
