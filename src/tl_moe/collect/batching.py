"""Corpus -> fixed-length token windows -> batches with per-token metadata, streamed.

A document is tokenized without special tokens and cut into consecutive chunks of
``seq_len - 1`` tokens (``seq_len`` when the tokenizer has no BOS token); each chunk
becomes one window ``[BOS, chunk...]`` right-padded to ``seq_len``. Windows never mix
documents. Windows are grouped ``batch_size`` at a time in dataset order, so the
stream is a pure function of (dataset, tokenizer, batch_size, seq_len, max_tokens).

Only a small chunk of documents is tokenized at a time; nothing about the corpus is
materialised beyond the batch being built. A document longer than :data:`MAX_DOCUMENT_CHARS`
characters is cut to its first ``MAX_DOCUMENT_CHARS`` before it is tokenized (and labelled),
so one pathological document (megabytes on one line) costs a bounded time; the embedded
corpora's documents are far shorter (a few thousand characters).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from jaxtyping import Bool, Int

from tl_moe.collect.meta import BatchMeta

TEXT_COLUMN = "text"
DOMAIN_COLUMN = "domain"
LANGUAGE_COLUMN = "language"
DEFAULT_DOMAIN = "all"
_DOCS_PER_TOKENIZER_CALL = 64
MAX_DOCUMENT_CHARS = 100_000
"""Characters of a document that are tokenized; the rest of a longer document is not read."""


class ConceptLabeler(Protocol):
    """Labels each token of one document with binary concepts.

    Called once per document with the document's text and the character span of
    each of its tokens; returns whether each token belongs to each concept. An
    optional ``concept_names`` attribute names the columns. A labeler that also takes
    keyword arguments ``domain`` and/or ``language`` receives the document's domain
    name and its ``language`` column value (None without that column), e.g.
    ``functools.partial(tl_moe.data.label_tokens, concepts=names)``.
    """

    def __call__(
        self, text: str, offsets: Int[torch.Tensor, "n_tokens 2"]
    ) -> Bool[torch.Tensor, "n_tokens n_concepts"]: ...


@dataclass(frozen=True)
class StreamCursor:
    """Where the batch stream stands; a stream started from a cursor continues exactly there.

    Attributes:
        doc_index: the next dataset row to read.
        token_offset: the first token of that row's document not yet put in a window.
        tokens_emitted: real tokens (BOS included) put in windows so far.
        window_index: index the next window will get.
        batch_index: index the next batch will get.
    """

    doc_index: int = 0
    token_offset: int = 0
    tokens_emitted: int = 0
    window_index: int = 0
    batch_index: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TokenizedDocument:
    """One dataset row after tokenization (no special tokens added)."""

    doc_index: int
    text: str
    token_ids: list[int]
    offsets: list[tuple[int, int]] | None
    domain_code: int
    domain: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class Window:
    """Tokens ``[token_start, token_end)`` of one document, to become one row of a batch."""

    document: TokenizedDocument
    token_start: int
    token_end: int
    window_index: int


@dataclass(frozen=True)
class PlannedBatch:
    """The windows of one batch, before any tensor is built, and the cursor after it."""

    batch_index: int
    windows: tuple[Window, ...]
    cursor_after: StreamCursor


def check_corpus(dataset: Any) -> None:
    """Raise a clear error unless ``dataset`` is a non-empty ``datasets.Dataset`` with text."""
    if not hasattr(dataset, "column_names") or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"expected a datasets.Dataset with a {TEXT_COLUMN!r} column, got {type(dataset).__name__}."
        )
    if isinstance(dataset.column_names, dict):  # a DatasetDict: splits, each a Dataset
        splits = list(dataset.column_names)
        raise ValueError(
            f"the dataset is a dict of splits ({', '.join(splits)}), not one split; pass one, "
            f"e.g. corpus[{'validation' if 'validation' in splits else splits[0]!r}]."
        )
    if TEXT_COLUMN not in dataset.column_names:
        raise ValueError(
            f"the dataset has no {TEXT_COLUMN!r} column; its columns are {dataset.column_names}. "
            f"Rename the column holding the documents to {TEXT_COLUMN!r}."
        )
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: it has no rows to collect activations from.")


def domain_names(dataset: Any) -> tuple[str, ...]:
    """Names of the corpus's domains, in code order (code ``i`` is ``names[i]``).

    A ``ClassLabel`` ``domain`` column keeps its own names; any other ``domain``
    column gets its distinct values as strings, sorted. Without a ``domain`` column
    every document is in the single domain ``"all"``.
    """
    if DOMAIN_COLUMN not in dataset.column_names:
        return (DEFAULT_DOMAIN,)
    feature = dataset.features[DOMAIN_COLUMN]
    if hasattr(feature, "names") and hasattr(feature, "str2int"):
        return tuple(feature.names)
    return tuple(sorted({str(value) for value in dataset.unique(DOMAIN_COLUMN)}))


def document_domain_codes(dataset: Any) -> list[int]:
    """The domain code of every row of ``dataset`` (index into :func:`domain_names`), as the batches carry it."""
    encode = _domain_coder(dataset)
    if DOMAIN_COLUMN not in dataset.column_names:
        return [0] * len(dataset)
    return [encode(value)[0] for value in dataset[DOMAIN_COLUMN]]


def _domain_coder(dataset: Any) -> Callable[[Any], tuple[int, str | None]]:
    """Maps a raw ``domain`` value to (domain code, domain name); name None without the column."""
    names = domain_names(dataset)
    if DOMAIN_COLUMN not in dataset.column_names:
        return lambda value: (0, None)
    feature = dataset.features[DOMAIN_COLUMN]
    if hasattr(feature, "names") and hasattr(feature, "str2int"):
        return lambda value: (int(value), names[int(value)])
    code_of = {name: code for code, name in enumerate(names)}
    return lambda value: (code_of[str(value)], str(value))


def _tokenize_documents(
    dataset: Any,
    tokenizer: Any,
    start: int,
    stop: int,
    encode_domain: Callable[[Any], tuple[int, str | None]],
    with_offsets: bool,
) -> list[TokenizedDocument]:
    rows = dataset[start:stop]
    texts = ["" if text is None else str(text)[:MAX_DOCUMENT_CHARS] for text in rows[TEXT_COLUMN]]
    domains = [encode_domain(value) for value in rows.get(DOMAIN_COLUMN, [None] * len(texts))]
    languages = rows.get(LANGUAGE_COLUMN, [None] * len(texts))
    encoded = tokenizer(
        texts,
        add_special_tokens=False,
        return_offsets_mapping=with_offsets,
        return_attention_mask=False,
        verbose=False,
    )
    offsets = encoded["offset_mapping"] if with_offsets else [None] * len(texts)
    return [
        TokenizedDocument(
            doc_index=start + i,
            text=texts[i],
            token_ids=list(encoded["input_ids"][i]),
            offsets=None if offsets[i] is None else [tuple(span) for span in offsets[i]],
            domain_code=domains[i][0],
            domain=domains[i][1],
            language=None if languages[i] is None else str(languages[i]),
        )
        for i in range(len(texts))
    ]


def _documents(
    dataset: Any, tokenizer: Any, first_doc: int, with_offsets: bool
) -> Iterator[TokenizedDocument]:
    columns = [c for c in (TEXT_COLUMN, DOMAIN_COLUMN, LANGUAGE_COLUMN) if c in dataset.column_names]
    view = dataset.select_columns(columns)
    encode_domain = _domain_coder(dataset)
    for start in range(first_doc, len(view), _DOCS_PER_TOKENIZER_CALL):
        stop = min(start + _DOCS_PER_TOKENIZER_CALL, len(view))
        yield from _tokenize_documents(view, tokenizer, start, stop, encode_domain, with_offsets)


def iter_windows(
    dataset: Any,
    tokenizer: Any,
    *,
    seq_len: int,
    max_tokens: int | None = None,
    start: StreamCursor | None = None,
    with_offsets: bool = False,
) -> Iterator[Window]:
    """Yield the corpus's windows in order, starting at ``start``.

    ``max_tokens`` caps the real tokens (BOS included) over all windows; the window
    that reaches the cap is shortened so the total never exceeds it.
    """
    start = start or StreamCursor()
    has_bos = tokenizer.bos_token_id is not None
    chunk = seq_len - int(has_bos)
    if chunk < 1:
        raise ValueError(f"seq_len must leave room for at least one token after BOS, got {seq_len}.")
    emitted, window_index = start.tokens_emitted, start.window_index
    for document in _documents(dataset, tokenizer, start.doc_index, with_offsets):
        first = start.token_offset if document.doc_index == start.doc_index else 0
        for token_start in range(first, len(document.token_ids), chunk):
            token_end = min(token_start + chunk, len(document.token_ids))
            if max_tokens is not None:
                room = max_tokens - emitted - int(has_bos)
                if room < 1:
                    return
                token_end = min(token_end, token_start + room)
            emitted += token_end - token_start + int(has_bos)
            yield Window(document, token_start, token_end, window_index)
            window_index += 1


def plan_batches(
    dataset: Any,
    tokenizer: Any,
    *,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None = None,
    start: StreamCursor | None = None,
    with_offsets: bool = False,
) -> Iterator[PlannedBatch]:
    """Group the windows from ``start`` on into batches of ``batch_size`` (the last may be short)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    start = start or StreamCursor()
    has_bos = tokenizer.bos_token_id is not None
    emitted, batch_index = start.tokens_emitted, start.batch_index
    pending: list[Window] = []

    def close_batch() -> PlannedBatch:
        last = pending[-1]
        at_doc_end = last.token_end >= len(last.document.token_ids)
        cursor = StreamCursor(
            doc_index=last.document.doc_index + int(at_doc_end),
            token_offset=0 if at_doc_end else last.token_end,
            tokens_emitted=emitted,
            window_index=last.window_index + 1,
            batch_index=batch_index + 1,
        )
        return PlannedBatch(batch_index, tuple(pending), cursor)

    windows = iter_windows(
        dataset, tokenizer, seq_len=seq_len, max_tokens=max_tokens, start=start, with_offsets=with_offsets
    )
    for window in windows:
        pending.append(window)
        emitted += window.token_end - window.token_start + int(has_bos)
        if len(pending) == batch_size:
            yield close_batch()
            batch_index += 1
            pending = []
    if pending:
        yield close_batch()


def _document_keywords(labeler: Any) -> set[str]:
    """Which of ``domain`` / ``language`` the labeler accepts as keyword arguments."""
    if labeler is None:
        return set()
    try:
        parameters = inspect.signature(labeler).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return {"domain", "language"}
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in keyword_kinds} & {"domain", "language"}


class BatchBuilder:
    """Turns planned batches into model inputs + :class:`BatchMeta` (on CPU).

    Concept labels are computed once per document (the last document's labels are
    cached, since consecutive windows usually share it).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        seq_len: int,
        domain_names: Sequence[str],
        concept_labeler: ConceptLabeler | None = None,
    ) -> None:
        self.seq_len = seq_len
        self.bos_id = tokenizer.bos_token_id
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.domain_names = tuple(domain_names)
        self.concept_labeler = concept_labeler
        names = getattr(concept_labeler, "concept_names", None)
        self.concept_names = None if names is None else tuple(names)
        self._labeler_keywords = _document_keywords(concept_labeler)
        self._cached_labels: tuple[int, torch.Tensor] | None = None

    def _document_labels(self, document: TokenizedDocument) -> Bool[torch.Tensor, "n_tokens concept"]:
        if self._cached_labels is not None and self._cached_labels[0] == document.doc_index:
            return self._cached_labels[1]
        assert self.concept_labeler is not None and document.offsets is not None
        offsets = torch.tensor(document.offsets, dtype=torch.long).reshape(-1, 2)
        context = {"domain": document.domain, "language": document.language}
        keywords = {key: value for key, value in context.items() if key in self._labeler_keywords}
        labels = torch.as_tensor(self.concept_labeler(document.text, offsets, **keywords)).bool()
        if labels.ndim != 2 or labels.shape[0] != len(document.token_ids):
            raise ValueError(
                f"the concept labeler returned shape {tuple(labels.shape)} for document "
                f"{document.doc_index}, which has {len(document.token_ids)} tokens; expected "
                f"[{len(document.token_ids)}, n_concepts]."
            )
        self._cached_labels = (document.doc_index, labels)
        return labels

    def build(self, planned: PlannedBatch) -> BatchMeta:
        n_rows, seq_len = len(planned.windows), self.seq_len
        lead = int(self.bos_id is not None)
        input_ids = torch.full((n_rows, seq_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n_rows, seq_len), dtype=torch.bool)
        doc_position = torch.full((n_rows, seq_len), -1, dtype=torch.long)
        doc_index = torch.empty((n_rows, 1), dtype=torch.long)
        domain = torch.empty((n_rows, 1), dtype=torch.long)
        window_index = torch.tensor([w.window_index for w in planned.windows], dtype=torch.long)
        row_labels: list[torch.Tensor | None] = []
        for row, window in enumerate(planned.windows):
            length = window.token_end - window.token_start
            if lead:
                input_ids[row, 0] = self.bos_id
            content = window.document.token_ids[window.token_start : window.token_end]
            input_ids[row, lead : lead + length] = torch.tensor(content, dtype=torch.long)
            mask[row, : lead + length] = True
            doc_position[row, lead : lead + length] = torch.arange(window.token_start, window.token_end)
            doc_index[row] = window.document.doc_index
            domain[row] = window.document.domain_code
            if self.concept_labeler is not None:
                row_labels.append(
                    self._document_labels(window.document)[window.token_start : window.token_end]
                )
        position = torch.arange(seq_len).expand(n_rows, seq_len)
        return BatchMeta(
            input_ids=input_ids,
            attention_mask=mask,
            position=position,
            doc_index=doc_index.expand(n_rows, seq_len),
            doc_position=doc_position,
            domain=domain.expand(n_rows, seq_len),
            token_index=window_index[:, None] * seq_len + position,
            window_index=window_index,
            batch_index=planned.batch_index,
            domain_names=self.domain_names,
            concept_labels=self._stack_labels(row_labels, planned, lead) if row_labels else None,
            concept_names=self.concept_names,
        )

    def _stack_labels(
        self, row_labels: list[torch.Tensor], planned: PlannedBatch, lead: int
    ) -> Bool[torch.Tensor, "batch pos concept"]:
        n_concepts = {labels.shape[1] for labels in row_labels}
        if len(n_concepts) != 1:
            raise ValueError(f"the concept labeler returned different numbers of concepts: {n_concepts}.")
        (n,) = n_concepts
        if self.concept_names is not None and len(self.concept_names) != n:
            raise ValueError(
                f"the concept labeler names {len(self.concept_names)} concepts but labels {n} columns."
            )
        stacked = torch.zeros((len(row_labels), self.seq_len, n), dtype=torch.bool)
        for row, labels in enumerate(row_labels):
            stacked[row, lead : lead + labels.shape[0]] = labels
        return stacked
