"""The corpus and the tokenizer that reads it: a split with documents, its domains, its size."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from tl_moe.collect.batching import DOMAIN_COLUMN, TEXT_COLUMN, domain_names
from tl_moe.errors import InputError
from tl_moe.pipeline.checks.errors import CorpusSplitError

__all__ = [
    "DOCUMENT_GATES",
    "SMALL_CORPUS_SHARE",
    "TOKENIZER_PROBE_TEXT",
    "DomainCoverage",
    "check_corpus_split",
    "check_tokenizer",
    "corpus_tokens_up_to",
    "domain_coverage",
    "few_documents_warning",
    "gate_split",
    "stream_documents",
    "stream_gates",
    "warn_few_documents",
    "warn_small_corpus",
]


def check_corpus_split(corpus: Any, split: str | None = None, *, input_name: str = "--split") -> Any:
    """The split ``split`` of ``corpus`` (or ``corpus`` itself if it is one Dataset), checked to hold a document.

    Raises:
        CorpusSplitError: the split is missing, empty, has no ``text`` column, or only empty texts.
    """
    dataset = corpus
    label = "the corpus"
    is_dict = isinstance(getattr(corpus, "column_names", None), dict) or (
        hasattr(corpus, "keys") and not hasattr(corpus, "column_names")
    )
    if split is not None and is_dict:
        if split not in corpus:
            shown = split.item() if isinstance(split, np.generic) else split  # np.int64(0) -> 0
            raise CorpusSplitError(
                f"{input_name} {shown!r} is not a split of the corpus; accepted: {', '.join(map(str, corpus))}.",
                input_name=input_name,
            )
        dataset, label = corpus[split], f"{input_name} {split!r}"
    if TEXT_COLUMN not in getattr(dataset, "column_names", ()):
        raise CorpusSplitError(
            f"{label} has no {TEXT_COLUMN!r} column (columns: {list(getattr(dataset, 'column_names', []))}); "
            f"accepted: a corpus with a {TEXT_COLUMN!r} column.",
            input_name=input_name,
        )
    if len(dataset) == 0 or not any(
        text is not None and str(text).strip() for text in dataset.select_columns([TEXT_COLUMN])[TEXT_COLUMN]
    ):
        raise CorpusSplitError(
            f"{label} has no documents ({len(dataset)} rows, none with text); accepted: a split with at least "
            f"one non-empty document (add documents, or choose another split).",
            input_name=input_name,
        )
    return dataset


@dataclass(frozen=True)
class DomainCoverage:
    """How many domains a corpus has and whether domain analyses can compare them.

    Attributes:
        names: the domains, in code order (as :func:`~tl_moe.collect.domain_names`).
        documents: non-empty documents per domain.
        usable: True when at least two domains have a document each.
        warning: one line saying why domain analyses have nothing to compare, or None.
    """

    names: tuple[str, ...]
    documents: dict[str, int]
    usable: bool
    warning: str | None


def domain_coverage(dataset: Any, *, label: str = "the corpus") -> DomainCoverage:
    """Whether ``dataset`` has at least two domains with documents (a flag, never an error).

    Domain analyses (domain experts, routing specialization by domain) compare domains; with one
    domain they have no contrast. The caller decides: skip them with ``warning`` shown, or stop.
    """
    names = domain_names(dataset)
    documents: Counter[str] = Counter()
    columns = [c for c in (TEXT_COLUMN, DOMAIN_COLUMN) if c in dataset.column_names]
    view = dataset.select_columns(columns)
    feature = dataset.features.get(DOMAIN_COLUMN) if DOMAIN_COLUMN in columns else None
    for row in view:
        if row.get(TEXT_COLUMN) is None or not str(row[TEXT_COLUMN]).strip():
            continue
        if DOMAIN_COLUMN not in row:
            documents[names[0]] += 1
        elif hasattr(feature, "names"):
            documents[names[int(row[DOMAIN_COLUMN])]] += 1
        else:
            documents[str(row[DOMAIN_COLUMN])] += 1
    present = [name for name in names if documents[name] > 0]
    usable = len(present) >= 2
    warning = None
    if not usable:
        which = f"one domain ({present[0]!r})" if present else "no domain with documents"
        hint = "" if DOMAIN_COLUMN in dataset.column_names else f" (no {DOMAIN_COLUMN!r} column)"
        warning = (
            f"{label} has {which}{hint}: domain analyses have nothing to compare and are skipped; "
            f"give documents of at least two domains to run them."
        )
    return DomainCoverage(
        names=names, documents={n: documents[n] for n in names}, usable=usable, warning=warning
    )


# A short English sentence every text tokenizer splits into ordinary tokens.
TOKENIZER_PROBE_TEXT = "The cat sat on the mat."


def check_tokenizer(tokenizer: Any, model_name: str, *, input_name: str = "--model") -> None:
    """Refuse a tokenizer that turns a short English sentence into no tokens or into special tokens only
    (e.g. one saved without a vocabulary): every text of the corpus would then be empty."""
    ids = list(tokenizer(TOKENIZER_PROBE_TEXT, add_special_tokens=False)["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", ())) - {getattr(tokenizer, "unk_token_id", None)}
    if not ids or all(token in special for token in ids):
        raise InputError(
            f"the tokenizer of {model_name} ({type(tokenizer).__name__}, vocabulary of {len(tokenizer)}) turns "
            f"{TOKENIZER_PROBE_TEXT!r} into {len(ids)} ordinary tokens; accepted: a model folder whose "
            "tokenizer files (tokenizer.json or the vocabulary files) hold the model's vocabulary.",
            input_name=input_name,
        )


# A corpus with fewer tokens than this share of --max-tokens is "far smaller than the budget".
SMALL_CORPUS_SHARE = 0.5


def corpus_tokens_up_to(dataset: Any, tokenizer: Any, limit: int, *, batch: int = 64) -> int:
    """Tokens of the corpus texts, counted until ``limit`` is reached (each text cut to ``16 · limit``
    characters, so one huge text costs no more than the budget)."""
    counted = 0
    texts = dataset[TEXT_COLUMN]
    for start in range(0, len(texts), batch):
        chunk = [str(text)[: 16 * limit] for text in texts[start : start + batch]]
        counted += sum(len(ids) for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"])
        if counted >= limit:
            break
    return counted


def warn_small_corpus(dataset: Any, tokenizer: Any, max_tokens: int, split: str | None) -> None:
    """Warn, before the pass, when the corpus holds far fewer tokens than ``--max-tokens``: every
    analysis then sees only those, and the ones that need more report themselves unavailable."""
    import warnings

    threshold = int(SMALL_CORPUS_SHARE * max_tokens)
    found = corpus_tokens_up_to(dataset, tokenizer, threshold)
    if found < threshold:
        warnings.warn(
            f"the corpus split {split!r} holds {found} tokens ({len(dataset)} documents), far fewer than "
            f"--max-tokens {max_tokens}; analyses that need more tokens will report themselves unavailable.",
            stacklevel=2,
        )


#: The analyses whose tests or intervals have a per-document gate at ``--min-documents`` on the run's
#: stream: 1, documents in all (the domain permutation test, the specialization excess interval); 2,
#: documents on each side of a document split (:func:`gate_split`: the held-out probing protocol's at
#: ``--selection-fraction``, the associations' halves). The drivers and re-weighting gate the documents of
#: their own edited forwards and warn about those in their checks.
DOCUMENT_GATES: dict[str, int] = {
    "domains": 1,
    "specialization": 1,
    "probing": 2,
    "sparsity": 2,
    "associations": 2,
}

#: The analyses whose split is the held-out protocol's (sides at ``--selection-fraction``, seeded by ``--seed``).
SELECTION_SPLIT = ("probing", "sparsity")


@dataclass(frozen=True)
class GateSplit:
    """The document split an analysis's per-document gate counts on: ``document_split``'s arguments
    (``key`` None: its default key)."""

    fractions: tuple[float, float]
    seed: int = 0
    key: str | None = None

    def side(self, doc: int) -> int:
        """The side (0 or 1) of document ``doc``."""
        from tl_moe.analysis.splits import document_split

        key = {} if self.key is None else {"key": self.key}
        return int(document_split(np.asarray([doc]), self.fractions, seed=self.seed, **key)[0])


def gate_split(analysis: str, options: Any) -> GateSplit | None:
    """The split ``analysis`` gates each side of (None: its gate counts every document): the held-out
    protocol's selection / test split for probing and the sparsity family, the halves of the associations."""
    if analysis in SELECTION_SPLIT:
        fraction = options.selection_fraction
        return GateSplit((fraction, 1 - fraction), options.seed)
    if DOCUMENT_GATES.get(analysis) == 2:
        from tl_moe.analysis.drivers import HALVES_KEY

        return GateSplit((0.5, 0.5), key=HALVES_KEY)
    return None


@dataclass(frozen=True)
class StreamDocuments:
    """The documents the run's stream reaches, counted until every gate is met.

    Attributes:
        documents: distinct documents counted.
        sides: per analysis gated on a split, its documents on each side.
        read_whole: the stream ran out of corpus before ``--max-tokens`` (more tokens reach no more documents).
    """

    documents: int
    sides: dict[str, tuple[int, int]]
    read_whole: bool


def stream_documents(dataset: Any, tokenizer: Any, seq_len: int, max_tokens: int, enough: int) -> int:
    """Documents the run's token stream reaches within ``max_tokens`` (its windows, in order), counted
    up to ``enough`` (the count stops there: no more of the corpus is read)."""
    from tl_moe.collect.batching import iter_windows

    documents: set[int] = set()
    for window in iter_windows(dataset, tokenizer, seq_len=seq_len, max_tokens=max_tokens):
        documents.add(int(window.document.doc_index))
        if len(documents) >= enough:
            break
    return len(documents)


def stream_gates(dataset: Any, tokenizer: Any, options: Any, analyses: Any) -> StreamDocuments:
    """The run's stream (its windows within ``--max-tokens``, in order) counted for the per-document
    gates of ``analyses``: documents in all and on each side of each gated split, until every gate at
    ``--min-documents`` is met (no more of the corpus is read), and whether the corpus ran out first."""
    from tl_moe.collect.batching import iter_windows

    least = options.min_documents
    splits = {a: s for a in analyses if (s := gate_split(a, options)) is not None}
    sides = {a: [0, 0] for a in splits}
    documents: set[int] = set()
    bos = int(tokenizer.bos_token_id is not None)
    emitted, capped = 0, False
    for window in iter_windows(dataset, tokenizer, seq_len=options.seq_len):  # uncapped: see where it ends
        if options.max_tokens - emitted - bos < 1:
            capped = True
            break
        emitted += min(window.token_end - window.token_start, options.max_tokens - emitted - bos) + bos
        doc = int(window.document.doc_index)
        if doc in documents:
            continue
        documents.add(doc)
        for analysis, split in splits.items():
            sides[analysis][split.side(doc)] += 1
        if len(documents) >= least and all(min(counts) >= least for counts in sides.values()):
            capped = True  # every gate met: the rest of the stream is not read
            break
    return StreamDocuments(len(documents), {a: (c[0], c[1]) for a, c in sides.items()}, not capped)


def few_documents_warning(
    documents: int,
    min_documents: int,
    analyses: Any,
    max_tokens: int,
    *,
    sides: dict[str, tuple[int, int]] | None = None,
    read_whole: bool = False,
    selection_fraction: float = 0.5,
) -> str | None:
    """One line when the run's ``documents`` are too few for the per-document gate of some of
    ``analyses`` (:data:`DOCUMENT_GATES`, at ``min_documents``): which go untested and what would fix
    it; None when every gate is met. ``sides``: the documents on each side of an analysis's split
    (:func:`gate_split`), its gate's real count (without it, half the documents are assumed on each);
    ``read_whole``: the corpus ran out before ``max_tokens`` (raising it reaches no more documents);
    ``selection_fraction``: the held-out split's (a lopsided one is named among the fixes)."""
    sides = sides or {}

    def short_of(analysis: str) -> bool:
        if analysis in sides:
            return min(sides[analysis]) < min_documents
        return documents < DOCUMENT_GATES[analysis] * min_documents

    short = [a for a in analyses if a in DOCUMENT_GATES and short_of(a)]
    if not short:
        return None

    def need(analysis: str) -> str:
        if analysis in sides:
            first, second = sides[analysis]
            split = (
                f"{first} selection / {second} test" if analysis in SELECTION_SPLIT else f"{first} / {second}"
            )
            return f"{analysis} (needs {min_documents} on each side of its document split: {split})"
        return f"{analysis} (needs {min_documents}{' on each half' if DOCUMENT_GATES[analysis] == 2 else ''})"

    reach = (
        f"the corpus holds only {documents} documents (read whole within --max-tokens {max_tokens})"
        if read_whole
        else f"the run's stream (--max-tokens {max_tokens}) reaches only {documents} documents"
    )
    fixes = ["use a corpus with more documents", "or lower --min-documents"]
    if not read_whole:
        fixes.insert(0, "raise --max-tokens")
    if selection_fraction != 0.5 and any(a in SELECTION_SPLIT and a in sides for a in short):
        fixes.insert(-1, "move --selection-fraction toward 0.5")
    return (
        f"--min-documents {min_documents}: {reach}, so these tests and intervals will be unavailable: "
        f"{', '.join(need(a) for a in short)}; {', '.join(fixes)}."
    )


def warn_few_documents(dataset: Any, tokenizer: Any, options: Any, analyses: Any) -> str | None:
    """Warn, before the passes, when the run's stream reaches too few documents for the per-document
    gate of a chosen analysis, counted on each side of the split it gates (:func:`stream_gates`,
    :func:`few_documents_warning`); returns the warning (None: no warning)."""
    import warnings

    if not any(a in DOCUMENT_GATES for a in analyses):
        return None
    stream = stream_gates(dataset, tokenizer, options, analyses)
    message = few_documents_warning(
        stream.documents,
        options.min_documents,
        analyses,
        options.max_tokens,
        sides=stream.sides,
        read_whole=stream.read_whole,
        selection_fraction=options.selection_fraction,
    )
    if message is not None:
        warnings.warn(message, stacklevel=2)
    return message
