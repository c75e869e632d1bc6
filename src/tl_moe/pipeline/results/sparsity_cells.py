"""How one test of the sparsity family reads in its finding: the estimate with its interval, its Holm
p-value and verdict, and how many separated tests rest on their test's smallest p-value."""

from __future__ import annotations

from tl_moe.analysis.sparsity_family import ABOVE, ALPHA, BELOW, NEITHER, is_swap, p_floor

__all__ = ["DISAGREE", "cell", "floor_text", "holm_text", "short"]

DISAGREE = "interval and test disagree"


def cell(row: dict | None) -> str:
    """A tested cell: estimate, interval, gated concepts, Holm p and verdict, and the disagreement mark."""
    if row is None:
        return "unavailable"
    p = row.get("p")
    mark = (
        f" ({DISAGREE}: unadjusted p = {p:.3g}, the interval {'excludes' if p > ALPHA else 'covers'} 0)"
        if row.get("interval_disagrees")
        else ""
    )
    return short(row) + holm_text(row) + mark


def short(record: dict | None) -> str:
    if record is None or record.get("estimate") is None:
        reason = (record or {}).get("interval_unavailable_reason")
        return f"unavailable ({reason})" if reason else "unavailable"
    text = f"{record['estimate']:+.3f}"
    if record.get("interval_available"):
        text += f" [{record['ci_low']:+.3f}, {record['ci_high']:+.3f}]"
    else:
        text += f" (no interval: {record.get('interval_unavailable_reason') or 'not computed'})"
    if record.get("n_concepts"):
        text += f" ({int(record['n_concepts'])} concepts)"
    return text


def holm_text(row: dict) -> str:
    if row.get("p_holm") is None:
        return ""
    p = row["p_holm"]
    edge = (
        " (within resampling error of 0.05: read as borderline)"
        if row.get("verdict") != NEITHER and 0.04 <= p <= ALPHA
        else ""
    )
    return f", Holm p = {p:.4g}: {row['verdict']}{edge}"


def floor_text(tests: list[dict]) -> str:
    """How many separated tests rest on a raw p-value at its test's floor (no swap or resample reached
    the observed value), the floor, and the Holm p-value it gives (the number of tests times it), one
    sentence per kind of test with a floor (the draw-mean t test has none)."""
    separated = [r for r in tests if r["verdict"] in (ABOVE, BELOW)]
    raw = [r["p"] for r in tests if r.get("p") is not None]
    if not separated or not raw:
        return ""
    m = separated[0]["tests_in_family"]
    by_kind: dict[bool, list[float]] = {}
    for r in separated:
        floor = p_floor(r, min(raw))
        if 0 < floor and r["p"] <= floor * (1 + 1e-9):
            by_kind.setdefault(is_swap(r.get("p_test")), []).append(floor)
    text = ""
    for swap, floors in by_kind.items():
        floor = min(floors)
        holm_floor = min(1.0, m * floor)
        what = (
            "no swap reached the observed difference"
            if swap
            else "no resample of documents and control draws crossed 0"
        )
        text += (
            f" {len(floors)} of the {len(separated)} separated tests rest on their test's smallest p-value "
            f"({floor:.2g}: {what}); times the {m} tests that is {holm_floor:.2g}"
            + _floor_verdict(holm_floor, "swaps" if swap else "resamples")
        )
    return text


def _floor_verdict(holm_floor: float, draws: str) -> str:
    """Whether a test at its floor can still be separated after Holm's correction (``holm_floor`` < 5%)."""
    if holm_floor <= ALPHA / 10:
        return ", far below 0.05: those verdicts do not hang on the floor."
    if holm_floor < ALPHA:
        return f", below 0.05: a test at the floor can still be separated, though more {draws} would say by how much."
    return f", not below 0.05: more {draws} would be needed to separate a test at the floor."
