"""Figure helpers for the analyses: line plots, heatmaps and grouped bar plots.

Each helper returns a new :class:`matplotlib.figure.Figure` drawn on its own Agg canvas. Nothing
here imports ``matplotlib.pyplot`` or changes the global backend or rc parameters, so the helpers
are safe in scripts, on headless servers and in notebooks (a returned figure displays inline
when it is the last expression of a cell).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from jaxtyping import Float
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

__all__ = ["bar_plot", "heatmap", "line_plot", "new_figure"]

# Seven markers against ten default colours: the (colour, marker) pair repeats only after 70 lines.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
# At most this many tick labels on a heatmap axis; longer axes are labelled every n-th row/column.
_MAX_TICK_LABELS = 40
# Numeric x axes with at most this many distinct values get a tick at each value.
_MAX_EXACT_TICKS = 16
# Legends with more entries than this go outside the axes, on the right.
_MAX_LEGEND_INSIDE = 8


def new_figure(width: float = 6.4, height: float = 4.0) -> tuple[Figure, Axes]:
    """A figure of ``width`` x ``height`` inches with one axes, on an Agg canvas, with constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _require_columns(frame: pd.DataFrame, columns: Sequence[str | None], caller: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{caller} expects a pandas.DataFrame, got {type(frame).__name__}.")
    missing = [c for c in columns if c is not None and c not in frame.columns]
    if missing:
        raise KeyError(f"{caller}: column(s) {missing} not in the frame; available: {list(frame.columns)}.")


def _levels(values: pd.Series) -> list[Any]:
    """Distinct values in display order: category order, sorted if numeric, else order of first appearance."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = set(values.dropna())
        return [level for level in values.cat.categories if level in present]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return sorted(values.dropna().unique().tolist())
    return values.dropna().unique().tolist()


def _reject_duplicates(frame: pd.DataFrame, keys: list[str], caller: str) -> None:
    repeated = frame.duplicated(subset=keys, keep=False)
    if repeated.any():
        example = frame.loc[repeated, keys].iloc[0].to_dict()
        raise ValueError(
            f"{caller}: several rows share {example}; one row per {tuple(keys)} is accepted. "
            f"Aggregate first, e.g. frame.groupby({keys})[y].mean().reset_index()."
        )


def _legend(ax: Axes, title: str | None, n_entries: int) -> None:
    columns = max(1, math.ceil(n_entries / 20))
    if n_entries > _MAX_LEGEND_INSIDE:
        ax.legend(title=title, fontsize="small", ncols=columns, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(title=title, fontsize="small")


def _label(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def line_plot(
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    logx: bool = False,
) -> Figure:
    """One line with markers per value of ``hue`` (or a single line), ``y`` against ``x``, with a legend.

    Each line's points are sorted by ``x``; each (hue, x) pair must occur once. Axis labels default
    to the column names. With ``logx`` the x axis is logarithmic (all x must be > 0). A numeric x
    with at most 16 distinct values gets a tick at each of them (e.g. k = 1, 2, 4, ..., 64).
    """
    _require_columns(frame, [x, y, hue], "line_plot")
    _reject_duplicates(frame, [x] if hue is None else [hue, x], "line_plot")
    numeric_x = pd.api.types.is_numeric_dtype(frame[x]) and not pd.api.types.is_bool_dtype(frame[x])
    if logx and not (numeric_x and (frame[x] > 0).all()):
        raise ValueError(f"line_plot: logx needs a numeric column {x!r} with all values > 0.")
    fig, ax = new_figure()
    levels = [None] if hue is None else _levels(frame[hue])
    for i, level in enumerate(levels):
        rows = frame if level is None else frame[frame[hue] == level]
        rows = rows.sort_values(x)
        label = None if level is None else str(level)
        ax.plot(
            rows[x].to_numpy(),
            rows[y].to_numpy(),
            marker=_MARKERS[i % len(_MARKERS)],
            markersize=4,
            label=label,
        )
    if logx:
        ax.set_xscale("log")
    distinct_x = _levels(frame[x]) if numeric_x else []
    if 0 < len(distinct_x) <= _MAX_EXACT_TICKS:
        ax.set_xticks(distinct_x, labels=[f"{v:g}" for v in distinct_x])
        ax.set_xticks([], minor=True)
    ax.grid(True, alpha=0.3)
    if hue is not None:
        _legend(ax, hue, len(levels))
    _label(ax, title, x if xlabel is None else xlabel, y if ylabel is None else ylabel)
    return fig


def _as_matrix(matrix: Any) -> np.ndarray:
    if isinstance(matrix, pd.DataFrame):
        return matrix.to_numpy(dtype=float)
    if type(matrix).__module__.startswith("torch"):
        return matrix.detach().to("cpu").double().numpy()
    return np.asarray(matrix, dtype=float)


def _tick_positions(labels: Sequence[Any]) -> list[int]:
    step = max(1, math.ceil(len(labels) / _MAX_TICK_LABELS))
    return list(range(0, len(labels), step))


def heatmap(
    matrix: Float[np.ndarray, "rows cols"] | pd.DataFrame | Any,
    row_labels: Sequence[Any] | None = None,
    col_labels: Sequence[Any] | None = None,
    title: str = "",
    cmap: str | Colormap = "viridis",
    colorbar_label: str = "",
    annotate: bool = False,
    *,
    fmt: str = ".2f",
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str = "",
    ylabel: str = "",
) -> Figure:
    """A heatmap of a 2-D ``matrix`` (array, tensor or DataFrame) with a colour bar; NaN cells are grey.

    Row 0 is at the top. Labels default to a DataFrame's index/columns, else to 0..n-1; long axes
    show every n-th label. With ``annotate`` each cell shows its value formatted with ``fmt``.
    """
    values = _as_matrix(matrix)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"heatmap expects a non-empty 2-D matrix, got shape {values.shape}.")
    n_rows, n_cols = values.shape
    if isinstance(matrix, pd.DataFrame):
        row_labels = list(matrix.index) if row_labels is None else row_labels
        col_labels = list(matrix.columns) if col_labels is None else col_labels
    row_labels = list(range(n_rows)) if row_labels is None else list(row_labels)
    col_labels = list(range(n_cols)) if col_labels is None else list(col_labels)
    if len(row_labels) != n_rows or len(col_labels) != n_cols:
        raise ValueError(
            f"heatmap: {len(row_labels)} row labels and {len(col_labels)} column labels given for a "
            f"{n_rows} x {n_cols} matrix; give one label per row and per column."
        )
    colormap = (matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap).with_extremes(bad="#d0d0d0")
    width = float(np.clip(2.5 + 0.3 * n_cols, 4.5, 12.0))
    height = float(np.clip(1.5 + 0.25 * n_rows, 3.0, 10.0))
    fig, ax = new_figure(width, height)
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap=colormap,
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, label=colorbar_label)
    rows, cols = _tick_positions(row_labels), _tick_positions(col_labels)
    ax.set_yticks(rows, labels=[str(row_labels[i]) for i in rows])
    long_labels = any(len(str(label)) > 3 for label in col_labels) or len(cols) > 20
    ax.set_xticks(cols, labels=[str(col_labels[j]) for j in cols], rotation=90 if long_labels else 0)
    if annotate:
        shades = image.cmap(image.norm(values))
        luminance = shades[..., :3] @ np.array([0.299, 0.587, 0.114])
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                color = "white" if luminance[i, j] < 0.5 else "black"
                ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize="x-small", color=color)
    _label(ax, title, xlabel, ylabel)
    return fig


def bar_plot(
    frame: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    horizontal: bool = False,
) -> Figure:
    """Bars of ``y`` for each category of ``x``, side by side for each value of ``hue`` (with a legend).

    Each (x, hue) pair must occur once; a missing pair leaves a gap. With ``horizontal`` the
    categories run down the y axis (easier to read for many or long category names). ``xlabel`` and
    ``ylabel`` name the ``x`` (category) and ``y`` (value) columns wherever they are drawn; they
    default to the column names.
    """
    _require_columns(frame, [x, y, hue], "bar_plot")
    _reject_duplicates(frame, [x] if hue is None else [x, hue], "bar_plot")
    categories = _levels(frame[x])
    groups = [None] if hue is None else _levels(frame[hue])
    if horizontal:
        fig, ax = new_figure(
            6.4, float(np.clip(1.0 + 0.25 * len(categories) * len(groups) ** 0.5, 3.0, 14.0))
        )
    else:
        fig, ax = new_figure()
    positions = np.arange(len(categories), dtype=float)
    width = 0.8 / len(groups)
    for i, level in enumerate(groups):
        rows = frame if level is None else frame[frame[hue] == level]
        heights = rows.set_index(x)[y].reindex(categories).to_numpy(dtype=float)
        offsets = positions + (i - (len(groups) - 1) / 2) * width
        label = None if level is None else str(level)
        if horizontal:
            ax.barh(offsets, heights, height=width, label=label)
        else:
            ax.bar(offsets, heights, width=width, label=label)
    names = [str(c) for c in categories]
    if horizontal:
        ax.set_yticks(positions, labels=names)
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
    else:
        rotate = any(len(n) > 6 for n in names) or len(names) > 12
        ax.set_xticks(positions, labels=names, rotation=90 if rotate else 0)
        ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if hue is not None:
        _legend(ax, hue, len(groups))
    category_label, value_label = (x if xlabel is None else xlabel), (y if ylabel is None else ylabel)
    if horizontal:
        _label(ax, title, value_label, category_label)
    else:
        _label(ax, title, category_label, value_label)
    return fig
