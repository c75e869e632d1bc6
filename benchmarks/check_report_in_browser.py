"""Open a tl_moe report in headless Chromium, offline: it renders, the findings box is there, no token
cell is blank, every figure loads, every linked file exists, and the expert dashboard's cards render
(every card has content, the token colours are there; each page per layer too). Writes a screenshot
next to the report, and with ``--cards-screenshot PNG`` one of two expert cards (1000×700).

    python benchmarks/check_report_in_browser.py                  # runs a small analysis first
    python benchmarks/check_report_in_browser.py --report DIR     # checks an existing report
    python benchmarks/check_report_in_browser.py --report DIR --cards-screenshot docs/figures/expert_cards.png

Needs Debian's chromium (`apt-get install chromium`); tests/test_report.py runs :func:`check` on a
small report when :func:`find_chromium` finds one, and skips otherwise.
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
    """Collects table cells (text per cell), image sources, links and expert cards of the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.cards: list[dict[str, int]] = []  # per card: characters of text below its title, coloured tokens
        self._in_cell = False
        self._card_depth = 0  # open tags inside the current card (0: not in a card)
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "td":
            self._in_cell = True
            self.cells.append("")
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        if tag == "a" and not attributes.get("href", "#").startswith("#"):
            self.links.append(attributes.get("href", "").partition("#")[0])
        if tag == "article" and "card" in (attributes.get("class") or "").split():
            self.cards.append({"text": 0, "coloured": 0, "contexts": 0})
            self._card_depth = 1
            return
        if self._card_depth:
            if tag not in ("br", "img", "rect", "line"):
                self._card_depth += 1
            self._in_title = tag == "h3"
            if "background" in (attributes.get("style") or "") and "tok" in (attributes.get("class") or ""):
                self.cards[-1]["coloured"] += 1
            if "ctx" in (attributes.get("class") or "").split():
                self.cards[-1]["contexts"] += 1

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_cell = False
        if self._card_depth and tag not in ("br", "img", "rect", "line"):
            self._card_depth -= 1
            self._in_title = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1] += data
        if self._card_depth and not self._in_title:
            self.cards[-1]["text"] += len(data.strip())


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium() -> str:
    path = find_chromium()
    if path is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    return path


def _dump_dom(common: list[str], page: Path) -> str:
    return subprocess.run(
        [*common, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120
    ).stdout


def _card_problems(parser: _Cells, where: str) -> list[str]:
    """No blank card, and the token colours are there when a card shows contexts."""
    problems = []
    blank = [i for i, card in enumerate(parser.cards) if card["text"] == 0]
    if blank:
        problems.append(f"{len(blank)} blank expert cards in {where}")
    with_contexts = [card for card in parser.cards if card["contexts"]]
    if with_contexts and not any(card["coloured"] for card in with_contexts):
        problems.append(f"no token of any context is coloured in {where}")
    return problems


def screenshot_cards(
    report: Path, png: Path, n_cards: int = 2, size: tuple[int, int] = (1000, 700), scale: float = 0.7
) -> None:
    """A screenshot of the first ``n_cards`` labeled cards of ``report``, side by side: a page with the
    report's head (its styles) and those cards alone, rendered by Chromium into a ``size`` PNG at
    ``scale`` (so that more of each card fits)."""
    source = (report / "index.html").read_text(encoding="utf-8")
    cards = re.findall(r'<article class="card".*?</article>', source, flags=re.S)
    if not cards:
        raise SystemExit(
            f"{report / 'index.html'} holds no expert card (paged dashboards: give a layer page)"
        )
    labeled = [card for card in cards if 'class="label"' in card] or cards
    head = source[: source.index("<main>") + len("<main>")]
    page = report / "_cards_screenshot.html"
    columns = f'<div class="cards" style="grid-template-columns: repeat({n_cards}, 1fr)">'
    page.write_text(
        head + columns + "".join(labeled[:n_cards]) + "</div></main></body></html>", encoding="utf-8"
    )
    browser = _chromium()
    png.parent.mkdir(parents=True, exist_ok=True)
    window = f"{round(size[0] / scale)},{round(size[1] / scale)}"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png.resolve()}",
             f"--window-size={window}", f"--force-device-scale-factor={scale}", "--hide-scrollbars",
             page.resolve().as_uri()],
            capture_output=True, timeout=120,
        )  # fmt: skip
    page.unlink()


def check(report: Path) -> list[str]:
    """Problems found in ``report/index.html`` as rendered by Chromium (empty: all good)."""
    index = (report / "index.html").resolve()
    browser = _chromium()
    with tempfile.TemporaryDirectory() as profile:
        common = [browser, *FLAGS, f"--user-data-dir={profile}"]
        dom = _dump_dom(common, index)
        subprocess.run(
            [*common, f"--screenshot={report / 'screenshot.png'}", "--window-size=1280,2400", index.as_uri()],
            capture_output=True,
            timeout=120,
        )
    problems: list[str] = []
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
    problems += _card_problems(parser, "index.html")
    n_cards = len(parser.cards)
    pages = sorted(link for link in set(parser.links) if link.endswith(".html") and (report / link).is_file())
    with tempfile.TemporaryDirectory() as profile:
        common = [browser, *FLAGS, f"--user-data-dir={profile}"]
        for link in pages:  # one page per layer of a large dashboard
            page_parser = _Cells()
            page_dom = _dump_dom(common, report / link)
            page_parser.feed(page_dom)
            if not page_parser.cards:
                problems.append(f"{link} shows no expert card")
            problems += _card_problems(page_parser, link)
            n_cards += len(page_parser.cards)
    print(
        f"{len(parser.cells)} table cells, {len(parser.images)} figures, {len(parser.links)} links, "
        f"{n_cards} expert cards ({len(pages)} layer pages), screenshot: {report / 'screenshot.png'}"
    )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--cards-screenshot", type=Path, default=None, help="PNG of two expert cards")
    args = parser.parse_args()
    report = args.report
    if report is None:
        from tl_moe.pipeline import RunOptions, default_analyses, run

        report = Path(tempfile.mkdtemp()) / "report"
        analyses = (*default_analyses(), "explain")
        run(RunOptions(out=report, max_tokens=5000, probe_ks=(1, 4), progress=False, analyses=analyses))
    problems = check(report)
    if args.cards_screenshot is not None:
        screenshot_cards(report, args.cards_screenshot)
        print(f"cards screenshot: {args.cards_screenshot}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("report renders offline: OK" if not problems else f"{len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
