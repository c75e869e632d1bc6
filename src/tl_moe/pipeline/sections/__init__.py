"""The built-in analyses of a run, one module each: what it needs, its Result, its report section."""

from tl_moe.pipeline.sections.associations import Associations, AssociationsResult
from tl_moe.pipeline.sections.domains import DomainExpertsResult, Domains
from tl_moe.pipeline.sections.drivers import Drivers, DriversResult
from tl_moe.pipeline.sections.explain import Explain, ExplainResult
from tl_moe.pipeline.sections.logit_lens import LogitLens, LogitLensResult
from tl_moe.pipeline.sections.probing import Probing, ProbingResult
from tl_moe.pipeline.sections.reweighting import Reweighting, ReweightingResult
from tl_moe.pipeline.sections.sparsity import Sparsity, SparsityResult
from tl_moe.pipeline.sections.specialization import Specialization, SpecializationSummary

BUILT_IN = (
    Probing,
    Sparsity,
    Specialization,
    Domains,
    Drivers,
    Associations,
    Reweighting,
    LogitLens,
    Explain,
)
"""The built-in analyses in report order."""

__all__ = [
    "Associations",
    "AssociationsResult",
    "BUILT_IN",
    "DomainExpertsResult",
    "Domains",
    "Drivers",
    "DriversResult",
    "Explain",
    "ExplainResult",
    "LogitLens",
    "LogitLensResult",
    "Probing",
    "ProbingResult",
    "Reweighting",
    "ReweightingResult",
    "Sparsity",
    "SparsityResult",
    "Specialization",
    "SpecializationSummary",
]
