"""SteerMoE-style switching: experts found by routing-rate differences on two contrasting corpora,
switched on or off on held-out text.

Definitions (docs/METHODS.md, "Re-weighting and steering experts"):

- The **contrast** is two groups of documents ``A`` and ``B`` (two domains, or two languages). On
  the selection documents, each expert's routing rate on a group is its routed tokens / the group's
  tokens; ``Δrate = rate(A) − rate(B)``. The ``per_layer`` experts of every sparse layer with the
  largest ``Δrate`` are the **A-experts**, with the largest ``−Δrate`` the **B-experts**.
- **Switch on** (``activate``): each token also selects the set's experts of a layer (their router
  logits raised just above the token's largest; :func:`~tl_moe.models.interventions.activate_experts`).
  **Switch off** (``remove``): they cannot be selected; tokens re-route.
- Reported on the held-out documents of both groups: the loss change of each switch (nats/token),
  beside ``n_draws`` routing-rate-matched random sets switched the same way (rate over ``A ∪ B``
  selection documents; :func:`~tl_moe.analysis.reweighting.matched_random_sets`), and the
  held-out ``Δrate`` of the detected sets vs the random ones (does the detection replicate?).
- Every quantity that averages the random draws (the random sets' loss change and Δrate, detected −
  random) has the draw-mean t interval (:func:`~tl_moe.analysis.reweighting.per_draw_intervals`,
  :func:`~tl_moe.analysis.stats.draw_mean_t`): the documents' bootstrap variance of the draw mean plus
  the variance between the draws over their number, on Satterthwaite's degrees of freedom, so the
  draw-to-draw variance of the control is in the interval. The detected set's own numbers keep their
  percentile document bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from tl_moe.analysis.edit_windows import Windows, by_document, edit_losses, ratio_intervals, routed_counts
from tl_moe.analysis.reweighting import (
    ExpertSet,
    draw_mean_intervals,
    interval_columns,
    matched_random_sets,
    per_draw_intervals,
)
from tl_moe.analysis.stats import MIN_DOCUMENTS, cluster_bootstrap
from tl_moe.models.interventions import Intervention

__all__ = ["SWITCHES", "SteeringStudy", "steering_study", "switch_edit"]

SWITCHES = ("on", "off")


def switch_edit(experts: ExpertSet, switch: str) -> tuple[Intervention, ...]:
    """``on``: activate the experts, ``off``: remove them (one intervention per layer, together)."""
    kind = {"on": "activate", "off": "remove"}[switch]
    layers = sorted({layer for layer, _ in experts})
    return tuple(
        Intervention(kind, layer, tuple(sorted(e for l2, e in experts if l2 == layer))) for layer in layers
    )


@dataclass(frozen=True)
class SteeringStudy:
    """What :func:`steering_study` returns.

    Attributes:
        contrast: ``(A, B)``.
        detected: one row per detected expert: side, layer, expert, selection and held-out Δrate.
        replication: per side, the held-out Δrate (mean over the set's experts) of the detected and of
            the random sets, and their difference, with 95% intervals (the detected set's a document
            bootstrap, the two that average the draws a draw-mean t interval).
        switches: per (side, switch, evaluated group): loss change of the detected set (95% document
            bootstrap), of the random sets (mean over draws), and detected − random (95% draw-mean t
            intervals with their ``df``), ``random draws`` and ``documents``.
        notes: why a switch was not run (switching on needs a router without a selection bias).
    """

    contrast: tuple[str, str]
    detected: pd.DataFrame
    replication: pd.DataFrame
    switches: pd.DataFrame
    selection_docs: frozenset[int]
    evaluation_docs: frozenset[int]
    notes: tuple[str, ...] = ()


def _rates(routed: torch.Tensor, windows: Windows, group: str) -> np.ndarray:
    keep = torch.tensor([g == group for g in windows.group], dtype=torch.bool)
    tokens = max(int(windows.attention_mask[keep].sum()), 1)
    return routed[:, :, keep].sum(-1).double().numpy() / tokens  # [layer, expert]


def steering_study(
    model,
    selection: Windows,
    evaluation: Windows,
    contrast: tuple[str, str],
    *,
    per_layer: int = 1,
    n_draws: int = 5,
    pool: int = 3,
    n_resamples: int = 2000,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
    min_documents: int = MIN_DOCUMENTS,
) -> SteeringStudy:
    """Detect A- and B-experts on ``selection``, switch them on / off on ``evaluation``.

    Args:
        selection / evaluation: windows of disjoint documents whose ``group`` is the contrast's
            group (windows of other groups are ignored).
        contrast: the two group names ``(A, B)``.
        per_layer: experts per sparse layer in each detected set (at most k, for switching on).
        min_documents: fewest held-out documents behind an interval (fewer: unavailable).
    """
    a, b = contrast
    overlap = set(selection.doc.tolist()) & set(evaluation.doc.tolist())
    if overlap:
        raise ValueError(f"selection and evaluation windows share documents {sorted(overlap)[:5]}.")
    selection = selection.select([g in contrast for g in selection.group])
    evaluation = evaluation.select([g in contrast for g in evaluation.group])
    layers = tuple(model.moe_cfg.sparse_layers)
    routed = routed_counts(model, selection, layers, batch_size=batch_size)
    delta = _rates(routed, selection, a) - _rates(routed, selection, b)  # [layer, expert]
    both = routed.sum(-1).double().numpy() / max(selection.n_tokens, 1)
    rates = {layer: both[i] for i, layer in enumerate(layers)}
    sets: dict[str, ExpertSet] = {}
    for side, sign in ((a, 1.0), (b, -1.0)):
        picked = []
        for i, layer in enumerate(layers):
            order = np.argsort(-sign * delta[i], kind="stable")[:per_layer]
            picked += [(layer, int(e)) for e in order]
        sets[side] = tuple(sorted(picked))
    controls = {
        side: matched_random_sets(s, rates, n_draws, pool=pool, seed=seed) for side, s in sets.items()
    }

    # Held-out replication of the detection: Δrate on evaluation documents.
    routed_eval = routed_counts(model, evaluation, layers, batch_size=batch_size)
    index = {layer: i for i, layer in enumerate(layers)}
    docs_groups = {int(d): g for d, g in zip(evaluation.doc.tolist(), evaluation.group, strict=True)}
    tokens, doc_rows = by_document(evaluation.attention_mask.sum(-1), evaluation.doc)
    in_a = np.array([docs_groups[int(d)] == a for d in doc_rows])

    def set_counts(experts: ExpertSet) -> np.ndarray:  # [document]: Σ over the set of routed tokens
        per_window = sum(routed_eval[index[layer], expert] for layer, expert in experts)
        return by_document(per_window, evaluation.doc)[0] / max(len(experts), 1)

    replication, detected_rows = [], []
    for side, sign in ((a, 1.0), (b, -1.0)):
        rows = np.stack([set_counts(sets[side])] + [set_counts(c) for c in controls[side] if c])

        def rate_difference(weights: np.ndarray, rows: np.ndarray = rows, sign: float = sign) -> np.ndarray:
            """Document weights ``[batch, document]`` -> the held-out Δrate of every set ``[batch, set]``."""
            rate_a = (weights * in_a) @ rows.T / np.maximum((weights * in_a) @ tokens, 1)[:, None]
            rate_b = (weights * ~in_a) @ rows.T / np.maximum((weights * ~in_a) @ tokens, 1)[:, None]
            return sign * (rate_a - rate_b)

        def per_draw(weights: np.ndarray, rate_difference=rate_difference) -> np.ndarray:
            """``[2, batch, draw]``: each random set's Δrate, and detected minus it."""
            diff = rate_difference(weights)
            return np.stack([diff[:, 1:], diff[:, :1] - diff[:, 1:]])

        what = "the held-out routing-rate difference"
        found = cluster_bootstrap(
            lambda w, rate_difference=rate_difference: rate_difference(w)[:, 0],
            len(doc_rows),
            n_resamples=n_resamples,
            seed=seed,
            on_too_few="unavailable",
            what=what,
            min_clusters=min_documents,
        )
        (random, random_df), (gap, gap_df) = per_draw_intervals(
            per_draw,
            len(doc_rows),
            len(rows) - 1,
            n_resamples=n_resamples,
            seed=seed,
            what=what,
            min_documents=min_documents,
        )
        replication.append(
            {
                "experts of": side,
                "experts": " ".join(f"L{la}E{e}" for la, e in sets[side]),
                **interval_columns("held-out rate difference", found),
                **interval_columns("random sets", random, random_df),
                **interval_columns("detected − random", gap, gap_df),
                "random draws": len(rows) - 1,
                "documents": len(doc_rows),
            }
        )
        for layer, expert in sets[side]:
            own = set_counts(((layer, expert),))
            rate_a = own[in_a].sum() / max(tokens[in_a].sum(), 1)
            rate_b = own[~in_a].sum() / max(tokens[~in_a].sum(), 1)
            detected_rows.append(
                {
                    "experts of": side,
                    "layer": layer,
                    "expert": expert,
                    f"rate difference {a} − {b} (selection)": float(delta[index[layer], expert]),
                    f"rate difference {a} − {b} (held out)": float(rate_a - rate_b),
                }
            )

    # Switching on / off, read on each group's held-out documents. Switching on raises router logits
    # above the token's largest, which a per-expert selection bias (DeepSeek-V3, GLM-4-MoE) would undo.
    switches, notes = SWITCHES, ()
    if model.moe_cfg.routing.selection_bias:
        switches = tuple(s for s in SWITCHES if s != "on")
        notes = (
            f"switching on not run: the {model.moe_cfg.architecture} router selects with a per-expert "
            "selection bias, which raising router logits does not overcome",
        )
    switch_rows = []
    for group in (a, b):
        ev = evaluation.of_group(group)
        plan = []
        for side in (a, b):
            for switch in switches:
                plan.append((side, switch, switch_edit(sets[side], switch)))
                plan += [(side, switch + " (random)", switch_edit(c, switch)) for c in controls[side] if c]
        losses = edit_losses(
            model,
            ev,
            [edit for *_, edit in plan],
            batch_size=batch_size,
            progress=progress,
            description=f"switching, {group}",
        )
        sums, _ = by_document(losses.change, ev.doc)
        counts, _ = by_document(losses.count, ev.doc)
        for side in (a, b):
            for switch in switches:
                mine = [i for i, (s, w, _) in enumerate(plan) if s == side and w == switch]
                random = [i for i, (s, w, _) in enumerate(plan) if s == side and w == switch + " (random)"]
                draws = sums[random] if random else np.full((1, len(counts)), np.nan)  # [draw, document]
                what = f"the loss change on {group}"
                (found,) = ratio_intervals(
                    sums[mine[0]],
                    counts,
                    n_resamples=n_resamples,
                    seed=seed + 1,
                    what=what,
                    min_documents=min_documents,
                )
                (ctrl, ctrl_df), (diff, diff_df) = draw_mean_intervals(
                    np.stack([draws, sums[mine[0]] - draws]),
                    counts,
                    n_resamples=n_resamples,
                    seed=seed + 1,
                    what=what,
                    min_documents=min_documents,
                )
                switch_rows.append(
                    {
                        "experts of": side,
                        "switch": switch,
                        "evaluated on": group,
                        **interval_columns("loss change", found),
                        **interval_columns("random sets", ctrl, ctrl_df),
                        **interval_columns("detected − random", diff, diff_df),
                        "random draws": len(random),
                        "documents": len(counts),
                    }
                )
    return SteeringStudy(
        contrast=(a, b),
        detected=pd.DataFrame(detected_rows),
        replication=pd.DataFrame(replication),
        switches=pd.DataFrame(switch_rows),
        selection_docs=frozenset(selection.doc.tolist()),
        evaluation_docs=frozenset(evaluation.doc.tolist()),
        notes=notes,
    )
