"""Scorers: ``scorer(record, explanation) -> Score``, how well a label predicts where its expert fires.

Every scorer is tested on the expert's ``score``-split contexts (documents the explainer never saw):
positives are the expert's own contexts, negatives its per-expert random routed-elsewhere and
contrastive contexts (see :mod:`tl_moe.explain.examples`).

- :class:`ConceptScorer` (offline): an offline label's rule decides on each item's target token —
  its concept's own labeler, its token set, or their composition (for a concept ∧ domain label, the
  document must be of that domain). Exact, free, deterministic.
- :class:`DetectionScorer`: a chat model reads the label and unmarked contexts and says which match
  (``chunk`` contexts a request as a JSON list; ``chunk=1``: one yes/no question a context, the form a
  small chat model answers in).
- :class:`FuzzingScorer`: a chat model reads the label and contexts with marked tokens and says
  whether the marks are the tokens the label describes (half the items have the expert's true
  marks, half the same contexts with as many other tokens marked).
- :class:`IntruderScorer` (label-free): a chat model sees a few of the expert's contexts and one
  negative and picks the intruder.

Per expert: balanced accuracy (the headline), precision, recall, F1 (and AUC when the answer is
graded: a model's probabilities, a token set's weights); beside them chance, the best a verdict
independent of the truth reaches in expectation: balanced accuracy and AUC 0.5, precision the share
of positives p, recall 1 and F1 ``2p/(1+p)`` (answering "yes" to everything); ``1 / n_choices`` for
the intruder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tl_moe.explain.clients import ChatClient
from tl_moe.explain.examples import Context, ExpertRecord
from tl_moe.explain.explainers import Explanation
from tl_moe.explain.labels import LabelRule

__all__ = [
    "ConceptScorer",
    "DetectionScorer",
    "FuzzingScorer",
    "IntruderScorer",
    "Score",
    "Scorer",
    "detection_metrics",
]


@dataclass(frozen=True)
class Score:
    """One scorer's verdict on one (expert, label) pair.

    Attributes:
        layer, expert: the expert whose contexts were scored.
        scorer: the scorer's name.
        label: the label scored (the expert's own, or another's for the shuffled control).
        label_of: ``(layer, expert)`` the label belongs to.
        metrics: precision, recall, f1, balanced_accuracy, auc (NaN without probabilities), chance
            levels, n_positive, n_negative (accuracy and chance for the intruder scorer).
        error: why scoring failed (malformed answer, failed request, no concept), else None.
        truth, predicted: each scored item's truth and verdict, in the scorer's item order (the same
            for an expert's own label and its shuffled control, so the two can be compared item by item).
        documents: each scored item's document (dataset row): the unit of the summary's intervals.
        graded: each scored item's graded answer (a token set's weight, a model's probability), in the
            same order; empty when the answer is a verdict only (no AUC).
    """

    layer: int
    expert: int
    scorer: str
    label: str
    label_of: tuple[int, int]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    truth: tuple[int, ...] = field(default=(), repr=False)
    predicted: tuple[int, ...] = field(default=(), repr=False)
    documents: tuple[int, ...] = field(default=(), repr=False)
    graded: tuple[float, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


class Scorer(Protocol):
    name: str

    def __call__(self, record: ExpertRecord, explanation: Explanation) -> Score: ...


def detection_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], probabilities: Sequence[float] | None = None
) -> dict[str, float]:
    """Precision, recall, F1, balanced accuracy, AUC (NaN without probabilities) and chance levels."""
    y, p = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    tn = int((~y & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    auc = float("nan")
    if probabilities is not None and 0 < y.sum() < len(y):
        auc = _auc(y, np.asarray(probabilities, float))
    positive_rate = float(y.mean()) if len(y) else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "balanced_accuracy": (recall + tnr) / 2,
        "auc": auc,
        "chance_f1": 2 * positive_rate / (1 + positive_rate) if positive_rate else 0.0,
        "chance_precision": positive_rate,
        "chance_recall": 1.0,
        "chance_balanced_accuracy": 0.5,
        "chance_auc": 0.5,
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
    }


def _auc(y: np.ndarray, graded: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney statistic of the graded answers (ties count 1/2)."""
    from scipy.stats import rankdata

    ranks = rankdata(graded)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _items(record: ExpertRecord, seed: int) -> tuple[list[Context], list[int]]:
    """The scoring items of an expert (positives + negatives), in a seeded per-expert order."""
    items = [(c, 1) for c in record.positives] + [(c, 0) for c in record.negatives]
    order = np.random.default_rng([seed, record.layer, record.expert]).permutation(len(items))
    return [items[i][0] for i in order], [items[i][1] for i in order]


class ConceptScorer:
    """Offline detection: an offline label's own rule (:class:`~tl_moe.explain.labels.LabelRule`) — or,
    for a label that only names a concept, the concept's labeler — on each item's target token. A
    token-set rule answers with its tokens' weights, so its AUC is reported."""

    name = "concept"

    def __init__(self, concept_names: Sequence[str]) -> None:
        self.concept_names = tuple(concept_names)
        self.index = {name: i for i, name in enumerate(self.concept_names)}

    def __call__(self, record: ExpertRecord, explanation: Explanation) -> Score:
        key = (explanation.layer, explanation.expert)
        rule = explanation.rule
        if rule is None and explanation.concept in self.index:
            kind = "concept" if explanation.domain is None else "concept_and_domain"
            rule = LabelRule(kind, (explanation.concept,), domain=explanation.domain)
        if rule is None or any(c not in self.index for c in rule.concepts):
            return Score(record.layer, record.expert, self.name, explanation.label, key,
                         error="label is not a rule over this run's concepts or tokens")  # fmt: skip
        items, y = _items(record, 0)
        answers = [rule.answer(c, self.index) for c in items]
        predicted = [int(a > 0) for a in answers]
        metrics = detection_metrics(y, predicted, answers if rule.graded else None)
        return Score(record.layer, record.expert, self.name, explanation.label, key, metrics,
                     truth=tuple(y), predicted=tuple(predicted),
                     documents=tuple(c.doc_index for c in items),
                     graded=tuple(float(a) for a in answers) if rule.graded else ())  # fmt: skip


_VERDICTS = re.compile(r"\[[^\[\]]*\]", re.S)


def parse_verdicts(answer: str, n: int) -> tuple[list[int], list[float] | None]:
    """A JSON list of ``n`` verdicts (0/1, booleans, or probabilities in [0, 1]) from an answer; for
    one item (``n == 1``) also an answer whose first word is yes/no (true/false, 1/0).

    Returns (hard verdicts, probabilities or None). Raises ValueError on a malformed answer.
    """
    for candidate in _VERDICTS.findall(answer):
        try:
            values = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if not isinstance(values, list) or len(values) != n:
            continue
        if all(isinstance(v, bool) or v in (0, 1) for v in values):
            return [int(v) for v in values], None
        if all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values):
            return [int(v >= 0.5) for v in values], [float(v) for v in values]
    if n == 1:
        first = re.match(r"\W*(\w+)", answer)
        word = first.group(1).lower() if first else ""
        if word in _YES or word in _NO:
            return [int(word in _YES)], None
    raise ValueError(f"malformed answer (no list of {n} verdicts): {answer[:200]!r}")


_YES, _NO = {"yes", "true", "1"}, {"no", "false", "0"}


class _ChatScorer:
    """Asks a chat model about the scoring items, ``chunk`` at a time.

    ``chunk > 1``: one request lists the label and ``chunk`` numbered excerpts and asks for a JSON
    list of 0/1 verdicts. ``chunk == 1``: one request per item asks a yes/no question about one
    excerpt, after two worked examples (a yes and a no); the answer's first word is the verdict. The
    second form is the one small chat models answer in form; it takes ``chunk`` times the requests.
    A malformed answer makes the expert's score a recorded failure.
    """

    name = "chat"
    system = ""
    single_system = ""
    question = ""
    examples: tuple[tuple[str, str, str], ...] = ()  # (label, excerpt, "yes" | "no")
    marked = False

    def __init__(self, client: ChatClient, *, chunk: int = 10, max_tokens: int = 128, seed: int = 0) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be a positive number of items per request, got {chunk}.")
        self.client, self.chunk, self.max_tokens, self.seed = client, chunk, max_tokens, seed

    def _prompt(self, label: str, items: list[Context]) -> list[dict[str, str]]:
        if self.chunk == 1:
            return self._single_prompt(label, items[0])
        lines = [f"Label: {label}"] + [f"{i + 1}. {c.text(mark=self.marked)!r}" for i, c in enumerate(items)]
        lines.append(f"Answer with a JSON list of {len(items)} numbers, 1 for a match and 0 otherwise.")
        return [{"role": "system", "content": self.system}, {"role": "user", "content": "\n".join(lines)}]

    def _single_prompt(self, label: str, item: Context) -> list[dict[str, str]]:
        def ask(label: str, excerpt: str) -> dict[str, str]:
            return {"role": "user", "content": f"Label: {label}\nExcerpt: {excerpt!r}\n{self.question}"}

        messages = [{"role": "system", "content": self.single_system}]
        for shown_label, excerpt, verdict in self.examples:
            messages += [ask(shown_label, excerpt), {"role": "assistant", "content": verdict}]
        return messages + [ask(label, item.text(mark=self.marked))]

    def _scored_items(self, record: ExpertRecord) -> tuple[list[Context], list[int]]:
        return _items(record, self.seed)

    def __call__(self, record: ExpertRecord, explanation: Explanation) -> Score:
        key = (explanation.layer, explanation.expert)
        items, y = self._scored_items(record)
        verdicts: list[int] = []
        probabilities: list[float] | None = []
        for start in range(0, len(items), self.chunk):
            part = items[start : start + self.chunk]
            try:
                answer = self.client.complete(
                    self._prompt(explanation.label, part), max_tokens=self.max_tokens
                )
            except Exception as error:
                return Score(record.layer, record.expert, self.name, explanation.label, key,
                             error=f"request failed: {type(error).__name__}: {error}")  # fmt: skip
            try:
                hard, soft = parse_verdicts(answer, len(part))
            except ValueError as error:
                return Score(record.layer, record.expert, self.name, explanation.label, key, error=str(error))
            verdicts += hard
            probabilities = None if soft is None or probabilities is None else probabilities + soft
        metrics = detection_metrics(y, verdicts, probabilities)
        return Score(record.layer, record.expert, self.name, explanation.label, key, metrics,
                     truth=tuple(y), predicted=tuple(verdicts),
                     documents=tuple(c.doc_index for c in items),
                     graded=tuple(probabilities) if probabilities else ())  # fmt: skip


class DetectionScorer(_ChatScorer):
    """Does each (unmarked) context match the label? Answers from a chat model."""

    name = "detection"
    system = (
        "You check whether text excerpts match a description of what a language-model component "
        "responds to. For each numbered excerpt say 1 if it contains what the label describes, else 0."
    )
    single_system = (
        "You check whether a text excerpt contains what a label describes. Answer with one word: yes or no."
    )
    question = "Does the excerpt contain what the label describes?"
    examples = (("numbers", "page 3 of the book", "yes"), ("city names", "the cat sat on the mat", "no"))


class FuzzingScorer(_ChatScorer):
    """Are the marked tokens the ones the label describes? True marks vs as many other tokens marked."""

    name = "fuzzing"
    marked = True
    system = (
        "You check whether the tokens wrapped in << >> in each excerpt are the ones a label describes. "
        "For each numbered excerpt say 1 if the marked tokens match the label, else 0."
    )
    single_system = (
        "You check whether the tokens wrapped in << >> in an excerpt are the ones a label describes. "
        "Answer with one word: yes or no."
    )
    question = "Are the marked tokens what the label describes?"
    examples = (
        ("numbers", "page <<3>> of the book", "yes"),
        ("city names", "the <<cat>> sat in Paris", "no"),
    )

    def _scored_items(self, record: ExpertRecord) -> tuple[list[Context], list[int]]:
        rng = np.random.default_rng([self.seed, record.layer, record.expert, 1])
        items: list[tuple[Context, int]] = []
        for context in record.positives:
            items.append((context, 1))
            marked = [i for i, m in enumerate(context.marks) if m]
            unmarked = [i for i, m in enumerate(context.marks) if not m]
            if not unmarked:
                continue
            fake = set(
                rng.choice(unmarked, size=min(len(marked) or 1, len(unmarked)), replace=False).tolist()
            )
            items.append((context.with_marks([i in fake for i in range(len(context.marks))]), 0))
        order = rng.permutation(len(items))
        return [items[i][0] for i in order], [items[i][1] for i in order]


class IntruderScorer:
    """Label-free: which of ``n_choices`` contexts (``n_choices - 1`` of the expert's, one negative) is the
    intruder? Accuracy over ``n_rounds`` rounds, chance ``1 / n_choices``."""

    name = "intruder"

    def __init__(self, client: ChatClient, *, n_choices: int = 5, n_rounds: int = 4, seed: int = 0) -> None:
        self.client, self.n_choices, self.n_rounds, self.seed = client, n_choices, n_rounds, seed

    def __call__(self, record: ExpertRecord, explanation: Explanation | None = None) -> Score:
        key = (record.layer, record.expert)
        rng = np.random.default_rng([self.seed, record.layer, record.expert, 2])
        correct = 0
        rounds = min(self.n_rounds, len(record.negatives), len(record.positives) // (self.n_choices - 1))
        if rounds < 1:
            return Score(
                record.layer, record.expert, self.name, "", key, error="too few contexts for a round"
            )
        positives = rng.permutation(len(record.positives))
        for r in range(rounds):
            chosen = [
                record.positives[i]
                for i in positives[r * (self.n_choices - 1) : (r + 1) * (self.n_choices - 1)]
            ]
            intruder = int(rng.integers(self.n_choices))
            chosen.insert(intruder, record.negatives[int(rng.integers(len(record.negatives)))])
            lines = [f"{i + 1}. {c.text()!r}" for i, c in enumerate(chosen)]
            messages = [
                {"role": "system", "content": "All but one of these excerpts activate the same language-model "
                 "component on the tokens wrapped in << >>. Reply with the number of the one that does not "
                 "belong, as JSON: {\"intruder\": N}."},
                {"role": "user", "content": "\n".join(lines)},
            ]  # fmt: skip
            try:
                answer = self.client.complete(messages, max_tokens=32)
            except Exception as error:
                return Score(
                    record.layer, record.expert, self.name, "", key, error=f"request failed: {error}"
                )
            found = re.search(r"\d+", answer)
            if not found or not 1 <= int(found.group(0)) <= self.n_choices:
                return Score(
                    record.layer,
                    record.expert,
                    self.name,
                    "",
                    key,
                    error=f"malformed answer: {answer[:200]!r}",
                )
            correct += int(int(found.group(0)) - 1 == intruder)
        metrics: dict[str, Any] = {
            "accuracy": correct / rounds,
            "chance_accuracy": 1 / self.n_choices,
            "rounds": rounds,
        }
        return Score(record.layer, record.expert, self.name, "", key, metrics)
