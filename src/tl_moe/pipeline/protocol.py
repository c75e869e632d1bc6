"""The Analysis protocol: what every analysis of a run declares, computes and shows.

An analysis is a small class with three steps, which the pipeline calls in order:

1. :meth:`Analysis.needs` — the accumulators it wants filled, each a :class:`Need` naming the model
   it runs on and a hashable *spec* that builds the accumulator. The pipeline takes the union of all
   analyses' needs, so two analyses asking for the same spec on the same model share one accumulator,
   and every model gets exactly ONE collection pass. Edited forwards of the same batches
   (interventional and gradient accumulators) are needs too, run inside that pass.
2. :meth:`Analysis.finalize` — turns the finished accumulators (and the results of the analyses it
   ``depends_on``) into a typed, frozen :class:`Result`. No model forward happens here, except in an
   analysis that declares ``own_forwards``: the reason its forwards cannot be needs of the one pass
   (e.g. re-weighting runs edits chosen from earlier results, on windows of its own). ``tl-moe plan``
   lists those analyses with their reason, and the report's section says it.
3. :meth:`Analysis.render` — writes its report section from the result (figures, tables, metrics).

Register an analysis with :func:`tl_moe.pipeline.register` and it is selectable with
``tl-moe analyze --analyses NAME``, listed in the command's help, and rendered in the report —
without editing any tl_moe file. See docs/ARCHITECTURE.md for a worked example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
from matplotlib.figure import Figure

from tl_moe.collect.accumulator import Accumulator
from tl_moe.defaults import MIN_DOCUMENTS
from tl_moe.models.config import MoEConfig
from tl_moe.pipeline.options import OptionLimit
from tl_moe.report.summary import TableSummary

if TYPE_CHECKING:  # annotations only: the context module imports nothing from here at run time
    from tl_moe.pipeline.context import RunContext
    from tl_moe.report import Section

__all__ = [
    "Analysis",
    "AccumulatorSpec",
    "FigureItem",
    "Inputs",
    "Need",
    "OptionLimit",
    "Result",
    "TableItem",
    "MIN_DOCUMENTS_MARK",
    "section_intro",
]


class AccumulatorSpec(ABC, Hashable):
    """A hashable recipe for one accumulator (subclass as a frozen dataclass).

    Equal specs on the same model are built once and shared by every analysis that asks for them;
    :meth:`build` makes the accumulator for the model the pass runs on.
    """

    #: Whether :meth:`build` reads :attr:`RunContext.token_groups` (the vocabulary clustering): the run
    #: then checks ``--n-token-groups`` against the vocabulary before any pass.
    uses_token_groups: ClassVar[bool] = False

    @abstractmethod
    def build(self, model: Any, run: RunContext) -> Accumulator:
        """A fresh accumulator for ``model`` (the pass's model, already loaded)."""

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        """Upper estimate of the accumulator's memory at the end of a pass, from the model's
        config alone (the planner's input; 0 when negligible or unknown)."""
        return 0


@dataclass(frozen=True)
class Need:
    """One accumulator an analysis wants filled: ``spec`` on the model named ``model``."""

    model: str
    spec: AccumulatorSpec


class Inputs:
    """What :meth:`Analysis.finalize` receives: finished accumulators and earlier results."""

    def __init__(
        self, collected: Mapping[tuple[str, AccumulatorSpec], Any], results: Mapping[str, Result]
    ) -> None:
        self._collected = collected
        self._results = results

    def __getitem__(self, need: Need) -> Any:
        """The finalized value of the accumulator ``need`` asked for."""
        key = (need.model, need.spec)
        if key not in self._collected:
            raise LookupError(f"{need} was not collected: return it from the analysis's needs().")
        return self._collected[key]

    def get(self, need: Need, default: Any = None) -> Any:
        return self._collected.get((need.model, need.spec), default)

    def optional_result(self, name: str) -> Result | None:
        """The result of the analysis ``name`` if it ran earlier in this run (None otherwise, or when it
        was unavailable): for comparisons an analysis adds when another analysis happens to be chosen too."""
        result = self._results.get(name)
        return None if isinstance(result, UnavailableResult) else result

    def result(self, name: str) -> Result:
        """The result of the analysis ``name`` (it must be in ``depends_on``)."""
        if name not in self._results:
            raise LookupError(f"No result of analysis {name!r} yet: list it in depends_on.")
        return self._results[name]


@dataclass(frozen=True)
class TableItem:
    """A table of a result as the report shows it.

    A table longer than ``max_rows`` is summarized on the page (counts by status, quantiles of the
    score per group, top rows) and linked in full; ``summary`` says which columns those are
    (:class:`~tl_moe.report.TableSummary`; default: every numeric column, the first rows).
    """

    name: str
    frame: pd.DataFrame
    caption: str
    max_rows: int = 30
    summary: TableSummary | None = None


@dataclass(frozen=True)
class FigureItem:
    """A figure of a result as the report shows it."""

    name: str
    figure: Figure
    caption: str


class Result(ABC):
    """The typed, frozen outcome of one analysis (subclass as a frozen dataclass).

    ``to_frame()`` is the main table, ``metrics()`` the headline numbers (JSON values, recorded in
    ``results.json``), ``tables()`` and ``figures()`` what the report shows.
    """

    @abstractmethod
    def to_frame(self) -> pd.DataFrame:
        """The main table of the result."""

    def metrics(self) -> dict[str, Any]:
        """Headline numbers, as JSON values."""
        return {}

    def findings(self) -> list[str]:
        """One-sentence headlines for the top of the report and the end-of-run summary (with their
        control and interval where the analysis has them; Markdown subset)."""
        return []

    def tables(self) -> Sequence[TableItem]:
        """Tables the report shows (default: the main table)."""
        return [TableItem(type(self).__name__, self.to_frame(), "")]

    def figures(self) -> Sequence[FigureItem]:
        """Figures the report shows (made fresh on every call)."""
        return []

    def _repr_png_(self) -> bytes | None:
        """Jupyter shows a result as its first figure (a cell ending in ``results["domains"]``)."""
        import io

        figures = self.figures()
        if not figures:
            return None
        buffer = io.BytesIO()
        figures[0].figure.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    def records(self) -> dict[str, Any]:
        """Extra JSON entries of the section in ``results.json`` (e.g. ``probing.comparisons``)."""
        return {}


@dataclass(frozen=True)
class UnavailableResult(Result):
    """The outcome of an analysis that could not run on what the run collected; ``reason`` says why."""

    reason: str

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame()

    def metrics(self) -> dict[str, Any]:
        return {"unavailable": self.reason}

    def tables(self) -> Sequence[TableItem]:
        return []


class Analysis(ABC):
    """Base class of every analysis a run can include (see the module docstring).

    Class attributes:
        name: identifier: the ``--analyses`` value and the section key in ``results.json``.
        title: the report section's heading.
        summary: one line for ``tl-moe analyze --help``.
        intro: the report section's opening paragraph (what was computed, exactly).
        depends_on: analyses whose results :meth:`finalize` reads (they run first; naming this
            analysis brings them). Their configs may be read too (``run.options.config(name)``).
        uses: analyses whose work this one shares when they are in the run, without bringing them
            (e.g. specialization draws the untrained model's curve from the pass probing's untrained
            null runs); read with ``name in run.analyses`` and ``run.options.config(name)``.
        default: included when ``--analyses`` is not given.
        config_class: the frozen dataclass of this analysis's own settings (None: it has none). Its
            fields become the flags ``--NAME.FIELD`` and the keyword ``analyze(model, NAME=dict(...))``;
            :meth:`finalize` reads them as ``run.options.config(self.name)``.
        own_forwards: None when every forward this analysis reads is a need of the collection pass;
            otherwise why :meth:`finalize` runs model forwards of its own, outside that pass (shown by
            ``tl-moe plan`` and in the report). An analysis with no needs must say it.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    intro: ClassVar[str] = ""
    depends_on: ClassVar[tuple[str, ...]] = ()
    uses: ClassVar[tuple[str, ...]] = ()
    default: ClassVar[bool] = True
    config_class: ClassVar[type | None] = None
    own_forwards: ClassVar[str | None] = None

    def check(self, run: RunContext) -> None:  # noqa: B027 (optional hook)
        """Refuse bad options or models with an :class:`~tl_moe.errors.InputError` before any pass."""

    def check_config(self, run: RunContext) -> None:  # noqa: B027 (optional hook)
        """The part of :meth:`check` that needs only the models' configs (no weights, no corpus), so that
        ``tl-moe plan`` refuses what ``tl-moe analyze`` would; :meth:`check` calls it too."""

    def option_limits(self, run: RunContext) -> dict[str, OptionLimit]:
        """The largest value of each size option this analysis can use on the run's models (e.g.
        ``probe_ks``, the legacy name of ``probing.ks``, up to the neurons of an expert). Before any pass, an option the user left at its
        default is fitted within the limit (:func:`~tl_moe.pipeline.options.fit_defaults`); a value
        given explicitly is refused by :meth:`check` instead."""
        return {}

    @abstractmethod
    def needs(self, run: RunContext) -> Sequence[Need]:
        """The accumulators this analysis reads (one pass per model fills all analyses' needs)."""

    @abstractmethod
    def finalize(self, run: RunContext, inputs: Inputs) -> Result:
        """The result, from the finished accumulators and the results it depends on."""

    def render(self, result: Result, section: Section, run: RunContext) -> None:
        """Fill the report section: every figure, every table, then the metrics."""
        for item in result.figures():
            section.add_figure(item.figure, item.name, item.caption)
        for item in result.tables():
            section.add_table(
                item.frame, item.name, item.caption, max_rows=item.max_rows, summary=item.summary
            )
        metrics = result.metrics()
        if metrics:
            section.add_metrics(metrics)
        for key, value in result.records().items():
            section.add_record(key, value)


MIN_DOCUMENTS_MARK = "{min_documents}"
"""Written in an analysis's ``intro`` where the run's fewest documents behind an interval
(``--min-documents``, :attr:`~tl_moe.analysis.configs.Statistics.min_documents`) belongs:
:func:`section_intro` puts the run's value there."""


def section_intro(analysis: Analysis, min_documents: int = MIN_DOCUMENTS) -> str:
    """The report section's opening paragraph: the analysis's intro, with the run's ``min_documents``
    in place of :data:`MIN_DOCUMENTS_MARK`, and when it runs forwards of its own, that it does and why."""
    intro = analysis.intro.replace(MIN_DOCUMENTS_MARK, str(int(min_documents)))
    if not analysis.own_forwards:
        return intro
    return f"{intro} Forwards of its own, outside the collection pass: {analysis.own_forwards}."
