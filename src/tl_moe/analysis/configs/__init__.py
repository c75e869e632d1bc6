"""The config of each analysis: one frozen dataclass per analysis, every default written once, here.

A field's metadata (:func:`tl_moe.settings.option`) carries its help text, its command-line parser and
the flat name it had before it was namespaced (``legacy``): ``--probing.ks`` and ``--probe-ks`` set the
same field, as do ``analyze(model, probing=dict(ks=(1, 8)))`` and ``analyze(model, probe_ks=(1, 8))``.
Each config's ``check()`` refuses values no run can use, in one line, before any pass.

Settings several analyses share (the document split's fraction, bootstrap resamples, permutations, the
false-discovery rate, the fewest documents behind an interval, the seed) are the run's
statistical standards, one value per run: :class:`Statistics` (``RunOptions.statistics`` in a run).
"""

from tl_moe.analysis.configs.associations import AssociationsConfig
from tl_moe.analysis.configs.drivers import DriversConfig
from tl_moe.analysis.configs.explain import ExplainConfig
from tl_moe.analysis.configs.probing import ProbingConfig
from tl_moe.analysis.configs.reweighting import ReweightingConfig
from tl_moe.analysis.configs.specialization import SpecializationConfig
from tl_moe.analysis.configs.statistics import Statistics

__all__ = [
    "AssociationsConfig",
    "DriversConfig",
    "ExplainConfig",
    "ProbingConfig",
    "ReweightingConfig",
    "SpecializationConfig",
    "Statistics",
]
