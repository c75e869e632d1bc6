"""Open a tl_moe report in headless Chromium, offline: it renders, the findings box is there, no token
cell is blank, every figure loads, every linked table file exists. Writes a screenshot next to the report.

    python benchmarks/check_report_in_browser.py                  # runs a small analysis first
    python benchmarks/check_report_in_browser.py --report DIR     # checks an existing report

Needs Debian's chromium (`apt-get install chromium`); not part of the test suite.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _Cells(HTMLParser):
    """Collects table cells (text per cell) and image sources of the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "td":
            self._in_cell = True
            self.cells.append("")
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag == "a" and not dict(attrs).get("href", "#").startswith("#"):
            self.links.append(dict(attrs).get("href", ""))

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1] += data


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("chromium is not installed: apt-get install chromium")


def check(report: Path) -> list[str]:
    """Problems found in ``report/index.html`` as rendered by Chromium (empty: all good)."""
    index = (report / "index.html").resolve()
    browser = _chromium()
    with tempfile.TemporaryDirectory() as profile:
        common = [browser, *FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*common, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120
        ).stdout
        subprocess.run(
            [*common, f"--screenshot={report / 'screenshot.png'}", "--window-size=1280,2400", index.as_uri()],
            capture_output=True,
            timeout=120,
        )
    problems = []
    if "<h1>" not in dom:
        problems.append("the page did not render (no <h1> in the DOM)")
    if 'class="findings"' not in dom:
        problems.append("no findings box")
    parser = _Cells()
    parser.feed(dom)
    blank = sum(1 for cell in parser.cells if not cell.strip())
    if blank:
        problems.append(f"{blank} blank table cells")
    for source in parser.images:
        if not (report / source).exists():
            problems.append(f"figure {source} is missing")
    if re.search(r"https?://", "".join(parser.images)):
        problems.append("a figure is loaded from the network")
    for link in parser.links:
        if re.match(r"[a-z]+:", link) or not (report / link).is_file():
            problems.append(f"link {link} does not lead to a file of the report")
    print(
        f"{len(parser.cells)} table cells, {len(parser.images)} figures, {len(parser.links)} table links, "
        f"screenshot: {report / 'screenshot.png'}"
    )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    report = args.report
    if report is None:
        from tl_moe.pipeline import RunOptions, run

        report = Path(tempfile.mkdtemp()) / "report"
        run(RunOptions(out=report, max_tokens=5000, probe_ks=(1, 4), progress=False))
    problems = check(report)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("report renders offline: OK" if not problems else f"{len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
