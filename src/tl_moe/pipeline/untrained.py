"""Whether a run's untrained null model gets its collection pass (the analyses that draw it beside their
own numbers read it here)."""

from __future__ import annotations

from tl_moe.pipeline.context import RunContext

__all__ = ["untrained_pass_runs"]


def untrained_pass_runs(run: RunContext) -> bool:
    """Whether the untrained null's pass runs in this run anyway: probing is in the run (declared by
    ``uses``) and asks for it (not ``--skip-untrained-null``)."""
    return "probing" in run.analyses and not run.options.config("probing").skip_untrained_null
