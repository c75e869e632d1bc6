"""The sections of the ``tl-moe analyze`` report: each turns pass results into figures, tables, metrics."""

from __future__ import annotations

import pandas as pd
import torch
from matplotlib.figure import Figure

from tl_moe.analysis.concept_probing import best_f1_by_k, experts_near_best, probe_dense, probe_experts


def _probe_params(options) -> dict:
    return {"ks": options.probe_ks, "min_examples": options.min_examples, "random_state": options.seed}


def _routed_counts(stored, layer: int, num_experts: int) -> torch.Tensor:
    indices = stored.rows[f"indices{layer}"].long()
    return torch.bincount(indices.reshape(-1), minlength=num_experts)


def probing_curves(moe: pd.DataFrame, dense: pd.DataFrame | None) -> pd.DataFrame:
    """Mean over concepts of the best F1 per k, for the MoE and (if given) the dense baselines.

    Only concepts probed successfully in every compared model are averaged, so the curves
    average the same concepts.
    """
    frames = {"MoE: best of layers x experts": moe}
    if dense is not None:
        frames["dense: best of layers"] = dense[dense["draw"] < 0]
        if (dense["draw"] >= 0).any():
            frames["dense, routing-matched subsets: best of layers x draws"] = dense[dense["draw"] >= 0]
    concepts = None
    for frame in frames.values():
        ok = set(frame.dropna(subset=["f1"])["concept"])
        concepts = ok if concepts is None else concepts & ok
    rows = []
    for name, frame in frames.items():
        curve = best_f1_by_k(frame[frame["concept"].isin(concepts)])
        rows.append(curve.assign(model=name))
    return pd.concat(rows, ignore_index=True).rename(columns={"mean": "mean_best_f1", "count": "concepts"})


def _curve_figure(curves: pd.DataFrame, title: str) -> Figure:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for name, group in curves.groupby("model", sort=False):
        ax.plot(group["k"], group["mean_best_f1"], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (neurons in the probe)")
    ax.set_ylabel("mean over concepts of best test F1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def probing_section(
    report, cfg, moe_results, dense_results, options
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """k-sparse probing: MoE experts vs dense FFN neurons, and the fair comparison.

    Returns the per-unit probe frames of the MoE and of the dense baseline (None without one).
    """
    from tl_moe.analyze import probed_layers

    stored = moe_results["store"]
    params = _probe_params(options)
    layers = probed_layers(cfg, options)
    moe = probe_experts(stored, layers, cfg.num_experts, params, min_positives=options.min_examples)
    dense = None
    if dense_results is not None:
        dense_store = dense_results["store"]
        middle = layers[len(layers) // 2]
        dense_layers = [int(key.removeprefix("neuron")) for key in dense_store.rows]
        dense = probe_dense(
            dense_store,
            dense_layers,
            params,
            min_positives=options.min_examples,
            routed_counts=_routed_counts(stored, middle, cfg.num_experts),
            seed=options.seed,
        )
    curves = probing_curves(moe, dense)
    section = report.add_section(
        "k-sparse probing of expert neurons",
        key="probing",
        intro=(
            "For each token-level concept, a logistic-regression probe on the top-k neurons (ranked by "
            "|mean(pos) - mean(neg)| on the train split) of each expert, on the tokens routed to it, "
            "balanced classes, 75/25 split, F1 on the held-out split. Each concept is probed only on "
            "documents of the domains it is defined on. The dense model's best-of-layers has fewer draws "
            "than the MoE's best-of-experts, so the dense model is also probed on random token subsets "
            "the sizes of the experts' routed token sets (one draw per expert)."
        ),
    )
    section.add_figure(
        _curve_figure(curves, "Best F1 vs k"), "probing_f1_vs_k", "Mean best F1 over concepts vs k."
    )
    section.add_table(curves, "probing_curves", "Mean best F1 per k.")
    near = experts_near_best(moe, k=1)
    section.add_table(
        near.sort_values("best_f1", ascending=False).reset_index(drop=True),
        "probing_experts_near_best",
        "Per concept at k=1: best expert, its F1, and how many experts reach 95% of it.",
    )
    section.add_table(moe, "probing_moe_units", "Every (expert, concept, k) probe.", max_rows=20)
    if dense is not None:
        section.add_table(
            dense, "probing_dense_units", "Every dense (layer or draw, concept, k) probe.", max_rows=20
        )
    metrics = {}
    for name, group in curves.groupby("model", sort=False):
        for k in (1, max(options.probe_ks)):
            value = group.loc[group["k"] == k, "mean_best_f1"]
            if len(value):
                metrics[f"{name} | k={k}"] = round(float(value.iloc[0]), 4)
    metrics["concepts compared"] = int(curves["concepts"].max())
    metrics["median experts within 95% of best (k=1)"] = float(near["experts_near_best"].median())
    section.add_metrics(metrics)
    return moe, dense


def sparsity_section(report, family: dict, dense: pd.DataFrame | None, options) -> None:
    """Probing F1 against routing sparsity (active ratio k / E) across the toy family.

    Args:
        family: model name -> (MoEConfig, per-unit probe frame of that MoE).
        dense: per-unit probe frame of the dense twin (best of layers), or None.
    """
    concepts = None
    for _, frame in family.values():
        ok = set(frame.dropna(subset=["f1"])["concept"])
        concepts = ok if concepts is None else concepts & ok
    if dense is not None:
        concepts &= set(dense[dense["draw"] < 0].dropna(subset=["f1"])["concept"])
    rows = []
    for name, (cfg, frame) in family.items():
        curve = best_f1_by_k(frame[frame["concept"].isin(concepts)])
        rows.append(curve.assign(model=name, active_ratio=cfg.active_ratio, experts=cfg.num_experts))
    if dense is not None:
        curve = best_f1_by_k(dense[(dense["draw"] < 0) & dense["concept"].isin(concepts)])
        rows.append(curve.assign(model="dense twin", active_ratio=1.0, experts=1))
    table = pd.concat(rows, ignore_index=True).rename(columns={"mean": "mean_best_f1", "count": "concepts"})
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for k in sorted({1, max(options.probe_ks)}):
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
    ax.set_title("Probing F1 vs routing sparsity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    section = report.add_section(
        "Probing F1 vs routing sparsity",
        key="sparsity",
        intro=(
            "The toy family differs only in the number of experts (same data, steps, seed and active "
            "neurons per token). Each point is the mean over the concepts probed in every model of the best "
            "F1 over that model's layers x experts (dense twin: layers)."
        ),
    )
    section.add_figure(fig, "probing_f1_vs_sparsity", "Mean best F1 vs active ratio.")
    section.add_table(table, "probing_f1_vs_sparsity", "Mean best F1 per model and k.", max_rows=40)
    section.add_metrics(
        {
            f"{row.model} (active ratio {row.active_ratio:g}) | k=1": round(float(row.mean_best_f1), 4)
            for row in table[table["k"] == 1].itertuples()
        }
    )


def specialization_section(report, model, moe_results, domain_names, token_groups, options) -> None:
    """Routing (and, with the logit lens, functional) specialization by Jensen-Shannon divergence."""
    from tl_moe.analysis.specialization import specialization_scores

    cfg = model.moe_cfg
    results = {
        f"routing, {options.n_token_groups} token clusters": specialization_scores(
            moe_results["routed_by_group"], seed=options.seed, kind="routing"
        ),
        "routing, domains": specialization_scores(
            moe_results["routed_by_domain"], seed=options.seed, kind="routing"
        ),
    }
    lens = moe_results.get("logit_lens")
    if lens is not None:
        results[f"functional, {options.n_token_groups} token clusters"] = specialization_scores(
            lens.dense_counts(), seed=options.seed, kind="functional"
        )
    section = report.add_section(
        "Routing and functional specialization",
        key="specialization",
        intro=(
            "Per expert, JSD (bits) between the distribution of its tokens over groups and its layer's pooled "
            "distribution, minus the mean JSD of multinomial samples of the same size from the pooled "
            "distribution (the sampling baseline). Groups: spherical k-means clusters of the unembedding "
            "(input tokens routed to the expert: routing specialization; tokens in its logit-lens top-3: "
            "functional specialization), or corpus domains."
        ),
    )
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    rows = []
    for name, result in results.items():
        summary = result.layer_summary()
        layers = [cfg.sparse_layers[i] for i in summary["layer"]]
        ax.errorbar(
            layers, summary["mean_excess"], yerr=summary["std_excess"], marker="o", capsize=3, label=name
        )
        rows.append(summary.assign(measure=name, layer=layers))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(list(cfg.sparse_layers))
    ax.set_xlabel("layer")
    ax.set_ylabel("JSD - sampling baseline (bits)")
    ax.set_title("Specialization per layer (mean ± sd over experts)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    section.add_figure(
        fig, "specialization_per_layer", "Specialization above the sampling baseline, per layer."
    )
    table = pd.concat(rows, ignore_index=True)
    section.add_table(table, "specialization_per_layer", "Per layer and measure.")
    section.add_metrics(
        {
            f"{name} | mean excess, last layer": round(float(r.layer_summary()["mean_excess"].iloc[-1]), 4)
            for name, r in results.items()
        }
    )


def domain_section(report, model, moe_results, domain_names, options) -> None:
    """Domain experts: entropy of each expert's size-normalized routing share over domains."""
    from tl_moe.analysis.domain_experts import DomainExperts

    cfg = model.moe_cfg
    present = moe_results["tokens_by_domain"] > 0  # domains the token budget reached
    experts = DomainExperts(threshold=0.5, min_tokens=50).fit(
        moe_results["routed_by_domain"][..., present],
        moe_results["tokens_by_domain"][present],
        [name for name, keep in zip(domain_names, present.tolist(), strict=True) if keep],
    )
    section = report.add_section(
        "Domain experts",
        key="domains",
        intro=(
            "Rate r[l,e,d] = tokens of domain d routed to expert e / tokens of domain d; share π = r / Σ_d r; "
            "score = 1 - H(π)/log(n_domains) (0: uniform over domains, 1: one domain only); lift = r[favoured] / "
            "mean_d r. Experts with a score above 0.5 are called domain experts."
        ),
    )
    top = experts.top(15).copy()
    top["layer"] = [cfg.sparse_layers[int(i)] for i in top["layer"]]
    lens = moe_results.get("logit_lens")
    if lens is not None:
        top = top.merge(promoted_tokens(lens, model.tokenizer), on=["layer", "expert"], how="left")
    section.add_table(top, "domain_experts_top", "The most domain-specific experts.")
    for position in sorted({0, len(cfg.sparse_layers) - 1}):
        drawn = experts.heatmap(position)
        fig = getattr(drawn, "figure", drawn)  # heatmap returns its Axes
        section.add_figure(
            fig,
            f"domain_share_layer{cfg.sparse_layers[position]}",
            f"Routing share per domain × expert, layer {cfg.sparse_layers[position]}.",
        )
    frame = experts.to_frame()
    section.add_metrics(
        {
            "domain experts (score > 0.5)": int(experts.is_domain_expert_.sum()),
            "experts scored": int((~experts.insufficient_tokens_).sum()),
            "mean domain score": round(float(frame["score"].mean()), 4),
        }
    )


def promoted_tokens(lens, tokenizer, n: int = 8) -> pd.DataFrame:
    """One row per (layer, expert): its ``n`` top mean-lens tokens, joined for display."""
    long = lens.top_tokens(tokenizer)
    long = long[(long["rank"] < n) & long["token"].notna()]
    joined = long.groupby(["layer", "expert"])["token"].agg(
        lambda tokens: " · ".join(repr(t)[1:-1] for t in tokens)
    )
    return joined.rename("top promoted tokens").reset_index()


def logit_lens_section(report, model, moe_results, options) -> None:
    """What each expert writes into the vocabulary, aggregated over the corpus."""
    lens = moe_results["logit_lens"]
    section = report.add_section(
        "Expert logit lens",
        key="logit_lens",
        intro="Per expert, the tokens its output (before the routing weight, through the final norm's gain) "
        "promotes most on average over the tokens routed to it.",
    )
    section.add_table(
        lens.top_tokens(model.tokenizer), "logit_lens_top_tokens", "Top promoted tokens per expert."
    )
