"""Probing against routing sparsity (active ratio k / E) across the toy family, under both protocols: the
adapter that runs each member through the probing section's protocols (:mod:`tl_moe.pipeline.family`),
hands what they give to the method (:mod:`tl_moe.analysis.sparsity_family`: the paper table, the held-out
verdicts Holm-adjusted as one family) and wraps it in
:class:`~tl_moe.pipeline.results.sparsity.SparsityResult`."""

from __future__ import annotations

from tl_moe.analysis.sparsity_family import FAMILY_COMPARISONS as FAMILY_COMPARISONS
from tl_moe.analysis.sparsity_family import paper_table
from tl_moe.pipeline import family
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.needs import DenseNeurons, ExpertNeurons
from tl_moe.pipeline.protocol import Analysis, Inputs, Need, OptionLimit
from tl_moe.pipeline.results.sparsity import SparsityResult as SparsityResult

__all__ = ["FAMILY_COMPARISONS", "Sparsity", "SparsityResult"]


class Sparsity(Analysis):
    """Expert probing on every MoE of the toy family, against the dense twin (needs probing)."""

    name = "sparsity"
    title = "Probing F1 vs routing sparsity"
    summary = "probe every toy MoE and plot F1 vs active ratio (also: --sparsity-family)"
    intro = (
        "The toy family changes the number of experts at fixed active neurons per token (same data, "
        "steps and seed), so total parameters grow with the experts and each member is one seed: the "
        "family cannot separate routing sparsity from model size. **Held-out protocol (the headline):** "
        "for every member, the probing "
        "section's held-out protocol and its matched controls on the same documents: MoE expert minus "
        "the dense twin's layers, minus dense neurons on exactly each expert's routed tokens (all of them, "
        "and d_expert random ones: the headline; both Holm-adjusted as one family over members, k, both metrics and both controls), and minus "
        "dense neurons on random token subsets with the routed sizes per layer and concept (the control "
        "for the number and sizes of units, which grow with the number of experts); paired differences "
        "of mean class-balanced F1 with 95% bootstrap intervals over test documents. **Paper protocol "
        "(for comparison with published numbers):** the mean over the concepts probed in every model of "
        "the best test F1 over that model's layers x experts (dense twin: layers)."
    )
    depends_on = ("probing",)
    default = False

    def family(self, run: RunContext) -> list[str]:
        """The toy MoEs probed besides the analyzed model (whose probing result is reused)."""
        return family.family_names(run)

    def option_limits(self, run: RunContext) -> dict[str, OptionLimit]:
        sizes = {run.main: run.config(run.main).d_expert}
        sizes.update({name: family.member_config(run, name).d_expert for name in self.family(run)})
        smallest = min(sizes, key=sizes.get)
        return {
            "probe_ks": OptionLimit(
                sizes[smallest], f"the smallest experts probed, {smallest}'s, have {sizes[smallest]} neurons"
            )
        }

    def check(self, run: RunContext) -> None:
        from tl_moe.pipeline.validation import check_probe_ks

        check_probe_ks(run.options.config("probing").ks, self.option_limits(run)["probe_ks"].most)

    def needs(self, run: RunContext) -> list[Need]:
        needs = [Need(name, ExpertNeurons()) for name in self.family(run)]
        if run.dense is not None:
            needs.append(Need(run.dense, DenseNeurons()))  # shared with probing's
        return needs

    def finalize(self, run: RunContext, inputs: Inputs) -> SparsityResult:
        """Every member probed by the paper protocol, then by the held-out one against the dense twin;
        the paper table over the concepts probed in every model."""
        members = family.members(run, inputs, self.name, self.family(run))
        held_out, notes = family.held_out_table(run, inputs, self.name, members)
        return SparsityResult(
            table=paper_table(members, inputs.result("probing").dense_units),
            ks=tuple(sorted({1, max(run.options.config("probing").ks)})),
            held_out=held_out,
            notes=tuple(notes),
            parameters=family.parameters([m.name for m in members] + ([run.dense] if run.dense else [])),
        )
