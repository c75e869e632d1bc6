"""Offline candidate labels, each a rule that says yes or no for one token, and their choice.

A :class:`LabelRule` is one of:

- ``concept``: a token-level concept of the concept library (document-level concepts such as
  ``domain_*`` or ``language_*`` say nothing about a token, so they are context, never a label);
- ``tokens``: a set of token texts ("tokens ` PyObject`, ` Py`, `Call`");
- ``concept_and_tokens``: a concept, among a set of token texts;
- ``concept_or_tokens``: a concept, or one of a set of token texts;
- ``concept_or_concept``: either of two concepts;
- ``concept_and_domain``: a concept, in documents of one domain.

:func:`choose_label` scores every candidate on the ``explain``-side items of an expert (every
position of its explanation contexts and of its explain-split negatives, labeled by whether the
expert was routed there) by balanced accuracy — the metric the scores are reported in — and keeps
the best *simple* label (a concept or a token set) unless a composition beats it by
:data:`RICHER_LABEL_MARGIN`. Token sets are chosen exactly: the balanced accuracy of a set is
``0.5 + Σ_t (P(t | routed) − P(t | not routed)) / 2``, additive over tokens, so the best set of at
most :data:`MAX_TOKENS` tokens holds the tokens with the largest positive differences (tokens seen
fewer than :data:`MIN_TOKEN_COUNT` times on routed positions are left out). A candidate that never
says yes on the explain side cannot be scored per token and is never chosen; an expert none of
whose candidates beats balanced accuracy 0.5 gets no label.

:func:`token_set_baseline` is the baseline the chosen labels are compared with: the labeler's own
token-set candidate alone (the balanced-accuracy-optimal set of at most ``MAX_TOKENS`` tokens on the
explain side), so that the comparison measures what choosing among concepts and compositions adds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from jaxtyping import Bool

from tl_moe.data.concepts import KNOWN_CONCEPTS
from tl_moe.explain.examples import _BITS, Context, ExpertRecord

__all__ = [
    "MAX_TOKENS",
    "MIN_TOKEN_COUNT",
    "RICHER_LABEL_MARGIN",
    "KINDS",
    "ExplainItems",
    "LabelRule",
    "choose_label",
    "described_by",
    "explain_items",
    "token_level_concepts",
    "token_set_baseline",
]

RICHER_LABEL_MARGIN = 0.02
"""A composition (two parts) replaces the best simple label (one concept or one token set) only when
its explain-side balanced accuracy is higher by more than this."""

MAX_TOKENS = 16
"""Most token texts in a token-set label (and in the token-set baseline)."""

MIN_TOKEN_COUNT = 2
"""A token enters a token-set label only if it is seen at least this often on routed explain positions."""

TOP_CONCEPTS = 6
"""Concepts (best first on the explain side) that enter compositions."""

SIMPLE_KINDS = ("concept", "tokens")


def _quote(token: str) -> str:
    return "`" + token.replace("\n", "\\n") + "`"


@dataclass(frozen=True)
class LabelRule:
    """A label that answers yes or no for one token (see the module docstring for the kinds).

    Attributes:
        kind: ``concept``, ``tokens``, ``concept_and_tokens``, ``concept_or_tokens``,
            ``concept_or_concept`` or ``concept_and_domain``.
        concepts: the concept names the rule uses (none for ``tokens``).
        tokens: the token texts of a token set, best first.
        weights: each token's explain-side P(t | routed) − P(t | not routed): the graded answer.
        domain: the domain of a ``concept_and_domain`` rule.
    """

    kind: str
    concepts: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    domain: str | None = None

    @property
    def parts(self) -> int:
        """1 for a simple label, 2 for a composition."""
        return 1 if self.kind in SIMPLE_KINDS else 2

    @property
    def label(self) -> str:
        tokens = "tokens " + ", ".join(_quote(t) for t in self.tokens)
        return {
            "concept": lambda: self.concepts[0],
            "tokens": lambda: tokens,
            "concept_and_tokens": lambda: f"{self.concepts[0]} ∧ {tokens}",
            "concept_or_tokens": lambda: f"{self.concepts[0]} ∨ {tokens}",
            "concept_or_concept": lambda: f"{self.concepts[0]} ∨ {self.concepts[1]}",
            "concept_and_domain": lambda: f"{self.concepts[0]} ∧ domain={self.domain}",
        }[self.kind]()

    @property
    def graded(self) -> bool:
        """Whether the rule gives a graded answer (token sets: each token's weight)."""
        return self.kind in ("tokens", "concept_and_tokens", "concept_or_tokens")

    def answer(self, context: Context, concept_index: dict[str, int], position: int | None = None) -> float:
        """The rule's answer for the token at ``position`` (default: the target): 0 for no, else 1 or,
        for a token-set rule, the token's weight (> 0)."""
        i = context.target if position is None else position
        has = [context.has(concept_index[c], i) if c in concept_index else False for c in self.concepts]
        if self.kind == "concept":
            return float(has[0])
        if self.kind == "concept_or_concept":
            return float(has[0] or has[1])
        if self.kind == "concept_and_domain":
            return float(has[0] and context.domain == self.domain)
        if self.kind == "concept_and_tokens" and not has[0]:
            return 0.0
        if self.kind == "concept_or_tokens" and has[0]:
            return 1.0
        weight = dict(zip(self.tokens, self.weights, strict=True)).get(context.tokens[i], 0.0)
        return max(float(weight), 1e-9) if context.tokens[i] in self.tokens else 0.0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "concepts": list(self.concepts), "tokens": list(self.tokens),
                "weights": [round(w, 4) for w in self.weights], "domain": self.domain}  # fmt: skip


def token_level_concepts(concept_names: Sequence[str]) -> list[int]:
    """Indices of the concepts that can label a token (document-level concepts left out)."""
    keep = []
    for i, name in enumerate(concept_names):
        known = KNOWN_CONCEPTS.get(name)
        document_level = (
            known.document_field is not None if known else name.startswith(("domain_", "language_"))
        )
        if not document_level:
            keep.append(i)
    return keep


@dataclass(frozen=True)
class ExplainItems:
    """The explain-side positions of one expert: every position of its explanation contexts and of
    its explain-split negatives.

    Attributes:
        tokens: each position's token text.
        concepts: ``[item, concept]`` whether each position is positive for each concept.
        domains: each position's document domain.
        routed: whether the expert was routed at each position.
    """

    tokens: tuple[str, ...]
    concepts: Bool[np.ndarray, "item concept"]
    domains: np.ndarray
    routed: Bool[np.ndarray, " item"]

    @cached_property
    def token_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct tokens, each position's index into them): see :func:`_token_codes`."""
        return _token_codes(self.tokens)

    @cached_property
    def token_index(self) -> dict[str, int]:
        """Each distinct token's index in ``token_codes[0]``."""
        return {token: i for i, token in enumerate(self.token_codes[0].tolist())}

    def has_token(self, tokens: Sequence[str]) -> Bool[np.ndarray, " item"]:
        """Whether each position's token is one of ``tokens``."""
        wanted = np.zeros(len(self.token_index), bool)
        wanted[[self.token_index[t] for t in tokens if t in self.token_index]] = True
        return wanted[self.token_codes[1]]


def explain_items(record: ExpertRecord, n_concepts: int) -> ExplainItems:
    """Every position of ``record``'s explanation contexts and explain negatives, with its routing."""
    tokens, concepts, domains, routed = [], [], [], []
    for context in (*record.explanation, *record.explain_negatives):
        tokens += context.tokens
        concepts.append(_unpack(context.concept_words, n_concepts))
        domains += [context.domain] * len(context.tokens)
        routed += context.marks
    return ExplainItems(
        tuple(tokens),
        np.concatenate(concepts) if concepts else np.zeros((0, n_concepts), bool),
        np.asarray(domains, object),
        np.asarray(routed, bool),
    )


def _unpack(words: Sequence[Sequence[int]], n_concepts: int) -> Bool[np.ndarray, "position concept"]:
    """Concept bits packed as by :meth:`Context.has` (``_BITS`` per int64 word) -> ``[position, concept]``."""
    packed = np.asarray(words, np.int64).reshape(len(words), -1)
    bits = (packed[:, :, None] >> np.arange(_BITS, dtype=np.int64)) & 1
    return bits.reshape(len(words), -1)[:, :n_concepts].astype(bool)


def _balanced_accuracy(predicted: np.ndarray, routed: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each column of ``predicted`` ``[item, candidate]`` against ``routed``."""
    tpr = predicted[routed].mean(0)
    fpr = predicted[~routed].mean(0)
    return 0.5 + (tpr - fpr) / 2


def _token_codes(tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(distinct tokens, each position's index into them): counting by code is what makes the token-set
    search cheap (it runs several times per expert)."""
    return np.unique(np.asarray(tokens, dtype=object), return_inverse=True)


def _token_set(
    tokens: Sequence[str],
    routed: np.ndarray,
    mask: np.ndarray | None = None,
    codes: tuple[np.ndarray, np.ndarray] | None = None,
    max_tokens: int = MAX_TOKENS,
) -> LabelRule | None:
    """The best token set (at most ``max_tokens``) on the positions of ``mask``, by balanced accuracy over
    all positions (see the module docstring); None when no token helps. ``codes``: :func:`_token_codes`
    of ``tokens``, when the caller has them."""
    n_pos, n_neg = int(routed.sum()), int((~routed).sum())
    keep = np.ones(len(tokens), bool) if mask is None else np.asarray(mask, bool)
    distinct, code = codes if codes is not None else _token_codes(tokens)
    on = np.bincount(code[routed & keep], minlength=len(distinct))
    off = np.bincount(code[~routed & keep], minlength=len(distinct))
    gain = {
        str(distinct[i]): on[i] / n_pos - off[i] / max(n_neg, 1)
        for i in np.flatnonzero(on >= max(MIN_TOKEN_COUNT, 1))
    }
    best = sorted((t for t in gain if gain[t] > 0), key=lambda t: (-gain[t], t))[:max_tokens]
    if not best:
        return None
    return LabelRule("tokens", tokens=tuple(best), weights=tuple(float(gain[t]) for t in best))


def described_by(
    rule: LabelRule, items: ExplainItems, concept_index: dict[str, int]
) -> Bool[np.ndarray, " item"]:
    """Whether ``rule`` describes each position of ``items`` (its yes / no answer, ungraded; a concept
    missing from ``concept_index`` says no)."""
    m, n = items.concepts, len(items.tokens)

    def concept(c: str) -> np.ndarray:
        return m[:, concept_index[c]] if c in concept_index else np.zeros(n, bool)

    def tokens() -> np.ndarray:
        return items.has_token(rule.tokens)

    column = {
        "concept": lambda: concept(rule.concepts[0]),
        "concept_or_concept": lambda: concept(rule.concepts[0]) | concept(rule.concepts[1]),
        "concept_and_domain": lambda: concept(rule.concepts[0]) & (np.asarray(items.domains, object) == rule.domain),
        "tokens": tokens,
        "concept_and_tokens": lambda: concept(rule.concepts[0]) & tokens(),
        "concept_or_tokens": lambda: concept(rule.concepts[0]) | tokens(),
    }[rule.kind]()  # fmt: skip
    return np.asarray(column, bool).reshape(n)


def _evaluate(rule: LabelRule, items: ExplainItems, concept_index: dict[str, int]) -> float:
    column = described_by(rule, items, concept_index)
    if not column.any():
        return float("nan")  # never says yes: cannot be scored per token
    return float(_balanced_accuracy(column[:, None], items.routed)[0])


def _evaluate_all(
    rules: Sequence[LabelRule], items: ExplainItems, concept_index: dict[str, int]
) -> list[float]:
    """:func:`_evaluate` of every rule at once (one matrix of answers; the same numbers: each column's
    rates are exact counts over the same positions)."""
    if not rules:
        return []
    columns = np.stack([described_by(rule, items, concept_index) for rule in rules], 1)
    scores = _balanced_accuracy(columns, items.routed)
    return [
        float(score) if said else float("nan") for score, said in zip(scores, columns.any(0), strict=True)
    ]


def candidates(items: ExplainItems, concept_names: Sequence[str], domains: Sequence[str]) -> list[LabelRule]:
    """Every candidate label of one expert (simple ones first, concepts before token sets)."""
    usable = token_level_concepts(concept_names)
    out: list[LabelRule] = []
    if usable:
        scores = _balanced_accuracy(items.concepts[:, usable], items.routed)
        order = [usable[i] for i in np.argsort(-np.nan_to_num(scores, nan=0.0), kind="stable")]
        out += [LabelRule("concept", (concept_names[c],)) for c in usable]
        top = order[:TOP_CONCEPTS]
    else:
        top = []
    codes = items.token_codes
    tokens = _token_set(items.tokens, items.routed, codes=codes)
    if tokens is not None:
        out.append(tokens)
    for c in top[:3]:
        inside = _token_set(items.tokens, items.routed, items.concepts[:, c], codes=codes)
        if inside is not None:
            out.append(LabelRule("concept_and_tokens", (concept_names[c],), inside.tokens, inside.weights))
        outside = _token_set(items.tokens, items.routed, ~items.concepts[:, c], codes=codes)
        if outside is not None:
            out.append(LabelRule("concept_or_tokens", (concept_names[c],), outside.tokens, outside.weights))
    for a, b in itertools.combinations(top, 2):
        out.append(LabelRule("concept_or_concept", (concept_names[a], concept_names[b])))
    for c in top:
        for domain in domains:
            out.append(LabelRule("concept_and_domain", (concept_names[c],), domain=domain))
    return out


KINDS = (
    "concept",
    "tokens",
    "concept_and_tokens",
    "concept_or_tokens",
    "concept_or_concept",
    "concept_and_domain",
)
"""Every kind of candidate label, simple ones first."""


def choose_label(
    record: ExpertRecord,
    concept_names: Sequence[str],
    domains: Sequence[str],
    kinds: Sequence[str] = KINDS,
) -> tuple[LabelRule | None, dict]:
    """The label of one expert and what it was chosen from (see the module docstring), among the
    candidates of ``kinds``.

    Returns (the rule, or None when no candidate beats 0.5 on the explain side; details: the chosen
    and runner-up candidates with their explain-side balanced accuracy).
    """
    items = explain_items(record, len(concept_names))
    if not items.routed.any() or items.routed.all():
        return None, {"reason": "no routed and not-routed positions on the explain side"}
    index = {name: i for i, name in enumerate(concept_names)}
    rules = candidates(items, concept_names, domains)
    scored = list(zip(rules, _evaluate_all(rules, items, index), strict=True))
    scored = [(rule, ba) for rule, ba in scored if np.isfinite(ba) and rule.kind in kinds]
    simple = [s for s in scored if s[0].parts == 1]
    rich = [s for s in scored if s[0].parts > 1]
    best_simple = max(simple, key=lambda s: s[1], default=None)  # first of ties: concepts before tokens
    best_rich = max(rich, key=lambda s: s[1], default=None)
    chosen = best_simple
    if best_rich is not None and (best_simple is None or best_rich[1] > best_simple[1] + RICHER_LABEL_MARGIN):
        chosen = best_rich
    ranked = sorted(scored, key=lambda s: -s[1])[:4]
    details = {
        "explain_balanced_accuracy": None if chosen is None else round(chosen[1], 4),
        "runner_up": [(rule.label, round(ba, 4)) for rule, ba in ranked if chosen is None or rule != chosen[0]][:3],
        "n_explain_positions": len(items.tokens),
        "n_explain_routed": int(items.routed.sum()),
    }  # fmt: skip
    if chosen is None or chosen[1] <= 0.5:
        return None, {
            **details,
            "reason": "no candidate label beats balanced accuracy 0.5 on the explain side",
        }
    return chosen[0], details


def token_set_baseline(record: ExpertRecord, n: int = MAX_TOKENS) -> LabelRule | None:
    """The labeler's own token-set candidate alone: the set of at most ``n`` tokens with the highest
    explain-side balanced accuracy (the same positions, metric and exact choice as :func:`choose_label`'s
    token sets); None when no token is over-represented on the routed positions."""
    tokens: list[str] = []
    routed: list[bool] = []
    for context in (*record.explanation, *record.explain_negatives):
        tokens += context.tokens
        routed += context.marks
    marks = np.asarray(routed, bool)
    if not marks.any() or marks.all():
        return None
    return _token_set(tokens, marks, max_tokens=n)
