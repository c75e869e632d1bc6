"""``tl_moe.analysis`` exports what a notebook needs: every name in ``__all__`` imports, and every
analysis module's main objects (and every accumulator an analysis defines) are among them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import tl_moe.analysis as analysis
from tl_moe.collect.accumulator import Accumulator

# Each module of tl_moe.analysis -> the objects a notebook user reaches for first. A new module must
# be added here, with what it offers.
MAIN_OBJECTS = {
    "activations": ["TokenActivationStore", "StoredTokens"],
    "association_study": ["AssociationStudy", "AssociationOutcome", "segment_positions_of"],
    "attribution": ["decompose_logits", "LogitDecomposition"],
    "bounded_store": ["BoundedTokenStore"],
    "clustering": ["SphericalKMeans", "cluster_vocabulary"],
    "concept_probing": ["probe_experts", "probe_dense"],
    "configs": [
        "ProbingConfig",
        "SpecializationConfig",
        "DriversConfig",
        "ReweightingConfig",
        "ExplainConfig",
        "Statistics",
        "AssociationsConfig",
    ],
    "domain_expert_study": ["DomainExpertStudy"],
    "domain_experts": ["DomainExperts"],
    "driver_domain": ["compare_drivers_with_domain_experts"],
    "driver_frequency": ["saliency_frequency_spearman"],
    "driver_study": ["DriverStudy", "DriverOutcome"],
    "drivers": ["ExpertSaliency", "driver_report"],
    "edit_windows": ["held_out_windows"],
    "effect_estimate": ["FirstOrderEffects"],
    "expert_reweighting": ["ExpertReweighting"],
    "held_out_comparisons": ["held_out_comparisons", "comparison_frame"],
    "held_out_probing": ["held_out_arm", "HeldOutArm", "compare"],
    "held_out_study": ["HeldOutProbing", "HeldOutOutcome"],
    "logit_lens": ["expert_logit_lens", "ExpertLens"],
    "logit_lens_accumulator": ["ExpertLogitLensAccumulator"],
    "logit_lens_null": ["top_token_share"],
    "logit_lens_study": ["LogitLensStudy"],
    "paper_study": ["PaperProtocol", "PaperOutcome"],
    "positions": ["position_effect"],
    "probe_work": ["ProbeWork", "probing_work"],
    "probing": ["KSparseProbe"],
    "probing_math": ["fit_logistic_batched"],
    "readout": ["LogitReadout"],
    "reweighting": ["reweighting_study"],
    "routing_stats": ["routed_tokens_by_domain"],
    "sparsity_family": ["SparsityVerdicts", "paper_table", "FamilyMember"],
    "specialization": ["specialization_scores", "sampling_baseline"],
    "specialization_permutation": ["document_permutation_baseline"],
    "specialization_study": ["SpecializationStudy", "SpecializationCounts"],
    "splits": ["document_split"],
    "stats": ["Interval"],
    "steering": ["steering_study"],
    "token_association": ["RoutingRecords", "token_expert_associations"],
}


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(analysis.__path__) if not m.name.startswith("_"))


def test_every_exported_name_imports_and_is_an_analysis_object():
    assert len(analysis.__all__) == len(set(analysis.__all__))
    namespace: dict = {}
    exec("from tl_moe.analysis import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(analysis.__all__)
    for name in analysis.__all__:
        value = getattr(analysis, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("tl_moe.analysis."), (name, value.__module__)


def test_every_module_has_its_main_objects_exported():
    assert _modules() == sorted(MAIN_OBJECTS), "a module of tl_moe.analysis is missing from MAIN_OBJECTS"
    for module_name, names in MAIN_OBJECTS.items():
        module = importlib.import_module(f"tl_moe.analysis.{module_name}")
        for name in names:
            assert name in analysis.__all__, f"tl_moe.analysis.__all__ lacks {module_name}.{name}"
            assert getattr(analysis, name) is getattr(module, name)


def test_every_accumulator_an_analysis_defines_is_exported():
    for module_name in _modules():
        module = importlib.import_module(f"tl_moe.analysis.{module_name}")
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Accumulator)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                assert name in analysis.__all__, f"the accumulator {module_name}.{name} is not exported"
