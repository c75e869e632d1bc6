"""An analysis that runs model forwards outside the one collection pass says so, and why: every built-in
analysis with no needs declares ``own_forwards``, and ``tl-moe plan`` and the report show the reason."""

from tl_moe.pipeline import BUILT_IN, RunOptions
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.plan import plan_run
from tl_moe.pipeline.protocol import MIN_DOCUMENTS_MARK, section_intro
from tl_moe.pipeline.sections.domains import Domains
from tl_moe.pipeline.sections.reweighting import Reweighting


def test_every_analysis_without_needs_declares_its_own_forwards():
    run = RunContext(RunOptions(model="toy/moe-8x2", progress=False))
    without_needs = [cls.name for cls in BUILT_IN if not cls().needs(run)]
    assert "reweighting" in without_needs
    for cls in BUILT_IN:
        if cls.name in without_needs:
            assert isinstance(cls.own_forwards, str) and len(cls.own_forwards) > 40, cls.name


def test_the_plan_and_the_report_name_the_analyses_with_forwards_of_their_own():
    plan = plan_run(RunOptions(model="toy/moe-8x2", analyses=("domains", "drivers", "reweighting")))
    assert plan.own_forwards == {"reweighting": Reweighting.own_forwards}
    summary = plan.summary()
    assert (
        f"reweighting runs forwards of its own after the passes (not estimated above): {Reweighting.own_forwards}"
        in summary
    )
    assert "domains runs forwards" not in summary and Domains.own_forwards is None
    assert section_intro(Domains()) == Domains.intro
    intro = section_intro(Reweighting())
    assert intro.startswith(Reweighting.intro.replace(MIN_DOCUMENTS_MARK, "30")) and intro.endswith(
        f"collection pass: {Reweighting.own_forwards}."
    )


def test_explain_declares_the_causal_checks_forwards():
    """Explain has needs (its examples) and also runs the causal checks' edited forwards after the pass."""
    from tl_moe.pipeline.sections.explain import Explain

    assert "causal" in Explain.own_forwards
    plan = plan_run(RunOptions(model="toy/moe-8x2", dense_baseline=None, analyses=("explain",)))
    assert plan.own_forwards == {"explain": Explain.own_forwards}
