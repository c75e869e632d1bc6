"""Concept span finders on hand-written examples, and token alignment against a brute-force reference."""

from __future__ import annotations

import re

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tl_moe.data.concepts import (
    CONCEPTS,
    Concept,
    applicable_concepts,
    concepts_table,
    document_concept,
    label_text,
    label_tokens,
    merge_spans,
    resolve_concepts,
)
from tl_moe.zoo.tokenizer import load_tokenizer

OPEN, CLOSE = "⟦", "⟧"


def parse_marked(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """Text with ⟦...⟧ around each expected span (they may nest) -> (plain text, expected spans)."""
    text, spans, open_starts = [], [], []
    position = 0
    for char in marked:
        if char == OPEN:
            open_starts.append(position)
        elif char == CLOSE:
            spans.append((open_starts.pop(), position))
        else:
            text.append(char)
            position += 1
    return "".join(text), spans


# One or more hand-marked examples per concept. Within an example every expected span is marked.
CASES: dict[str, list[str]] = {
    # --- code -------------------------------------------------------------------------------
    "code_keyword": ["⟦def⟧ f(x):\n    ⟦return⟧ x ⟦if⟧ x ⟦is⟧ ⟦not⟧ ⟦None⟧ ⟦else⟧ 0\n"],
    "code_identifier": ["⟦total⟧ = ⟦len⟧(⟦items⟧) + ⟦self⟧.⟦count⟧\n"],
    "code_def_name": ["async def ⟦fetch⟧(url):\n    pass\n", "def ⟦g⟧(): pass\nx = g()\n"],
    "code_class_name": ["class ⟦Point⟧(Base):\n    x = 1\n", "@dataclass\nclass ⟦Box⟧:\n    pass\n"],
    "code_parameter": [
        "def f(⟦self⟧, ⟦x⟧: int = 3, *⟦args⟧, ⟦key⟧=g(a, b), **⟦kwargs⟧) -> int:\n    pass\n",
        "async def h(⟦a⟧, /, ⟦b⟧):\n    pass\n",
    ],
    "code_function_call": ["y = ⟦max⟧(a, b) + obj.⟦run⟧ (1)\ndef f(x):\n    return ⟦g⟧(x)\n"],
    "code_attribute": ["os.⟦path⟧.⟦join⟧(a, b.⟦name⟧)\n"],
    "code_builtin_name": ["n = ⟦len⟧(x) + obj.len\nraise ⟦ValueError⟧(⟦str⟧(n))\n"],
    "code_self": ["def m(⟦self⟧):\n    return ⟦self⟧.x, ⟦cls⟧\n"],
    "code_string": ['a = ⟦\'x\'⟧ + ⟦f"{b}"⟧ + ⟦b\'\\x00\'⟧\ns = ⟦"""multi\nline"""⟧\n'],
    "code_docstring": [
        '⟦"""Module doc."""⟧\nimport os\n\n\ndef f():\n    ⟦"""Function doc."""⟧\n    x = "not a docstring"\n',
        'class C:\n    ⟦"doc"⟧\n    def m(self): "one-liner bodies are not counted"\n',
    ],
    "code_comment": ["x = 1  ⟦# one⟧\n⟦# two⟧\ns = '# not a comment'\n"],
    "code_number": ["x = ⟦3⟧ + ⟦0x1F⟧ * ⟦2.5e-3⟧ - y1\n"],
    "code_operator": ["x ⟦=⟧ a ⟦+⟧ b ⟦**⟧ 2\nif a ⟦<=⟧ b ⟦!=⟧ c: y ⟦+=⟧ 1\n"],
    "code_open_bracket": ["f⟦(⟧a⟦[⟧0], ⟦{⟧1: 2})\n"],
    "code_close_bracket": ["f(a[0⟦]⟧, {1: 2⟦}⟧⟦)⟧\n"],
    "code_decorator": ["⟦@property⟧\n⟦@functools.lru_cache(maxsize=2)⟧\ndef f(self): return a @ b\n"],
    "code_import": ["⟦import os, sys⟧\n⟦from a.b import (c,\n    d)⟧\nx = 1\n"],
    "code_assignment_target": [
        "⟦x⟧ = 1\n⟦self.total⟧ += f(a=1)\n⟦a, b⟧ = b, a\nf(k=2)\n⟦key⟧ = lambda v=0: v\n",
        "⟦n: int⟧ = 3\nif (m := 2): pass\n",
    ],
    "code_control_flow": [
        "⟦if⟧ a:\n    ⟦pass⟧\n⟦elif⟧ b:\n    ⟦return⟧\n⟦else⟧:\n    ⟦raise⟧ E\nfor i in x: ⟦break⟧\n"
    ],
    "code_loop": ["⟦for⟧ i in range(3):\n    ⟦while⟧ i: i -= 1\ny = [j ⟦for⟧ j in x]\n"],
    "code_indentation": ["def f():\n⟦    ⟧x = (1,\n         2)\n⟦    ⟧if x:\n⟦        ⟧return\n"],
    # --- latex ------------------------------------------------------------------------------
    "latex_math": ["Let $⟦x+1⟧$ and \\[⟦y^2⟧\\] or $$⟦z⟧$$ cost \\$5."],
    "latex_inline_math": ["Let $⟦a⟧$ and \\(⟦b_1⟧\\) but $$c$$."],
    "latex_display_math": [
        "Let $a$ and $$⟦b⟧$$ then \\[⟦c⟧\\] and\n\\begin{equation}⟦d = 1⟧\\end{equation}",
        "\\begin{align*}⟦x &= 1⟧\\end{align*} but \\begin{matrix}1\\end{matrix}",
    ],
    "latex_math_delimiter": ["⟦$⟧x⟦$⟧ and ⟦\\[⟧y⟦\\]⟧ and ⟦\\begin{equation}⟧z⟦\\end{equation}⟧ \\$"],
    "latex_command": ["$⟦\\frac⟧{a}{b} + ⟦\\alpha⟧ \\, x \\\\ y$"],
    "latex_greek_letter": ["$⟦\\alpha⟧ + ⟦\\Omega⟧ + \\alphabet$"],
    "latex_big_operator": ["$⟦\\sum⟧_{k} ⟦\\int⟧ f + ⟦\\lim⟧ g \\sin x$"],
    "latex_function_name": ["$⟦\\sin⟧ x + ⟦\\log⟧{y} + \\sum z$"],
    "latex_superscript": ["$x^⟦2⟧ + y^{⟦n+1⟧} + e^⟦\\alpha⟧ + z^{⟦a^⟦b⟧⟧}$"],
    "latex_subscript": ["$x_⟦i⟧ + y_{⟦i,j⟧} + \\sum_{⟦k=1⟧}^{n}$"],
    "latex_frac_numerator": ["$\\frac{⟦a+1⟧}{b} + \\dfrac⟦1⟧2 + \\frac{⟦\\frac{⟦c⟧}{d}⟧}{e}$"],
    "latex_frac_denominator": ["$\\frac{a+1}{⟦b⟧} + \\dfrac1⟦2⟧ + \\frac{\\frac{c}{⟦d⟧}}{⟦e⟧}$"],
    "latex_sqrt_argument": ["$\\sqrt{⟦x+1⟧} + \\sqrt[3]{⟦y⟧} + \\sqrt ⟦z⟧$"],
    "latex_open_brace": ["$\\frac⟦{⟧a⟦{⟧b}}⟦{⟧c} \\{ $"],
    "latex_close_brace": ["$\\frac{a{b⟦}⟧⟦}⟧ \\} $"],
    "latex_left_right": ["$⟦\\left(⟧x⟦\\right)⟧ + ⟦\\left\\{⟧y⟦\\right.⟧$"],
    "latex_environment": ["⟦\\begin{equation}⟧ ⟦\\begin{matrix}⟧1⟦\\end{matrix}⟧ ⟦\\end{equation}⟧"],
    "latex_alignment": ["$\\begin{matrix}1 ⟦&⟧ 2 ⟦\\\\⟧ 3 ⟦&⟧ 4\\end{matrix}$ and A & B outside"],
    # --- text -------------------------------------------------------------------------------
    "text_capitalized_word": ["⟦Hello⟧ NASA, ⟦I⟧ saw ⟦Émile⟧ and ⟦McDonald⟧ xY"],
    "text_all_caps_word": ["The ⟦NASA⟧ and ⟦ÜBER⟧ team, I A ok"],
    "text_lowercase_word": ["The ⟦cat⟧ ⟦naïve⟧ OK ⟦x⟧2 Hi"],
    "text_long_word": ["a ⟦internationally⟧ known ⟦consequence⟧ short"],
    "text_whitespace_led_word": ["One ⟦two⟧,three\n⟦four⟧\t⟦five⟧ (six)"],
    "text_sentence_start": [
        '⟦This⟧ is it. ⟦Next⟧ one! ⟦Why⟧? ⟦Because⟧\n\n⟦New⟧ paragraph. "⟦Quoted⟧ start." ¿⟦Qué⟧?',
    ],
    "text_line_start": ["⟦first⟧ line\n  ⟦second⟧ line\n\n⟦#third⟧"],
    "text_digit": ["Room ⟦101⟧ at ⟦3⟧.⟦14⟧ x⟦2⟧"],
    "text_punctuation": ["Hi⟦,⟧ you⟦!⟧ ⟦(⟧a⟦)⟧ b⟦...⟧ ⟦¿⟧c⟦?⟧ 1 + 2"],
    "text_symbol": ["a ⟦+⟧ b ⟦=⟧ c ⟦$⟧5 ⟦©⟧ x⟦^⟧2 ⟦<>⟧, ok"],
    "text_non_ascii": ["caf⟦é⟧ and ⟦日本⟧ or ⟦—⟧ x"],
    "text_newline": ["a⟦\n⟧b⟦\n\n⟧c"],
    "text_url": ["see ⟦https://example.org/a?b=1⟧ and ⟦www.python.org⟧, not ftp:x"],
    "text_email": ["mail ⟦jane.doe+x@mail.example.com⟧ or @handle"],
    "text_hyphenated_word": ["a ⟦well-known⟧ ⟦state-of-the-art⟧ - x -y"],
    "text_contraction": ["⟦don't⟧ ⟦l'homme⟧ 'quote' ⟦it’s⟧"],
    "text_parenthesized": ["f(⟦a⟧) and (⟦b (⟦c⟧) d⟧) but () is (⟦ ⟧) and )("],
    "text_quoted": ['he said "⟦hello there⟧" and “⟦bonjour⟧” but "open\nline"'],
}


def _case_ids():
    return [(name, marked) for name, examples in CASES.items() for marked in examples]


def test_every_span_concept_has_a_hand_written_case():
    span_concepts = {name for name, concept in CONCEPTS.items() if concept.document_field is None}
    assert span_concepts == set(CASES)


@pytest.mark.parametrize(
    ("name", "marked"), _case_ids(), ids=[f"{n}-{i}" for i, (n, _) in enumerate(_case_ids())]
)
def test_concept_spans_match_hand_marked_examples(name, marked):
    text, expected = parse_marked(marked)
    assert sorted(CONCEPTS[name].spans(text)) == sorted(expected)


def test_registry_has_enough_concepts_in_every_group():
    table = concepts_table()
    assert len(table) >= 40
    counts = table.groupby("group").size()
    assert counts["code"] >= 15 and counts["latex"] >= 10 and counts["text"] >= 10
    assert {"language", "domain"} <= set(counts.index)
    assert table["name"].is_unique and (table["description"].str.len() > 10).all()


def test_document_concepts_mark_every_token_of_matching_documents_only():
    concepts = [document_concept("language", "es"), document_concept("domain", "chat")]
    offsets = [(0, 0), (0, 4), (4, 8)]  # a special token with an empty span, then two tokens
    labels = label_tokens("Hola amigo", offsets, concepts, domain="chat", language="es")
    assert labels.tolist() == [[False, False], [True, True], [True, True]]
    labels = label_tokens("Hello mate", offsets, concepts, domain="chat", language="en")
    assert labels.tolist() == [[False, False], [False, True], [False, True]]
    with pytest.raises(ValueError, match="language"):
        document_concept("genre", "poetry")


def test_label_tokens_uses_overlap_of_half_open_spans():
    concept = Concept(
        "upper",
        "text",
        "upper-case letters",
        lambda text: [(m.start(), m.end()) for m in re.finditer("[A-Z]+", text)],
    )
    text = "abCDef gH"
    # tokens: "ab" (0,2) touches the span (2,4) only at its boundary; "Cd"-like (2,3) inside;
    # (3,6) overlaps by one char; (6,7) a space; (7,9) "gH" overlaps (8,9); (0,0) is empty.
    offsets = torch.tensor([[0, 2], [2, 3], [3, 6], [6, 7], [7, 9], [0, 0]])
    labels = label_tokens(text, offsets, [concept])
    assert labels[:, 0].tolist() == [False, True, True, False, True, False]


def test_concepts_outside_their_domains_give_all_false_columns():
    text = "def f(x):\n    return x\n"
    offsets = [(0, 3), (3, 5), (5, len(text))]
    labels = label_tokens(text, offsets, ["code_keyword", "text_lowercase_word"], domain="prose")
    assert labels[:, 0].tolist() == [False, False, False]
    assert labels[:, 1].tolist() == [True, True, True]
    applicable = applicable_concepts(["code_keyword", "latex_math", "text_digit"], ["python", "math", None])
    assert applicable.tolist() == [[True, False, True], [False, True, True], [True, True, True]]


def test_merge_spans_clips_drops_empty_and_merges():
    assert merge_spans([(4, 99), (2, 4), (5, 5), (-2, 0), (-2, 1), (7, 9)], n_chars=8) == [(0, 1), (2, 8)]
    assert merge_spans([(6, 7), (1, 2), (3, 4)], n_chars=10) == [(1, 2), (3, 4), (6, 7)]


def test_overlapping_spans_of_one_concept_and_many_concepts_align_like_brute_force():
    text = "abcdefghij"
    spans_by_concept = [[(1, 3), (2, 6)], [], [(0, 10)], [(9, 12)], [(4, 5), (5, 6)]]
    concepts = [
        Concept(f"c{i}", "text", "test", lambda t, spans=spans: spans)
        for i, spans in enumerate(spans_by_concept)
    ]
    offsets = [(0, 1), (0, 2), (3, 3), (5, 6), (6, 9), (9, 10), (0, 0)]
    expected = [
        [any(a < e and s < b for a, b in spans) and e > s for spans in spans_by_concept] for s, e in offsets
    ]
    assert label_tokens(text, offsets, concepts).tolist() == expected


def test_unknown_concept_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="code_keyword"):
        resolve_concepts(["no_such_concept"])


def character_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A tokenizer with one token per character, built from the characters of ``texts``."""
    alphabet = sorted(set("".join(texts)))
    vocab = {"[UNK]": 0} | {char: index + 1 for index, char in enumerate(alphabet)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


SAMPLE_DOCUMENTS = [
    ("python", "python", '@cache\ndef área(self, x=2):\n    """Doc."""\n    return len(x) ** 2  # ok\n'),
    ("math", "latex", "Hence $\\frac{x^{2}}{y_1} = \\sqrt[3]{\\alpha}$.\n$$\\sum_{k=1}^{n} k$$"),
    ("chat", "es", "¿Cómo estás? Muy bien, gracias (y tú).\nVisita https://ejemplo.es ahora."),
    ("legal", "en", 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY; see Section 4(b).'),
]


def brute_force_labels(text, offsets, concepts, domain, language):
    """Token t is positive for concept c iff some span (a, b) of c has a < end_t and start_t < b."""
    rows = []
    for start, end in offsets:
        row = []
        for concept in concepts:
            spans = concept.spans(text, domain, language) if concept.applies(domain) else []
            row.append(any(a < end and start < b for a, b in spans))
        rows.append(row)
    return rows


@pytest.mark.parametrize("tokenizer_kind", ["shipped_bpe", "characters"])
def test_alignment_matches_brute_force_for_two_tokenizers(tokenizer_kind):
    texts = [text for _, _, text in SAMPLE_DOCUMENTS]
    tokenizer = load_tokenizer() if tokenizer_kind == "shipped_bpe" else character_tokenizer(texts)
    concepts = resolve_concepts()
    for domain, language, text in SAMPLE_DOCUMENTS:
        input_ids, labels = label_text(text, tokenizer, concepts, domain=domain, language=language)
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        assert labels.shape == (len(input_ids), len(concepts))
        assert labels.tolist() == brute_force_labels(text, offsets, concepts, domain, language)
        assert labels.any(dim=0).sum() >= 5  # several concepts fire on every sample
        if tokenizer_kind == "characters":
            assert len(input_ids) == len(text)


def test_character_tokens_reproduce_the_character_mask():
    domain, language, text = SAMPLE_DOCUMENTS[1]
    tokenizer = character_tokenizer([text])
    _, labels = label_text(text, tokenizer, ["latex_frac_numerator", "latex_superscript"], domain, language)
    numerator = [i for i, flag in enumerate(labels[:, 0].tolist()) if flag]
    superscript = "".join(text[i] for i, flag in enumerate(labels[:, 1].tolist()) if flag)
    assert "".join(text[i] for i in numerator) == "x^{2}"
    assert superscript == "2n"
