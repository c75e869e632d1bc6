"""The report of ``tl-moe analyze``: an offline HTML page with PNG figures, tables and ``results.json``.

- :class:`Report` / :class:`Section` — build the page section by section and write it,
- :mod:`tl_moe.report.figures` — line plots, heatmaps and bar plots as matplotlib Figures,
- :func:`markdown_to_html` — the small Markdown subset used for text,
- :func:`package_versions` — versions to record in the report's metadata.

See ``docs/REPORT.md`` for the layout of the output directory.
"""

from tl_moe.report.environment import package_versions
from tl_moe.report.figures import bar_plot, heatmap, line_plot, new_figure
from tl_moe.report.jsonable import to_jsonable
from tl_moe.report.markup import markdown_to_html
from tl_moe.report.report import Report, Section
from tl_moe.report.summary import TableSummary

__all__ = [
    "Report",
    "Section",
    "TableSummary",
    "bar_plot",
    "heatmap",
    "line_plot",
    "markdown_to_html",
    "new_figure",
    "package_versions",
    "to_jsonable",
]
