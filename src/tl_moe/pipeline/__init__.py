"""Run analyses over a corpus: the Analysis protocol, the registry, options, and the pipeline.

    from tl_moe.pipeline import RunOptions, run
    results = run(RunOptions(max_tokens=20_000))        # what `tl-moe analyze` does
    results["domains"].top                              # typed results, by analysis name

    results = tl_moe.pipeline.analyze(model, analyses=["specialization"])   # a model you hold

Add an analysis by subclassing :class:`Analysis` and decorating it with :func:`register`
(docs/ARCHITECTURE.md has a worked example).
"""

from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.options import RunOptions
from tl_moe.pipeline.protocol import AccumulatorSpec, Analysis, FigureItem, Inputs, Need, Result, TableItem
from tl_moe.pipeline.registry import analysis_names, default_analyses, get_analysis, register, unregister
from tl_moe.pipeline.runner import RunResults, analyze, run
from tl_moe.pipeline.sections import BUILT_IN

for _analysis in BUILT_IN:
    register(_analysis)

__all__ = [
    "AccumulatorSpec",
    "Analysis",
    "FigureItem",
    "Inputs",
    "Need",
    "Result",
    "RunContext",
    "RunOptions",
    "RunResults",
    "TableItem",
    "analysis_names",
    "analyze",
    "default_analyses",
    "get_analysis",
    "register",
    "run",
    "unregister",
]
