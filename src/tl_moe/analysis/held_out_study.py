"""Held-out probing with its controls as one configured object: :class:`HeldOutProbing`.

From the stored tokens of an MoE (each expert's neurons on its routed tokens), and optionally of a dense
model on the same text and of an untrained MoE of the same config, it splits the documents into a
selection and a test side (:func:`~tl_moe.analysis.splits.document_split`), keeps the concepts with
enough positives on the selection side, probes every arm — the MoE's experts and its controls — with
units chosen on the selection documents and scored on the test documents
(:func:`~tl_moe.analysis.held_out_probing.held_out_arm`), and compares the MoE with each control by a
paired document-bootstrap difference (:func:`~tl_moe.analysis.held_out_comparisons.held_out_comparisons`).
The controls (docs/METHODS.md, "Held-out protocol"): the dense layers; the dense neurons on each
expert's routed tokens, all of them and ``d_expert`` random ones per seeded draw (the matched-count
control, with its own permuted-label null); random dense token subsets with the routed sizes; the
untrained MoE; both models with permuted labels. It knows nothing of the pipeline.

Example (a model the user holds and its dense baseline; one collection pass each)::

    study = HeldOutProbing.of(moe.moe_cfg, dense.moe_cfg, config=ProbingConfig(ks=(1, 4)))
    labels = TokenConceptLabeler()
    moe_stored = collect(moe, corpus, {"s": study.expert_store()}, max_tokens=60_000, concept_labeler=labels)["s"]
    dense_stored = collect(dense, corpus, {"s": study.dense_store()}, max_tokens=60_000, concept_labeler=labels)["s"]
    found = study(moe_stored, dense_stored)  # untrained=...: an untrained MoE's stored tokens add that null
    found.comparisons  # one row per (comparison, k, metric): estimate and its 95% document interval
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool

from tl_moe.analysis._probing_inputs import (
    check_dense_rows,
    check_expert_rows,
    check_labelled,
    check_probe_sizes,
    check_same_tokens,
    check_sparse_layers,
    same_tokens,
)
from tl_moe.analysis._sampling_plans import reuse_sampling_plans
from tl_moe.analysis.activations import StoredTokens, TokenActivationStore
from tl_moe.analysis.configs.probing import ProbingConfig
from tl_moe.analysis.configs.statistics import Statistics
from tl_moe.analysis.held_out_comparisons import (
    COMPARISONS,
    ROUTED_COUNT,
    ROUTED_COUNT_PERMUTED,
    comparison_frame,
    group_comparisons,
    group_frame,
    held_out_comparisons,
)
from tl_moe.analysis.held_out_probing import (
    ROUTED_COUNT_DRAWS,
    SWAP_PERMUTATIONS,
    HeldOutArm,
    dense_layer_blocks,
    dense_matched_blocks,
    dense_routed_blocks,
    dense_routed_count_blocks,
    expert_blocks,
    held_out_arm,
    layer_map,
    permuted_labels,
)
from tl_moe.analysis.splits import document_split
from tl_moe.collect.steps import Step, run_now
from tl_moe.errors import AnalysisUnavailable, InputError
from tl_moe.models.config import MoEConfig
from tl_moe.models.hook_names import get_act_name
from tl_moe.workers import WorkerPool

__all__ = ["HeldOutOutcome", "HeldOutProbing", "probe_parameters", "usable_on_selection"]


def probe_parameters(config: ProbingConfig, seed: int) -> dict[str, Any]:
    """Keyword arguments of :class:`~tl_moe.analysis.probing.KSparseProbe` under ``config`` and ``seed``."""
    return {"ks": config.ks, "min_examples": config.min_examples, "random_state": seed}


def usable_on_selection(
    stored: StoredTokens, selection: Bool[torch.Tensor, " token"], min_positives: int
) -> StoredTokens:
    """``stored`` with the concept columns that have ``min_positives`` positive tokens, and as many
    negative ones, on the SELECTION documents (``selection``: ``[token]`` mask); the test documents are
    never counted to keep a concept. A concept positive on every token has nothing to tell apart."""
    positives = stored.labels[selection].sum(0)
    negatives = int(selection.sum()) - positives
    keep = [c for c in range(stored.labels.shape[1]) if int(min(positives[c], negatives[c])) >= min_positives]
    if not keep:
        raise AnalysisUnavailable(
            f"No concept has {min_positives} positive tokens on the selection documents; collect more tokens."
        )
    return stored.with_concepts(keep)


def few_negatives_on_selection(
    stored: StoredTokens, selection: Bool[torch.Tensor, " token"], min_negatives: int
) -> list[str]:
    """The concepts of ``stored`` with fewer than ``min_negatives`` negative tokens on the selection
    documents (``usable_on_selection`` leaves them out)."""
    negatives = (~stored.labels[selection]).sum(0)
    return [
        name for name, n in zip(stored.concept_names, negatives.tolist(), strict=True) if n < min_negatives
    ]


@dataclass(frozen=True)
class HeldOutOutcome:
    """What :class:`HeldOutProbing` found.

    Attributes:
        arms: arm name -> :class:`~tl_moe.analysis.held_out_probing.HeldOutArm` (a control probed in
            seeded draws is stored as ``name[0]``, ``name[1]``, ...).
        records: one per (comparison, k, metric) of :data:`~tl_moe.analysis.held_out_comparisons.COMPARISONS`
            and ``NULL_CORRECTED`` whose arms were computed: ``estimate`` (first minus second arm), its
            interval, the concepts kept and dropped by the gate (docs/REPORT.md).
        notes: why a control or interval is missing, if one is.
        groups: at k = 1, every comparison restricted to each concept group (``group``), text first.
    """

    arms: dict[str, HeldOutArm]
    records: tuple[dict, ...]
    notes: tuple[str, ...] = ()
    groups: tuple[dict, ...] = ()

    @property
    def comparisons(self) -> pd.DataFrame:
        """``records`` as one table (empty when none)."""
        return comparison_frame(list(self.records)) if self.records else pd.DataFrame()

    @property
    def group_table(self) -> pd.DataFrame:
        """``groups`` as one table, ``group`` after ``comparison`` (empty when none)."""
        return group_frame(list(self.groups))

    def comparison(self, name: str, k: int = 1, metric: str = "balanced_accuracy") -> dict[str, Any]:
        """The record of comparison ``name`` at ``k`` in ``metric`` (KeyError when it was not computed)."""
        for record in self.records:
            if (record["comparison"], record["k"], record.get("metric")) == (name, k, metric):
                return record
        raise KeyError(f"no held-out comparison {name!r} at k={k} in {metric} in this outcome.")

    @classmethod
    def unavailable(cls, error: Exception, ks: Sequence[int]) -> HeldOutOutcome:
        """The outcome when the protocol cannot run (too few documents or examples): every comparison
        recorded with no estimate and ``error`` as the reason, never a silent number."""
        records = tuple(
            {
                "protocol": "held_out",
                "comparison": name,
                "k": k,
                "n_concepts": 0,
                "interval_available": False,
                "interval_unavailable_reason": str(error),
            }
            for name in COMPARISONS
            for k in sorted(set(ks))
        )
        return cls({}, records, (f"held-out protocol unavailable: {error}",))


@dataclass(frozen=True)
class HeldOutProbing:
    """The held-out probing protocol and its controls (see the module).

    Args:
        layers: the MoE's probed sparse layers (block indices).
        num_experts, d_expert, n_layers: the MoE's experts per sparse layer, neurons per expert, blocks.
        dense_layers, dense_n_layers: the dense model's FFN layers and blocks (needed with dense tokens).
        config: probe sizes (``ks``), the least positives / negatives per unit and side
            (``held_out_min_examples``), whether an untrained null is expected (``skip_untrained_null``).
        statistics: the seed, the document split's selection fraction and the fewest documents per
            side and interval, the bootstrap resamples, the permutations of the swap tests (at least
            :data:`~tl_moe.analysis.held_out_probing.SWAP_PERMUTATIONS`).
        permuted: also probe both models with permuted labels (the protocol's own bias).
        routed_null: also probe the MoE and the matched-count control with permuted labels (the same
            permutation in both: that control's own null).
        by_group: also compare at k = 1 within each concept group (``HeldOutOutcome.groups``).

    Usage::

        study = HeldOutProbing(layers, cfg.num_experts, cfg.d_expert, cfg.n_layers,
                               dense_layers=dense_cfg.dense_layers, dense_n_layers=dense_cfg.n_layers)
        found = study(moe_stored, dense_stored, untrained_stored)
        found.comparison("moe_vs_dense_on_routed_tokens_matched_count")  # estimate, ci_low, ci_high
    """

    layers: Sequence[int]
    num_experts: int
    d_expert: int
    n_layers: int
    dense_layers: Sequence[int] = ()
    dense_n_layers: int | None = None
    config: ProbingConfig = field(default_factory=ProbingConfig)
    statistics: Statistics = field(default_factory=Statistics)
    permuted: bool = True
    routed_null: bool = True
    by_group: bool = True

    @classmethod
    def of(
        cls,
        moe_cfg: MoEConfig,
        dense_cfg: MoEConfig | None = None,
        *,
        layers: Sequence[int] | None = None,
        **settings,
    ) -> HeldOutProbing:
        """The study of an MoE (``model.moe_cfg``) and, optionally, its dense baseline's config;
        ``layers``: the sparse layers to probe (default: all); ``settings``: the other fields.

        Raises:
            InputError: the MoE has no sparse layers, or ``layers`` names a block that is not sparse.
        """
        check_sparse_layers(moe_cfg, tuple(moe_cfg.sparse_layers if layers is None else layers))
        return cls(
            tuple(moe_cfg.sparse_layers if layers is None else layers),
            moe_cfg.num_experts,
            moe_cfg.d_expert,
            moe_cfg.n_layers,
            dense_layers=() if dense_cfg is None else tuple(dense_cfg.dense_layers),
            dense_n_layers=None if dense_cfg is None else dense_cfg.n_layers,
            **settings,
        )

    def expert_store(self, max_tokens: int | None = None) -> TokenActivationStore:
        """A fresh store of what the MoE (or the untrained MoE) pass must keep: each probed layer's
        ``expert_post`` and ``topk_indices`` (collect it with a concept labeler)."""
        kinds = ("expert_post", "topk_indices")
        hooks = [get_act_name(kind, layer) for layer in self.layers for kind in kinds]
        return TokenActivationStore(hooks, max_tokens=max_tokens)

    def dense_store(self, max_tokens: int | None = None) -> TokenActivationStore:
        """A fresh store of what the dense model's pass must keep: the FFN neurons of its dense layers."""
        if not self.dense_layers:
            raise InputError("HeldOutProbing.dense_store needs dense_layers (the dense model's FFN layers).")
        return TokenActivationStore(
            [get_act_name("neuron", layer) for layer in self.dense_layers], max_tokens
        )

    def replace(self, **changes: Any) -> HeldOutProbing:
        """A copy with ``changes`` (e.g. ``permuted=False``)."""
        return dataclasses.replace(self, **changes)

    def __call__(
        self,
        moe: StoredTokens,
        dense: StoredTokens | None = None,
        untrained: StoredTokens | None = None,
        *,
        step: Step = run_now,
        dense_step: Step | None = None,
        pool: WorkerPool | None = None,
    ) -> HeldOutOutcome:
        """Probe every arm whose tokens are given and compare the MoE with each control.

        Args:
            moe, dense, untrained: stored tokens of the MoE, the dense model and the untrained MoE
                (None: that arm and its comparisons are left out); each needs document ids.
            step: how each arm, and each block of units inside it, runs (``step(key, compute)``; the
                default computes each at once, :class:`~tl_moe.collect.steps.ResumableSteps` saves them).
            dense_step: how the fits of the arms of the dense model's own layers (``dense``,
                ``dense_permuted_labels``) run, when not ``step``: they depend on the dense tokens and the
                probe settings alone, so studies of several MoEs against one dense model (the sparsity
                family) can share them (keyed by the dense model's pass only).
            pool: a :class:`~tl_moe.workers.WorkerPool` that probes the arms in worker processes (the
                arms that share a sampling plan go together); the values are the ones computed here
                without it. Default: every arm in this process, one after another.

        Raises:
            InputError: stored tokens that do not fit the study (:meth:`check`); too few documents for
                the split, or no concept with enough positives on the selection side
                (:meth:`HeldOutOutcome.unavailable` records those two instead of numbers).
        """
        arms, notes = self.arms(moe, dense, untrained, step=step, dense_step=dense_step, pool=pool)
        stats = self.statistics
        records = tuple(
            {"protocol": "held_out", **record, "interval_over": "test documents"}
            for record in held_out_comparisons(
                arms,
                n_resamples=stats.bootstrap_resamples,
                seed=stats.seed,
                min_clusters=stats.min_documents,
                permutations=max(stats.permutations, SWAP_PERMUTATIONS),
            )
        )
        groups = ()
        if self.by_group:
            groups = tuple(
                group_comparisons(
                    arms,
                    n_resamples=stats.bootstrap_resamples,
                    seed=stats.seed,
                    min_clusters=stats.min_documents,
                )
            )
        return HeldOutOutcome(arms, records, tuple(notes), groups)

    def arms(
        self,
        moe: StoredTokens,
        dense: StoredTokens | None = None,
        untrained: StoredTokens | None = None,
        *,
        step: Step = run_now,
        dense_step: Step | None = None,
        pool: WorkerPool | None = None,
    ) -> tuple[dict[str, HeldOutArm], list[str]]:
        """Every arm the given tokens allow (after :meth:`check`; no comparison), and notes on the
        controls left out; ``step``, ``dense_step`` and ``pool`` as in :meth:`__call__`. Raises as it does."""
        self.check(moe, dense, untrained)
        with reuse_sampling_plans():  # the arms on the same tokens and labels share their sampling plans
            return _Arms(self, step, dense_step).probe(moe, dense, untrained, pool)

    def check(
        self, moe: StoredTokens, dense: StoredTokens | None = None, untrained: StoredTokens | None = None
    ) -> None:
        """Raise a one-line InputError, before any probe, when the stored tokens do not fit the study:
        labels or document ids missing, a probed layer's rows missing, ``num_experts`` / ``d_expert``
        contradicting the stored expert rows, a probe size above ``d_expert``, dense tokens without the
        dense model's facts or FFN rows, or untrained tokens that are not the MoE's very tokens."""
        layers = tuple(self.layers)
        check_labelled(moe, "MoE")
        check_expert_rows(moe, "MoE", layers, self.num_experts, self.d_expert)
        check_probe_sizes(self.config.ks, self.d_expert, f"an expert (d_expert={self.d_expert})")
        if dense is not None:
            if not self.dense_layers or self.dense_n_layers is None:
                raise InputError(
                    "HeldOutProbing got dense stored tokens without dense_layers and dense_n_layers; "
                    "pass the dense model's FFN layers and its number of blocks."
                )
            check_labelled(dense, "dense")
            check_dense_rows(dense, "dense", self.dense_layers)
            width = min(dense.rows[get_act_name("neuron", layer)].shape[-1] for layer in self.dense_layers)
            check_probe_sizes(self.config.ks, width, "a dense layer")
        if untrained is not None:
            check_labelled(untrained, "untrained MoE")
            check_same_tokens(moe, untrained, "untrained MoE")
            check_expert_rows(untrained, "untrained MoE", layers, self.num_experts, self.d_expert)


class _Arms:
    """The arms of one :class:`HeldOutProbing` call: one document split per model, one set of test documents."""

    def __init__(self, study: HeldOutProbing, step: Step, dense_step: Step | None = None):
        self.study, self.step, self.dense_step = study, step, dense_step
        self.params = probe_parameters(study.config, study.statistics.seed)
        self.minimum = study.config.held_out_min_examples

    def split(self, stored: StoredTokens) -> Bool[torch.Tensor, " token"]:
        """``[token]`` True on the tokens of selection documents (the run's one seeded split)."""
        stats = self.study.statistics
        side = document_split(
            stored.doc_index.numpy(),
            (stats.selection_fraction, 1 - stats.selection_fraction),
            seed=stats.seed,
            min_per_side=stats.min_documents,
        )
        return torch.from_numpy(side == 0)

    def arm(self, name, stored, blocks, side, labels=None, fit_step=None) -> HeldOutArm:
        return held_out_arm(
            name,
            stored,
            blocks,
            side,
            self.docs,
            self.params,
            self.minimum,
            labels=labels,
            step=self.step,
            fit_step=fit_step,
        )

    def moe_permuted_arm(
        self,
        moe: StoredTokens,
        selection: Bool[torch.Tensor, " token"],
        moe_permuted: Bool[torch.Tensor, "token concept"],
    ) -> HeldOutArm:
        """The MoE's experts probed with permuted labels (the null of the MoE arm and of the routed controls)."""
        layers = tuple(self.study.layers)
        blocks = expert_blocks(moe, layers, self.study.num_experts)
        return self.arm("moe_permuted_labels", moe, blocks, selection, labels=moe_permuted)

    def probe(
        self,
        moe: StoredTokens,
        dense: StoredTokens | None,
        untrained: StoredTokens | None,
        pool: WorkerPool | None = None,
    ) -> tuple[dict[str, HeldOutArm], list[str]]:
        """Every arm the given tokens allow, and notes on the controls left out.

        The arms are computed in groups (:class:`_ArmGroups`): the arms of a group share sampling
        plans, so a group runs in one process; with a ``pool`` the groups run in its workers, the
        longest first, and the arms come back in the order they are listed here either way.
        """
        study, seed = self.study, self.study.statistics.seed
        layers, experts = tuple(study.layers), study.num_experts
        selection = self.split(moe)
        notes: list[str] = []
        too_common = few_negatives_on_selection(moe, selection, self.minimum)
        if too_common:
            notes.append(
                f"concepts left out: {', '.join(too_common)} (fewer than {self.minimum} negative tokens on "
                "the selection documents: nothing to tell apart)."
            )
        moe = usable_on_selection(moe, selection, self.minimum)
        test_docs = [moe.doc_index[~selection].numpy()]
        if dense is not None:
            dense_selection = self.split(dense)
            dense = usable_on_selection(dense, dense_selection, self.minimum)
            test_docs.append(dense.doc_index[~dense_selection].numpy())
        if untrained is not None:
            untrained_selection = self.split(untrained)
            untrained = usable_on_selection(untrained, untrained_selection, self.minimum)
            test_docs.append(untrained.doc_index[~untrained_selection].numpy())
        self.docs = np.unique(np.concatenate(test_docs))
        groups = _ArmGroups()
        groups.add(
            ["moe"],
            lambda: {"moe": self.arm("moe", moe, expert_blocks(moe, layers, experts), selection)},
            priority=2,
        )
        moe_permuted = permuted_labels(moe, seed=seed + 1)
        if dense is not None:
            groups.add(
                ["dense"],
                lambda: {
                    "dense": self.arm(
                        "dense",
                        dense,
                        dense_layer_blocks(dense, study.dense_layers),
                        dense_selection,
                        fit_step=self.dense_step,
                    )
                },
            )
            aligned = moe.token_index.shape == dense.token_index.shape and torch.equal(
                moe.input_ids, dense.input_ids
            )
            if aligned:
                self.routed_arms(groups, moe, dense, selection, moe_permuted)
            else:
                notes.append(
                    "the dense model's stored tokens differ from the MoE's (another tokenizer, or a probing "
                    "store full at --probe-rows-per-class keeps different tokens per model): the dense-on-routed-"
                    "tokens and matched-subset controls need the same tokens and were not computed."
                )
        if dense is not None and study.permuted:
            if "moe_permuted_labels" not in groups.names:
                groups.add(
                    ["moe_permuted_labels"],
                    lambda: {"moe_permuted_labels": self.moe_permuted_arm(moe, selection, moe_permuted)},
                    priority=2,
                )
            groups.add(
                ["dense_permuted_labels"],
                lambda: {
                    "dense_permuted_labels": self.arm(
                        "dense_permuted_labels",
                        dense,
                        dense_layer_blocks(dense, study.dense_layers),
                        dense_selection,
                        labels=permuted_labels(dense, seed=seed + 2),
                        fit_step=self.dense_step,
                    )
                },
                priority=1,
            )
        if untrained is not None:
            groups.add(
                ["untrained_moe"],
                lambda: {
                    "untrained_moe": self.arm(
                        "untrained_moe",
                        untrained,
                        expert_blocks(untrained, layers, experts),
                        untrained_selection,
                    )
                },
                priority=2,
            )
            if not same_tokens(moe, untrained):
                notes.append(
                    "the untrained MoE's probing store kept other tokens than the MoE's (--probe-rows-per-class "
                    "reached): the comparison is paired by test document, each model on its own kept tokens."
                )
        elif not study.config.skip_untrained_null:
            notes.append("the untrained null was not computed.")
        return groups.run(pool), notes

    def routed_arms(
        self,
        groups: _ArmGroups,
        moe: StoredTokens,
        dense: StoredTokens,
        selection: Bool[torch.Tensor, " token"],
        moe_permuted: Bool[torch.Tensor, "token concept"],
    ) -> None:
        """Add to ``groups`` the controls on the MoE's own tokens: dense neurons on each expert's routed
        tokens (all, and ``d_expert`` per draw), routing-matched subsets, and the matched-count
        control's null."""
        study, seed = self.study, self.study.statistics.seed
        layers, experts = tuple(study.layers), study.num_experts
        mapping = layer_map(layers, study.dense_layers, study.n_layers, study.dense_n_layers)
        # The dense model's stored tokens with the MoE's concept columns (same tokens, same labels).
        dense_as_moe = StoredTokens(
            moe.token_index,
            moe.input_ids,
            moe.domain,
            moe.labels,
            dense.rows,
            moe.domain_names,
            moe.concept_names,
            moe.doc_index,
        )
        d_mlp = dense.rows[get_act_name("neuron", study.dense_layers[0])].shape[-1]
        draws = ROUTED_COUNT_DRAWS if d_mlp > study.d_expert else 1  # all neurons: one draw is all

        def routed_count_arms(name: str, labels=None) -> dict[str, HeldOutArm]:
            """The matched-count routed-token control: one arm per draw of d_expert dense neurons."""
            return {
                f"{name}[{d}]": self.arm(
                    f"{name}[{d}]",
                    dense_as_moe,
                    dense_routed_count_blocks(
                        moe, dense_as_moe, layers, experts, mapping, study.d_expert, d, seed
                    ),
                    selection,
                    labels=labels,
                )
                for d in range(draws)
            }

        def routed() -> dict[str, HeldOutArm]:
            """All the dense neurons on the routed tokens, then d_expert of them per draw (one plan)."""
            return {
                "dense_on_routed_tokens": self.arm(
                    "dense_on_routed_tokens",
                    dense_as_moe,
                    dense_routed_blocks(moe, dense_as_moe, layers, experts, mapping),
                    selection,
                ),
                **routed_count_arms(ROUTED_COUNT),
            }

        groups.reserve(["dense_on_routed_tokens", "dense_matched_subsets"])  # the outcome's order
        groups.add(
            ["dense_on_routed_tokens", *(f"{ROUTED_COUNT}[{d}]" for d in range(draws))],
            routed,
            priority=1 + draws,
        )
        groups.add(
            ["dense_matched_subsets"],
            lambda: {
                "dense_matched_subsets": self.arm(
                    "dense_matched_subsets",
                    dense_as_moe,
                    dense_matched_blocks(moe, dense_as_moe, layers, experts, mapping, seed=seed),
                    selection,
                )
            },
        )
        if study.routed_null:
            groups.add(
                ["moe_permuted_labels", *(f"{ROUTED_COUNT_PERMUTED}[{d}]" for d in range(draws))],
                lambda: {
                    "moe_permuted_labels": self.moe_permuted_arm(moe, selection, moe_permuted),
                    **routed_count_arms(ROUTED_COUNT_PERMUTED, labels=moe_permuted),
                },
                priority=2 + 2 * draws,
            )


class _ArmGroups:
    """The arms of one study as groups of arms computed together (see :meth:`_Arms.probe`).

    ``names`` lists every arm in the order the outcome gives them (:meth:`reserve` places an arm before
    the group that computes it is added); ``priority`` orders the groups for a pool, the largest first
    (about the group's work in units of one MoE-sized arm; ties keep the order of adding).
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.groups: list[tuple[int, int, Callable[[], dict[str, HeldOutArm]], str]] = []

    def reserve(self, names: Sequence[str]) -> None:
        """List ``names`` in the outcome's order now, whichever group computes them later."""
        self.names.extend(name for name in names if name not in self.names)

    def add(
        self, names: Sequence[str], compute: Callable[[], dict[str, HeldOutArm]], priority: int = 1
    ) -> None:
        label = f"the held-out arm{'s' if len(names) > 1 else ''} {', '.join(names)}"
        self.names.extend(name for name in names if name not in self.names)
        self.groups.append((-priority, len(self.groups), compute, label))

    def run(self, pool: WorkerPool | None) -> dict[str, HeldOutArm]:
        """Every group's arms, in a pool's workers (largest group first) or here in the order added."""
        arms: dict[str, HeldOutArm] = {}
        if pool is None:
            for _, _, compute, _ in self.groups:
                arms.update(compute())
        else:
            # Forked: the largest groups first. In place: the order added, after the pool's earlier tasks.
            ordered = sorted(self.groups) if pool.forks else self.groups
            handles = [pool.submit(compute, label) for *_, compute, label in ordered]
            for handle in handles:
                arms.update(handle.result())
        return {name: arms[name] for name in self.names if name in arms}
