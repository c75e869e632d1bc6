"""The position effect: how often a token's routed set holds a driver expert, by its position in its sentence.

Definitions (docs/METHODS.md, "Position effect"). A token *hits* an expert set ``X`` (pairs
``(block, expert)``) in block ``L`` when one of its routed experts of ``L`` is in ``X``; its *hit rate*
is the mean of those hits over the blocks that hold a member of ``X`` (a union over all blocks would
be near 1 for every token once a few blocks hold drivers). For the driver experts ``D`` and their
routing-frequency-matched controls ``C`` (same blocks, same number per block, chosen on the selection
half by the drivers analysis), over the report-half documents:

- **position curve**: the hit rate of ``D`` and of ``C`` per bin of segment position (0-based
  position of the token in its sentence / statement / line);
- **early − late**: the hit rate on positions ``< early`` minus the rate on positions ``≥ early``;
- **against routing in general**: the early − late difference of ``D`` minus that of ``C``;
- **token identity controlled**: the Mantel–Haenszel risk difference, early vs late, stratified by
  token id — ``Σ_t (a_t m_t − c_t n_t) / (n_t + m_t)  /  Σ_t n_t m_t / (n_t + m_t)`` with ``n_t`` /
  ``m_t`` early / late occurrences of token id ``t`` and ``a_t`` / ``c_t`` their hits: a weighted mean
  of within-token differences, so a token that is both frequent early and routed to ``D`` whatever
  its position cannot make an effect — and the same difference of ``D`` minus that of ``C``.

Every number comes with a 95% percentile bootstrap interval over report-half documents
(:func:`tl_moe.analysis.stats.cluster_bootstrap`; one set of resamples for all of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float, Int

from tl_moe.analysis.stats import MIN_DOCUMENTS, Interval, cluster_bootstrap

__all__ = ["DEFAULT_BINS", "PositionEffect", "expert_set_hits", "position_effect"]

DEFAULT_BINS = (0, 1, 2, 3, 5, 8, 16, 32)
"""Lower edges of the position bins of the curve (the last bin is open-ended)."""

EFFECTS = (
    "drivers: early − late",
    "controls: early − late",
    "drivers − controls: early − late",
    "drivers: early − late, within token id",
    "controls: early − late, within token id",
    "drivers − controls: early − late, within token id",
)


def expert_set_hits(
    experts: Int[np.ndarray, "token layer k"], members: Bool[np.ndarray, "layer expert"]
) -> Float[np.ndarray, " token"]:
    """Each token's hit rate of the ``members``: the fraction of the blocks holding a member in which one
    of the token's routed experts is a member (NaN when no block holds one)."""
    layer = np.arange(experts.shape[1])[None, :, None]
    per_block = members[layer, experts].any(axis=2)  # [token, layer]
    blocks = members.any(axis=1)  # [layer]
    if not blocks.any():
        return np.full(experts.shape[0], np.nan)
    return per_block[:, blocks].mean(axis=1)


@dataclass(frozen=True)
class PositionEffect:
    """Attributes:
    curve: one row per position bin: tokens, hit rates of drivers and controls and their
        difference, each with a 95% document-bootstrap interval.
    effects: one row per entry of ``EFFECTS`` with estimate, interval, and the n behind it.
    """

    curve: pd.DataFrame
    effects: pd.DataFrame
    early: int
    n_documents: int


def _bin_of(positions: np.ndarray, bins: Sequence[int]) -> np.ndarray:
    return np.searchsorted(np.asarray(bins), positions, side="right") - 1


def _bin_label(bins: Sequence[int], i: int) -> str:
    low = bins[i]
    if i + 1 == len(bins):
        return f"{low}+"
    high = bins[i + 1] - 1
    return str(low) if high == low else f"{low}–{high}"


def position_effect(
    experts: Int[np.ndarray, "token layer k"],
    positions: Int[np.ndarray, " token"],
    token_id: Int[np.ndarray, " token"],
    documents: Int[np.ndarray, " token"],
    drivers: Bool[np.ndarray, "layer expert"],
    controls: Bool[np.ndarray, "layer expert"],
    *,
    early: int = 3,
    bins: Sequence[int] = DEFAULT_BINS,
    n_resamples: int = 2000,
    seed: int = 0,
    min_documents: int = MIN_DOCUMENTS,
) -> PositionEffect:
    """The position curve and the early − late effects of the driver experts against their controls.

    Args:
        experts: ``[token, layer, k]`` routed experts of the analyzed tokens (the report half).
        positions: ``[token]`` position in the segment; tokens with ``-1`` are left out.
        token_id: ``[token]`` input token id (the strata of the within-token comparison).
        documents: ``[token]`` document of each token (the bootstrap's clusters).
        drivers, controls: ``[layer, expert]`` membership of the two expert sets.
        early: positions ``< early`` are early.
        bins: lower edges of the curve's position bins (start at 0, increasing).
    """
    keep = positions >= 0
    experts, positions = experts[keep], positions[keep]
    token_id, documents = token_id[keep], documents[keep]
    if not (drivers.any() and controls.any()):
        from tl_moe.errors import InputError

        raise InputError("the position effect needs at least one driver expert and one control expert.")
    hit_d = expert_set_hits(experts, drivers)
    hit_c = expert_set_hits(experts, controls)
    _, block = np.unique(documents, return_inverse=True)
    n_docs = int(block.max()) + 1 if block.size else 0
    n_bins = len(bins)
    which = _bin_of(positions, bins)

    def per_doc(values: np.ndarray, column: np.ndarray, n_columns: int) -> np.ndarray:
        out = np.bincount(block * n_columns + column, weights=values, minlength=n_docs * n_columns)
        return out.reshape(n_docs, n_columns)

    ones = np.ones_like(hit_d)
    curve_n, curve_d, curve_c = (per_doc(v, which, n_bins) for v in (ones, hit_d, hit_c))
    is_early = (positions < early).astype(np.int64)  # column 1: early, column 0: late
    split_n, split_d, split_c = (per_doc(v, is_early, 2) for v in (ones, hit_d, hit_c))
    ids, strata = np.unique(token_id, return_inverse=True)
    both = (np.bincount(strata, weights=is_early, minlength=len(ids)) > 0) & (
        np.bincount(strata, weights=1 - is_early, minlength=len(ids)) > 0
    )
    column = np.where(both[strata], np.cumsum(both)[strata] - 1, -1)
    n_strata = int(both.sum())
    inside = column >= 0

    def strata_doc(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        use = inside & mask
        out = np.bincount(
            block[use] * n_strata + column[use], weights=values[use], minlength=n_docs * n_strata
        )
        return out.reshape(n_docs, n_strata)

    e_mask, l_mask = positions < early, positions >= early
    n_early, n_late = strata_doc(ones, e_mask), strata_doc(ones, l_mask)
    a_d, c_d = strata_doc(hit_d, e_mask), strata_doc(hit_d, l_mask)
    a_c, c_c = strata_doc(hit_c, e_mask), strata_doc(hit_c, l_mask)

    def rate(hits: np.ndarray, n: np.ndarray) -> np.ndarray:
        return hits / np.maximum(n, 1e-12)

    def mantel_haenszel(a, c, n, m) -> np.ndarray:  # [batch, strata] each -> [batch]
        total = n + m
        safe = np.maximum(total, 1e-12)
        return ((a * m - c * n) / safe).sum(1) / np.maximum((n * m / safe).sum(1), 1e-12)

    def statistic(w: np.ndarray) -> np.ndarray:
        n_b, d_b, c_b = w @ curve_n, w @ curve_d, w @ curve_c
        rd, rc = rate(d_b, n_b), rate(c_b, n_b)
        sn, sd, sc = w @ split_n, w @ split_d, w @ split_c
        eff_d = rate(sd[:, 1], sn[:, 1]) - rate(sd[:, 0], sn[:, 0])
        eff_c = rate(sc[:, 1], sn[:, 1]) - rate(sc[:, 0], sn[:, 0])
        ne, nl = w @ n_early, w @ n_late
        mh_d = mantel_haenszel(w @ a_d, w @ c_d, ne, nl)
        mh_c = mantel_haenszel(w @ a_c, w @ c_c, ne, nl)
        effects = np.stack([eff_d, eff_c, eff_d - eff_c, mh_d, mh_c, mh_d - mh_c], axis=1)
        return np.concatenate([rd, rc, rd - rc, effects], axis=1)

    intervals = cluster_bootstrap(
        statistic,
        n_docs,
        n_resamples=n_resamples,
        seed=seed,
        on_too_few="unavailable",
        what="the position effect",
        min_clusters=min_documents,
    )
    curve_iv, effect_iv = intervals[: 3 * n_bins], intervals[3 * n_bins :]
    if n_strata == 0:  # no token id seen both early and late: the within-token effects do not exist
        reason = "no token id occurs both early and late"
        effect_iv = effect_iv[:3] + [
            Interval(np.nan, np.nan, np.nan, n_docs, available=False, reason=reason) for _ in range(3)
        ]
    tokens_per_bin = curve_n.sum(0)
    rows = []
    for b in range(n_bins):
        row: dict[str, Any] = {
            "position": _bin_label(bins, b),
            "from": bins[b],
            "tokens": int(tokens_per_bin[b]),
        }
        for offset, name in enumerate(("drivers", "controls", "drivers − controls")):
            iv = curve_iv[offset * n_bins + b]
            row[f"{name} rate" if offset < 2 else name] = iv.estimate
            row[f"{name} ci low"], row[f"{name} ci high"] = iv.low, iv.high
        rows.append(row)
    n_split = split_n.sum(0)
    effect_rows = []
    for name, iv in zip(EFFECTS, effect_iv, strict=True):
        effect_rows.append(
            {
                "effect": name,
                "estimate": iv.estimate,
                "ci low": iv.low,
                "ci high": iv.high,
                "documents": iv.n,
                "early tokens": int(n_split[1]),
                "late tokens": int(n_split[0]),
                "token ids (strata)": n_strata if "within" in name else None,
                "interval available": iv.available,
                "interval unavailable": "" if iv.available else (iv.reason or "not computed"),
            }
        )
    return PositionEffect(pd.DataFrame(rows), pd.DataFrame(effect_rows), early, n_docs)
