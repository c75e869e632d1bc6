"""Synthetic mathematical prose with LaTeX printed by sympy's ``latex()`` from random expressions.

Each document is a few sentences of mathematical prose, each holding a formula in inline
(``$...$``, ``\\(...\\)``) or display (``$$...$$``, ``\\[...\\]``, ``equation`` environment) math:
expressions, equations, fractions, derivatives, integrals, sums, products, limits and matrices.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import sympy

SYMBOL_NAMES = ("x", "y", "z", "t", "a", "b", "c", "alpha", "beta", "theta", "omega", "lambda", "mu", "sigma")
_SYMBOLS = [sympy.Symbol(name) for name in SYMBOL_NAMES]
_X, _N, _K = sympy.Symbol("x"), sympy.Symbol("n", integer=True), sympy.Symbol("k", integer=True)
_FUNCTIONS: tuple[Callable[[sympy.Expr], sympy.Expr], ...] = (
    sympy.sin,
    sympy.cos,
    sympy.tan,
    sympy.exp,
    sympy.log,
    sympy.sqrt,
)


def random_expression(rng: random.Random, depth: int = 3, variable: sympy.Symbol | None = None) -> sympy.Expr:
    """A random sympy expression of nesting depth at most ``depth`` (mostly in ``variable`` if given)."""
    if depth <= 0 or rng.random() < 0.2:
        roll = rng.random()
        if roll < 0.55:
            return variable if variable is not None and rng.random() < 0.6 else rng.choice(_SYMBOLS)
        if roll < 0.85:
            return sympy.Integer(rng.randint(1, 12))
        return sympy.Rational(rng.randint(1, 9), rng.randint(2, 9))
    kind = rng.choice(("add", "add", "mul", "pow", "function", "fraction"))
    child = lambda: random_expression(rng, depth - 1, variable)  # noqa: E731
    if kind == "add":
        return sympy.Add(*[child() for _ in range(rng.randint(2, 3))])
    if kind == "mul":
        return sympy.Mul(child(), child())
    if kind == "pow":
        exponent = rng.choice(
            [sympy.Integer(rng.randint(2, 4)), sympy.Rational(1, rng.randint(2, 3))] + _SYMBOLS[:3]
        )
        return sympy.Pow(child(), exponent)
    if kind == "function":
        return rng.choice(_FUNCTIONS)(child())
    return child() / (child() + rng.randint(1, 5))


def _formula(rng: random.Random) -> tuple[str, str]:
    """A (clause template, latex) pair; the lower-case clause has one ``{math}`` slot."""
    expression = random_expression(rng, variable=_X)
    other = random_expression(rng, depth=2, variable=_X)
    kind = rng.randrange(9)
    if kind == 0:
        return "we set {math} for every real $x$", f"f(x) = {sympy.latex(expression)}"
    if kind == 1:
        derivative = sympy.diff(expression, _X)
        return "differentiating gives {math}", f"\\frac{{d}}{{dx}} f(x) = {sympy.latex(derivative)}"
    if kind == 2:
        return "the equation {math} has a solution", sympy.latex(sympy.Eq(expression, other, evaluate=False))
    if kind == 3:
        lower, upper = rng.randint(0, 2), rng.choice([rng.randint(3, 9), sympy.oo])
        return "the integral {math} is finite", sympy.latex(sympy.Integral(expression, (_X, lower, upper)))
    if kind == 4:
        term = random_expression(rng, depth=2, variable=_K)
        upper = rng.choice([_N, sympy.oo, sympy.Integer(rng.randint(5, 20))])
        operator = sympy.Sum if rng.random() < 0.75 else sympy.Product
        return "summing over $k$ gives {math}", sympy.latex(operator(term, (_K, 1, upper)))
    if kind == 5:
        size = rng.randint(2, 3)
        matrix = sympy.Matrix(size, size, lambda i, j: random_expression(rng, depth=1))
        return "the matrix {math} acts on the basis vectors", f"A = {sympy.latex(matrix)}"
    if kind == 6:
        limit = sympy.Limit(expression / (other + 1), _X, rng.choice([0, sympy.oo]))
        return "in the limit we get {math}", sympy.latex(limit)
    if kind == 7:
        inequality = rng.choice([sympy.Lt, sympy.Le, sympy.Gt, sympy.Ge])(expression, other, evaluate=False)
        return "{math} holds", sympy.latex(inequality)
    return "{math} by the previous step", sympy.latex(sympy.Eq(_X, expression / other, evaluate=False))


def _wrap_math(latex: str, rng: random.Random) -> str:
    """``latex`` in one of the inline or display math delimiters."""
    style = rng.randrange(5)
    if style == 0:
        return f"${latex}$"
    if style == 1:
        return f"\\({latex}\\)"
    if style == 2:
        return f"\n$${latex}$$\n"
    if style == 3:
        return f"\n\\[{latex}\\]\n"
    return f"\n\\begin{{equation}}\n{latex}\n\\end{{equation}}\n"


_OPENINGS = (
    "Hence ",
    "Therefore ",
    "Recall that ",
    "It follows that ",
    "Note that ",
    "Moreover, ",
    "Suppose that ",
)


def math_document(rng: random.Random) -> str:
    """A short paragraph of mathematical prose holding three to six formulas."""
    sentences = []
    for _ in range(rng.randint(3, 6)):
        template, latex = _formula(rng)
        sentence = rng.choice(_OPENINGS) + template.format(math=_wrap_math(latex, rng)).rstrip() + "."
        sentences.append(sentence)
    return " ".join(sentences).replace(" \n", "\n").replace("\n ", "\n")
