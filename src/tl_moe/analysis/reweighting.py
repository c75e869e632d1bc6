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
- **Two-stage bootstrap** (:func:`draw_resampled_intervals`): the control is a mean over a few random
  draws, so its interval must carry the draw-to-draw variance as well as the documents'. Each resample
  draws the held-out documents with replacement and, within it, the ``n_draws`` control draws with
  replacement; the control (and chosen − control) is the mean over the resampled draws.
- **Every domain is reported; none is singled out.** Over the domains whose difference has an
  interval (at least :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS` held-out documents), the
  two-sided two-stage bootstrap p-value of chosen − control (:func:`holm_adjusted`) is Holm-adjusted, and each
  domain's interval is the percentile interval at Holm's step-down level: the domain with the ``j``-th
  smallest p (from 0) gets level ``1 − α/(m − j)`` while every earlier one was rejected, and the
  level of the first non-rejected domain from there on, so an interval excludes 0 exactly when Holm
  rejects (family-wise error ``α`` over the ``m`` domains). A domain is *improved* when it is rejected
  with a negative difference.
- The **matrix** ``M[D, D']``: ``D``'s chosen re-weighting applied to ``D'``'s held-out documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from tl_moe.analysis.edit_windows import EditLosses, Windows, by_document, edit_losses, ratio_intervals
from tl_moe.analysis.stats import Interval, cluster_bootstrap, resample_weights
from tl_moe.models.interventions import Intervention

__all__ = [
    "DEFAULT_FACTORS",
    "ExpertSet",
    "draw_resampled_intervals",
    "draw_weights",
    "holm_adjusted",
    "ReweightingStudy",
    "matched_random_sets",
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
            draws), and chosen − control, each with its 95% two-stage interval (documents, then the
            draws: :func:`draw_resampled_intervals`), ``n`` documents; beside them the
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


def draw_weights(
    rng: np.random.Generator, document_weights: Float[np.ndarray, "batch document"], n_draws: int
) -> Float[np.ndarray, "batch draw"]:
    """The second stage of the two-stage bootstrap: for each resample of documents, the ``n_draws``
    random control draws resampled with replacement, as weights summing to 1 (draw ``k`` drawn ``c_k``
    times weighs ``c_k / n_draws``). A row of all-ones document weights is the observed data (every
    document once), where every draw weighs ``1 / n_draws``."""
    document_weights = np.atleast_2d(document_weights)
    if n_draws == 0:
        return np.zeros((len(document_weights), 0))
    weights = rng.multinomial(n_draws, np.full(n_draws, 1.0 / n_draws), size=len(document_weights))
    weights = weights.astype(np.float64) / n_draws
    weights[(document_weights == 1).all(-1)] = 1.0 / n_draws
    return weights


def draw_resampled_intervals(
    sums: Float[np.ndarray, "row draw document"],
    counts: Float[np.ndarray, " document"],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    what: str = "the loss change",
) -> list[Interval]:
    """``mean_k Σ_doc sums[r, k] / Σ_doc counts`` for each row ``r``, with a 95% two-stage percentile
    bootstrap: documents resampled with replacement and, within each resample, the draws ``k``
    resampled with replacement (:func:`draw_weights`); every row sees the same resampled documents and
    draws (paired). A row that does not depend on the draws (the chosen re-weighting, the clean loss)
    repeats its per-document sums over the draw axis. Unavailable (NaN bounds, with the reason) below
    :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS` documents."""
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    rng = np.random.default_rng(seed + 7919)

    def ratio(weights: np.ndarray) -> np.ndarray:  # [batch, docs] -> [batch, rows]
        draws = draw_weights(rng, weights, sums.shape[1])
        total = np.einsum("bk,rkd,bd->br", draws, sums, weights)
        return total / np.maximum(weights @ counts, 1.0)[:, None]

    intervals = cluster_bootstrap(
        ratio, counts.shape[0], n_resamples=n_resamples, seed=seed, on_too_few="unavailable", what=what
    )
    return intervals if isinstance(intervals, list) else [intervals]


def _bootstrap_ratios(
    sums: Float[np.ndarray, "draw document"],
    counts: Float[np.ndarray, " document"],
    n_resamples: int,
    seed: int,
) -> Float[np.ndarray, " resample"]:
    """``mean_k Σ sums[k] / Σ counts`` on ``n_resamples`` two-stage resamples: documents drawn with
    replacement, and within each the draws ``k`` (:func:`draw_weights`)."""
    sums = np.atleast_2d(sums)
    rng = np.random.default_rng(seed)
    weights = resample_weights(rng.integers(0, len(counts), (n_resamples, len(counts))), len(counts))
    draws = draw_weights(rng, np.zeros_like(weights), sums.shape[0])
    return np.einsum("bk,kd,bd->b", draws, sums, weights) / np.maximum(weights @ counts, 1.0)


def holm_adjusted(
    differences: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Holm-adjusted tests and intervals of a per-document ratio, one per family member.

    Args:
        differences: name -> ``(sums [document] or [draw, document], counts [document])``: the
            member's statistic is ``mean_draw Σ sums / Σ counts`` (e.g. chosen − control loss change of
            each control draw, summed per held-out document); its resamples are two-stage (documents,
            then draws within them: :func:`draw_weights`).
        alpha: the family-wise error rate.

    Returns:
        One row per member: ``estimate``, two-sided percentile-bootstrap ``p`` (``(1 + #) / (1 + B)``
        of the resamples on the far side of 0, doubled), ``p (Holm)``, the interval ``level`` of
        Holm's step-down and its ``ci low`` / ``ci high``, ``rejected`` and the ``documents``. Members
        with fewer than :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS` documents or an undefined
        statistic are not tested (``unavailable`` says why) and do not count in the family.
    """
    from tl_moe.analysis.stats import MIN_DOCUMENTS

    rows, draws = [], {}
    for i, (name, (sums, counts)) in enumerate(differences.items()):
        sums, counts = np.atleast_2d(np.asarray(sums, np.float64)), np.asarray(counts, np.float64)
        estimate = float(sums.mean(0).sum() / max(counts.sum(), 1.0)) if len(counts) else float("nan")
        row = {"name": name, "estimate": estimate, "documents": len(counts), "unavailable": ""}
        if len(counts) < MIN_DOCUMENTS:
            row["unavailable"] = f"{len(counts)} documents; a document-level interval needs {MIN_DOCUMENTS}"
        elif not sums.size or not np.isfinite(sums).all():
            row["unavailable"] = "no control was drawn"
        else:
            draws[name] = _bootstrap_ratios(sums, counts, n_resamples, seed + i)
            below, above = (draws[name] <= 0).sum(), (draws[name] >= 0).sum()
            row["p"] = min(1.0, 2 * (1 + min(below, above)) / (1 + n_resamples))
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("p", "p (Holm)", "level", "ci low", "ci high"):
        frame[column] = frame[column] if column in frame else np.nan
    frame["rejected"] = False
    tested = frame.index[frame["unavailable"] == ""]
    order = sorted(tested, key=lambda i: frame.at[i, "p"])
    m, running, stopped = len(order), 0.0, False
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * frame.at[i, "p"]))
        frame.at[i, "p (Holm)"] = running
        if not stopped:
            level_alpha = alpha / (m - j)
            stopped = frame.at[i, "p"] > level_alpha
        frame.at[i, "level"] = 1 - level_alpha
        frame.at[i, "rejected"] = not stopped
        low, high = np.quantile(draws[frame.at[i, "name"]], [level_alpha / 2, 1 - level_alpha / 2])
        frame.at[i, "ci low"], frame.at[i, "ci high"] = float(low), float(high)
    return frame


def _rates(routed: torch.Tensor, windows: Windows, layers: Sequence[int]) -> dict[int, np.ndarray]:
    """layer -> routed tokens / real tokens of each expert over ``windows``."""
    tokens = max(int(windows.attention_mask.sum()), 1)
    total = routed.sum(-1).double().numpy() / tokens  # [layer, expert]
    return {layer: total[i] for i, layer in enumerate(layers)}


def _interval_columns(prefix: str, interval) -> dict[str, float]:
    return {
        prefix: interval.estimate,
        f"{prefix} ci low": interval.low,
        f"{prefix} ci high": interval.high,
    }


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
        intervals = ratio_intervals(sums[: len(main)], counts, n_resamples=n_resamples, seed=seed)
        for d, interval in zip(domains, intervals, strict=True):
            matrix_rows.append(
                {
                    "re-weighted domain": d,
                    "evaluated on": d_eval,
                    **_interval_columns("loss change", interval),
                    "documents": n_docs,
                }
            )
        if d_eval not in chosen:
            continue
        name, s, f, selected = chosen[d_eval]
        j = domains.index(d_eval)
        draws = sums[len(main) :] if own else np.full((1, n_docs), np.nan)  # [draw, document]
        stacked = np.stack(
            [
                np.broadcast_to(sums[j], draws.shape),
                draws,
                sums[j] - draws,
                np.broadcast_to(clean, draws.shape),
            ]
        )
        family[d_eval] = (sums[j] - draws, counts)
        mine, ctrl, diff, base = draw_resampled_intervals(
            stacked, counts, n_resamples=n_resamples, seed=seed + 1, what=f"the loss change on {d_eval}"
        )
        gains_rows.append(
            {
                "domain": d_eval,
                "expert set": name,
                "experts": _describe(s),
                "n experts": len(s),
                "factor": f,
                "loss change (selection)": selected,
                **_interval_columns("loss change", mine),
                **_interval_columns("control loss change", ctrl),
                **_interval_columns("chosen − control", diff),
                "helps on selection": selected < 0,
                "clean loss": base.estimate,
                "control draws": len(own),
                "documents": n_docs,
            }
        )
    return ReweightingStudy(
        grid=pd.DataFrame(grid_rows),
        gains=_with_holm(pd.DataFrame(gains_rows), family, n_resamples, seed + 2),
        matrix=pd.DataFrame(matrix_rows),
        controls=controls,
        selection_docs=frozenset(selection.doc.tolist()),
        evaluation_docs=frozenset(evaluation.doc.tolist()),
    )


def _with_holm(gains: pd.DataFrame, family: Mapping, n_resamples: int, seed: int) -> pd.DataFrame:
    """``gains`` with the Holm-adjusted test of chosen − control over its domains (:func:`holm_adjusted`)."""
    if gains.empty:
        return gains
    holm = holm_adjusted(family, n_resamples=n_resamples, seed=seed).set_index("name")
    holm = holm.loc[gains["domain"]]
    gains = gains.copy()
    gains["chosen − control p"] = holm["p"].to_numpy(dtype=float)
    gains["p (Holm)"] = holm["p (Holm)"].to_numpy(dtype=float)
    gains["Holm level"] = holm["level"].to_numpy(dtype=float)
    gains["Holm ci low"] = holm["ci low"].to_numpy(dtype=float)
    gains["Holm ci high"] = holm["ci high"].to_numpy(dtype=float)
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
        permutation test cannot run (fewer than :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS` documents).
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
