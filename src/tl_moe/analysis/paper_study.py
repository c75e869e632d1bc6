"""The paper's probing protocol as one configured object: :class:`PaperProtocol`.

Sampled, split and scored as the paper's reference code does
(:data:`~tl_moe.analysis.concept_probing.PAPER_PROTOCOL`, arXiv 2604.02178): per concept, the best
test F1 over units, averaged over concepts; the maximum is taken on the split it reports, which
favours the many small units of an MoE, so its numbers are for comparison with published ones, labelled
as such (the headline is :class:`~tl_moe.analysis.held_out_study.HeldOutProbing`). The dense model is
probed per layer and on random token subsets with the MoE's routed sizes (routing-matched draws).
It knows nothing of the pipeline.

Example (stored tokens of a model the user holds, as for
:class:`~tl_moe.analysis.held_out_study.HeldOutProbing`)::

    paper = PaperProtocol(cfg.sparse_layers, cfg.num_experts, dense_layers=dense_cfg.dense_layers)
    found = paper(moe_stored, dense_stored)
    found.curves  # mean over concepts of the best F1 per k, MoE and dense
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from tl_moe.analysis._probing_inputs import (
    check_dense_rows,
    check_expert_rows,
    check_labelled,
    check_probe_sizes,
)
from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.concept_probing import (
    best_f1_by_k,
    experts_near_best,
    probe_dense,
    probe_experts,
    routed_counts,
)
from tl_moe.analysis.configs.probing import ProbingConfig
from tl_moe.analysis.configs.statistics import Statistics
from tl_moe.analysis.held_out_probing import is_document_concept
from tl_moe.analysis.held_out_study import probe_parameters
from tl_moe.collect.steps import Step, run_now
from tl_moe.errors import InputError
from tl_moe.models.hook_names import get_act_name

__all__ = [
    "DENSE_CURVE",
    "MATCHED_CURVE",
    "MOE_CURVE",
    "PaperOutcome",
    "PaperProtocol",
    "paper_comparisons",
    "probing_curves",
]

MOE_CURVE = "MoE: best of layers x experts"
DENSE_CURVE = "dense: best of layers"
MATCHED_CURVE = "dense, routing-matched subsets: best of layers x draws"


@dataclass(frozen=True)
class PaperOutcome:
    """What :class:`PaperProtocol` found.

    Attributes:
        moe_units: one row per (layer, expert, concept, k): test F1, status, sizes.
        dense_units: one row per (dense layer or routing-matched draw, concept, k); None without dense
            tokens. ``draw = -1``: the whole layer; ``draw >= 0``: a random token subset the size of one
            expert's routed set.
        curves: mean over the commonly probed concepts of the best F1 per k (:func:`probing_curves`).
        near_best: per concept at k = 1, the best expert, its F1 and how many experts reach 95% of it.
        records: the MoE-minus-dense differences of mean best F1 per k, with a bootstrap over concepts
            (:func:`paper_comparisons`; empty without dense tokens).
    """

    moe_units: pd.DataFrame
    dense_units: pd.DataFrame | None
    curves: pd.DataFrame
    near_best: pd.DataFrame
    records: tuple[dict, ...] = ()


@dataclass(frozen=True)
class PaperProtocol:
    """The paper's protocol on the MoE's experts and, given its tokens, on the dense model (see the module).

    Args:
        layers: the MoE's probed sparse layers (block indices); the routing-matched draws take the
            routed sizes of the middle one.
        num_experts: the MoE's experts per sparse layer.
        dense_layers: the dense model's FFN layers (needed with dense tokens).
        config: probe sizes (``ks``) and the least positives / negatives a unit needs (``min_examples``).
        statistics: the seed (probes, draws, the concept bootstrap) and the bootstrap resamples.

    Usage::

        found = PaperProtocol(layers, cfg.num_experts, dense_layers=dense_cfg.dense_layers)(moe_stored, dense_stored)
        found.curves, found.near_best, found.records
    """

    layers: Sequence[int]
    num_experts: int
    dense_layers: Sequence[int] = ()
    config: ProbingConfig = field(default_factory=ProbingConfig)
    statistics: Statistics = field(default_factory=Statistics)

    def __call__(
        self,
        moe: StoredTokens,
        dense: StoredTokens | None = None,
        *,
        step: Step = run_now,
        progress: bool = False,
    ) -> PaperOutcome:
        """Probe every expert (and every dense layer and routing-matched draw) and compare them.

        Args:
            moe, dense: stored tokens of the MoE and of the dense model (None: MoE only).
            step: how each layer's probes run (``step(key, compute)``; the default computes at once).
            progress: show a progress bar over the MoE's layers.
        """
        moe_units, dense_units = self.probe_units(moe, dense, step=step, progress=progress)
        records = paper_comparisons(moe_units, dense_units)
        return PaperOutcome(
            moe_units=moe_units,
            dense_units=dense_units,
            curves=probing_curves(moe_units, dense_units),
            near_best=experts_near_best(moe_units, k=1),
            records=tuple(records),
        )

    def probe_units(
        self,
        moe: StoredTokens,
        dense: StoredTokens | None = None,
        *,
        step: Step = run_now,
        progress: bool = False,
    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """Every probe of the protocol (after :meth:`check`): the experts' rows and the dense layers' and
        routing-matched draws' rows (None without dense tokens), as :class:`PaperOutcome` holds them."""
        self.check(moe, dense)
        layers, seed = tuple(self.layers), self.statistics.seed
        params, minimum = probe_parameters(self.config, seed), self.config.min_examples
        moe_units = probe_experts(
            moe, layers, self.num_experts, params, min_positives=minimum, progress=progress, step=step
        )
        dense_units = None
        if dense is not None:
            dense_units = probe_dense(
                dense,
                self.dense_layers,
                params,
                min_positives=minimum,
                routed_counts=routed_counts(moe, layers[len(layers) // 2], self.num_experts),
                seed=seed,
                step=step,
            )
        return moe_units, dense_units

    def check(self, moe: StoredTokens, dense: StoredTokens | None = None) -> None:
        """Raise a one-line InputError, before any probe, when the stored tokens do not fit: labels or a
        probed layer's rows missing, ``num_experts`` contradicting the stored expert indices, a probe size
        above the stored neurons per expert, dense tokens without ``dense_layers`` or their FFN rows."""
        layers = tuple(self.layers)
        if not layers:
            raise InputError("PaperProtocol got no layers; pass the MoE's sparse layers to probe.")
        check_labelled(moe, "MoE", documents=False)
        check_expert_rows(moe, "MoE", layers, self.num_experts)
        width = min(moe.rows[get_act_name("expert_post", layer)].shape[-1] for layer in layers)
        check_probe_sizes(self.config.ks, width, "an expert")
        if dense is not None:
            if not self.dense_layers:
                raise InputError(
                    "PaperProtocol got dense stored tokens without dense_layers; pass the dense model's FFN layers."
                )
            check_labelled(dense, "dense", documents=False)
            check_dense_rows(dense, "dense", self.dense_layers)


def probing_curves(moe: pd.DataFrame, dense: pd.DataFrame | None) -> pd.DataFrame:
    """Mean over concepts of the best F1 per k, for the MoE and (if given) the dense baselines.

    Only token-level concepts probed successfully in every compared model are averaged, so the curves
    average the same concepts (document-level ``domain_*`` / ``language_*`` concepts are left out, as
    in every comparison).
    """
    frames = {MOE_CURVE: moe}
    if dense is not None:
        frames[DENSE_CURVE] = dense[dense["draw"] < 0]
        if (dense["draw"] >= 0).any():
            frames[MATCHED_CURVE] = dense[dense["draw"] >= 0]
    concepts = None
    for frame in frames.values():
        ok = {c for c in frame.dropna(subset=["f1"])["concept"] if not is_document_concept(c)}
        concepts = ok if concepts is None else concepts & ok
    rows = []
    for name, frame in frames.items():
        curve = best_f1_by_k(frame[frame["concept"].isin(concepts)])
        rows.append(curve.assign(model=name))
    return pd.concat(rows, ignore_index=True).rename(columns={"mean": "mean_best_f1", "count": "concepts"})


#: Why the paper protocol's differences carry no interval.
NO_PAPER_INTERVAL = (
    "the paper protocol chooses units on the split it reports and splits tokens, not documents, so no "
    "document-level interval exists for it (the held-out protocol's records carry those)"
)


def paper_comparisons(moe: pd.DataFrame, dense: pd.DataFrame | None) -> list[dict]:
    """Paper protocol: the mean over concepts of best-F1 differences, an estimate with no interval.

    Its units are chosen on the split it reports and its test split is of tokens, not documents, so no
    document-level interval exists for it, and a bootstrap over concepts would describe other concepts,
    not the uncertainty of these numbers: the record carries the estimate, how many concepts it averages
    and in how many the MoE's best unit is higher (``ci_low`` / ``ci_high`` are None, with the reason).
    Document-level concepts are left out, as in the held-out records.
    """
    if dense is None:
        return []
    arms = {
        "moe_vs_dense": dense[dense["draw"] < 0],
        "moe_vs_matched_subsets": dense[dense["draw"] >= 0],
    }
    records = []

    def best(frame: pd.DataFrame) -> pd.Series:
        ok = frame.dropna(subset=["f1"])
        ok = ok[~ok["concept"].map(is_document_concept)]
        return ok.groupby(["k", "concept"])["f1"].max()

    moe_best = best(moe)
    for name, frame in arms.items():
        if not len(frame):
            continue
        other = best(frame)
        for k in sorted(moe_best.index.get_level_values("k").unique()):
            a, b = moe_best.get(k), other.get(k) if k in other.index.get_level_values("k") else None
            if a is None or b is None:
                continue
            both = a.index.intersection(b.index)
            diff = (a[both] - b[both]).to_numpy()
            records.append(
                {
                    "protocol": "paper",
                    "comparison": name,
                    "k": int(k),
                    "metric": "f1",
                    "estimate": float(diff.mean()) if len(diff) else None,
                    "ci_low": None,
                    "ci_high": None,
                    "interval_available": False,
                    "interval_unavailable_reason": NO_PAPER_INTERVAL,
                    "first": "moe",
                    "second": "dense" if name == "moe_vs_dense" else "dense_routing_matched_draws",
                    "n_concepts": len(diff),
                    "n_concepts_moe_higher": int((diff > 0).sum()),
                    "n_documents": None,
                    "interval_over": None,
                    "a_mean": float(a[both].mean()),
                    "b_mean": float(b[both].mean()),
                }
            )
    return records
