"""The sparsity section's figures: each protocol's numbers against the active ratio k / E."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tl_moe.analysis.sparsity_family import FAMILY_COMPARISONS
from tl_moe.report.figures import new_figure

__all__ = ["held_out_figure", "paper_figure"]


def paper_figure(table: pd.DataFrame, ks: tuple[int, ...]) -> Figure:
    """Paper protocol: mean best F1 vs active ratio, one line per k of ``ks`` (``table``: the paper table)."""
    fig, ax = new_figure(6.4, 4.2)
    for k in ks:
        points = table[table["k"] == k].sort_values("active_ratio")
        ax.plot(points["active_ratio"], points["mean_best_f1"], marker="o", label=f"k = {k}")
        for _, row in points.iterrows():
            ax.annotate(
                row["model"].removeprefix("toy/"),
                (row["active_ratio"], row["mean_best_f1"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("active ratio k / E (1.0 = dense twin)")
    ax.set_ylabel("mean over concepts of best test F1")
    ax.set_title("Paper protocol: probing F1 vs routing sparsity")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def held_out_figure(frame: pd.DataFrame, ks: tuple[int, ...]) -> Figure:
    """Held-out protocol: MoE − control (mean F1 difference, 95% CI) vs active ratio, per k of ``ks``
    (``frame``: the held-out F1 records)."""
    fig, ax = new_figure(6.4, 4.2)
    frame = frame[frame["estimate"].notna()]
    styles = {k: style for k, style in zip(ks, ("-", "--", ":"), strict=False)}
    for i, name in enumerate(FAMILY_COMPARISONS):
        for j, k in enumerate(ks):
            rows = frame[(frame["comparison"] == name) & (frame["k"] == k)].sort_values("active_ratio")
            if not len(rows):
                continue
            x = rows["active_ratio"].to_numpy(dtype=float) * 2 ** ((i - 1) * 0.04 + j * 0.015)
            estimate = rows["estimate"].to_numpy(dtype=float)
            low = estimate - rows["ci_low"].to_numpy(dtype=float)
            high = rows["ci_high"].to_numpy(dtype=float) - estimate
            ax.errorbar(
                x,
                estimate,
                yerr=[np.nan_to_num(low), np.nan_to_num(high)],
                marker="o",
                capsize=3,
                linestyle=styles.get(k, "-"),
                color=f"C{i}",
                label=f"{name}, k = {k}",
            )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("active ratio k / E")
    ax.set_ylabel("mean F1 difference (held-out), 95% CI")
    ax.set_title("Held-out protocol: MoE expert minus matched control")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig
