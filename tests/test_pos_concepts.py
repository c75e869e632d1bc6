"""Part-of-speech concepts (opt-in, library v2) on hand-tagged sentences, their scope and their opt-in."""

from __future__ import annotations

import pytest
import torch

from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.concept_probing import concept_populations
from tl_moe.data.concepts import (
    CONCEPTS,
    POS_CONCEPTS,
    applicable_concepts,
    concept_library,
    concepts_for_corpus,
    label_text,
    label_tokens,
    resolve_concepts,
)
from tl_moe.data.spans import pos as pos_module
from tl_moe.errors import InputError
from tl_moe.zoo.tokenizer import load_tokenizer

needs_tagger = pytest.mark.skipif(
    not pos_module.tagger_available(), reason="the spaCy English pipeline (corpus-v2 extra) is not installed"
)

# Sentences written for this test, each word tagged by hand with its Universal POS tag
# (the word's first occurrence after the previous tagged word). Punctuation is not tagged.
HAND_TAGGED = [
    (
        "The old man quickly opened the heavy door and walked into the garden.",
        [
            ("The", "DET"),
            ("old", "ADJ"),
            ("man", "NOUN"),
            ("quickly", "ADV"),
            ("opened", "VERB"),
            ("the", "DET"),
            ("heavy", "ADJ"),
            ("door", "NOUN"),
            ("and", "CCONJ"),
            ("walked", "VERB"),
            ("into", "ADP"),
            ("the", "DET"),
            ("garden", "NOUN"),
        ],
    ),
    (
        "She has not eaten because they were late.",
        [
            ("She", "PRON"),
            ("has", "AUX"),
            ("not", "PART"),
            ("eaten", "VERB"),
            ("because", "SCONJ"),
            ("they", "PRON"),
            ("were", "AUX"),
            ("late", "ADJ"),
        ],
    ),
    (
        "Oh, Maria bought three apples in London.",
        [
            ("Oh", "INTJ"),
            ("Maria", "PROPN"),
            ("bought", "VERB"),
            ("three", "NUM"),
            ("apples", "NOUN"),
            ("in", "ADP"),
            ("London", "PROPN"),
        ],
    ),
    (
        "I want to swim, but the water is very cold.",
        [
            ("I", "PRON"),
            ("want", "VERB"),
            ("to", "PART"),
            ("swim", "VERB"),
            ("but", "CCONJ"),
            ("the", "DET"),
            ("water", "NOUN"),
            ("is", "AUX"),
            ("very", "ADV"),
            ("cold", "ADJ"),
        ],
    ),
    (
        "If it rains, we will stay at home with our 2 dogs.",
        [
            ("If", "SCONJ"),
            ("it", "PRON"),
            ("rains", "VERB"),
            ("we", "PRON"),
            ("will", "AUX"),
            ("stay", "VERB"),
            ("at", "ADP"),
            ("home", "NOUN"),
            ("with", "ADP"),
            ("our", "PRON"),
            ("2", "NUM"),
            ("dogs", "NOUN"),
        ],
    ),
]


def word_spans(sentence: str, words: list[tuple[str, str]]) -> list[tuple[tuple[int, int], str]]:
    """Each hand-tagged word's character span, searching left to right."""
    spans, position = [], 0
    for word, tag in words:
        start = sentence.index(word, position)
        spans.append(((start, start + len(word)), tag))
        position = start + len(word)
    return spans


@needs_tagger
@pytest.mark.parametrize(("sentence", "words"), HAND_TAGGED, ids=[s[:20] for s, _ in HAND_TAGGED])
def test_pos_concepts_match_hand_tagged_words(sentence, words):
    spans = {name: set(concept.spans(sentence, "prose", "en")) for name, concept in POS_CONCEPTS.items()}
    for span, tag in word_spans(sentence, words):
        assert span in spans[f"pos_{tag}"], (sentence[span[0] : span[1]], tag)
        others = [name for name, found in spans.items() if span in found and name != f"pos_{tag}"]
        assert not others, (sentence[span[0] : span[1]], others)
    assert not any(sentence[a:b] in ",." for found in spans.values() for a, b in found)  # no punctuation


@needs_tagger
def test_pos_labels_align_to_the_shipped_tokenizer():
    sentence, words = HAND_TAGGED[0]
    names = ["pos_NOUN", "pos_ADJ", "pos_VERB"]
    tokenizer = load_tokenizer()
    encoding = tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)
    _, labels = label_text(sentence, tokenizer, names, domain="prose", language="en")
    tagged = word_spans(sentence, words)
    for token, (start, end) in enumerate(encoding["offset_mapping"]):
        for column, name in enumerate(names):
            expected = any(
                f"pos_{tag}" == name and start < b and a < end and start < end for (a, b), tag in tagged
            )
            assert bool(labels[token, column]) == expected, (sentence[start:end], name)


@needs_tagger
def test_pos_concepts_are_undefined_outside_english_prose_and_chat():
    text = "The dog runs."
    offsets = [(0, 3), (3, 7), (7, 12), (12, 13)]
    noun = ["pos_NOUN"]
    assert label_tokens(text, offsets, noun, domain="chat", language="en")[:, 0].tolist() == [
        False,
        True,
        False,
        False,
    ]
    assert not label_tokens(text, offsets, noun, domain="chat", language="es").any()
    assert not label_tokens(text, offsets, noun, domain="python", language="python").any()
    applicable = applicable_concepts(
        noun + ["text_digit"], ["prose", "chat", "chat", "legal"], ["en", "en", "es", "en"]
    )
    assert applicable.tolist() == [[True, True], [True, True], [False, True], [False, True]]


def test_probing_populations_leave_out_non_english_chat_tokens():
    names = ("pos_NOUN", "language_en", "text_digit")
    # tokens: prose/en, chat/en, chat/es, python
    labels = torch.tensor(
        [[True, True, False], [False, True, False], [False, False, False], [False, False, True]]
    )
    stored = StoredTokens(
        token_index=torch.arange(4),
        input_ids=torch.arange(4),
        domain=torch.tensor([0, 1, 1, 2]),
        labels=labels,
        rows={},
        domain_names=("prose", "chat", "python"),
        concept_names=names,
    )
    populations = {tuple(columns): mask.tolist() for columns, mask in concept_populations(stored)}
    assert populations[(0,)] == [True, True, False, False]
    assert populations[(1, 2)] == [True, True, True, True]


def test_pos_group_is_opt_in(monkeypatch):
    assert not any(name.startswith("pos_") for name in CONCEPTS)
    assert [c.name for c in resolve_concepts(None)] == list(CONCEPTS)
    assert set(concept_library("v2")) == set(CONCEPTS) | set(POS_CONCEPTS)
    assert len(POS_CONCEPTS) == 14 and {c.group for c in POS_CONCEPTS.values()} == {"pos"}
    for spec in (None, "embedded", "embedded:v1", "my_corpus.jsonl"):
        assert [c.name for c in concepts_for_corpus(spec)] == list(CONCEPTS)
    monkeypatch.setattr(pos_module, "tagger_available", lambda: True)
    assert [c.name for c in concepts_for_corpus("embedded:v2")] == list(concept_library("v2"))
    monkeypatch.setattr(pos_module, "tagger_available", lambda: False)
    with pytest.raises(InputError, match=r"embedded:v2.*tl_moe\[corpus-v2\]"):
        concepts_for_corpus("embedded:v2")
    with pytest.raises(KeyError, match="v1, v2"):
        concept_library("v3")
