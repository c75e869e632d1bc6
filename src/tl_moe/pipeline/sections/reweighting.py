"""Re-weighting and steering experts: chosen on the selection half of the documents, reported on the
held-out half against routing-rate-matched random experts (docs/METHODS.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_moe.analysis.configs import ReweightingConfig
from tl_moe.analysis.drivers import HALVES_KEY
from tl_moe.analysis.edit_windows import Windows, held_out_windows, routed_counts
from tl_moe.analysis.reweighting import ReweightingStudy, reweighting_study, selection_domain_experts
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import MIN_DOCUMENTS
from tl_moe.analysis.steering import SteeringStudy, steering_study
from tl_moe.errors import InputError
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.protocol import Analysis, FigureItem, Inputs, Need, Result, TableItem
from tl_moe.report.figures import new_figure
from tl_moe.report.numbers import format_interval

__all__ = ["Reweighting", "ReweightingResult", "held_out_windows"]


def _row(frame: pd.Series, prefix: str) -> str:
    """``estimate [low, high]``, the estimate with why it has no interval (too few documents), or
    ``unavailable``."""
    low, high = frame[prefix + " ci low"], frame[prefix + " ci high"]
    why = frame.get(prefix + " interval unavailable") or _no_interval(frame).removeprefix("no interval: ")
    return format_interval(frame[prefix], low, high, "+.4f", "no held-out document", why)


def _no_interval(frame: pd.Series) -> str:
    """Why a row has no interval."""
    n = int(frame.get("documents", 0))
    if n < MIN_DOCUMENTS:
        return f"no interval: {n} documents; a document-level interval needs {MIN_DOCUMENTS}"
    return "no interval: no control was drawn"


def _absolute_change(row: pd.Series) -> str:
    """The chosen re-weighting's absolute held-out loss change with its 95% interval, and in words
    whether it raised the loss (an increase: worse in absolute terms), lowered it, or neither."""
    estimate, low, high = row["loss change"], row["loss change ci low"], row["loss change ci high"]
    text = f"absolute change {_row(row, 'loss change')}"
    if not np.isfinite(estimate):
        return text
    if np.isfinite(low) and np.isfinite(high):
        if low > 0:
            return text + ": an increase (held-out loss worse in absolute terms)"
        if high < 0:
            return text + ": a decrease (held-out loss better in absolute terms)"
        return (
            text + f": not separated from 0 (the estimate {'an increase' if estimate > 0 else 'a decrease'})"
        )
    return text + f", the estimate {'an increase' if estimate > 0 else 'a decrease'}"


def _interval_record(row: pd.Series, prefix: str, n: int) -> dict[str, Any]:
    def clean(value: float) -> float | None:
        return None if not np.isfinite(value) else round(float(value), 6)

    record = {
        "estimate": clean(row[prefix]),
        "ci_low": clean(row[f"{prefix} ci low"]),
        "ci_high": clean(row[f"{prefix} ci high"]),
        "n": int(n),
    }
    if f"{prefix} interval method" in row:
        record["interval_method"] = row[f"{prefix} interval method"]
    if f"{prefix} df" in row:
        record["draws_df"] = clean(row[f"{prefix} df"])
    return record


def _holm_record(row: pd.Series) -> dict[str, Any]:
    def clean(value: float) -> float | None:
        return None if not np.isfinite(value) else round(float(value), 6)

    return {
        "p": clean(row["chosen − control p"]),
        "p_holm": clean(row["p (Holm)"]),
        "level": clean(row["Holm level"]),
        "ci_low": clean(row["Holm ci low"]),
        "ci_high": clean(row["Holm ci high"]),
        "draws_df": clean(row["Holm df"]) if "Holm df" in row else None,
        "improved": bool(row["improved (Holm)"]),
        "worse": bool(row["worse (Holm)"]),
        "unavailable": row["Holm unavailable"] or None,
    }


@dataclass(frozen=True)
class ReweightingResult(Result):
    """Attributes:
    study: the re-weighting study (grid, gains, matrix, controls).
    steering: the SteerMoE-style switching study, or None (one group only).
    candidates: one row per (domain, candidate set): its experts and where they came from.
    capacity: {domain: (documents in the split, documents on the held-out half)}, whatever the token budget.
    steering_capacity: the same for the two steering groups.
    """

    study: ReweightingStudy
    steering: SteeringStudy | None
    candidates: pd.DataFrame
    capacity: dict[str, tuple[int, int]] = field(default_factory=dict)
    steering_capacity: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.study.gains

    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        for _, row in self.study.gains.iterrows():
            key = row["domain"]
            metrics[f"{key} | chosen"] = f"{row['expert set']} × {row['factor']:g} ({row['experts']})"
            for prefix in ("loss change", "control loss change", "chosen − control"):
                metrics[f"{key} | {prefix}"] = _interval_record(row, prefix, row["documents"])
            metrics[f"{key} | chosen − control | Holm"] = _holm_record(row)
        for domain, (total, held_out) in self.capacity.items():
            metrics[f"{domain} | documents in the split, held-out half"] = [total, held_out]
        if self.steering is not None:
            for _, row in self.steering.switches.iterrows():
                key = f"steer {row['experts of']}-experts {row['switch']} | on {row['evaluated on']}"
                for prefix in ("loss change", "detected − random"):
                    metrics[f"{key} | {prefix}"] = _interval_record(row, prefix, row["documents"])
        return metrics

    def records(self) -> dict[str, Any]:
        out = {
            "gains": self.study.gains.to_dict(orient="records"),
            "matrix": self.study.matrix.to_dict(orient="records"),
        }
        if self.steering is not None:
            out["steering"] = self.steering.switches.to_dict(orient="records")
            out["steering_replication"] = self.steering.replication.to_dict(orient="records")
        return out

    def findings(self) -> list[str]:
        gains = self.study.gains
        if gains.empty:
            return ["**Re-weighting**: no domain had a candidate expert set."]
        findings = [_reweighting_finding(gains) + _untestable(self.capacity, "re-weighting")]
        if self.steering is not None:
            findings.append(_steering_finding(self.steering) + _steering_testability(self.steering_capacity))
        return findings

    def figures(self) -> list[FigureItem]:
        items = [self._gains_figure(), self._matrix_figure()]
        if self.steering is not None:
            items.append(self._steering_figure())
        return items

    def _gains_figure(self) -> FigureItem:
        gains = self.study.gains
        fig, ax = new_figure(max(6.4, 0.9 * len(gains) + 2), 4.2)
        x = np.arange(len(gains))
        for offset, prefix, label, color in (
            (-0.12, "loss change", "chosen re-weighting", "tab:red"),
            (0.12, "control loss change", "matched random experts, same factor", "tab:blue"),
        ):
            values = gains[prefix].to_numpy(dtype=float)
            low = values - gains[f"{prefix} ci low"].to_numpy(dtype=float)
            high = gains[f"{prefix} ci high"].to_numpy(dtype=float) - values
            ax.errorbar(x + offset, values, yerr=[low, high], fmt="o", color=color, label=label, capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(
            x,
            [
                f"{d}\n{s.removesuffix(' experts')}\n× {f:g}"
                for d, s, f in zip(gains["domain"], gains["expert set"], gains["factor"], strict=True)
            ],
            fontsize=7,
        )
        ax.set_ylabel("held-out loss change, nats/token (< 0: better)")
        ax.set_title("Re-weighting chosen experts vs matched random experts")
        ax.legend(fontsize=8)
        return FigureItem(
            "reweighting_gains",
            fig,
            "Per domain: the re-weighting chosen on the selection half, on the domain's held-out documents, "
            "and the same factor on routing-rate-matched random experts (mean of the draws); 95% intervals: "
            "the chosen re-weighting's a percentile document bootstrap, the control's a draw-mean t interval "
            "(the documents' bootstrap variance of the draw mean plus the variance between the draws over their "
            f"number); missing where a domain has fewer than {MIN_DOCUMENTS} held-out documents.",
        )

    def _matrix_figure(self) -> FigureItem:
        matrix = self.study.matrix.pivot(
            index="re-weighted domain", columns="evaluated on", values="loss change"
        )
        fig, ax = new_figure(1.0 * matrix.shape[1] + 3, 0.6 * matrix.shape[0] + 2.5)
        values = matrix.to_numpy(dtype=float)
        bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(matrix.shape[0]), matrix.index, fontsize=8)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(j, i, f"{values[i, j]:+.3f}", ha="center", va="center", fontsize=6)
        ax.set_xlabel("held-out text of domain")
        ax.set_ylabel("re-weighting chosen for domain")
        fig.colorbar(image, ax=ax, label="loss change, nats/token")
        ax.set_title("What each domain's re-weighting does on every domain")
        return FigureItem(
            "reweighting_matrix", fig, "Row D, column D': D's chosen re-weighting on D''s held-out documents."
        )

    def _steering_figure(self) -> FigureItem:
        table = self.steering.switches
        fig, ax = new_figure(6.8, 4.2)
        labels = [
            f"{s}-experts {w}\non {g}"
            for s, w, g in zip(table["experts of"], table["switch"], table["evaluated on"], strict=True)
        ]
        x = np.arange(len(table))
        for offset, prefix, label, color in (
            (-0.12, "loss change", "detected experts", "tab:red"),
            (0.12, "random sets", "matched random experts", "tab:blue"),
        ):
            values = table[prefix].to_numpy(dtype=float)
            err = [
                values - table[f"{prefix} ci low"].to_numpy(dtype=float),
                table[f"{prefix} ci high"].to_numpy(dtype=float) - values,
            ]
            ax.errorbar(x + offset, values, yerr=err, fmt="o", color=color, label=label, capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, labels, fontsize=6)
        ax.set_ylabel("held-out loss change, nats/token")
        a, b = self.steering.contrast
        ax.set_title(f"Switching experts found from {a} vs {b} routing rates")
        ax.legend(fontsize=8)
        return FigureItem(
            "steering_switches",
            fig,
            "Experts with the largest routing-rate difference (selection half) switched on (activated) or "
            "off (removed) on each group's held-out documents, vs matched random experts; 95% intervals.",
        )

    def tables(self) -> list[TableItem]:
        items = [
            TableItem("reweighting_gains", self.study.gains, "Chosen re-weighting per domain, held out."),
            TableItem(
                "reweighting_matrix", self.study.matrix, "Every domain's re-weighting on every domain.", 60
            ),
            TableItem("reweighting_candidates", self.candidates, "Candidate expert sets per domain."),
            TableItem("reweighting_grid", self.study.grid, "The selection grid (selection half only).", 60),
        ]
        if self.steering is not None:
            items += [
                TableItem("steering_switches", self.steering.switches, "Switching on / off, held out."),
                TableItem(
                    "steering_replication", self.steering.replication, "Held-out routing-rate difference."
                ),
                TableItem("steering_detected", self.steering.detected, "Detected experts."),
            ]
        return items


def _holm_row(row: pd.Series) -> str:
    """A domain's chosen − control with its Holm interval (or why it has none), beside the chosen
    re-weighting's absolute held-out loss change."""
    absolute = _absolute_change(row)
    if row["Holm unavailable"]:
        return (
            f"{row['domain']} ({row['expert set']} × {row['factor']:g}): {absolute}; vs control "
            f"{row['chosen − control']:+.4f} (not tested: {row['Holm unavailable']})"
        )
    verdict = (
        "improved" if row["improved (Holm)"] else "worse" if row["worse (Holm)"] else "no difference shown"
    )
    return (
        f"{row['domain']} ({row['expert set']} × {row['factor']:g}): {absolute}; vs control "
        f"{row['chosen − control']:+.4f} [{row['Holm ci low']:+.4f}, {row['Holm ci high']:+.4f}] at level "
        f"{row['Holm level']:.4f}, Holm p = {row['p (Holm)']:.3g}: {verdict}"
    )


def _draws(table: pd.DataFrame, column: str = "control draws") -> str:
    """The number of control draws per row of ``table`` (a range when they differ)."""
    if column not in table:
        return "random"
    counts = sorted({int(n) for n in table[column]})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def _control_interval(table: pd.DataFrame, column: str, draws_column: str) -> str:
    """How the intervals that average the control's draws were computed, from the ``interval method``
    column (``column``) of ``table``: the draw-mean t interval, or with one draw the percentile document
    bootstrap that holds the draw fixed."""
    methods = {m for m in table.get(column, pd.Series(dtype=object)) if m != "none"}
    n = _draws(table, draws_column)
    t_words = (
        f"t interval over the {n} control draws: the documents' bootstrap variance of the draw mean plus the "
        "variance between the draws over their number, Satterthwaite's degrees of freedom"
    )
    if methods == {"percentile"}:
        return (
            "percentile document bootstrap with the one control draw held fixed (its draw variance not in it)"
        )
    if "percentile" in methods:
        return t_words + "; percentile document bootstrap where a control has one draw (held fixed)"
    return t_words


def _reweighting_finding(gains: pd.DataFrame) -> str:
    """Every domain's held-out chosen − control, Holm-adjusted over the domains; none singled out."""
    helped = gains["loss change (selection)"] < 0
    tested_mask = gains["Holm unavailable"] == ""
    tested = gains[tested_mask]
    better, worse = int(tested["improved (Holm)"].sum()), int(tested["worse (Holm)"].sum())

    def named(mask: pd.Series) -> str:
        return ", ".join(map(str, gains.loc[mask, "domain"])) or "none"

    return (
        f"**Re-weighting experts** (set and factor chosen on half the documents, measured on the other half): "
        f"on {int(helped.sum())} of {len(gains)} domains some re-weighting of the grid lowered the selection-half "
        f"loss ({named(helped)}; of them tested held out: {named(helped & tested_mask)}); the tested domains "
        f"whose best re-weighting did not lower the selection-half loss, so had no gain to confirm: "
        f"{named(~helped & tested_mask)}; held "
        f"out, against routing-rate-matched random experts with the same factor, {better} of the {len(tested)} "
        f"tested domains improved and {worse} got worse (Holm-adjusted over the domains, family-wise 5%). "
        "Every domain, in nats/token: the chosen re-weighting's absolute held-out loss change (95% document "
        "bootstrap; > 0 is an increase, i.e. worse) and chosen − control with its Holm interval (paired, "
        f"{_control_interval(gains, 'chosen − control interval method', 'control draws')}, at Holm's level): "
        + "; ".join(_holm_row(row) for _, row in gains.iterrows())
        + "."
    )


def _steering_finding(steering: SteeringStudy) -> str:
    """Switching each group's experts off and on, on its own held-out text: the loss change of the
    detected experts, of matched random experts, and their paired difference with its interval (or why
    it has none)."""
    table = steering.switches
    own = table[table["experts of"] == table["evaluated on"]]
    parts = [
        f"{r['experts of']}-experts {r['switch']} on {r['evaluated on']}: {_row(r, 'loss change')} vs "
        f"{_row(r, 'random sets')} for matched random experts, paired difference (experts − matched random "
        f"experts) {_row(r, 'detected − random')}"
        for _, r in own.sort_values(["experts of", "switch"]).iterrows()
    ]
    a, b = steering.contrast
    return (
        f"**Steering** ({a} vs {b}, experts chosen by routing-rate difference on the selection half), switched "
        f"{' and '.join(sorted(set(own['switch'])))}: "
        + "; ".join(parts)
        + " (nats/token, held out; the experts' loss change: 95% percentile document bootstrap; the matched "
        "random experts' (mean of the draws) and the paired difference: 95% "
        + _control_interval(own, "detected − random interval method", "random draws")
        + ")."
        + "".join(f" Note: {note}." for note in getattr(steering, "notes", ()))
    )


def held_out_capacity(groups: Sequence[Any], rows: Sequence[int] | None = None) -> dict[str, tuple[int, int]]:
    """``{group: (documents, documents on the held-out half)}`` of the corpus rows ``rows`` (all rows
    when None; ``groups`` gives each of those rows' group): the most held-out documents any
    ``--reweight-tokens`` can reach, by the drivers' document split."""
    index = torch.arange(len(groups)) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    half = document_split(index, key=HALVES_KEY).tolist()
    out: dict[str, list[int]] = {}
    for group, side in zip(groups, half, strict=True):
        counts = out.setdefault(str(group), [0, 0])
        counts[0] += 1
        counts[1] += side
    return {group: (total, held_out) for group, (total, held_out) in sorted(out.items())}


def testable_groups(capacity: dict[str, tuple[int, int]]) -> list[str]:
    """The groups whose held-out half can reach ``MIN_DOCUMENTS`` documents, most documents first."""
    able = [g for g, (_, held_out) in capacity.items() if held_out >= MIN_DOCUMENTS]
    return sorted(able, key=lambda g: (-capacity[g][0], g))


def _short_groups(capacity: dict[str, tuple[int, int]], counts: str) -> tuple[list[str], str]:
    """``(groups, listing)``: the groups whose held-out half cannot reach ``MIN_DOCUMENTS`` documents, and
    them joined by "; ", each followed by its document counts written into the ``counts`` pattern."""
    short = [g for g, (_, held_out) in capacity.items() if held_out < MIN_DOCUMENTS]
    listed = "; ".join(
        f"{g} "
        + counts.format(f"{capacity[g][0]} documents in the split, {capacity[g][1]} on the held-out half")
        for g in short
    )
    return short, listed


def _untestable(capacity: dict[str, tuple[int, int]], what: str) -> str:
    """A sentence naming the groups this corpus cannot make testable (empty when none)."""
    short, listed = _short_groups(capacity, "({})")
    if not short:
        return ""
    return (
        f" The corpus cannot make {what} testable for {len(short)} of {len(capacity)} groups, whatever "
        f"--reweight-tokens is: a held-out interval needs {MIN_DOCUMENTS} documents, and it has {listed}."
    )


def _steering_testability(capacity: dict[str, tuple[int, int]]) -> str:
    """Whether both steering groups can reach ``MIN_DOCUMENTS`` held-out documents, from the counts."""
    short, listed = _short_groups(capacity, "{}")
    if not short:
        return ""
    return (
        f" Steering is untestable on this corpus for this contrast ({listed}; {MIN_DOCUMENTS} held-out "
        "documents needed, whatever --reweight-tokens is): the values above are descriptive only."
    )


def _contrast(run: RunContext) -> tuple[str | None, str, str]:
    """``(domain or None, A, B)``: the steering contrast (languages of ``domain`` when not None). By
    default the two domains with the most documents among those whose held-out half can reach
    ``MIN_DOCUMENTS`` documents; without two such, the two largest domains (the finding then says
    steering is untestable on this corpus)."""
    given = run.options.config("reweighting").steer_contrast
    if given is None:
        domains = [str(d) for d in run.dataset["domain"]]
        capacity = held_out_capacity(domains)
        if len(capacity) < 2:
            raise InputError(
                "steering needs two domains; give --steer-contrast DOMAIN:A,B for two languages."
            )
        testable = testable_groups(capacity)
        if len(testable) >= 2:
            return None, testable[0], testable[1]
        largest = sorted(capacity, key=lambda g: (-capacity[g][0], g))
        return None, largest[0], largest[1]
    first, second = given
    if ":" in first:
        domain, first = first.split(":", 1)
        return domain, first, second
    return None, first, second


class Reweighting(Analysis):
    """Re-weighting domain / driver experts and SteerMoE-style switching, evaluated on held-out documents."""

    name = "reweighting"
    config_class = ReweightingConfig
    title = "Re-weighting and steering experts"
    summary = (
        "scale domain/driver experts' weights, switch contrast experts on/off; held out vs random experts"
    )
    intro = (
        "Documents are split by the drivers' hash into a selection half and a held-out half. For each domain D, "
        "candidate expert sets are its domain experts (BH q <= --fdr of the domain-expert permutation test on the "
        "selection half's routing), the driver experts (drivers analysis, chosen on the same selection half) and their "
        "union; every set × factor of --reweight-factors scales those experts' mixing weights on D's selection "
        "documents, and the pair with the lowest loss is chosen. It is reported on D's held-out documents beside "
        "--reweight-draws random sets (each expert replaced by one of the 3 experts of its layer with the closest "
        "routing rate on D) with the same factor, and applied to every other domain's held-out text (the "
        "matrix). Steering: the expert of each sparse layer with the largest routing-rate difference between two "
        "contrasting groups (selection half) is switched on (router logit raised above the token's largest) or "
        "off (removed) on held-out text of both groups, against matched random experts. Each domain gets "
        "--reweight-tokens tokens per half. Intervals: 95% percentile bootstrap over held-out documents, paired; "
        "where a number averages the control's random draws, a t interval whose variance is the documents' "
        "bootstrap variance of the draw mean plus the variance between the draws over their number "
        f"(Satterthwaite's degrees of freedom) (unavailable below {MIN_DOCUMENTS} documents); every domain's "
        "chosen − control is reported with a Holm-adjusted t interval over the domains, none singled out."
    )
    depends_on = ("domains", "drivers")
    default = False

    def check(self, run: RunContext) -> None:
        if len(run.domain_names) < 2:
            raise InputError("the 'reweighting' analysis needs a corpus with at least two domains.")
        domain, a, b = _contrast(run)
        if domain is None:
            unknown = [name for name in (a, b) if name not in run.domain_names]
            if unknown:
                raise InputError(
                    f"--steer-contrast names unknown domains {unknown}; domains: {list(run.domain_names)}."
                )
        else:
            if domain not in run.domain_names or "language" not in run.dataset.column_names:
                raise InputError(
                    f"--steer-contrast {domain}:{a},{b} needs domain {domain!r} and a 'language' column; "
                    f"domains: {list(run.domain_names)}."
                )
        if run.options.seq_len < 2:
            raise InputError("--seq-len must be at least 2.")
        from tl_moe.pipeline.validation import check_reweight_budget

        check_reweight_budget(
            run.dataset,
            run.model(run.main).tokenizer,
            seq_len=run.options.seq_len,
            reweight_tokens=run.options.config("reweighting").tokens,
            domains=run.domain_names,
        )

    def needs(self, run: RunContext) -> list[Need]:
        return []

    def finalize(self, run: RunContext, inputs: Inputs) -> ReweightingResult:
        options = run.options
        model = run.model(run.main)
        cfg = model.moe_cfg
        layers = tuple(cfg.sparse_layers)
        selection, evaluation = held_out_windows(
            run.dataset,
            model.tokenizer,
            seq_len=options.seq_len,
            tokens_per_group=run.options.config("reweighting").tokens,
        )
        routed = routed_counts(model, selection, layers, batch_size=options.batch_size)
        domains_result = inputs.result("domains")
        domain_sets, _ = selection_domain_experts(
            routed,
            selection,
            layers,
            threshold=domains_result.experts.threshold,
            min_tokens=domains_result.experts.min_tokens,
            fdr=options.fdr,
            n_permutations=options.permutations,
            seed=options.seed,
            max_experts=run.options.config("drivers").count,
        )
        experts = inputs.result("drivers").experts
        drivers = tuple(
            sorted((int(r.layer), int(r.expert)) for r in experts[experts["driver"]].itertuples(index=False))
        )
        candidates, rows = {}, []
        for d in sorted(set(selection.group)):
            sets = {
                "domain experts": domain_sets.get(d, ()),
                "driver experts": drivers,
                "domain + driver experts": tuple(sorted(set(domain_sets.get(d, ())) | set(drivers))),
            }
            if not sets["domain experts"]:
                sets.pop("domain + driver experts")
            candidates[d] = sets
            for name, s in sets.items():
                rows.append(
                    {
                        "domain": d,
                        "expert set": name,
                        "experts": " ".join(f"L{la}E{e}" for la, e in s),
                        "n experts": len(s),
                    }
                )
        study = reweighting_study(
            model,
            selection,
            evaluation,
            candidates,
            factors=run.options.config("reweighting").factors,
            n_draws=run.options.config("reweighting").draws,
            n_resamples=options.bootstrap_resamples,
            seed=options.seed,
            batch_size=options.batch_size,
            routed_selection=routed,
            layers=layers,
            progress=options.progress,
        )
        steering = self._steering(run, model, selection, evaluation)
        capacity = held_out_capacity([str(d) for d in run.dataset["domain"]])
        return ReweightingResult(
            study, steering, pd.DataFrame(rows), capacity=capacity, steering_capacity=_steering_capacity(run)
        )

    def _steering(
        self, run: RunContext, model: Any, selection: Windows, evaluation: Windows
    ) -> SteeringStudy | None:
        options = run.options
        domain, a, b = _contrast(run)
        if domain is not None:
            rows = [i for i, d in enumerate(run.dataset["domain"]) if str(d) == domain]
            selection, evaluation = held_out_windows(
                run.dataset,
                model.tokenizer,
                seq_len=options.seq_len,
                tokens_per_group=run.options.config("reweighting").tokens,
                group_column="language",
                rows=rows,
            )
        if a not in selection.group or b not in selection.group:
            return None
        return steering_study(
            model,
            selection,
            evaluation,
            (a, b),
            n_draws=run.options.config("reweighting").draws,
            n_resamples=options.bootstrap_resamples,
            seed=options.seed,
            batch_size=options.batch_size,
            progress=options.progress,
        )


def _steering_capacity(run: RunContext) -> dict[str, tuple[int, int]]:
    """Documents in the split and on the held-out half of the two steering groups."""
    domain, a, b = _contrast(run)
    if domain is None:
        capacity = held_out_capacity([str(d) for d in run.dataset["domain"]])
    else:
        rows = [i for i, d in enumerate(run.dataset["domain"]) if str(d) == domain]
        languages = [str(run.dataset["language"][i]) for i in rows]
        capacity = held_out_capacity(languages, rows)
    return {g: capacity.get(g, (0, 0)) for g in (a, b)}
