"""Analyses of hooked MoE models: each is accumulator(s) fed by the collection pass + pure functions.

- :mod:`~tl_moe.analysis.probing`: :class:`KSparseProbe`, k-sparse probing of neurons for concepts;
  :mod:`~tl_moe.analysis.concept_probing` runs it on experts / dense layers of a stored pass.
- :mod:`~tl_moe.analysis.logit_lens`, :mod:`~tl_moe.analysis.attribution`: what experts write into
  the vocabulary; exact decomposition of the logits into components (DLA).
- :mod:`~tl_moe.analysis.specialization`: Jensen–Shannon specialization with a sampling baseline.
- :mod:`~tl_moe.analysis.domain_experts`: entropy-based domain experts.
- :mod:`~tl_moe.analysis.clustering`: spherical k-means groups of the vocabulary.
"""

from tl_moe.analysis.activations import StoredTokens, TokenActivationStore
from tl_moe.analysis.attribution import decompose_logits
from tl_moe.analysis.clustering import SphericalKMeans, cluster_vocabulary
from tl_moe.analysis.concept_probing import probe_dense, probe_experts
from tl_moe.analysis.domain_experts import DomainExperts
from tl_moe.analysis.logit_lens import expert_logit_lens, neuron_top_tokens, top_tokens_static
from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensAccumulator
from tl_moe.analysis.probing import PROBE_STATUS, KSparseProbe, subsample_like_routing
from tl_moe.analysis.probing_math import fit_logistic_batched
from tl_moe.analysis.routing_stats import routed_tokens_by_domain, routed_tokens_by_group, tokens_by_domain
from tl_moe.analysis.specialization import js_divergence, sampling_baseline, specialization_scores

__all__ = [
    "PROBE_STATUS",
    "DomainExperts",
    "ExpertLogitLensAccumulator",
    "KSparseProbe",
    "SphericalKMeans",
    "StoredTokens",
    "TokenActivationStore",
    "cluster_vocabulary",
    "decompose_logits",
    "expert_logit_lens",
    "fit_logistic_batched",
    "js_divergence",
    "neuron_top_tokens",
    "probe_dense",
    "probe_experts",
    "routed_tokens_by_domain",
    "routed_tokens_by_group",
    "sampling_baseline",
    "specialization_scores",
    "subsample_like_routing",
    "tokens_by_domain",
    "top_tokens_static",
]
