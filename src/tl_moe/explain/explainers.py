"""Explainers: ``explainer(record) -> Explanation``, one contract for every way of labeling an expert.

- :class:`DissectionExplainer` (the offline default, no language model): network dissection on the
  expert's routed tokens. Among the concepts of the concept library, and every concept ∧ domain
  conjunction, the one whose positive tokens best match the tokens routed to the expert (highest
  IoU = |routed ∩ concept| / |routed ∪ concept| over the ``explain``-split documents) is the label;
  the explanation also lists the routed tokens most over-represented against the corpus, and the
  expert's logit-lens tokens.
- :class:`LMExplainer`: a chat model (any :class:`~tl_moe.explain.clients.ChatClient`) reads the
  expert's marked top contexts and logit-lens tokens and answers with one short label.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tl_moe.data.concepts import KNOWN_CONCEPTS
from tl_moe.explain.clients import ChatClient
from tl_moe.explain.examples import SPLITS, ExpertExamples, ExpertRecord

__all__ = ["DissectionExplainer", "Explainer", "Explanation", "LMExplainer", "parse_label"]


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
    """

    layer: int
    expert: int
    label: str
    concept: str | None = None
    domain: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

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
    """Network dissection of each expert's routed tokens against the concept library (no LM).

    Args:
        examples: the collected :class:`~tl_moe.explain.examples.ExpertExamples` (its dissection counts).
        conjunctions: also consider concept ∧ domain labels.
        conjunction_gain: a conjunction is chosen only when its IoU beats the best plain concept's
            by this factor (prefer the simpler label).
        min_routed: experts with fewer routed explain-split tokens get no label.
    """

    name = "offline"

    def __init__(
        self,
        examples: ExpertExamples,
        *,
        conjunctions: bool = True,
        conjunction_gain: float = 1.1,
        min_routed: int = 5,
    ) -> None:
        self.examples = examples
        self.conjunctions, self.conjunction_gain, self.min_routed = conjunctions, conjunction_gain, min_routed
        s = SPLITS.index("explain")
        inter = examples.routed_concept[s]  # [L, E, C, D]
        routed = examples.routed_total[s]  # [L, E, D]
        positives = examples.concept_total[s]  # [C, D]
        inter_any = inter.sum(-1)
        routed_any = routed.sum(-1)  # [L, E]
        union_any = routed_any[..., None] + positives.sum(-1) - inter_any
        self.iou = torch.where(union_any > 0, inter_any / union_any.clamp(min=1e-12), 0.0)  # [L, E, C]
        union_and = routed_any[..., None, None] + positives - inter
        self.iou_and = torch.where(union_and > 0, inter / union_and.clamp(min=1e-12), 0.0)  # [L, E, C, D]
        self.routed_any = routed_any

    def __call__(self, record: ExpertRecord) -> Explanation:
        ex = self.examples
        row = ex.layer_row(record.layer)
        if not ex.concept_names:
            return Explanation(record.layer, record.expert, "", error="the pass ran without concept labels")
        if float(self.routed_any[row, record.expert]) < self.min_routed:
            return Explanation(
                record.layer,
                record.expert,
                "",
                error=f"too few routed tokens ({int(self.routed_any[row, record.expert])})",
            )
        iou = self.iou[row, record.expert]
        best = int(iou.argmax())
        best_iou, concept, domain = float(iou[best]), ex.concept_names[best], None
        if self.conjunctions and len(ex.domain_names) > 1:
            both = self.iou_and[row, record.expert]
            flat = int(both.argmax())
            c, d = divmod(flat, both.shape[1])
            if float(both[c, d]) > self.conjunction_gain * best_iou and not ex.concept_names[c].startswith(
                "domain_"
            ):
                best_iou, concept, domain = float(both[c, d]), ex.concept_names[c], ex.domain_names[d]
        label = concept if domain is None else f"{concept} ∧ domain={domain}"
        ranked = torch.argsort(iou, descending=True)[:5].tolist()
        details = {
            "iou": round(best_iou, 4),
            "description": _concept_words(concept) + (f", in {domain} documents" if domain else ""),
            "runner_up": [(ex.concept_names[i], round(float(iou[i]), 4)) for i in ranked[1:4]],
            "over_represented": over_represented_tokens(record),
            "logit_lens": list(record.lens_tokens),
        }
        return Explanation(
            record.layer, record.expert, label, concept=concept, domain=domain, details=details
        )


def over_represented_tokens(record: ExpertRecord, n: int = 8) -> list[str]:
    """The routed tokens of the explanation contexts most over-represented against the negatives'
    tokens (add-one smoothed log ratio of frequencies)."""
    import math

    routed = Counter(t for c in record.explanation for t, m in zip(c.tokens, c.marks, strict=True) if m)
    background = Counter(t for c in record.negatives for t in c.tokens)
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
