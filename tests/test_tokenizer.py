"""The shipped byte-level BPE tokenizer and training a new one."""

from __future__ import annotations

import pytest

from tl_moe.zoo.tokenizer import (
    END_OF_TEXT,
    PAD,
    SHIPPED_TOKENIZER_PATH,
    SHIPPED_VOCAB_SIZE,
    load_tokenizer,
    train_tokenizer,
)

# Hand-written texts in the style of every corpus domain, several with non-ASCII characters.
DOMAIN_SAMPLES = {
    "python": 'def área(x: int) -> str:\n    """Return «x»."""\n\treturn f"{x!r:>8}"  # ok\n',
    "c": "#ifndef Py_OBJECT_H\nstatic inline int Py_IS_TYPE(PyObject *ob) {\n    return ob->ob_type == NULL;\n}\n",
    "legal": 'THE SOFTWARE IS PROVIDED "AS IS" — © 2024 Jürgen Müller; Ⅻ § 3(b).',
    "biomedical": "Microcephaly: head circumference < −2 SD; 5–10 µm cysts (HP:0000252).",
    "chat": "¿Cómo estás?\nÇa va très bien, merci !\nКак дела? Всё хорошо.\nWie geht's? Schön.",
    "math": "Hence $\\frac{\\alpha^{2}}{\\sqrt[3]{x_1}} \\leq \\sum_{k=1}^{\\infty} k$.\n$$A = \\left[\\begin{matrix}1 & 2\\end{matrix}\\right]$$",
    "prose": "The  weird\u00a0spacing,\r\ntabs\t and 日本語 and emoji 🙂👍🏽 and combining e\u0301 stay intact.",
}


@pytest.fixture(scope="module")
def shipped():
    return load_tokenizer()


def test_shipped_tokenizer_file_is_small_and_has_our_vocabulary(shipped):
    assert SHIPPED_TOKENIZER_PATH.stat().st_size < 2 * 1024 * 1024
    assert len(shipped) == SHIPPED_VOCAB_SIZE == 4096
    assert shipped.convert_tokens_to_ids([END_OF_TEXT, PAD]) == [0, 1]
    assert shipped.bos_token == shipped.eos_token == END_OF_TEXT and shipped.pad_token == PAD
    assert shipped("hello")["input_ids"] == shipped("hello", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("domain", sorted(DOMAIN_SAMPLES))
def test_round_trip_is_exact_on_every_domain(shipped, domain):
    text = DOMAIN_SAMPLES[domain]
    ids = shipped(text, add_special_tokens=False)["input_ids"]
    assert shipped.decode(ids) == text


@pytest.mark.parametrize("domain", sorted(DOMAIN_SAMPLES))
def test_offsets_cover_the_text_in_order(shipped, domain):
    text = DOMAIN_SAMPLES[domain]
    offsets = shipped(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    covered = [False] * len(text)
    previous_start = 0
    for start, end in offsets:
        assert 0 <= start < end <= len(text)
        assert start >= previous_start  # tokens come in text order
        previous_start = start
        covered[start:end] = [True] * (end - start)
    assert all(covered)


def test_offsets_of_ascii_words_are_exact(shipped):
    text = "return value"
    encoding = shipped(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = [text[start:end] for start, end in encoding["offset_mapping"]]
    assert "".join(pieces) == text  # ASCII tokens never overlap: their spans tile the text


def test_shipped_tokenizer_compresses_corpus_like_text(shipped):
    text = DOMAIN_SAMPLES["legal"] + " Permission is hereby granted, free of charge, to any person."
    assert len(shipped(text)["input_ids"]) < len(text.encode("utf-8")) / 2


def test_padding_uses_the_pad_token_on_the_right(shipped):
    batch = shipped(["a", "a b c d"], padding=True)
    first, second = batch["input_ids"]
    assert len(first) == len(second)
    assert first[-1] == 1 and batch["attention_mask"][0][-1] == 0 and batch["attention_mask"][0][0] == 1


def test_train_tokenizer_learns_frequent_words_and_round_trips():
    texts = ["the cat sat on the mat. " * 20, "über naïve café " * 20, "x = y + 1\n" * 20]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    assert 258 < len(tokenizer) <= 300
    assert tokenizer.convert_tokens_to_ids([END_OF_TEXT, PAD]) == [0, 1]
    assert len(tokenizer(" the", add_special_tokens=False)["input_ids"]) == 1
    unseen = "Ünseen ✓ text\n"
    assert tokenizer.decode(tokenizer(unseen)["input_ids"]) == unseen


def test_train_tokenizer_rejects_a_vocabulary_smaller_than_the_bytes():
    with pytest.raises(ValueError, match="at least 258"):
        train_tokenizer(["abc"], vocab_size=100)


def test_load_tokenizer_reports_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
