"""The sparsity section's findings: the held-out paragraph (every member and k with its Holm verdicts,
the Holm family and its tests named, where the routed-token controls change the matched-subsets
conclusion, the verdict sentence) and the confound the family cannot remove."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tl_moe.analysis.sparsity_family import (
    ABOVE,
    BELOW,
    HEADLINE,
    NEITHER,
    NONE,
    NULL,
    NULL_CORRECTED,
    SWAP,
    SWAP_DRAWS,
    SWAP_ONE_DRAW,
    UNMATCHED,
    VERDICT_CONTROLS,
    VERDICT_KINDS,
    SparsityVerdicts,
    active_ratio,
    family_counts,
    family_dims,
    is_swap,
)
from tl_moe.pipeline.results.sparsity_cells import DISAGREE, cell, floor_text, short

__all__ = ["CONTROL_NAMES", "METRIC_LABELS", "confound", "held_out_findings"]

#: How the verdict sentence names each control.
CONTROL_NAMES = {
    HEADLINE: "the count-matched control",
    UNMATCHED: "all dense neurons on the routed tokens",
    "moe_vs_matched_subsets": "dense neurons on routing-matched token subsets",
}
#: How a cell names its second metric.
METRIC_LABELS = {"balanced_accuracy": "balanced accuracy", "f1": "F1"}


def held_out_findings(held_out: pd.DataFrame, verdicts: SparsityVerdicts) -> list[str]:
    """The held-out finding: per member and k both routed-token controls in both metrics, Holm over all
    of them as one family, with matched subsets and the headline control's null beside them; then the
    verdict sentence that counts each control's verdicts in each metric (``held_out``: the held-out
    records of every member, as :class:`~tl_moe.analysis.sparsity_family.SparsityVerdicts` reads them)."""
    headline = verdicts.tests(held_out, HEADLINE)
    if not headline:
        return []
    family = verdicts.family(held_out)
    if not any(r.get("p_holm") is not None for r in family):
        return [_untested_text(family)]
    metric = headline[0]["metric"]
    second = next((m for m in verdicts.metrics(held_out) if m != metric), None)
    tested = {(r["comparison"], r["metric"], r["model"], r["k"]): r for r in family}
    others = {
        name: {(r["model"], r["k"]): r for r in verdicts.tests(held_out, name, metric)}
        for name in ("moe_vs_matched_subsets", NULL, NULL_CORRECTED)
    }
    members = sorted({r["model"] for r in headline}, key=lambda model: active_ratio(held_out, model))
    # Matched subsets and the nulls beside the smallest and the largest k only (the controls at every k).
    ends = {min(r["k"] for r in headline), max(r["k"] for r in headline)}
    parts = []
    for model in members:
        cells = []
        for r in (r for r in headline if r["model"] == model):
            key = (model, r["k"])

            def both(comparison: str, key=key) -> str:
                first = tested.get((comparison, metric, *key)) or (
                    others.get(comparison, {}).get(key) if comparison != HEADLINE else None
                )
                if first is None:
                    return "unavailable"
                other = tested.get((comparison, second, *key)) if second else None
                return cell(first) + (f" | {METRIC_LABELS[second]} {cell(other)}" if other else "")

            text = f"k = {r['k']}: {both(HEADLINE)}"
            if (UNMATCHED, metric, *key) in tested:
                text += f"; all dense neurons {both(UNMATCHED)}"
            beside = [
                f"{label} {short(others[name].get(key))}"
                for name, label in (
                    ("moe_vs_matched_subsets", "matched subsets"),
                    (NULL, "permuted-label null"),
                    (NULL_CORRECTED, "headline minus that null"),
                )
                if r["k"] in ends and key in others[name]
            ]
            cells.append(text + (f" ({'; '.join(beside)})" if beside else ""))
        parts.append(f"{model.removeprefix('toy/')} ({active_ratio(held_out, model):g}): " + ", ".join(cells))
    described = (
        "balanced accuracy first (chance 0.5 for any probe, so the protocol's permuted-label null sits "
        "near 0, unlike F1's), class-balanced F1 after the | of each test"
        if metric == "balanced_accuracy" and second
        else _metric_name(metric)
    )
    text = (
        f"**Sparsity family, held-out protocol** ({described}; 95% intervals over test documents, every "
        "probed k; the concepts that pass the per-concept test-document gate). "
        + _family_text(family)
        + f" p-values from {_test_text(family)}. "
        + _reading_text(family)
        + " Per member and k, first the count-matched control (the fair comparison of neuron selection): "
        "MoE expert minus the same number of dense neurons (d_expert, random, mean of the draws) on exactly "
        "the tokens routed to the expert; then all dense neurons on those tokens (the stricter control: "
        "the probe picks among every dense neuron); each cell with its number of gated concepts, which "
        "differs between members and k (sparser members route fewer tokens per expert, so fewer concepts "
        "pass the gate: a trend over members mixes sparsity with which concepts are compared); beside them "
        "at the smallest and largest k, outside the family: dense neurons on routing-matched random subsets "
        "(one random draw of the token subsets; its test holds that draw fixed, so it is conditional on "
        "the draw), the count-matched control's permuted-label null, and the headline minus that null "
        "(one paired document bootstrap): " + "; ".join(parts) + "."
    )
    text += _changed_text(held_out, verdicts, headline, metric)
    text += _changed_text(
        held_out, verdicts, verdicts.tests(held_out, UNMATCHED, metric), metric, stricter=True
    )
    text += " " + _verdict_sentence(family, verdicts.metrics(held_out))
    text += floor_text(family)
    return [text]


def _metric_name(metric: str) -> str:
    """How the findings name a held-out metric (the probing section's name for it)."""
    from tl_moe.pipeline.sections.probing import METRIC_NAMES  # the sections import this module

    return METRIC_NAMES.get(metric, metric)


def _changed_text(
    held_out: pd.DataFrame,
    verdicts: SparsityVerdicts,
    headline: list[dict],
    metric: str,
    stricter: bool = False,
) -> str:
    """Where the matched-subsets comparison (Holm over its own tests) and a routed-token control (Holm
    over the verdict family; the count-matched one, or ``stricter``: all dense neurons on the routed
    tokens) disagree, grouped by the pair of verdicts: one clause per pair, members with their ks."""
    subsets = {(r["model"], r["k"]): r for r in verdicts.tests(held_out, "moe_vs_matched_subsets", metric)}
    groups: dict[tuple[str, str], dict[str, list[int]]] = {}
    for r in headline:
        other = subsets.get((r["model"], r["k"]))
        if other is None or NONE in (r["verdict"], other["verdict"]) or other["verdict"] == r["verdict"]:
            continue
        members = groups.setdefault((other["verdict"], r["verdict"]), {})
        members.setdefault(r["model"].removeprefix("toy/"), []).append(int(r["k"]))
    if not groups:
        return ""
    clauses = [
        f"{on_subsets} on matched subsets, {on_routed} on routed tokens in "
        f"{sum(map(len, members.values()))} of {len(headline)} tests ("
        + "; ".join(f"{model} at k = {', '.join(map(str, ks))}" for model, ks in members.items())
        + ")"
        for (on_subsets, on_routed), members in groups.items()
    ]
    n = next((r["tests_in_family"] for r in subsets.values()), 0)
    if stricter:
        return (
            f" The stricter control, all dense neurons on the routed tokens (Holm over the family above), "
            f"against matched subsets ({_metric_name(metric)}): " + "; ".join(clauses) + "."
        )
    return (
        f" The routed-token control changes the conclusion ({_metric_name(metric)}; matched subsets "
        f"Holm-adjusted over its own {n} member × k tests, each conditional on its one draw of token "
        "subsets; the count-matched control over the family above): "
        + "; ".join(clauses)
        + ": there, the matched-subsets advantage comes with routing's choice of tokens, and the "
        "controlled result is the finding."
    )


def _family_text(family: list[dict]) -> str:
    """What the verdicts' Holm family is: its size and dimensions, and why it holds both controls and
    both metrics."""
    tested = [r for r in family if r.get("p_holm") is not None]
    n, dims = len(tested), family_dims(tested)
    cells = int(np.prod(family_counts(tested))) if tested else 0
    size = (
        f"Holm over {_tests_word(n)}: {dims} (members × ks × metrics × controls)"
        if n == cells
        else f"Holm over {_tests_word(n)} (of the {dims} = {cells} cells (members × ks × metrics × "
        "controls), those with an interval and a p-value)"
    )
    controls = sorted({r["comparison"] for r in tested}, key=VERDICT_CONTROLS.index)
    which = (
        "both routed-token controls (the count-matched one and all dense neurons on the routed tokens)"
        if len(controls) > 1
        else f"one control ({', '.join(CONTROL_NAMES[c] for c in controls)}, the only one recorded)"
    )
    metrics = {r["metric"] for r in tested}
    why = (
        "both metrics (balanced accuracy became the headline metric after the F1 results were seen, so F1 "
        "stays in the family)"
        if len(metrics) > 1
        else f"one metric ({', '.join(_metric_name(m) for m in sorted(metrics))}, the only one recorded)"
    )
    return f"Verdicts: {size}, every test the verdict sentence below reads: {which} and {why}, at family-wise 5%."


def _reading_text(family: list[dict]) -> str:
    """How to read a cell: the verdict is the Holm-adjusted p of the named test, the interval is not the
    test; how many cells' unadjusted interval and p-value disagree on 0 (they are marked)."""
    disagree = sum(bool(r.get("interval_disagrees")) for r in family)
    judged = sum(r.get("interval_disagrees") is not None for r in family)
    t_interval = any(r.get("p_test") == "draws_t" for r in family)
    return (
        "Each verdict (above 0, below 0, not separated) follows the Holm-adjusted p-value of the named test; "
        "the interval printed beside it is unadjusted, the document bootstrap's"
        + (" (the count-matched control's: the draw-mean t interval)" if t_interval else "")
        + ", and need not come from that test, so near 5% the two can fall on different sides of 0: the "
        "unadjusted interval "
        f'and the unadjusted p-value disagree in {disagree} of the {judged} tests (marked "{DISAGREE}"), '
        "and there the Holm verdict stands."
    )


def _test_text(tests: list[dict]) -> str:
    """Which test gave the Holm p-values of ``tests``, per control, and why (:meth:`~tl_moe.analysis.sparsity_family.SparsityVerdicts.p_value`)."""
    by_kind: dict[str, list[dict]] = {}
    for r in tests:
        if r.get("p_test"):
            by_kind.setdefault(r["p_test"], []).append(r)
    clauses = []
    for kind, rows in by_kind.items():
        names = sorted(
            {CONTROL_NAMES.get(r["comparison"], r["comparison"]) for r in rows if r.get("comparison")}
        )
        clauses.append(_kind_text(kind, rows) + (f" for {' and '.join(names)}" if names else ""))
    return "; ".join(clauses)


def _kind_text(kind: str, tests: list[dict]) -> str:
    """One test's description (``p_test`` = ``kind``) from its ``tests``' records."""
    if is_swap(kind):
        n = next((r["swap_permutations"] for r in tests if r.get("swap_permutations")), None)
        swaps = f"{int(n):,} random swaps" if n else "random swaps"
        held = {
            SWAP: "the control is deterministic",
            SWAP_ONE_DRAW: "the control is one random draw, held fixed: the test is conditional on that draw",
            SWAP_DRAWS: "the control's random draws are held fixed: the test is conditional on them",
        }[kind]
        return f"two-sided document swap tests ({swaps} of the two arms' counts per test document; {held})"
    draws = int(max((r.get("n_draws") or 1 for r in tests), default=1))
    if kind == "draws_t":
        return (
            f"two-sided t tests of the draw mean (the variance of the difference is the test documents' "
            f"bootstrap variance plus the variance between the control's {draws} random neuron draws over "
            f"{draws}, on Satterthwaite's degrees of freedom, so the p-value carries the draws' variation and "
            "tests the expert against random dense neurons, not against these particular draws as the document "
            "swap test would; on a planted null with draws that vary it rejects at about its nominal rate, "
            "docs/METHODS.md)"
        )
    resamples = next((r["bootstrap_resamples"] for r in tests if r.get("bootstrap_resamples")), None)
    return (
        "the two-sided two-stage bootstrap"
        + (f" ({int(resamples):,} resamples" if resamples else " (")
        + f"{', ' if resamples else ''}test documents and the control's {draws} random neuron draws both "
        "resampled, so the p-value carries the draws' variation and tests the expert against random dense "
        "neurons, not against these particular draws as the document swap test would"
        + (f"; floor {2 / (1 + resamples):.2g}" if resamples else "")
        + (
            f"; a run recorded before the draw-mean t test: with {draws} draws the second stage understates "
            "the draws' variation, so on a planted null with draws that vary this test rejects more often than "
            "its nominal level (docs/METHODS.md): read a single separated test near the threshold as tentative"
            if draws < 20
            else ""
        )
        + ")"
    )


def _count_text(tests: list[dict]) -> str:
    """How many of ``tests`` (one control in one metric) put expert neurons above, below or level with the
    control: "better in a of the n member × k tests, worse in b, not separated in c"."""
    counts = {v: sum(r["verdict"] == v for r in tests) for v in VERDICT_KINDS}
    return (
        f"better in {counts[ABOVE]} of the {len(tests)} member × k tests, worse in {counts[BELOW]}, "
        f"not separated in {counts[NEITHER]}" + (f" (no interval in {counts[NONE]})" if counts[NONE] else "")
    )


def _verdict_sentence(family: list[dict], metrics: list[str]) -> str:
    """The verdict: per metric, each control's counts after Holm over the whole family."""
    n = family[0]["tests_in_family"] if family else 0
    clauses = []
    for metric in metrics:
        per_control = [
            f"vs {CONTROL_NAMES[control]}, expert neurons probe "
            + _count_text([r for r in family if r["metric"] == metric and r["comparison"] == control])
            for control in VERDICT_CONTROLS
            if any(r["metric"] == metric and r["comparison"] == control for r in family)
        ]
        lead = (
            "in class-balanced F1 (the held-out protocol's F1 on a balanced test set, not the paper's F1 at "
            "the routed class ratio; its permuted-label null is not 0, see the probing finding)"
            if metric == "f1"
            else f"in {_metric_name(metric)}"
        )
        clauses.append(f"{lead}: " + "; ".join(per_control))
    return (
        f"After Holm's correction over the {_tests_word(n)}, on the same tokens: " + "; ".join(clauses) + "."
    )


def confound(parameters: dict[str, int]) -> str:
    """The confound the family's design cannot remove, with the members' parameter counts."""
    ordered = sorted(parameters.items(), key=lambda item: item[1])
    counts = ", ".join(f"{name.removeprefix('toy/')} {n / 1e6:.2f} M" for name, n in ordered)
    return (
        "**Sparsity family: what it cannot separate.** The members keep the active FFN neurons per token "
        f"fixed but not the total parameters ({counts}), and each is one training run with one seed: "
        "the family cannot separate routing sparsity from model size (nor either from seed-to-seed "
        "variation), so no difference above is attributed to sparsity alone."
    )


def _tests_word(n: int) -> str:
    """``n`` with "test" or "tests"."""
    return f"{n} test" if n == 1 else f"{n} tests"


def _untested_text(family: list[dict]) -> str:
    """The finding when no test of the verdict family has an interval: no verdict, each reason once."""
    reasons = sorted({r.get("interval_unavailable_reason") or "no interval" for r in family})
    return (
        f"**Sparsity family, held-out protocol**: none of the {len(family)} tests of the verdict family (both "
        "routed-token controls, every member, k and metric) has an interval, so there is no verdict: "
        + " ".join(reason if reason.endswith(".") else reason + "." for reason in reasons)
    )
