"""Explainers: ``explainer(record) -> Explanation``, one contract for every way of labeling an expert.

- :class:`DissectionExplainer` (the offline default, no language model): the best candidate label
  of :mod:`tl_moe.explain.labels` (a token-level concept, a token set, or a composition), chosen by
  balanced accuracy on the ``explain``-split documents; the explanation also lists the runner-up
  candidates, the routed tokens most over-represented on the explain side, and the expert's
  logit-lens tokens.
- :class:`TokenSetBaseline`: the expert's most over-represented routed tokens (the baseline).
- :class:`LMExplainer`: a chat model (any :class:`~tl_moe.explain.clients.ChatClient`) reads the
  expert's marked top contexts and logit-lens tokens and answers with one short label.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tl_moe.data.concepts import KNOWN_CONCEPTS
from tl_moe.explain.clients import ChatClient
from tl_moe.explain.examples import SPLITS, ExpertExamples, ExpertRecord
from tl_moe.explain.labels import KINDS, LabelRule, choose_label, token_set_baseline

__all__ = [
    "DissectionExplainer",
    "Explainer",
    "Explanation",
    "LMExplainer",
    "TokenSetBaseline",
    "parse_label",
    "rule_explanation",
]


@dataclass(frozen=True)
class Explanation:
    """A label of one expert.

    Attributes:
        layer, expert: which expert.
        label: the label in words ("" when it failed).
        concept: for a concept label, the concept's name (its own labeler can score it offline).
        domain: for a concept ∧ domain conjunction, the domain.
        details: what the explainer saw or computed (IoU, over-represented tokens, raw answer, ...).
        error: why it failed (a malformed answer, a request that failed), else None.
        rule: for an offline label, the rule that says yes or no per token (what the concept scorer
            applies); None for a label in words only.
    """

    layer: int
    expert: int
    label: str
    concept: str | None = None
    domain: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    rule: LabelRule | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.label)


class Explainer(Protocol):
    """``explainer(record) -> Explanation``; ``name`` identifies it in results."""

    name: str

    def __call__(self, record: ExpertRecord) -> Explanation: ...


def _concept_words(concept: str) -> str:
    description = KNOWN_CONCEPTS[concept].description if concept in KNOWN_CONCEPTS else concept
    return description[0].lower() + description[1:] if description else concept


class DissectionExplainer:
    """Offline labels (no LM): the best candidate label of :mod:`tl_moe.explain.labels` — a token-level
    concept, a token set, or a composition — chosen on the ``explain`` side by balanced accuracy.

    Args:
        examples: the collected :class:`~tl_moe.explain.examples.ExpertExamples`.
        min_routed: experts with fewer routed explain-split tokens get no label.
        kinds: the kinds of candidate labels (default: all; ``("concept",)`` for concept labels only,
            which the causal checks can test).
    """

    name = "offline"

    def __init__(
        self, examples: ExpertExamples, *, min_routed: int = 5, kinds: Sequence[str] = KINDS
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds:
            raise ValueError(f"kinds must be among {', '.join(KINDS)}; got {list(kinds)}.")
        self.examples, self.min_routed, self.kinds = examples, min_routed, tuple(kinds)
        self.routed_any = examples.routed_total[SPLITS.index("explain")].sum(-1)  # [L, E]

    def __call__(self, record: ExpertRecord) -> Explanation:
        ex = self.examples
        row = ex.layer_row(record.layer)
        routed = int(self.routed_any[row, record.expert])
        if routed < self.min_routed:
            return Explanation(record.layer, record.expert, "", error=f"too few routed tokens ({routed})")
        return rule_explanation(record, ex.concept_names, ex.domain_names, self.kinds)


def rule_explanation(
    record: ExpertRecord, concept_names: Sequence[str], domains: Sequence[str], kinds: Sequence[str] = KINDS
) -> Explanation:
    """The :class:`Explanation` of the label :func:`~tl_moe.explain.labels.choose_label` picks among
    the candidates of ``kinds``."""
    rule, details = choose_label(record, concept_names, domains, kinds)
    details = {
        **details,
        "over_represented": over_represented_tokens(record),
        "logit_lens": list(record.lens_tokens),
    }
    if rule is None:
        return Explanation(record.layer, record.expert, "", details=details, error=details["reason"])
    concept = rule.concepts[0] if rule.kind in ("concept", "concept_and_domain") else None
    description = ", ".join(_concept_words(c) for c in rule.concepts) or rule.label
    details = {**details, "kind": rule.kind, "description": description, "rule": rule.to_dict()}
    return Explanation(record.layer, record.expert, rule.label, concept=concept, domain=rule.domain,
                       details=details, rule=rule)  # fmt: skip


class TokenSetBaseline:
    """The baseline the chosen labels are compared with: the labeler's own best token set alone, chosen
    on the explain documents by balanced accuracy (see :func:`~tl_moe.explain.labels.token_set_baseline`)."""

    name = "token-set baseline"

    def __call__(self, record: ExpertRecord) -> Explanation:
        rule = token_set_baseline(record)
        if rule is None:
            return Explanation(
                record.layer,
                record.expert,
                "",
                error="no token over-represented on the routed explain-side positions",
            )
        return Explanation(record.layer, record.expert, rule.label, rule=rule)


def over_represented_tokens(record: ExpertRecord, n: int = 8) -> list[str]:
    """The routed tokens of the explanation contexts most over-represented against the explain-side
    negatives' tokens (add-one smoothed log ratio of frequencies)."""
    import math

    routed = Counter(t for c in record.explanation for t, m in zip(c.tokens, c.marks, strict=True) if m)
    background = Counter(t for c in record.explain_negatives for t in c.tokens)
    n_routed, n_background = sum(routed.values()) or 1, sum(background.values()) or 1
    vocabulary = len(set(routed) | set(background)) or 1
    score = {
        t: math.log((routed[t] + 1) / (n_routed + vocabulary))
        - math.log((background[t] + 1) / (n_background + vocabulary))
        for t in routed
    }
    return sorted(score, key=lambda t: (-score[t], t))[:n]


EXPLAIN_SYSTEM = (
    "You explain what a component of a language model responds to. In each excerpt the token it is "
    "active on is wrapped in << >>. Reply with one short label (2 to 8 words) naming what the marked "
    "tokens have in common, on one line, and nothing else."
)

# Worked examples shown before the expert's excerpts (chat turns): a small chat model copies their
# format, one short label line. Three different labels, so that none of them is copied as the answer.
# (question, its logit-lens line, answer); the lens line is shown when the expert's own is.
EXPLAIN_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    (
        "Marked tokens: ' if', ' when', ' unless'\n"
        "Excerpt 1: 'return x<< if>> y else'\nExcerpt 2: 'do it<< when>> ready'\nExcerpt 3: 'stop<< unless>> told'",
        "' then', ' else', ':'",
        "conditional words",
    ),
    (
        "Marked tokens: '3', '42', '7'\nExcerpt 1: 'page <<3>> of'\nExcerpt 2: 'has <<42>> items'\nExcerpt 3: 'x = <<7>>;'",
        "'0', '5', '%'",
        "numbers",
    ),
    (
        "Marked tokens: ' Paris', ' London', ' Rome'\n"
        "Excerpt 1: 'flew to<< Paris>> on'\nExcerpt 2: 'in<< London>>,'\nExcerpt 3: 'visit<< Rome>> in'",
        "' France', ' city', ','",
        "city names",
    ),
)
_LENS_LINE = "Tokens the component promotes in the output: "


def explain_prompt(
    record: ExpertRecord,
    n_contexts: int = 20,
    *,
    mark: str = "target",
    examples: bool = True,
    lens: bool = True,
) -> list[dict[str, str]]:
    """The chat of an explanation request: system prompt, worked examples (``examples``), then the
    expert's first ``n_contexts`` explanation contexts, each with its target token marked
    (``mark="target"``) or every token routed to the expert (``mark="routed"``), a line listing the
    targets, and the expert's logit-lens tokens (``lens``, when the record has them)."""
    if mark not in ("target", "routed"):
        raise ValueError(f"mark must be 'target' or 'routed', got {mark!r}.")
    contexts = record.explanation[:n_contexts]
    lines = ["Marked tokens: " + ", ".join(repr(c.tokens[c.target]) for c in contexts)]
    for i, c in enumerate(contexts):
        shown = c if mark == "routed" else c.with_marks([j == c.target for j in range(len(c.tokens))])
        lines.append(f"Excerpt {i + 1}: {shown.text()!r}")
    show_lens = lens and bool(record.lens_tokens)
    if show_lens:
        lines.append(_LENS_LINE + ", ".join(repr(t) for t in record.lens_tokens))
    messages = [{"role": "system", "content": EXPLAIN_SYSTEM}]
    for question, lens_line, answer in EXPLAIN_EXAMPLES if examples else ():
        question += f"\n{_LENS_LINE}{lens_line}" if show_lens else ""
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": "\n".join(lines)}]


# An answer that declines or hedges instead of naming something is not a label.
_REFUSAL = re.compile(
    r"^(i\s+(am|cannot|can't|don't|do not|could|would|think)\b|i'm\b|sorry\b|as an ai\b|unfortunately\b"
    r"|there is no\b|no (clear |obvious )?pattern\b)",
    re.I,
)
_MAX_LINE_WORDS = 12  # a bare first line longer than this is prose, not a label


def parse_label(answer: str) -> str:
    """The label of an explainer's answer.

    Accepted, in this order: JSON ``{"label": ...}``; a ``Label: ...`` line; else the answer's first
    non-empty line when it reads as a label (at most 12 words after stripping quotes, markdown and a
    final period; not an echoed excerpt with ``<< >>`` marks, nor a line ending in a colon; not a
    refusal such as "I am not sure").
    Raises ValueError on a malformed answer.
    """
    text = answer.strip()
    label, structured = None, False
    match = re.search(r"\{.*\}", text, flags=re.S)
    if match:
        try:
            value = json.loads(match.group(0))
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            label, structured = value.get("label"), True
    if not structured:
        found = re.search(r"(?im)^\s*\**label\**\s*[:=]\s*(.+)$", text)
        label, structured = (found.group(1), True) if found else (None, False)
    limit = 20
    if not structured:
        lines = [line for line in text.splitlines() if line.strip()]
        label, limit = (lines[0] if lines else None), _MAX_LINE_WORDS
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"malformed answer (no label): {answer[:200]!r}")
    label = _clean(label)
    if not label or "<<" in label or ">>" in label or label.endswith(":"):
        raise ValueError(f"malformed answer (an excerpt, not a label): {answer[:200]!r}")
    if _REFUSAL.match(label):
        raise ValueError(f"malformed answer (no label given): {answer[:200]!r}")
    if not 1 <= len(label.split()) <= limit:
        raise ValueError(f"malformed answer (label of {len(label.split())} words): {answer[:200]!r}")
    return label


def _clean(label: str) -> str:
    label = label.strip().strip("*_`").strip()
    label = re.sub(r"^(-|\d+[.)])\s+", "", label)  # a list bullet
    label = label.strip().strip("\"'`").strip()
    return label[:-1].rstrip() if label.endswith(".") and not label.endswith("..") else label


class LMExplainer:
    """Labels an expert by asking a chat model about its marked top contexts and logit-lens tokens.

    Args:
        client: the chat model.
        n_contexts: explanation contexts shown (top first).
        max_tokens: cap on the answer (one label line needs few).
        mark: ``target`` marks each context's target token; ``routed`` every token routed to the expert.
        examples: show the worked examples first (small chat models need them to answer in form).
        lens: show the expert's logit-lens tokens (a small model may copy that line instead of naming
            what the marked tokens share).
    """

    def __init__(
        self,
        client: ChatClient,
        *,
        n_contexts: int = 20,
        max_tokens: int = 32,
        mark: str = "target",
        examples: bool = True,
        lens: bool = True,
    ) -> None:
        if mark not in ("target", "routed"):
            raise ValueError(f"mark must be 'target' or 'routed', got {mark!r}.")
        self.client, self.n_contexts, self.max_tokens = client, n_contexts, max_tokens
        self.mark, self.examples, self.lens = mark, examples, lens

    @property
    def name(self) -> str:
        return self.client.name

    def __call__(self, record: ExpertRecord) -> Explanation:
        try:
            messages = explain_prompt(
                record, self.n_contexts, mark=self.mark, examples=self.examples, lens=self.lens
            )
            answer = self.client.complete(messages, max_tokens=self.max_tokens)
        except Exception as error:  # a failed request is a recorded failure, never fatal
            return Explanation(
                record.layer, record.expert, "", error=f"request failed: {type(error).__name__}: {error}"
            )
        try:
            label = parse_label(answer)
            shown = messages[-1]["content"].lower()
            if len(label.split()) >= 3 and (
                label.lower() in shown or any(label in c.text(mark=False) for c in record.explanation)
            ):
                raise ValueError(f"malformed answer (the prompt echoed, not a label): {answer[:200]!r}")
        except ValueError as error:
            return Explanation(record.layer, record.expert, "", details={"answer": answer}, error=str(error))
        return Explanation(record.layer, record.expert, label, details={"answer": answer})
