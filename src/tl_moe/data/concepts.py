"""Token-level binary concepts, aligned to any Hugging Face tokenizer through character spans.

A :class:`Concept` maps a text to character spans (``[(start, end), ...]``, end exclusive).
A token is positive for a concept iff its character span (from the tokenizer's
``return_offsets_mapping``) overlaps one of the concept's spans. Groups:

- ``code``: Python constructs read from the standard :mod:`tokenize` stream (defined on ``python``);
- ``latex``: LaTeX constructs from a brace-matching scanner (defined on ``math``);
- ``text``: surface forms of any text (capitals, digits, punctuation, sentence starts, ...);
- ``language`` / ``domain``: every token of a document of that language or domain.

Part-of-speech concepts are not included: no tagger installs from PyPI without downloading a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Int

from tl_moe.data.sources import EMBEDDED_SOURCES
from tl_moe.data.spans import Span
from tl_moe.data.spans import code as code_spans
from tl_moe.data.spans import latex as latex_spans
from tl_moe.data.spans import text as text_spans

CONCEPT_GROUPS = ("code", "latex", "text", "language", "domain")
DOCUMENT_FIELDS = ("language", "domain")


@dataclass(frozen=True)
class Concept:
    """A binary token-level concept.

    Attributes:
        name: unique identifier, e.g. ``"code_keyword"``.
        group: one of :data:`CONCEPT_GROUPS`.
        description: what a positive token is, in words.
        find_spans: ``text -> [(start, end), ...]`` character spans of positive text.
        applies_to: domains whose documents the concept is defined on; empty means every domain.
        document_field: for per-document concepts, the document field (``"language"`` or
            ``"domain"``) whose value must equal ``document_value``; then every token is positive.
        document_value: see ``document_field``.
    """

    name: str
    group: str
    description: str
    find_spans: Callable[[str], list[Span]] | None = None
    applies_to: tuple[str, ...] = ()
    document_field: str | None = None
    document_value: str | None = None

    def applies(self, domain: str | None) -> bool:
        """Whether the concept is defined on documents of ``domain`` (``None``: unknown, so yes)."""
        return domain is None or not self.applies_to or domain in self.applies_to

    def spans(self, text: str, domain: str | None = None, language: str | None = None) -> list[Span]:
        """Positive character spans of ``text``, a document of ``domain`` in ``language``."""
        if self.document_field is not None:
            value = {"language": language, "domain": domain}[self.document_field]
            return [(0, len(text))] if value == self.document_value and text else []
        return self.find_spans(text)


def document_concept(field: str, value: str, description: str | None = None) -> Concept:
    """A per-document concept: every token of a document whose ``field`` equals ``value``."""
    if field not in DOCUMENT_FIELDS:
        raise ValueError(f"document concept field must be one of {DOCUMENT_FIELDS}, got {field!r}")
    return Concept(
        name=f"{field}_{value}",
        group=field,
        description=description or f"Every token of a document whose {field} is {value!r}",
        document_field=field,
        document_value=value,
    )


_CODE = [
    ("keyword", code_spans.keyword_spans),
    ("identifier", code_spans.identifier_spans),
    ("def_name", code_spans.def_name_spans),
    ("class_name", code_spans.class_name_spans),
    ("parameter", code_spans.parameter_spans),
    ("function_call", code_spans.function_call_spans),
    ("attribute", code_spans.attribute_spans),
    ("builtin_name", code_spans.builtin_name_spans),
    ("self", code_spans.self_spans),
    ("string", code_spans.string_spans),
    ("docstring", code_spans.docstring_spans),
    ("comment", code_spans.comment_spans),
    ("number", code_spans.number_spans),
    ("operator", code_spans.operator_spans),
    ("open_bracket", code_spans.opening_bracket_spans),
    ("close_bracket", code_spans.closing_bracket_spans),
    ("decorator", code_spans.decorator_spans),
    ("import", code_spans.import_spans),
    ("assignment_target", code_spans.assignment_target_spans),
    ("control_flow", code_spans.control_flow_spans),
    ("loop", code_spans.loop_spans),
    ("indentation", code_spans.indentation_spans),
]
_LATEX = [
    ("math", latex_spans.math_spans),
    ("inline_math", latex_spans.inline_math_spans),
    ("display_math", latex_spans.display_math_spans),
    ("math_delimiter", latex_spans.math_delimiter_spans),
    ("command", latex_spans.command_spans),
    ("greek_letter", latex_spans.greek_letter_spans),
    ("big_operator", latex_spans.big_operator_spans),
    ("function_name", latex_spans.function_name_spans),
    ("superscript", latex_spans.superscript_spans),
    ("subscript", latex_spans.subscript_spans),
    ("frac_numerator", latex_spans.numerator_spans),
    ("frac_denominator", latex_spans.denominator_spans),
    ("sqrt_argument", latex_spans.sqrt_argument_spans),
    ("open_brace", latex_spans.open_brace_spans),
    ("close_brace", latex_spans.close_brace_spans),
    ("left_right", latex_spans.left_right_spans),
    ("environment", latex_spans.environment_spans),
    ("alignment", latex_spans.alignment_spans),
]
_TEXT = [
    ("capitalized_word", text_spans.capitalized_word_spans),
    ("all_caps_word", text_spans.all_caps_word_spans),
    ("lowercase_word", text_spans.lowercase_word_spans),
    ("long_word", text_spans.long_word_spans),
    ("whitespace_led_word", text_spans.whitespace_led_word_spans),
    ("sentence_start", text_spans.sentence_start_spans),
    ("line_start", text_spans.line_start_spans),
    ("digit", text_spans.digit_spans),
    ("punctuation", text_spans.punctuation_spans),
    ("symbol", text_spans.symbol_spans),
    ("non_ascii", text_spans.non_ascii_spans),
    ("newline", text_spans.newline_spans),
    ("url", text_spans.url_spans),
    ("email", text_spans.email_spans),
    ("hyphenated_word", text_spans.hyphenated_word_spans),
    ("contraction", text_spans.contraction_spans),
    ("parenthesized", text_spans.parenthesized_spans),
    ("quoted", text_spans.quoted_spans),
]
EMBEDDED_LANGUAGES = {
    "en": "English",
    "es": "Spanish",
    "de": "German",
    "fr": "French",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "ru": "Russian",
}
EMBEDDED_DOMAINS = tuple(source.domain for source in EMBEDDED_SOURCES)


def _first_line(function: Callable) -> str:
    return (function.__doc__ or "").strip().splitlines()[0].rstrip(".")


def _build_registry() -> dict[str, Concept]:
    concepts = []
    for group, prefix, entries, applies_to in (
        ("code", "code", _CODE, ("python",)),
        ("latex", "latex", _LATEX, ("math",)),
        ("text", "text", _TEXT, ()),
    ):
        for short_name, finder in entries:
            concepts.append(Concept(f"{prefix}_{short_name}", group, _first_line(finder), finder, applies_to))
    for code, language in EMBEDDED_LANGUAGES.items():
        concepts.append(document_concept("language", code, f"Every token of a document in {language}"))
    for domain in EMBEDDED_DOMAINS:
        concepts.append(document_concept("domain", domain, f"Every token of a document of domain {domain!r}"))
    return {concept.name: concept for concept in concepts}


CONCEPTS: dict[str, Concept] = _build_registry()
"""Every built-in concept by name, grouped in the order code, latex, text, language, domain."""


def resolve_concepts(concepts: Sequence[Concept | str] | None = None) -> list[Concept]:
    """Concept objects for ``concepts`` (objects or registry names); ``None`` means all of :data:`CONCEPTS`."""
    if concepts is None:
        return list(CONCEPTS.values())
    resolved = []
    for concept in concepts:
        if isinstance(concept, Concept):
            resolved.append(concept)
        elif concept in CONCEPTS:
            resolved.append(CONCEPTS[concept])
        else:
            raise KeyError(f"unknown concept {concept!r}; known concepts: {', '.join(CONCEPTS)}")
    return resolved


def spans_to_char_mask(
    spans_per_concept: Sequence[Sequence[Span]], n_chars: int
) -> Bool[torch.Tensor, "n_chars n_concepts"]:
    """Which characters of a text lie inside a span of each concept.

    Spans are clipped to ``[0, n_chars]``; empty spans mark nothing.
    """
    n_concepts = len(spans_per_concept)
    starts, ends, columns = [], [], []
    for column, spans in enumerate(spans_per_concept):
        for start, end in spans:
            starts.append(start)
            ends.append(end)
            columns.append(column)
    boundary_counts = torch.zeros(n_chars + 1, n_concepts, dtype=torch.int32)
    if columns:
        start_t = torch.tensor(starts).clamp(0, n_chars)
        end_t = torch.tensor(ends).clamp(0, n_chars)
        column_t = torch.tensor(columns)
        keep = end_t > start_t
        ones = torch.ones(int(keep.sum()), dtype=torch.int32)
        boundary_counts.index_put_((start_t[keep], column_t[keep]), ones, accumulate=True)
        boundary_counts.index_put_((end_t[keep], column_t[keep]), -ones, accumulate=True)
    return boundary_counts.cumsum(0)[:-1] > 0


def label_tokens(
    text: str,
    offsets: Int[torch.Tensor, "n_tokens 2"] | Sequence[tuple[int, int]],
    concepts: Sequence[Concept | str] | None = None,
    domain: str | None = None,
    language: str | None = None,
) -> Bool[torch.Tensor, "n_tokens n_concepts"]:
    """Token-by-concept labels of one document.

    Args:
        text: the document's text, exactly as it was tokenized.
        offsets: each token's ``(start, end)`` character span in ``text`` (the tokenizer's
            ``offset_mapping``); tokens with an empty span (special tokens) are never positive.
        concepts: concepts (objects or names) for the columns; ``None`` means all of :data:`CONCEPTS`.
        domain: the document's domain. When given, a concept whose ``applies_to`` excludes it gets an
            all-false column (use :func:`applicable_concepts` to tell "negative" from "not defined").
        language: the document's language, for per-document language concepts.

    Returns:
        ``labels[t, c]`` is true iff token ``t``'s span overlaps a span of concept ``c``.
    """
    concept_list = resolve_concepts(concepts)
    offsets_t = torch.as_tensor(offsets, dtype=torch.long).reshape(-1, 2)
    spans_per_concept = [
        concept.spans(text, domain, language) if concept.applies(domain) else [] for concept in concept_list
    ]
    n_chars = len(text)
    inside = spans_to_char_mask(spans_per_concept, n_chars)
    covered_before = torch.cat(
        [
            torch.zeros(1, len(concept_list), dtype=torch.int32),
            inside.to(torch.int32).cumsum(0, dtype=torch.int32),
        ]
    )
    token_start = offsets_t[:, 0].clamp(0, n_chars)
    token_end = offsets_t[:, 1].clamp(0, n_chars)
    return (covered_before[token_end] - covered_before[token_start]) > 0


def applicable_concepts(
    concepts: Sequence[Concept | str] | None, domains: Sequence[str | None]
) -> Bool[torch.Tensor, "n_documents n_concepts"]:
    """Whether each concept is defined on each document, given the documents' domains."""
    concept_list = resolve_concepts(concepts)
    return torch.tensor(
        [[concept.applies(domain) for concept in concept_list] for domain in domains]
    ).reshape(len(domains), len(concept_list))


def label_text(
    text: str,
    tokenizer,
    concepts: Sequence[Concept | str] | None = None,
    domain: str | None = None,
    language: str | None = None,
) -> tuple[Int[torch.Tensor, " n_tokens"], Bool[torch.Tensor, "n_tokens n_concepts"]]:
    """Tokenize ``text`` (no special tokens) and label its tokens; returns ``(input_ids, labels)``.

    ``tokenizer`` is any Hugging Face fast tokenizer (one that returns ``offset_mapping``).
    """
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    return input_ids, label_tokens(text, encoding["offset_mapping"], concepts, domain, language)


def concepts_table(concepts: Sequence[Concept | str] | None = None) -> pd.DataFrame:
    """One row per concept: ``name``, ``group``, ``applies_to`` (comma-separated, ``all`` if empty), ``description``."""
    return pd.DataFrame(
        [
            {
                "name": concept.name,
                "group": concept.group,
                "applies_to": ", ".join(concept.applies_to) or "all",
                "description": concept.description,
            }
            for concept in resolve_concepts(concepts)
        ]
    )
