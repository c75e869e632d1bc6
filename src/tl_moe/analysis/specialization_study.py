"""Routing and functional specialization of every expert, above two baselines, as one configured object.

:class:`SpecializationStudy` scores each expert's token distribution over groups against its layer's
pooled distribution by Jensen–Shannon divergence (:func:`~tl_moe.analysis.specialization.specialization_scores`)
under three groupings — vocabulary clusters of the routed input tokens and corpus domains (routing
specialization), and vocabulary clusters of the expert's logit-lens top tokens (functional
specialization) — above

- the **multinomial** baseline: an expert's tokens as independent draws from its layer's pooled
  distribution (:func:`~tl_moe.analysis.specialization.sampling_baseline`);
- the **document-permutation** baseline (routing measures): tokens keep their routing but take their
  content from another, permuted document
  (:func:`~tl_moe.analysis.specialization_permutation.document_permutation_baseline`), so the clumping
  of content within documents is kept.

The excess over the document-permutation baseline carries a document-bootstrap interval, and so does
the trained − untrained difference (paired over the same documents) when the untrained model of the
same config is given (:func:`~tl_moe.analysis.specialization_permutation.excess_intervals`).

Usage, on the counts a collection pass gave (:func:`~tl_moe.analysis.routing_stats.routed_tokens_by_group`,
:func:`~tl_moe.analysis.routing_stats.routed_tokens_by_domain`, an
:class:`~tl_moe.analysis.logit_lens_accumulator.ExpertLogitLensAccumulator` and a
:class:`~tl_moe.analysis.activations.TokenActivationStore` of the ``topk_indices`` hooks)::

    study = SpecializationStudy(cfg.sparse_layers, cfg.num_experts, n_token_groups=50, n_domains=3)
    routing = DocumentRouting.from_stored(stored, cfg.sparse_layers, token_groups)
    outcome = study(SpecializationCounts(by_group, by_domain, routing), lens_counts=lens.dense_counts())
    outcome.to_frame()  # per (measure, layer): excess over both baselines, with its interval
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.configs import SpecializationConfig, Statistics
from tl_moe.analysis.specialization import SpecializationResult, specialization_scores
from tl_moe.analysis.specialization_permutation import (
    BOOTSTRAP_PERMUTATIONS,
    DocumentPermutationBaseline,
    document_permutation_baseline,
    excess_estimate,
    excess_intervals,
)
from tl_moe.errors import InputError
from tl_moe.models.hook_names import get_act_name
from tl_moe.settings import is_integer

__all__ = [
    "DIFFERENCE",
    "FUNCTIONAL_NO_CONTROL",
    "DocumentRouting",
    "SpecializationCounts",
    "SpecializationOutcome",
    "SpecializationStudy",
]

#: The ``model`` label of the paired trained − untrained rows of the excess intervals.
DIFFERENCE = "trained − untrained"
#: Why functional specialization has no control: a token's group there is the expert's own logit-lens
#: output on that token, which permuting content across documents cannot reassign without running the
#: expert again on the other document's token, and the lens is accumulated over the corpus (no
#: per-document counts to bootstrap) and only for the trained model.
FUNCTIONAL_NO_CONTROL = (
    "its groups are the expert's own logit-lens outputs, which a document permutation cannot reassign "
    "without rerunning the expert on other content; the lens is summed over the corpus, so there are no "
    "per-document counts to bootstrap, and the untrained model's lens is not computed"
)
NO_ROUTING_NOTE = "no routing per token with document ids: no document-permutation baseline."


@dataclass(frozen=True)
class DocumentRouting:
    """The routed experts of every stored token, with what the document-permutation baseline permutes.

    Attributes:
        expert_indices: ``[token, layer, slot]`` the experts each token went to in each sparse layer.
        token_groups: ``[token]`` the vocabulary cluster of each token.
        domains: ``[token]`` the domain code of each token's document.
        doc_index: ``[token]`` the document of each token.
    """

    expert_indices: Int[torch.Tensor, "token layer slot"]
    token_groups: Int[torch.Tensor, " token"]
    domains: Int[torch.Tensor, " token"]
    doc_index: Int[torch.Tensor, " token"]

    @classmethod
    def from_stored(
        cls, stored: StoredTokens | None, layers: Sequence[int], token_groups: Int[torch.Tensor, " vocab"]
    ) -> DocumentRouting | None:
        """From the rows a :class:`~tl_moe.analysis.activations.TokenActivationStore` kept of the
        ``topk_indices`` hooks of ``layers`` (``token_groups``: the vocabulary cluster of every token id);
        ``None`` without stored tokens or their document ids."""
        if stored is None or stored.doc_index is None:
            return None
        indices = torch.stack(
            [stored.rows[get_act_name("topk_indices", layer)].long() for layer in layers], 1
        )
        return cls(indices, token_groups[stored.input_ids.long()], stored.domain.long(), stored.doc_index)


@dataclass(frozen=True)
class SpecializationCounts:
    """What one model's collection pass gives routing specialization.

    Attributes:
        by_token_group: ``[layer, expert, group]`` routed tokens by the vocabulary cluster of the input
            token.
        by_domain: ``[layer, expert, domain]`` routed (token, slot) pairs by the document's domain.
        routing: the routing of every stored token with its document (``None``: no
            document-permutation baseline).
    """

    by_token_group: Int[torch.Tensor, "layer expert group"]
    by_domain: Int[torch.Tensor, "layer expert domain"]
    routing: DocumentRouting | None = None


_PERMUTATION_COLUMNS = (
    "permutation_excess",
    "permutation_ci_low",
    "permutation_ci_high",
    "permutation_interval_available",
    "permutation_interval_unavailable_reason",
    "permutation_bootstrap_bias",
    "permutation_interval_position",
    "permutation_null_mean_se",
    "permutation_p_value",
    "permutation_p_at_floor",
    "permutation_n_permutations",
    "permutation_n_documents",
)


def with_permutation(
    frame: pd.DataFrame,
    baseline: DocumentPermutationBaseline | None,
    min_tokens: int,
    intervals: pd.DataFrame | None,
    no_control: str | None = None,
) -> pd.DataFrame:
    """``frame`` (per layer) with the permutation excess (the bootstrap statistic's estimate), its
    document-bootstrap interval with its diagnostics (bootstrap bias, the estimate's position in the
    interval, the Monte Carlo error of the 20-permutation null mean), p-value and floor flag per layer (NaN where there is no permutation
    baseline, with ``no_control`` as the reason the interval is unavailable)."""
    if baseline is None:
        empty = frame.assign(**{c: np.nan for c in _PERMUTATION_COLUMNS})
        if no_control is not None:
            empty["permutation_interval_available"] = False
            empty["permutation_interval_unavailable_reason"] = no_control
        return empty
    summary = baseline.layer_summary(min_tokens)
    summary = pd.DataFrame(
        {
            "layer": summary["layer"],
            "permutation_excess": summary["permutation_excess"],
            "permutation_ci_low": np.nan,
            "permutation_ci_high": np.nan,
            "permutation_interval_available": False,
            "permutation_interval_unavailable_reason": "not computed",
            "permutation_bootstrap_bias": np.nan,
            "permutation_interval_position": np.nan,
            "permutation_null_mean_se": np.nan,
            "permutation_p_value": summary["p_value"],
            "permutation_p_at_floor": summary["p_at_floor"],
            "permutation_n_permutations": summary["n_permutations"],
            "permutation_n_documents": summary["n_documents"],
        }
    )
    if intervals is not None:
        by_layer = intervals.set_index("layer").reindex(summary["layer"])
        summary["permutation_excess"] = by_layer["estimate"].to_numpy()
        summary["permutation_ci_low"] = by_layer["ci_low"].to_numpy()
        summary["permutation_ci_high"] = by_layer["ci_high"].to_numpy()
        summary["permutation_interval_available"] = by_layer["interval_available"].to_numpy()
        summary["permutation_interval_unavailable_reason"] = by_layer["reason"].to_numpy()
        for column in ("bootstrap_bias", "interval_position", "null_mean_se"):
            summary[f"permutation_{column}"] = by_layer[column].to_numpy()
    return frame.merge(summary, on="layer", how="left")


@dataclass(frozen=True)
class SpecializationOutcome:
    """Specialization of every expert under several groupings.

    Attributes:
        measures: measure name (e.g. ``"routing, 50 token clusters"``) -> its per-expert scores,
            in the order they are shown.
        min_tokens: experts with fewer tokens are listed, not averaged.
        permutation: measure name -> its document-permutation baseline (routing measures).
        untrained: measure name -> the untrained null model's scores (routing measures; empty when it
            was not given).
        untrained_permutation: the same for the untrained model's permutation baselines.
        intervals: measure name -> per (model, layer) document-bootstrap interval of the excess over
            the document-permutation baseline (``model``: ``"trained"``, ``"untrained"``,
            ``"trained − untrained"``; see :func:`~tl_moe.analysis.specialization_permutation.excess_intervals`).
        notes: why a baseline or the untrained curve is missing, if one is.
    """

    measures: dict[str, SpecializationResult]
    min_tokens: int = 0
    permutation: dict[str, DocumentPermutationBaseline] = field(default_factory=dict)
    untrained: dict[str, SpecializationResult] = field(default_factory=dict)
    untrained_permutation: dict[str, DocumentPermutationBaseline] = field(default_factory=dict)
    intervals: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def interval_rows(self, name: str, model: str) -> pd.DataFrame | None:
        """The excess intervals of measure ``name`` for ``model`` (``None`` when there are none)."""
        frame = self.intervals.get(name)
        if frame is None or not len(frame):
            return None
        rows = frame[frame["model"] == model]
        return rows if len(rows) else None

    def to_frame(self) -> pd.DataFrame:
        """Per (measure, layer): mean and standard deviation over experts of JSD − baseline (bits), the
        token-weighted mean over experts of at least ``min_tokens`` tokens, and (routing measures) the
        token-weighted excess over the document-permutation baseline with its 95% document-bootstrap
        interval, its p-value and whether the p-value is at its floor; a measure without a baseline
        (functional, or routing without document ids) says why in
        ``permutation_interval_unavailable_reason`` (:meth:`no_control_reason`)."""
        rows = []
        for name, result in self.measures.items():
            frame = result.layer_summary(self.min_tokens).assign(measure=name)
            rows.append(
                with_permutation(
                    frame,
                    self.permutation.get(name),
                    self.min_tokens,
                    self.interval_rows(name, "trained"),
                    self.no_control_reason(name),
                )
            )
        return pd.concat(rows, ignore_index=True)

    def difference_frame(self) -> pd.DataFrame:
        """Per (routing measure, layer): trained − untrained excess over the document-permutation
        baseline, with its paired 95% document-bootstrap interval (or why it is unavailable)."""
        rows = [
            diff.assign(measure=name)
            for name in self.intervals
            if (diff := self.interval_rows(name, DIFFERENCE)) is not None
        ]
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def untrained_frame(self) -> pd.DataFrame:
        """The same per-layer table for the untrained null model (empty when it was not run)."""
        rows = []
        for name, result in self.untrained.items():
            frame = result.layer_summary(self.min_tokens).assign(measure=name, model="untrained")
            rows.append(
                with_permutation(
                    frame,
                    self.untrained_permutation.get(name),
                    self.min_tokens,
                    self.interval_rows(name, "untrained"),
                    self.no_control_reason(name),
                )
            )
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def small_experts(self) -> pd.DataFrame:
        """Experts below the minimum size, per measure (listed, not averaged)."""
        rows = [
            result.small_experts(self.min_tokens).assign(measure=name)
            for name, result in self.measures.items()
        ]
        return pd.concat(rows, ignore_index=True)

    def experts_frame(self) -> pd.DataFrame:
        """Per (measure, layer, expert): score, baseline, excess and the expert's sample size."""
        rows = [result.to_frame().assign(measure=name) for name, result in self.measures.items()]
        return pd.concat(rows, ignore_index=True)

    def no_control_reason(self, name: str) -> str:
        """Why a measure has no document-permutation baseline, no bootstrap interval and no untrained
        difference."""
        if name.startswith("functional"):
            return FUNCTIONAL_NO_CONTROL
        return "no routing per token with document ids"


@dataclass(frozen=True)
class SpecializationStudy:
    """Routing and functional specialization of every expert (see the module docstring).

    Args:
        layers: the block index of each sparse layer (the rows of the count tensors).
        num_experts: experts per sparse block.
        n_token_groups: vocabulary clusters the tokens are grouped into.
        n_domains: corpus domains.
        config: which experts enter the token-weighted layer means.
        statistics: the seed (sampling baseline, permutations, bootstrap), the permutations behind each
            p-value and the bootstrap resamples behind each interval.
    """

    layers: tuple[int, ...]
    num_experts: int
    n_token_groups: int
    n_domains: int
    config: SpecializationConfig = field(default_factory=SpecializationConfig)
    statistics: Statistics = field(default_factory=Statistics)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        facts = {"num_experts": 2, "n_token_groups": 1, "n_domains": 1}
        for name, least in facts.items():
            value = getattr(self, name)
            if not is_integer(value) or value < least:
                raise InputError(
                    f"SpecializationStudy {name} must be an integer of at least {least}, got {value!r}."
                )
        if not self.layers:
            raise InputError("SpecializationStudy layers must name one or more sparse layers, got none.")

    def _check_counts(self, counts: SpecializationCounts, which: str) -> None:
        """Refuse, in one line, counts whose shape contradicts the study's facts."""
        n_layers = len(self.layers)
        shapes = {
            "by_token_group": ((n_layers, self.num_experts, self.n_token_groups), "n_token_groups"),
            "by_domain": ((n_layers, self.num_experts, self.n_domains), "n_domains"),
        }
        for name, (expected, groups) in shapes.items():
            found = tuple(getattr(counts, name).shape)
            if found != expected:
                raise InputError(
                    f"SpecializationStudy's {which} {name} counts have shape {found}; accepted: "
                    f"[layers, num_experts, {groups}] = {expected} (layers {self.layers})."
                )
        routing = counts.routing
        if routing is not None and (
            routing.expert_indices.shape[1] != n_layers
            or (routing.expert_indices.numel() and int(routing.expert_indices.max()) >= self.num_experts)
        ):
            raise InputError(
                f"SpecializationStudy's {which} routing covers {routing.expert_indices.shape[1]} layers with "
                f"expert ids up to {int(routing.expert_indices.max())}; accepted: {n_layers} layers of "
                f"experts 0..{self.num_experts - 1}."
            )

    @property
    def clusters(self) -> str:
        """The name of routing specialization over vocabulary clusters."""
        return f"routing, {self.n_token_groups} token clusters"

    @property
    def domains(self) -> str:
        """The name of routing specialization over domains."""
        return "routing, domains"

    @property
    def functional(self) -> str:
        """The name of functional specialization over vocabulary clusters."""
        return f"functional, {self.n_token_groups} token clusters"

    def __call__(
        self,
        trained: SpecializationCounts,
        lens_counts: Int[torch.Tensor, "layer expert group"] | None = None,
        untrained: SpecializationCounts | None = None,
        more_untrained: Sequence[DocumentRouting] = (),
    ) -> SpecializationOutcome:
        """Score every expert of the trained model (and of the untrained null, when given).

        Args:
            trained: the trained model's routed counts and routing per token.
            lens_counts: ``[layer, expert, group]`` the trained model's logit-lens top-n entries by
                vocabulary cluster (:meth:`~tl_moe.analysis.logit_lens_accumulator.ExpertLogitLensResult.dense_counts`);
                ``None``: no functional measure.
            untrained: the same counts of the untrained model of the same config, fed the same documents.
            more_untrained: the routing of further random initializations of that untrained model on
                the same documents; trained − untrained is then against the mean over every
                initialization, with the draw-mean t interval
                (:func:`~tl_moe.analysis.specialization_permutation.draw_mean_rows`).
        """
        self._check_counts(trained, "trained")
        if untrained is not None:
            self._check_counts(untrained, "untrained")
        expected = (len(self.layers), self.num_experts, self.n_token_groups)
        if lens_counts is not None and tuple(lens_counts.shape) != expected:
            raise InputError(
                f"SpecializationStudy's lens_counts have shape {tuple(lens_counts.shape)}; accepted: "
                f"[layers, num_experts, n_token_groups] = {expected}."
            )
        measures = self._routing_scores(trained)
        if lens_counts is not None:
            # Each routed token adds up to top_n entries to its expert's lens counts: the baseline's
            # draws are the expert's routed tokens, not its entries.
            lens_tokens = trained.by_token_group.sum(-1).double()
            measures[self.functional] = self._scores(lens_counts, "functional", lens_tokens)
        notes: list[str] = []
        permutation = self._permutations(trained.routing, notes)
        untrained_scores, untrained_permutation, untrained_draws = {}, {}, {}
        if untrained is not None:
            untrained_scores = self._routing_scores(untrained)
            untrained_permutation = self._permutations(untrained.routing, notes)
            untrained_draws = self._init_excess(more_untrained, notes)
        intervals = {
            name: excess_intervals(
                baseline,
                untrained_permutation.get(name),
                min_n=self.config.min_expert_tokens,
                n_resamples=self.statistics.bootstrap_resamples,
                seed=self.statistics.seed,
                min_documents=self.statistics.min_documents,
                untrained_draws=untrained_draws.get(name),
            )
            for name, baseline in permutation.items()
        }
        return SpecializationOutcome(
            measures,
            min_tokens=self.config.min_expert_tokens,
            permutation=permutation,
            untrained=untrained_scores,
            untrained_permutation=untrained_permutation,
            intervals=intervals,
            notes=tuple(dict.fromkeys(notes)),
        )

    def _scores(
        self,
        counts: torch.Tensor,
        kind: str,
        sample_sizes: Float[torch.Tensor, "layer expert"] | None = None,
    ) -> SpecializationResult:
        return specialization_scores(
            counts, sample_sizes, seed=self.statistics.seed, kind=kind, layers=self.layers
        )

    def _routing_scores(self, counts: SpecializationCounts) -> dict[str, SpecializationResult]:
        """Routing specialization over vocabulary clusters and over domains."""
        return {
            self.clusters: self._scores(counts.by_token_group, "routing"),
            self.domains: self._scores(counts.by_domain, "routing"),
        }

    def _init_excess(
        self, routings: Sequence[DocumentRouting], notes: list[str]
    ) -> dict[str, Float[np.ndarray, "init layer"]]:
        """Per routing measure, the excess over the document-permutation baseline (point estimates,
        :func:`~tl_moe.analysis.specialization_permutation.excess_estimate`) of each further
        initialization of the untrained model; each from
        :data:`~tl_moe.analysis.specialization_permutation.BOOTSTRAP_PERMUTATIONS` permutations of its own
        (as many as the excess's null mean averages; no p-value is drawn for them). A measure missing for
        any initialization is left out."""
        if not routings:
            return {}
        permutations = min(BOOTSTRAP_PERMUTATIONS, self.statistics.permutations)
        cheap = dataclasses.replace(self.statistics, permutations=permutations)
        study = SpecializationStudy(
            self.layers, self.num_experts, self.n_token_groups, self.n_domains, self.config, cheap
        )
        per_init = [study._permutations(routing, notes) for routing in routings]
        min_n = self.config.min_expert_tokens
        return {
            name: np.stack([excess_estimate(baselines[name], min_n) for baselines in per_init])
            for name in per_init[0]
            if all(name in baselines for baselines in per_init)
        }

    def _permutations(
        self, routing: DocumentRouting | None, notes: list[str]
    ) -> dict[str, DocumentPermutationBaseline]:
        """The document-permutation baseline of both routing measures (none without routing per
        token, or where it is unavailable: each reason added to ``notes``)."""
        if routing is None:
            notes.append(NO_ROUTING_NOTE)
            return {}
        groupings = {
            self.clusters: (routing.token_groups, self.n_token_groups),
            self.domains: (routing.domains, self.n_domains),
        }
        out = {}
        for name, (token_groups, n_groups) in groupings.items():
            try:
                out[name] = document_permutation_baseline(
                    routing.expert_indices,
                    token_groups,
                    routing.doc_index,
                    self.num_experts,
                    n_groups,
                    n_permutations=self.statistics.permutations,
                    seed=self.statistics.seed,
                    layers=self.layers,
                )
            except InputError as error:
                notes.append(f"document-permutation baseline unavailable: {error}")
        return out
