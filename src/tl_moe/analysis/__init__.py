"""Analyses of hooked MoE models: accumulators fed by a collection pass (:func:`tl_moe.collect.collect`),
and pure functions that turn what they gathered into results.

Every object a notebook needs is importable from here (``from tl_moe.analysis import KSparseProbe``):

- probing: :class:`HeldOutProbing` (the held-out protocol with its controls: units chosen on some
  documents, reported on others, every control a paired document-level interval) and
  :class:`PaperProtocol` (the paper's), on the rows a :class:`TokenActivationStore` /
  :class:`BoundedTokenStore` keeps; their parts :class:`KSparseProbe` (k-sparse probes of neurons for
  concepts), :func:`probe_experts` / :func:`probe_dense`, :func:`held_out_arm`, :func:`compare` and
  :func:`held_out_comparisons`.
- drivers: :class:`DriverStudy` (configured by :class:`DriversConfig` and :class:`Statistics`: drivers
  chosen on the selection half, reported against matched controls, the first-order estimate vs REAP,
  drivers vs domain experts) on :class:`~tl_moe.collect.ExpertEffects` (exact per-document effects of
  expert edits), :class:`ExpertSaliency`, :func:`driver_report`; :class:`FirstOrderEffects` (the gradient estimate);
  :func:`compare_drivers_with_domain_experts`; :func:`saliency_frequency_spearman` (REAP against routing
  frequency); :func:`position_effect`.
- associations, re-weighting and steering: :class:`AssociationStudy` (token–expert associations and
  the drivers' position effect) on :class:`RoutingRecords`, with :func:`segment_positions_of`;
  :func:`token_expert_associations`; :class:`ExpertReweighting` (both studies on a model and corpus,
  with :func:`steering_contrast` and :func:`held_out_capacity`); :func:`reweighting_study`;
  :func:`steering_study`.
- the sparsity family: :func:`paper_table` (the paper protocol per :class:`FamilyMember`) and
  :class:`SparsityVerdicts` (the held-out verdicts, Holm-adjusted as one family).
- routing: :class:`SpecializationStudy` (routing and functional specialization above both baselines,
  with intervals) on :class:`SpecializationCounts`; :func:`specialization_scores` with its
  :func:`sampling_baseline` and :func:`document_permutation_baseline`; :class:`DomainExperts` and
  :class:`DomainExpertStudy` (scores with their document-level permutation test);
  :func:`routed_tokens_by_domain`.
- the vocabulary: :func:`expert_logit_lens`, :class:`ExpertLogitLensAccumulator`,
  :class:`LogitLensStudy` and :func:`top_token_share` (against the untrained model),
  :func:`decompose_logits` (direct logit attribution), :class:`LogitReadout`, :class:`SphericalKMeans` /
  :func:`cluster_vocabulary`.
- the settings of each analysis as the pipeline runs it: :class:`ProbingConfig`,
  :class:`SpecializationConfig`, :class:`DriversConfig`, :class:`AssociationsConfig`, :class:`ReweightingConfig`,
  :class:`ExplainConfig` (frozen dataclasses, every default written once there).
- shared by all: the document split :func:`document_split`; statistics :class:`Interval`,
  :func:`cluster_bootstrap`.
"""

from tl_moe.analysis.activations import StoredTokens, TokenActivationStore
from tl_moe.analysis.association_study import AssociationOutcome, AssociationStudy, segment_positions_of
from tl_moe.analysis.attribution import LogitDecomposition, decompose_logits
from tl_moe.analysis.bounded_store import BoundedTokenStore
from tl_moe.analysis.clustering import SphericalKMeans, cluster_vocabulary
from tl_moe.analysis.concept_probing import probe_dense, probe_experts
from tl_moe.analysis.configs import (
    AssociationsConfig,
    DriversConfig,
    ExplainConfig,
    ProbingConfig,
    ReweightingConfig,
    SpecializationConfig,
    Statistics,
)
from tl_moe.analysis.domain_expert_study import DomainExpertsOutcome, DomainExpertStudy
from tl_moe.analysis.domain_experts import DomainExperts
from tl_moe.analysis.driver_domain import DriverDomainComparison, compare_drivers_with_domain_experts
from tl_moe.analysis.driver_frequency import saliency_frequency_spearman
from tl_moe.analysis.driver_study import DriverOutcome, DriverStudy
from tl_moe.analysis.drivers import ExpertSaliency, driver_report, match_controls
from tl_moe.analysis.edit_windows import held_out_windows
from tl_moe.analysis.effect_estimate import FirstOrderEffects, FirstOrderEffectsResult, estimate_vs_reap
from tl_moe.analysis.expert_reweighting import (
    ExpertReweighting,
    ReweightingOutcome,
    SteeringContrast,
    held_out_capacity,
    steering_contrast,
)
from tl_moe.analysis.held_out_comparisons import comparison_frame, held_out_comparisons
from tl_moe.analysis.held_out_probing import HeldOutArm, compare, held_out_arm
from tl_moe.analysis.held_out_study import HeldOutOutcome, HeldOutProbing
from tl_moe.analysis.logit_lens import (
    ExpertLens,
    TopTokens,
    expert_logit_lens,
    neuron_top_tokens,
    top_tokens_static,
)
from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensAccumulator, ExpertLogitLensResult
from tl_moe.analysis.logit_lens_null import TopTokenShare, top_token_share
from tl_moe.analysis.logit_lens_study import LogitLensOutcome, LogitLensStudy
from tl_moe.analysis.paper_study import PaperOutcome, PaperProtocol
from tl_moe.analysis.positions import PositionEffect, position_effect
from tl_moe.analysis.probe_work import ProbeWork, probing_work
from tl_moe.analysis.probing import PROBE_STATUS, KSparseProbe, subsample_like_routing
from tl_moe.analysis.probing_math import fit_logistic_batched
from tl_moe.analysis.readout import LogitReadout
from tl_moe.analysis.reweighting import ReweightingStudy, reweighting_study
from tl_moe.analysis.routing_stats import routed_tokens_by_domain, routed_tokens_by_group, tokens_by_domain
from tl_moe.analysis.sparsity_family import FamilyMember, SparsityVerdicts, paper_table
from tl_moe.analysis.specialization import (
    SpecializationResult,
    js_divergence,
    sampling_baseline,
    specialization_scores,
)
from tl_moe.analysis.specialization_permutation import (
    DocumentPermutationBaseline,
    document_permutation_baseline,
)
from tl_moe.analysis.specialization_study import (
    DocumentRouting,
    SpecializationCounts,
    SpecializationOutcome,
    SpecializationStudy,
)
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import Interval, cluster_bootstrap
from tl_moe.analysis.steering import SteeringStudy, steering_study
from tl_moe.analysis.token_association import AssociationTable, RoutingRecords, token_expert_associations

__all__ = [
    "AssociationsConfig",
    "DriversConfig",
    "ExplainConfig",
    "ProbingConfig",
    "ReweightingConfig",
    "SpecializationConfig",
    "Statistics",
    "PROBE_STATUS",
    "AssociationOutcome",
    "AssociationStudy",
    "AssociationTable",
    "BoundedTokenStore",
    "DocumentPermutationBaseline",
    "DocumentRouting",
    "DomainExperts",
    "DriverDomainComparison",
    "FamilyMember",
    "DriverOutcome",
    "DriverStudy",
    "ExpertLens",
    "ExpertLogitLensAccumulator",
    "ExpertLogitLensResult",
    "ExpertSaliency",
    "FirstOrderEffects",
    "FirstOrderEffectsResult",
    "HeldOutArm",
    "HeldOutOutcome",
    "HeldOutProbing",
    "Interval",
    "KSparseProbe",
    "LogitDecomposition",
    "LogitLensOutcome",
    "LogitLensStudy",
    "LogitReadout",
    "PaperOutcome",
    "PaperProtocol",
    "ProbeWork",
    "PositionEffect",
    "ReweightingStudy",
    "RoutingRecords",
    "SpecializationCounts",
    "SpecializationOutcome",
    "SparsityVerdicts",
    "SpecializationResult",
    "SpecializationStudy",
    "SphericalKMeans",
    "SteeringStudy",
    "StoredTokens",
    "TokenActivationStore",
    "TopTokenShare",
    "TopTokens",
    "cluster_bootstrap",
    "cluster_vocabulary",
    "compare",
    "comparison_frame",
    "compare_drivers_with_domain_experts",
    "decompose_logits",
    "document_permutation_baseline",
    "document_split",
    "driver_report",
    "estimate_vs_reap",
    "expert_logit_lens",
    "fit_logistic_batched",
    "held_out_arm",
    "held_out_comparisons",
    "held_out_windows",
    "js_divergence",
    "match_controls",
    "neuron_top_tokens",
    "paper_table",
    "position_effect",
    "probing_work",
    "probe_dense",
    "probe_experts",
    "reweighting_study",
    "segment_positions_of",
    "routed_tokens_by_domain",
    "routed_tokens_by_group",
    "sampling_baseline",
    "specialization_scores",
    "steering_study",
    "subsample_like_routing",
    "token_expert_associations",
    "tokens_by_domain",
    "top_token_share",
    "top_tokens_static",
    "DomainExpertStudy",
    "DomainExpertsOutcome",
    "ExpertReweighting",
    "ReweightingOutcome",
    "SteeringContrast",
    "held_out_capacity",
    "steering_contrast",
    "saliency_frequency_spearman",
]
