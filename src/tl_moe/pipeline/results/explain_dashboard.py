"""The expert dashboard of the explain section: one :class:`~tl_moe.report.dashboard.ExpertCard` per
expert, from what the run already holds (the explain examples and labels, and the logit-lens, domains
and drivers results when those analyses ran too)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tl_moe.explain.causal import CausalResult
from tl_moe.explain.examples import ExpertExamples, ExpertRecord
from tl_moe.explain.runner import LabelingResult
from tl_moe.report.dashboard import CardContext, ExpertCard

__all__ = ["DASHBOARD_CAPTION", "HISTOGRAM_BINS", "N_CARD_CONTEXTS", "dashboard_cards"]

N_CARD_CONTEXTS = 3
HISTOGRAM_BINS = 20
HISTOGRAM_CAPTION = (
    "Saliency (routing weight × ‖output‖) over a uniform sample of routed tokens "
    "(the top contexts, the highest of all routed tokens, can lie above its range)"
)
DASHBOARD_CAPTION = (
    "Expert dashboard. Index: click a numeric header to sort (balanced accuracy and F1 of the label on "
    "held-out items, own − shuffled-label balanced accuracy, causal effects where measured). Cards: the "
    "top contexts by saliency with each token's routing weight to the expert as its background (relative "
    "to the context's highest), tokens routed to the expert underlined, the context's target outlined; "
    "logit-lens tokens; a histogram of saliency over a uniform sample of routed tokens; routing share "
    "per domain (bar) beside the domain's share of all tokens (mark)."
)
MIN_DOMAIN_SHARE = 0.02  # domains below this share of the expert's tokens AND of all tokens are left off


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number


def _interval(low: float, high: float, reason: Any = None) -> str:
    """``[low, high]``, or ``(no interval: reason)`` (``(no interval)`` when no reason was recorded)."""
    if np.isfinite(low) and np.isfinite(high):
        return f"[{low:.3f}, {high:.3f}]"
    return f"(no interval: {reason})" if isinstance(reason, str) and reason else "(no interval)"


def _score_lines(row: pd.Series | None, scorer: str) -> tuple[tuple[str, str], ...]:
    """The label's scores as shown on a card: balanced accuracy beside its shuffled control (with the
    interval of the difference over the documents of the expert's items), the token-set baseline, F1 with
    its interval over the same documents and chance; a missing interval says why."""
    if row is None:
        return ()

    def get(name: str) -> float:
        return _number(row.get(f"{scorer}_{name}"))

    def reason(name: str) -> Any:  # why an interval over documents is missing ('available' when it is not)
        why = row.get(f"{scorer}_{name}")
        return None if why == "available" else why

    lines = []
    accuracy = get("balanced_accuracy")
    if np.isfinite(accuracy):
        text = f"{accuracy:.3f} (chance 0.5)"
        shuffled = get("shuffled_balanced_accuracy")
        if np.isfinite(shuffled):
            diff = get("own_minus_shuffled_balanced_accuracy")
            text += (
                f"; shuffled label {shuffled:.3f}, own − shuffled {diff:.3f} "
                f"{_interval(get('own_minus_shuffled_ci_low'), get('own_minus_shuffled_ci_high'), reason('own_minus_shuffled_interval'))}"
            )
        lines.append(("balanced accuracy", text))
    baseline = get("baseline_balanced_accuracy")
    if np.isfinite(baseline):
        lines.append(("token-set baseline balanced accuracy", f"{baseline:.3f}"))
    f1 = get("f1")
    if np.isfinite(f1):
        lines.append(
            (
                "F1",
                f"{f1:.3f} {_interval(get('f1_ci_low'), get('f1_ci_high'), reason('f1_interval'))} "
                f"(chance {get('chance_f1'):.3f})",
            )
        )
    others = [(n, get(n)) for n in ("precision", "recall", "auc")]
    shown = ", ".join(f"{n if n != 'auc' else 'AUC'} {v:.3f}" for n, v in others if np.isfinite(v))
    if shown:
        lines.append(("also", shown))
    return tuple(lines)


def _status(record: ExpertRecord, row: pd.Series | None) -> str:
    if record.status != "ok":
        return record.status
    error = None if row is None else row.get("label_error")
    return f"label failed: {error}" if isinstance(error, str) and error else "ok"


def _lens_tokens(record: ExpertRecord, lens: pd.DataFrame | None) -> tuple[str, ...]:
    """The logit-lens analysis' top tokens of the expert when it ran, else the explain examples' own
    lens of the expert's mean routed output."""
    if lens is not None and len(lens):
        mine = lens[(lens["layer"] == record.layer) & (lens["expert"] == record.expert)]
        tokens = tuple(str(t) for t in mine.sort_values("rank")["token"].dropna())
        if tokens:
            return tokens
    return record.lens_tokens


def _histogram(sample: np.ndarray) -> tuple[tuple[int, ...], tuple[float, float]] | None:
    sample = sample[np.isfinite(sample)]
    if not len(sample):
        return None
    low, high = float(sample.min()), float(sample.max())
    counts, _ = np.histogram(sample, bins=HISTOGRAM_BINS, range=(low, high if high > low else low + 1e-9))
    return tuple(int(c) for c in counts), (low, high)


def _domains(examples: ExpertExamples, layer: int, expert: int) -> tuple[tuple[str, float, float], ...]:
    """Per domain: share of the expert's routed tokens and share of all tokens (every split pooled)."""
    routed = examples.routed_total.sum(0)[examples.layer_row(layer), expert].double()
    tokens = examples.token_total.sum(0).double()
    total, everything = float(routed.sum()), float(tokens.sum())
    if total <= 0 or everything <= 0:
        return ()
    rows = [
        (name, float(r) / total, float(t) / everything)
        for name, r, t in zip(examples.domain_names, routed.tolist(), tokens.tolist(), strict=True)
    ]
    rows = [row for row in rows if row[1] >= MIN_DOMAIN_SHARE or row[2] >= MIN_DOMAIN_SHARE]
    return tuple(sorted(rows, key=lambda row: -row[1]))


def _indexed(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    if frame is None or not len(frame) or not {"layer", "expert"} <= set(frame.columns):
        return None
    return frame.set_index(["layer", "expert"])


def _effects(key: tuple[int, int], causal: pd.DataFrame | None, drivers: pd.DataFrame | None) -> tuple:
    """Causal lines of a card: the label's causal check (described − other routed tokens, and minus a
    control expert of the layer chosen by routing at the described tokens) and the drivers analysis' removal effect with its document interval."""
    lines: list[tuple[str, str]] = []
    sort: dict[str, float] = {}
    if causal is not None and key in causal.index:
        row = causal.loc[key]
        effect = _number(row.get("remove_effect"))
        if np.isfinite(effect):
            text = f"{effect:.4f} nats/token"
            versus = _number(row.get("remove_labeled_minus_control"))
            if np.isfinite(versus):
                text += f"; labeled − control expert {versus:.4f}"
            lines.append(("label check: removing it, |Δloss| described − other routed tokens", text))
            sort["label causal effect"] = effect
    if drivers is not None and key in drivers.index:
        row = drivers.loc[key]
        effect = _number(row.get("remove: effect (report)"))
        if np.isfinite(effect):
            interval = _interval(
                _number(row.get("remove: report ci low")),
                _number(row.get("remove: report ci high")),
                row.get("remove: report interval unavailable"),
            )
            lines.append(("drivers: removing it, Δloss per token (report half)", f"{effect:.4f} {interval}"))
            sort["drivers effect"] = effect
    return tuple(lines), sort


def dashboard_cards(
    records: list[ExpertRecord],
    labeling: LabelingResult,
    examples: ExpertExamples,
    tokenizer: Any,
    scorer: str,
    *,
    causal: CausalResult | None = None,
    lens: pd.DataFrame | None = None,
    drivers: pd.DataFrame | None = None,
    n_contexts: int = N_CARD_CONTEXTS,
) -> tuple[ExpertCard, ...]:
    """One card per record: label and scores, top contexts with each token's routing weight, logit-lens
    tokens, saliency histogram of a uniform sample of routed tokens, routing share per domain and the
    causal effects that were measured (``lens``: the logit-lens analysis' top-token table; ``drivers``:
    the drivers analysis' per-expert table)."""
    frame = labeling.frame.set_index(["layer", "expert"])
    causal_frame = _indexed(causal.frame if causal is not None else None)
    driver_frame = _indexed(drivers)
    cards = []
    for record in records:
        key = (record.layer, record.expert)
        row = frame.loc[key] if key in frame.index else None
        contexts = tuple(
            CardContext(c.tokens, weights, c.marks, c.target, c.activation, c.domain)
            for c, weights in examples.top_contexts(record.layer, record.expert, tokenizer, n_contexts)
        )
        effects, effect_sort = _effects(key, causal_frame, driver_frame)
        sort = {
            "balanced accuracy": _number(None if row is None else row.get(f"{scorer}_balanced_accuracy")),
            "own − shuffled": _number(
                None if row is None else row.get(f"{scorer}_own_minus_shuffled_balanced_accuracy")
            ),
            "F1": _number(None if row is None else row.get(f"{scorer}_f1")),
            **effect_sort,
            "routed tokens": int(sum(record.n_routed)),
        }
        label = "" if row is None or not isinstance(row.get("label"), str) else row["label"]
        kind = None if row is None or not isinstance(row.get("kind"), str) else row["kind"]
        cards.append(
            ExpertCard(
                layer=record.layer,
                expert=record.expert,
                label=label,
                kind=kind,
                status=_status(record, row),
                scores=_score_lines(row, scorer),
                sort_values=sort,
                contexts=contexts,
                lens_tokens=_lens_tokens(record, lens),
                histogram=_histogram(examples.saliency_sample(record.layer, record.expert).numpy()),
                histogram_caption=HISTOGRAM_CAPTION,
                domains=_domains(examples, record.layer, record.expert),
                effects=effects,
            )
        )
    return tuple(cards)
