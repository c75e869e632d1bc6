"""k-sparse probing of expert neurons against dense FFN neurons: the adapter that feeds
:class:`~tl_moe.analysis.held_out_study.HeldOutProbing` (the headline, with its controls) and
:class:`~tl_moe.analysis.paper_study.PaperProtocol` (labelled as the paper's) from a run's stored tokens,
each step saved in ``OUT/checkpoints``, and wraps their outcomes in
:class:`~tl_moe.pipeline.results.probing.ProbingResult`."""

from __future__ import annotations

from typing import Any

from tl_moe.analysis.bounded_store import BoundedStoredTokens
from tl_moe.analysis.configs import ProbingConfig
from tl_moe.analysis.held_out_study import HeldOutOutcome
from tl_moe.analysis.paper_study import PaperProtocol  # noqa: F401 (importable from here as before)
from tl_moe.errors import InputError
from tl_moe.pipeline.context import RunContext, untrained_name
from tl_moe.pipeline.needs import DenseNeurons, ExpertNeurons
from tl_moe.pipeline.probing_run import (
    dense_probing_steps,
    held_out_probing,
    held_out_study,
    probe_settings,
    probing_protocols,
    probing_steps,
)
from tl_moe.pipeline.protocol import Analysis, Inputs, Need, OptionLimit
from tl_moe.pipeline.results.probing import INTRO, PAPER, ProbingResult

# importable from here as before; their homes are analysis/held_out_comparisons.py, analysis/held_out_study.py,
# analysis/paper_study.py, pipeline/results/probing_findings.py (and pipeline/probing_run.py, above)
from tl_moe.analysis.held_out_comparisons import ARM_DRAWS, COMPARISONS, DETERMINISTIC, LEAD_GROUP  # isort: skip
from tl_moe.analysis.held_out_comparisons import NULL_CORRECTED, ONE_RANDOM_DRAW, RANDOM_DRAWS  # isort: skip
from tl_moe.analysis.held_out_comparisons import ROUTED_COUNT, ROUTED_COUNT_PERMUTED, arm_draws  # isort: skip
from tl_moe.analysis.held_out_comparisons import comparison_draws, concept_group  # isort: skip
from tl_moe.analysis.held_out_comparisons import comparison_frame as _comparison_frame  # isort: skip
from tl_moe.analysis.held_out_comparisons import group_comparisons, held_out_comparisons  # isort: skip
from tl_moe.analysis.held_out_study import usable_on_selection  # isort: skip
from tl_moe.analysis.paper_study import paper_comparisons, probing_curves  # isort: skip
from tl_moe.pipeline.results.probing_findings import LEAD_METRIC, METRIC_NAMES  # isort: skip
from tl_moe.pipeline.results.probing_findings import interval_text as _interval_text  # isort: skip

# fmt: off
__all__ = [
    "ARM_DRAWS", "COMPARISONS", "DETERMINISTIC", "LEAD_GROUP", "LEAD_METRIC", "METRIC_NAMES", "NULL_CORRECTED",
    "ONE_RANDOM_DRAW", "PAPER", "RANDOM_DRAWS", "ROUTED_COUNT", "ROUTED_COUNT_PERMUTED", "Probing",
    "ProbingResult", "_comparison_frame", "_interval_text", "arm_draws", "comparison_draws", "concept_group",
    "group_comparisons", "held_out_comparisons", "held_out_probing", "held_out_study", "paper_comparisons",
    "probe_settings", "probing_curves", "probing_steps", "usable_on_selection",
]
# fmt: on


class Probing(Analysis):
    """k-sparse probes on each expert's neurons (its routed tokens) vs the dense twin's FFN neurons."""

    name = "probing"
    config_class = ProbingConfig
    title = "k-sparse probing of expert neurons"
    summary = "k-sparse probes of experts vs dense neurons: held-out selection with controls, and the paper's protocol"
    intro = INTRO

    def option_limits(self, run: RunContext) -> dict[str, OptionLimit]:
        neurons = run.config(run.main).d_expert
        return {"probe_ks": OptionLimit(neurons, f"{run.main}'s experts have {neurons} neurons")}

    def check(self, run: RunContext) -> None:
        self.check_config(run)

    def check_config(self, run: RunContext) -> None:
        """Sparse --probe-layers, and probe sizes at most an expert's neurons (on the fitted defaults)."""
        from tl_moe.pipeline.validation import check_probe_ks

        run.probed_layers()  # refuses --probe-layers that are not sparse layers
        check_probe_ks(run.options.config("probing").ks, self.option_limits(run)["probe_ks"].most)

    def needs(self, run: RunContext) -> list[Need]:
        """The MoE's expert neurons; the dense baseline's FFN neurons; the untrained MoE's (unless skipped)."""
        needs = [Need(run.main, ExpertNeurons(run.probed_layers()))]
        if run.dense is not None:
            needs.append(Need(run.dense, DenseNeurons()))
        if not run.options.config("probing").skip_untrained_null:
            needs.append(Need(untrained_name(run.main), ExpertNeurons(run.probed_layers())))
        return needs

    def stored(self, run: RunContext, inputs: Any) -> tuple[Any, Any, Any]:
        """The stored tokens of the MoE, the dense baseline and the untrained MoE (None: not run) in
        ``inputs`` (a need -> value mapping, as :meth:`needs` lists them)."""
        config, needs = run.options.config("probing"), self.needs(run)
        dense = inputs[needs[1]] if run.dense is not None else None
        untrained = inputs[needs[-1]] if not config.skip_untrained_null else None
        return inputs[needs[0]], dense, untrained

    def finalize(self, run: RunContext, inputs: Inputs) -> ProbingResult:
        """Both protocols on the stored tokens (the held-out one's failure recorded, never a silent number)."""
        config, needs = run.options.config("probing"), self.needs(run)
        moe, dense, untrained = self.stored(run, inputs)
        step = probing_steps(run, self.name, [need.model for need in needs])
        paper, study = probing_protocols(run)
        # The paper protocol and the held-out arms are independent pieces: the pool's workers compute
        # them at once (values as computed one after another in this process; --workers 1 does that).
        with run.worker_pool() as pool:
            paper_task = pool.submit(
                lambda: paper(moe, dense, step=step, progress=run.options.progress), "the paper protocol"
            )
            try:
                dense_step = None if dense is None else dense_probing_steps(run)
                held_out = study(moe, dense, untrained, step=step, dense_step=dense_step, pool=pool)
            except InputError as error:  # too few documents / examples
                held_out = HeldOutOutcome.unavailable(error, config.ks)
            paper_outcome = paper_task.result()
        return ProbingResult.of(paper_outcome, held_out, config.ks, _store_notes(inputs, needs))


def _store_notes(inputs: Inputs, needs: list[Need]) -> list[str]:
    """One note per model whose bounded probing store dropped rows (some key had more than N)."""
    notes = []
    for need in needs:
        stored = inputs.get(need)
        if isinstance(stored, BoundedStoredTokens) and stored.n_capped:
            notes.append(
                f"the probing store of {need.model} kept {stored.rows_per_class} tokens per (unit, concept, class, "
                f"document side) where more were streamed ({stored.n_capped} of {stored.n_seen.numel()} keys): "
                f"{len(stored.token_index)} tokens stored (--probe-rows-per-class)."
            )
    return notes
