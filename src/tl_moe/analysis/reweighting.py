"""Re-weighting experts: scale chosen experts' mixing weights on a domain's text, chosen on one half
of the documents and reported on the other.

Definitions (docs/METHODS.md, "Re-weighting and steering experts"):

- A **re-weighting** ``(S, f)`` multiplies the mixing weight of every expert of the set ``S``
  (``(layer, expert)`` pairs, any layers) by the factor ``f`` wherever it is routed
  (:func:`~tl_moe.models.interventions.scale_expert_weights`; no re-routing, no renormalization).
- Its **loss change** on a set of documents is ``Σ_d S[d] / Σ_d N[d]``: ``S[d]`` sums
  ``loss(edited) − loss(clean)`` over document ``d``'s next-token positions, ``N[d]`` counts them
  (nats/token; negative = the re-weighting helps).
- **Selection** (documents with half 0 of the drivers' :func:`~tl_moe.analysis.splits.document_split`): for each domain
  ``D``, every candidate set (its domain experts, the driver experts, both) × every factor of the
  grid is run on ``D``'s selection documents; the pair with the lowest loss change is chosen.
- **Report** (half 1, disjoint): the chosen pair's loss change on ``D``'s held-out documents, beside
  the **control**: ``n_draws`` random sets that replace each chosen expert by one drawn uniformly
  from the ``pool`` non-chosen experts of its layer whose routing rate on ``D``'s selection
  documents is closest, re-weighted with the same factor (their loss changes averaged over draws).
  The difference chosen − control is paired (same documents in every bootstrap resample).
- **Draw-mean t interval** (:func:`draw_mean_intervals`): the control is a mean over a few random
  draws, so its interval must carry the draw-to-draw variance as well as the documents'. Every quantity
  that averages the draws (the control's loss change, chosen − control) gets
  ``estimate ± t(ν) √(V + B/m)`` (:func:`~tl_moe.analysis.stats.draw_mean_t`): ``V`` the
  document-bootstrap variance of the ratio of sums with every draw kept once, ``B`` the sample variance
  of the ``m`` per-draw ratios, ``ν`` Satterthwaite's degrees of freedom. The chosen re-weighting's own
  loss change does not depend on the draws and keeps its percentile document bootstrap.
- **Every domain is reported; none is singled out.** Over the domains whose difference has an
  interval (at least :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS` held-out documents), the
  two-sided draw-mean t p-value of chosen − control (:func:`holm_adjusted`) is Holm-adjusted, and each
  domain's interval is the t interval at Holm's step-down level (:func:`holm_steps`): the domain with
  the ``j``-th smallest p (from 0) gets level ``1 − α/(m − j)`` while every earlier one was rejected,
  and the level of the first non-rejected domain from there on, so an interval excludes 0 exactly when
  Holm rejects (family-wise error ``α`` over the ``m`` domains). A domain is *improved* when it is
  rejected with a negative difference.
- The **matrix** ``M[D, D']``: ``D``'s chosen re-weighting applied to ``D'``'s held-out documents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from tl_moe.analysis.edit_windows import EditLosses, Windows, by_document, edit_losses, ratio_intervals
from tl_moe.analysis.stats import DRAW_MEAN_METHOD, MIN_DOCUMENTS, Interval, draw_mean_t, resample_weights
from tl_moe.models.interventions import Intervention

__all__ = [
    "DEFAULT_FACTORS",
    "ExpertSet",
    "DrawMeanResamples",
    "draw_mean_intervals",
    "holm_adjusted",
    "holm_steps",
    "per_draw_intervals",
    "ReweightingStudy",
    "matched_random_sets",
    "ratio_per_draw",
    "resample_draw_mean",
    "reweighting_study",
    "scale_edit",
]

DEFAULT_FACTORS = (0.5, 0.8, 1.25, 1.5, 2.0)
"""Factors tried on the selection half."""

ExpertSet = tuple[tuple[int, int], ...]
"""``((layer, expert), ...)``, sorted."""


def scale_edit(experts: ExpertSet, factor: float) -> tuple[Intervention, ...]:
    """The edit that multiplies the mixing weights of ``experts`` by ``factor`` (one ``scale``
    intervention per layer, applied together)."""
    layers = sorted({layer for layer, _ in experts})
    return tuple(
        Intervention("scale", layer, tuple(sorted(e for l2, e in experts if l2 == layer)), float(factor))
        for layer in layers
    )


def matched_random_sets(
    chosen: ExpertSet,
    rates: Mapping[int, np.ndarray],
    n_draws: int,
    *,
    pool: int = 3,
    seed: int = 0,
) -> list[ExpertSet]:
    """``n_draws`` random sets matched to ``chosen`` on routing rate, layer by layer.

    Args:
        chosen: the set to match.
        rates: layer -> routing rate of each of its experts ``[expert]`` (selection documents).
        pool: each chosen expert is replaced by one of the ``pool`` non-chosen experts of its layer
            with the closest rate, drawn uniformly (without repeats within a draw).
    """
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        picked: list[tuple[int, int]] = []
        for layer, expert in chosen:
            taken = {e for lay, e in chosen if lay == layer} | {e for lay, e in picked if lay == layer}
            free = [e for e in range(len(rates[layer])) if e not in taken]
            if not free:
                continue
            free.sort(key=lambda e: abs(rates[layer][e] - rates[layer][expert]))
            picked.append((layer, int(rng.choice(free[:pool]))))
        draws.append(tuple(sorted(picked)))
    return draws


@dataclass(frozen=True)
class ReweightingStudy:
    """What :func:`reweighting_study` returns (every loss change in nats/token).

    Attributes:
        grid: one row per (domain, candidate set, factor): the selection-half loss change.
        gains: one row per domain: the chosen set and factor, and on the domain's held-out documents
            the loss change of the chosen re-weighting, of the matched random control (mean of the
            draws), and chosen − control, each with its 95% interval (the chosen one's a percentile
            document bootstrap, the two that average the draws a draw-mean t interval with its ``df``:
            :func:`draw_mean_intervals`), ``n`` documents; beside them the
            Holm-adjusted test over the domains (:func:`holm_adjusted`): ``chosen − control p``,
            ``p (Holm)``, the Holm interval (``Holm level``, ``Holm ci low`` / ``high``) and
            ``improved (Holm)`` / ``worse (Holm)``.
        matrix: one row per (re-weighted domain, evaluated domain) with the loss change and interval.
        controls: the random sets drawn per domain.
        selection_docs / evaluation_docs: the corpus rows each side used (disjoint).
    """

    grid: pd.DataFrame
    gains: pd.DataFrame
    matrix: pd.DataFrame
    controls: dict[str, list[ExpertSet]]
    selection_docs: frozenset[int]
    evaluation_docs: frozenset[int]


def ratio_per_draw(
    sums: Float[np.ndarray, "... draw document"], counts: Float[np.ndarray, "... document"]
) -> Callable[[np.ndarray], np.ndarray]:
    """The per-draw loss change ``Σ_doc w sums[..., k] / Σ_doc w counts`` as a function of document
    weights ``w [batch, document]`` -> ``[..., batch, draw]`` (the ratio of sums over the weighted
    documents, each draw alone as the control); its mean over draws is the draw mean's ratio."""
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)

    def per_draw(weights: np.ndarray) -> np.ndarray:
        numerator = np.swapaxes(sums @ weights.T, -1, -2)  # [..., batch, draw]
        denominator = np.maximum(counts @ weights.T, 1.0)  # [..., batch]
        return numerator / denominator[..., None]

    return per_draw


@dataclass(frozen=True)
class DrawMeanResamples:
    """A statistic whose control is the mean of ``m`` random draws, on the observed documents and on
    document resamples (every draw kept once), vectorized over leading axes (rows, domains, seeds).

    Attributes:
        estimate: ``[...]`` the draw mean of the per-draw statistic on the observed documents.
        draws: ``[..., draw]`` the per-draw statistic on the observed documents.
        resampled: ``[..., resample]`` the draw mean on each document resample (the one-stage document
            bootstrap; its variance is ``V`` of :func:`~tl_moe.analysis.stats.draw_mean_t`).
        n_documents: the documents resampled.
    """

    estimate: Float[np.ndarray, "..."]
    draws: Float[np.ndarray, "... draw"]
    resampled: Float[np.ndarray, "... resample"]
    n_documents: int

    @property
    def n_draws(self) -> int:
        return self.draws.shape[-1]

    @property
    def method(self) -> str:
        """:data:`~tl_moe.analysis.stats.DRAW_MEAN_METHOD` with two draws or more; one draw: the
        percentile document bootstrap (the draw held fixed)."""
        return DRAW_MEAN_METHOD if self.n_draws >= 2 else "percentile"

    def test(self, confidence: float | np.ndarray = 0.95) -> dict[str, np.ndarray]:
        """``low``, ``high`` (the interval at ``confidence``, a scalar or one per leading entry),
        ``p_value`` (two-sided, of 0), ``df`` (NaN for one draw) and ``bias``, each ``[...]``.

        Two draws or more: :func:`~tl_moe.analysis.stats.draw_mean_t` (``estimate ± t(ν) √(V + B/m)``).
        One draw: the percentile interval of ``resampled`` and the percentile-bootstrap p-value
        ``min(1, 2 (1 + #{resamples on the far side of 0}) / (1 + B))``."""
        if self.n_draws >= 2:
            return draw_mean_t(self.estimate, self.resampled, self.draws, self.n_documents, confidence)
        tail = (1 - np.asarray(confidence, dtype=np.float64)) / 2
        low, high = _quantiles(self.resampled, tail), _quantiles(self.resampled, 1 - tail)
        below, above = (self.resampled <= 0).sum(-1), (self.resampled >= 0).sum(-1)
        size = self.resampled.shape[-1]
        return {
            "low": low,
            "high": high,
            "p_value": np.minimum(1.0, 2 * (1 + np.minimum(below, above)) / (1 + size)),
            "df": np.full(np.shape(self.estimate), np.nan),
            "bias": self.resampled.mean(-1) - self.estimate,
        }


def _quantiles(values: Float[np.ndarray, "... sample"], q: float | np.ndarray) -> np.ndarray:
    """``np.quantile``'s linear quantile ``q`` (a scalar or one per leading entry) of each row of
    ``values``."""
    ordered = np.sort(values, axis=-1)
    position = np.broadcast_to(np.asarray(q, dtype=np.float64), ordered.shape[:-1]) * (ordered.shape[-1] - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, ordered.shape[-1] - 1)
    low = np.take_along_axis(ordered, below[..., None], -1)[..., 0]
    high = np.take_along_axis(ordered, above[..., None], -1)[..., 0]
    return low + (position - below) * (high - low)


def resample_draw_mean(
    per_draw: Callable[[np.ndarray], np.ndarray],
    n_documents: int,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> DrawMeanResamples:
    """:class:`DrawMeanResamples` of a per-draw statistic.

    Args:
        per_draw: maps document weights ``[batch, document]`` (how often each document is drawn; all
            ones for the observed data) to the statistic with each draw alone as the control
            ``[..., batch, draw]`` (e.g. :func:`ratio_per_draw`).
        n_documents: documents; the resamples are ``np.random.default_rng(seed).integers(0,
            n_documents, (size, n_documents))`` in batches of at most ``n_resamples`` rows.
    """
    observed = np.asarray(per_draw(np.ones((1, n_documents))), dtype=np.float64)[..., 0, :]
    rng = np.random.default_rng(seed)
    batch = max(1, min(n_resamples, int(2e7 // max(1, n_documents * observed.size))))
    chunks = []
    for size in np.diff(np.r_[0:n_resamples:batch, n_resamples]):
        weights = resample_weights(rng.integers(0, n_documents, (int(size), n_documents)), n_documents)
        chunks.append(np.asarray(per_draw(weights), dtype=np.float64).mean(-1))
    return DrawMeanResamples(observed.mean(-1), observed, np.concatenate(chunks, -1), n_documents)


def per_draw_intervals(
    per_draw: Callable[[np.ndarray], np.ndarray],
    n_documents: int,
    n_draws: int,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    what: str = "the statistic",
    min_documents: int = MIN_DOCUMENTS,
) -> list[tuple[Interval, float]]:
    """Each row's draw mean of a per-draw statistic with its 95% interval and degrees of freedom: the
    draw-mean t interval (:meth:`DrawMeanResamples.test`) with two draws or more, the percentile
    document bootstrap (NaN degrees of freedom) with one. Every row sees the same resampled documents.

    Args:
        per_draw: document weights ``[batch, document]`` -> ``[row, batch, draw]`` (as in
            :func:`resample_draw_mean`); it must give finite values.
        n_draws: the control's draws (0: every interval unavailable, "no control was drawn").

    Unavailable (NaN bounds, with the reason) below ``min_documents`` documents or without a drawn
    control.
    """
    nan = float("nan")
    if n_documents < min_documents or not n_draws:
        observed = np.asarray(per_draw(np.ones((1, n_documents))))[:, 0]
        with np.errstate(invalid="ignore"):
            estimates = observed.mean(-1) if n_draws else np.full(len(observed), nan)
        reason = (
            f"{n_documents} document(s) behind {what}; a document-level interval needs at least {min_documents}"
            if n_documents < min_documents
            else "no control was drawn"
        )
        return [
            (Interval(float(e), nan, nan, n_documents, 0.95, "none", False, reason), nan) for e in estimates
        ]
    resamples = resample_draw_mean(per_draw, n_documents, n_resamples=n_resamples, seed=seed)
    t = resamples.test(0.95)
    return [
        (
            Interval(
                float(resamples.estimate[r]),
                float(t["low"][r]),
                float(t["high"][r]),
                n_documents,
                0.95,
                resamples.method,
                bias=float(t["bias"][r]),
                p_value=float(t["p_value"][r]),
            ),
            float(t["df"][r]),
        )
        for r in range(len(resamples.estimate))
    ]


def draw_mean_intervals(
    sums: Float[np.ndarray, "row draw document"],
    counts: Float[np.ndarray, " document"],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    what: str = "the loss change",
    min_documents: int = MIN_DOCUMENTS,
) -> list[tuple[Interval, float]]:
    """``mean_k Σ_doc sums[r, k] / Σ_doc counts`` for each row ``r`` whose value depends on the
    control's draws ``k`` (the control's loss change, chosen − control), with its 95% interval and
    degrees of freedom (:func:`per_draw_intervals` of :func:`ratio_per_draw`): the draw-mean t interval
    (:func:`~tl_moe.analysis.stats.draw_mean_t`, ``V`` the document-bootstrap variance of the ratio of
    sums) with two draws or more, the percentile document bootstrap with one. A control that was not
    drawn (no draw, or NaN sums) gives unavailable intervals."""
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    drawn = sums.shape[1] if np.isfinite(sums).all() else 0
    return per_draw_intervals(
        ratio_per_draw(sums, counts),
        len(counts),
        drawn,
        n_resamples=n_resamples,
        seed=seed,
        what=what,
        min_documents=min_documents,
    )


def holm_steps(pvalues: Float[np.ndarray, "... member"], alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Holm's step-down over the last axis (a family), vectorized over leading axes; NaN p-values are
    not tested and do not count in the family.

    Returns ``[..., member]`` arrays: ``p (Holm)`` (the ``j``-th smallest of ``m`` p-values becomes
    ``max_{i <= j} min(1, (m − i) p_(i))``, ``j`` from 0), ``alpha`` (the error level of the member's
    interval: ``α / (m − j)`` while every smaller p was rejected, then that of the first non-rejected
    member) and ``rejected``; NaN / False where untested.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, axis=-1, kind="stable")  # NaN last
    ordered = np.take_along_axis(p, order, -1)
    m = np.isfinite(p).sum(-1, keepdims=True)
    step = np.arange(p.shape[-1])
    left = (m - step).astype(np.float64)
    tested = step < m
    with np.errstate(invalid="ignore", divide="ignore"):
        adjusted = np.maximum.accumulate(np.where(tested, np.minimum(1.0, left * ordered), 0.0), -1)
        fails = ~(ordered <= alpha / left) | ~tested
        stop = np.where(fails.any(-1), fails.argmax(-1), p.shape[-1])[..., None]
        level = np.where(step < stop, alpha / left, alpha / (m - stop))
    sorted_out = {
        "p (Holm)": np.where(tested, adjusted, np.nan),
        "alpha": np.where(tested, level, np.nan),
        "rejected": tested & (step < stop),
    }
    out = {}
    for key, values in sorted_out.items():
        scattered = np.empty_like(values)
        np.put_along_axis(scattered, order, values, -1)
        out[key] = scattered
    return out


def holm_adjusted(
    differences: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    min_documents: int = MIN_DOCUMENTS,
) -> pd.DataFrame:
    """Holm-adjusted tests and intervals of a per-document ratio, one per family member.

    Args:
        differences: name -> ``(sums [document] or [draw, document], counts [document])``: the
            member's statistic is ``mean_draw Σ sums / Σ counts`` (e.g. chosen − control loss change of
            each control draw, summed per held-out document). Its test is the draw-mean t test with two
            draws or more, the percentile document bootstrap with one (:meth:`DrawMeanResamples.test`;
            every member's documents resampled with ``seed``, so a member at level 0.95 gets the interval
            :func:`draw_mean_intervals` gives with the same seed).
        alpha: the family-wise error rate.

    Returns:
        One row per member: ``estimate``, the two-sided ``p``, ``p (Holm)``, the interval ``level`` of
        Holm's step-down (:func:`holm_steps`) and the member's interval at that level (``ci low`` /
        ``ci high``: a t interval with the t quantile at that level, so it excludes 0 exactly when Holm
        rejects), ``rejected``, ``method``, ``df`` and the ``documents``. Members with fewer than
        ``min_documents`` documents or an undefined statistic are not tested
        (``unavailable`` says why) and do not count in the family.
    """
    rows, tests = [], {}
    for name, (sums, counts) in differences.items():
        sums, counts = np.atleast_2d(np.asarray(sums, np.float64)), np.asarray(counts, np.float64)
        estimate = float(sums.mean(0).sum() / max(counts.sum(), 1.0)) if len(counts) else float("nan")
        row = {"name": name, "estimate": estimate, "documents": len(counts), "unavailable": "", "p": np.nan}
        if len(counts) < min_documents:
            row["unavailable"] = f"{len(counts)} documents; a document-level interval needs {min_documents}"
        elif not sums.size or not np.isfinite(sums).all():
            row["unavailable"] = "no control was drawn"
        else:
            tests[name] = resample_draw_mean(
                ratio_per_draw(sums, counts), len(counts), n_resamples=n_resamples, seed=seed
            )
            row["p"] = float(tests[name].test()["p_value"])
            row["method"] = tests[name].method
        rows.append(row)
    frame = pd.DataFrame(rows)
    steps = holm_steps(frame["p"].to_numpy(dtype=float), alpha)
    frame["p (Holm)"] = steps["p (Holm)"]
    frame["level"] = 1 - steps["alpha"]
    frame["rejected"] = steps["rejected"]
    for column in ("ci low", "ci high", "df"):
        frame[column] = np.nan
    frame["method"] = frame["method"] if "method" in frame else None
    for i in frame.index[frame["unavailable"] == ""]:
        t = tests[frame.at[i, "name"]].test(float(frame.at[i, "level"]))
        frame.at[i, "ci low"], frame.at[i, "ci high"] = float(t["low"]), float(t["high"])
        frame.at[i, "df"] = float(t["df"])
    return frame


def _rates(routed: torch.Tensor, windows: Windows, layers: Sequence[int]) -> dict[int, np.ndarray]:
    """layer -> routed tokens / real tokens of each expert over ``windows``."""
    tokens = max(int(windows.attention_mask.sum()), 1)
    total = routed.sum(-1).double().numpy() / tokens  # [layer, expert]
    return {layer: total[i] for i, layer in enumerate(layers)}


def interval_columns(prefix: str, interval: Interval, df: float | None = None) -> dict[str, float | str]:
    """``prefix``, its ``ci low`` / ``ci high`` and ``interval method``; with ``df``, the degrees of
    freedom of a draw-mean t interval (NaN for another method)."""
    columns = {
        prefix: interval.estimate,
        f"{prefix} ci low": interval.low,
        f"{prefix} ci high": interval.high,
        f"{prefix} interval method": interval.method,
    }
    if df is not None:
        columns[f"{prefix} df"] = df
    return columns


def _describe(experts: ExpertSet) -> str:
    return " ".join(f"L{layer}E{expert}" for layer, expert in experts)


def reweighting_study(
    model,
    selection: Windows,
    evaluation: Windows,
    candidates: Mapping[str, Mapping[str, ExpertSet]],
    *,
    factors: Sequence[float] = DEFAULT_FACTORS,
    n_draws: int = 5,
    pool: int = 3,
    n_resamples: int = 2000,
    seed: int = 0,
    batch_size: int = 16,
    routed_selection: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    progress: bool = False,
    min_documents: int = MIN_DOCUMENTS,
) -> ReweightingStudy:
    """Choose a re-weighting per domain on ``selection`` and report it on ``evaluation``.

    Args:
        selection / evaluation: windows of disjoint documents (the caller splits them); a window's
            group is its domain.
        candidates: domain -> {set name: experts}; empty sets are skipped.
        factors: the grid of factors.
        n_draws, pool: the random control (:func:`matched_random_sets`).
        routed_selection: clean routing counts ``[layer, expert, window]`` of ``selection`` (computed
            when None) for the frequency matching.
        min_documents: fewest held-out documents behind an interval (fewer: unavailable, not tested).
    """
    from tl_moe.analysis.edit_windows import routed_counts

    overlap = set(selection.doc.tolist()) & set(evaluation.doc.tolist())
    if overlap:
        raise ValueError(f"selection and evaluation windows share documents {sorted(overlap)[:5]}.")
    layers = tuple(model.moe_cfg.sparse_layers if layers is None else layers)
    if routed_selection is None:
        routed_selection = routed_counts(model, selection, layers, batch_size=batch_size)
    domains = [d for d in candidates if any(candidates[d].values())]
    grid_rows, chosen, controls = [], {}, {}
    for d in domains:
        windows_d = [g == d for g in selection.group]
        sel = selection.select(windows_d)
        options = [(name, tuple(sorted(s)), f) for name, s in candidates[d].items() if s for f in factors]
        losses = edit_losses(
            model,
            sel,
            [scale_edit(s, f) for _, s, f in options],
            batch_size=batch_size,
            progress=progress,
            description=f"re-weighting grid, {d}",
        )
        sums, _ = by_document(losses.change, sel.doc)
        counts, _ = by_document(losses.count, sel.doc)
        mean = sums.sum(-1) / max(counts.sum(), 1)
        for (name, s, f), value in zip(options, mean, strict=True):
            grid_rows.append(
                {
                    "domain": d,
                    "expert set": name,
                    "experts": _describe(s),
                    "n experts": len(s),
                    "factor": f,
                    "loss change (selection)": float(value),
                    "selection documents": len(counts),
                }
            )
        best = int(np.argmin(mean))
        chosen[d] = (*options[best], float(mean[best]))
        rates = _rates(routed_selection[:, :, torch.tensor(windows_d, dtype=torch.bool)], sel, layers)
        controls[d] = matched_random_sets(options[best][1], rates, n_draws, pool=pool, seed=seed)

    # Report half: every domain's text gets every chosen re-weighting (the matrix), and its own
    # domain's controls.
    gains_rows, matrix_rows, family = [], [], {}
    for d_eval in sorted({g for g in evaluation.group}):
        ev = evaluation.of_group(d_eval)
        main = [scale_edit(chosen[d][1], chosen[d][2]) for d in domains]
        own = [scale_edit(c, chosen[d_eval][2]) for c in controls.get(d_eval, []) if c]
        losses: EditLosses = edit_losses(
            model, ev, main + own, batch_size=batch_size, progress=progress, description=f"held out, {d_eval}"
        )
        sums, _ = by_document(losses.change, ev.doc)
        counts, _ = by_document(losses.count, ev.doc)
        clean, _ = by_document(losses.clean, ev.doc)
        n_docs = len(counts)
        intervals = ratio_intervals(
            sums[: len(main)], counts, n_resamples=n_resamples, seed=seed, min_documents=min_documents
        )
        for d, interval in zip(domains, intervals, strict=True):
            matrix_rows.append(
                {
                    "re-weighted domain": d,
                    "evaluated on": d_eval,
                    **interval_columns("loss change", interval),
                    "documents": n_docs,
                }
            )
        if d_eval not in chosen:
            continue
        name, s, f, selected = chosen[d_eval]
        j = domains.index(d_eval)
        draws = sums[len(main) :] if own else np.full((1, n_docs), np.nan)  # [draw, document]
        family[d_eval] = (sums[j] - draws, counts)
        mine, base = ratio_intervals(
            np.stack([sums[j], clean]),
            counts,
            n_resamples=n_resamples,
            seed=seed + 1,
            what=f"the loss change on {d_eval}",
            min_documents=min_documents,
        )
        (ctrl, ctrl_df), (diff, diff_df) = draw_mean_intervals(
            np.stack([draws, sums[j] - draws]),
            counts,
            n_resamples=n_resamples,
            seed=seed + 1,
            what=f"the loss change on {d_eval}",
            min_documents=min_documents,
        )
        gains_rows.append(
            {
                "domain": d_eval,
                "expert set": name,
                "experts": _describe(s),
                "n experts": len(s),
                "factor": f,
                "loss change (selection)": selected,
                **interval_columns("loss change", mine),
                **interval_columns("control loss change", ctrl, ctrl_df),
                **interval_columns("chosen − control", diff, diff_df),
                "helps on selection": selected < 0,
                "clean loss": base.estimate,
                "control draws": len(own),
                "documents": n_docs,
            }
        )
    return ReweightingStudy(
        grid=pd.DataFrame(grid_rows),
        gains=_with_holm(pd.DataFrame(gains_rows), family, n_resamples, seed + 1, min_documents),
        matrix=pd.DataFrame(matrix_rows),
        controls=controls,
        selection_docs=frozenset(selection.doc.tolist()),
        evaluation_docs=frozenset(evaluation.doc.tolist()),
    )


def _with_holm(
    gains: pd.DataFrame, family: Mapping, n_resamples: int, seed: int, min_documents: int = MIN_DOCUMENTS
) -> pd.DataFrame:
    """``gains`` with the Holm-adjusted test of chosen − control over its domains (:func:`holm_adjusted`)."""
    if gains.empty:
        return gains
    holm = holm_adjusted(family, n_resamples=n_resamples, seed=seed, min_documents=min_documents).set_index(
        "name"
    )
    holm = holm.loc[gains["domain"]]
    gains = gains.copy()
    gains["chosen − control p"] = holm["p"].to_numpy(dtype=float)
    gains["p (Holm)"] = holm["p (Holm)"].to_numpy(dtype=float)
    gains["Holm level"] = holm["level"].to_numpy(dtype=float)
    gains["Holm ci low"] = holm["ci low"].to_numpy(dtype=float)
    gains["Holm ci high"] = holm["ci high"].to_numpy(dtype=float)
    gains["Holm df"] = holm["df"].to_numpy(dtype=float)
    rejected = holm["rejected"].to_numpy(dtype=bool)
    estimate = holm["estimate"].to_numpy(dtype=float)
    gains["improved (Holm)"] = rejected & (estimate < 0)
    gains["worse (Holm)"] = rejected & (estimate > 0)
    gains["Holm unavailable"] = holm["unavailable"].to_numpy()
    return gains


def selection_domain_experts(
    routed: torch.Tensor,
    windows: Windows,
    layers: Sequence[int],
    *,
    threshold: float = 0.5,
    min_tokens: int = 50,
    fdr: float = 0.05,
    n_permutations: int = 999,
    seed: int = 0,
    max_experts: int = 8,
    min_documents: int = MIN_DOCUMENTS,
):
    """Domain experts of each domain from the selection windows alone: the domains analysis's rule
    (:class:`~tl_moe.analysis.domain_experts.DomainExperts`: Benjamini–Hochberg q ≤ ``fdr`` under
    document-level relabelling, with at least ``n_permutations`` permutations and as many as
    :func:`~tl_moe.analysis.domain_experts.permutations_for_discovery` asks; ``threshold`` is
    descriptive only), at most ``max_experts`` per domain (highest score first).

    Args:
        routed: clean routing counts ``[layer, expert, window]`` of ``windows``.

    Returns:
        ``(domain -> ExpertSet, the fitted DomainExperts)``; no domain experts (empty dict) when the
        permutation test cannot run (fewer than ``min_documents`` documents).
    """
    from tl_moe.analysis.domain_experts import DomainExperts, permutations_for_discovery
    from tl_moe.errors import InputError

    names = sorted(set(windows.group))
    code = torch.tensor([names.index(g) for g in windows.group], dtype=torch.long)
    onehot = torch.nn.functional.one_hot(code, len(names)).double()  # [window, domain]
    tokens = windows.attention_mask.sum(-1).double()
    counts = routed.double() @ onehot  # [layer, expert, domain]
    experts = DomainExperts(threshold=threshold, min_tokens=min_tokens).fit(
        counts, tokens @ onehot, names, layers=layers
    )
    doc_counts, rows = by_document(routed.double(), windows.doc)  # [layer, expert, doc]
    doc_tokens, _ = by_document(tokens, windows.doc)
    doc_code, _ = by_document(code.double(), windows.doc)
    windows_per_doc, _ = by_document(torch.ones(len(windows)), windows.doc)
    try:
        experts.permutation_test(
            torch.from_numpy(doc_counts).permute(2, 0, 1),
            torch.from_numpy(doc_tokens),
            torch.from_numpy(np.rint(doc_code / windows_per_doc)).long(),
            n_permutations=max(
                n_permutations, permutations_for_discovery(int((~experts.insufficient_tokens_).sum()), fdr)
            ),
            alpha=fdr,
            seed=seed,
            min_documents=min_documents,
        )
    except InputError:
        return {}, experts
    frame = experts.to_frame()
    frame = frame[frame["domain_expert"]].sort_values("score", ascending=False)
    out: dict[str, ExpertSet] = {}
    for name, group in frame.groupby("favoured_domain"):
        top = group.head(max_experts)
        out[str(name)] = tuple(sorted((int(r.layer), int(r.expert)) for r in top.itertuples(index=False)))
    return out, experts
