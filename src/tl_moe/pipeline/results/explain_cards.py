"""The explain section's browse table: one row per expert with its label, scores, top contexts,
logit-lens tokens, over-represented routed tokens and routing share per domain."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tl_moe.explain.examples import ExpertExamples, ExpertRecord
from tl_moe.explain.explainers import over_represented_tokens
from tl_moe.explain.runner import LabelingResult

__all__ = ["expert_cards"]


def expert_cards(
    records: Sequence[ExpertRecord],
    labeling: LabelingResult,
    examples: ExpertExamples,
    scorer: str,
    n_contexts: int = 3,
) -> pd.DataFrame:
    """One row per expert: what a researcher browses (label, scores, contexts, lens, domains)."""
    frame = labeling.frame.set_index(["layer", "expert"])
    routed = examples.routed_total.sum(0)  # [layer, expert, domain]
    rows = []
    for record in records:
        row = (
            frame.loc[(record.layer, record.expert)] if (record.layer, record.expert) in frame.index else None
        )
        share = routed[examples.layer_row(record.layer), record.expert]
        total = float(share.sum())
        domains = ", ".join(
            f"{name} {float(v) / total:.0%}"
            for name, v in sorted(
                zip(examples.domain_names, share.tolist(), strict=True), key=lambda x: -x[1]
            )
            if total and v / total >= 0.05
        )
        rows.append({
            "layer": record.layer,
            "expert": record.expert,
            "label": None if row is None else row["label"],
            "balanced accuracy": None if row is None or f"{scorer}_balanced_accuracy" not in row
            else row[f"{scorer}_balanced_accuracy"],
            "F1": None if row is None or f"{scorer}_f1" not in row else row[f"{scorer}_f1"],
            "top contexts": " ‖ ".join(c.text(left="«", right="»") for c in record.explanation[:n_contexts]),
            "logit-lens tokens": " · ".join(record.lens_tokens),
            "over-represented routed tokens": " · ".join(over_represented_tokens(record)),
            "routing share per domain": domains,
            "status": record.status,
        })  # fmt: skip
    return pd.DataFrame(rows)
