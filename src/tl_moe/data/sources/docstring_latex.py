"""Domain ``math`` (corpus v2): real LaTeX written by people, from the docstrings of math packages.

The reStructuredText docstrings of sympy and scipy hold formulas as ``:math:`...``` roles
and ``.. math::`` blocks. Every string literal of a package module that holds one is turned into
LaTeX-delimited text: a role becomes inline math ``$...$``, each equation of a block becomes display
math ``\\[...\\]`` (a ``:nowrap:`` block keeps its own environment), doctest examples are dropped,
and other roles keep their text. The formulas themselves are left exactly as their authors wrote them.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import random
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

from tl_moe.data.sources.base import Document, DomainSource, split_paragraphs

TARGET_CHUNK_CHARS = 3000
MIN_STRING_CHARS = 200
LATEX_PACKAGES = ("sympy", "scipy")
"""Import names of the packages read, in this order (their distributions have the same names)."""
EXCLUDED_DIRS = frozenset({"tests", "test", "testing", "benchmarks", "__pycache__"})

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_OTHER_ROLE = re.compile(r":(?:[a-zA-Z]+:)*[a-zA-Z]+:`~?([^`]+)`")
_DIRECTIVE = re.compile(r"^(\s*)\.\. math::[ \t]*(.*)$")
_DIRECTIVE_OPTION = re.compile(r"^\s*:[a-z_-]+:")
_MATH_MARKERS = (":math:`", ".. math::")


def rst_math_to_latex(text: str) -> str:
    """A reStructuredText docstring with its math written in LaTeX delimiters.

    ``:math:`x^2``` becomes ``$x^2$``; a ``.. math::`` block becomes one ``\\[...\\]`` per equation
    (equations are separated by blank lines; text on the directive line is an equation too), or its
    body verbatim when it has the ``:nowrap:`` option; doctest paragraphs (``>>>`` lines and their
    output) are dropped; any other role (``:func:`~a.b```) keeps its text.
    """
    lines = text.splitlines()
    out: list[str] = []
    index = 0
    in_doctest = False
    while index < len(lines):
        line = lines[index]
        if in_doctest:
            if line.strip():
                index += 1
                continue
            in_doctest = False
        if line.lstrip().startswith(">>>"):
            in_doctest = True
            index += 1
            continue
        match = _DIRECTIVE.match(line)
        if not match:
            out.append(_OTHER_ROLE.sub(r"\1", _MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", line)))
            index += 1
            continue
        indent, inline = len(match.group(1)), match.group(2).strip()
        index += 1
        nowrap = False
        while index < len(lines) and _DIRECTIVE_OPTION.match(lines[index]):
            nowrap = nowrap or ":nowrap:" in lines[index]
            index += 1
        body: list[str] = []
        while index < len(lines) and (
            not lines[index].strip() or len(lines[index]) - len(lines[index].lstrip()) > indent
        ):
            body.append(lines[index])
            index += 1
        equations = [inline] if inline else []
        block = textwrap.dedent("\n".join(body)).strip("\n")
        if nowrap:
            equations = [block] if block.strip() else []
            out.extend(["", *equations, ""])
            continue
        equations += [part.strip("\n") for part in re.split(r"\n\s*\n", block) if part.strip()]
        for equation in equations:
            out.extend(
                ["", " " * indent + "\\[", textwrap.indent(equation, " " * indent), " " * indent + "\\]"]
            )
        out.append("")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")


def package_root(name: str) -> Path | None:
    """The folder of the installed package ``name``, or ``None``."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_python_files(root: Path) -> list[Path]:
    """The package's ``.py`` files outside test and benchmark folders, sorted."""
    return sorted(
        path
        for path in root.rglob("*.py")
        if not EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1])
    )


def math_strings(source: str) -> list[str]:
    """String literals of a module (docstrings and others) that hold RST math, cleaned of indentation."""
    if not any(marker in source for marker in _MATH_MARKERS):
        return []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    strings = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and len(node.value) >= MIN_STRING_CHARS
        ):
            if any(marker in node.value for marker in _MATH_MARKERS):
                strings.append(inspect.cleandoc(node.value))
    return strings


def _has_math(chunk: str) -> bool:
    return "$" in chunk or "\\[" in chunk or "\\begin{" in chunk


def iter_docstring_latex_documents(rng: random.Random) -> Iterator[Document]:
    """Chunks holding math, of the math strings of each package; files in an order drawn from ``rng``.

    Packages take turns file by file, so a character budget samples each of them.
    """
    queues = []
    for name in LATEX_PACKAGES:
        root = package_root(name)
        if root is not None:
            files = package_python_files(root)
            rng.shuffle(files)
            queues.append((root, files))
    position = 0
    while any(position < len(files) for _, files in queues):
        for root, files in queues:
            if position >= len(files):
                continue
            path = files[position]
            try:
                source = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            relative = path.relative_to(root.parent).as_posix()
            for string in math_strings(source):
                for chunk in split_paragraphs(rst_math_to_latex(string), TARGET_CHUNK_CHARS):
                    if _has_math(chunk):
                        yield Document(
                            text=chunk, domain="math", language="latex", source=f"docstrings:{relative}"
                        )
        position += 1


DOCSTRING_LATEX_SOURCE = DomainSource(
    domain="math",
    description="LaTeX formulas written in the docstrings of sympy and scipy (RST math as $...$ / \\[...\\]).",
    iter_documents=iter_docstring_latex_documents,
    packages=LATEX_PACKAGES,
)
