"""The project's byte-level BPE tokenizer: training it, and loading the one shipped with the package.

The shipped ``tokenizer.json`` (vocabulary 4096) was trained on the ``train`` split of the embedded
corpus v2 (see :mod:`tl_moe.data.corpus`), the corpus the toy zoo is trained on; regenerate it with ``python -m tl_moe.zoo.tokenizer``.
Byte-level means every string round-trips exactly (no unknown token); offsets map each token to
its characters in the input (a token that holds part of a multi-byte character maps to the whole
character).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (END_OF_TEXT, PAD)
SHIPPED_TOKENIZER_PATH = Path(__file__).with_name("tokenizer.json")
SHIPPED_VOCAB_SIZE = 4096


def wrap_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """A ``transformers`` fast tokenizer around ``tokenizer`` with our special tokens declared.

    ``<|endoftext|>`` is the bos and eos token; ``<|pad|>`` pads (on the right). No special
    token is added automatically when encoding.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = SHIPPED_VOCAB_SIZE, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Args:
        texts: training documents.
        vocab_size: size of the vocabulary, special tokens and the 256 byte symbols included.
        min_frequency: a pair must occur at least this often to be merged.

    Returns:
        a fast tokenizer with special tokens ``<|endoftext|>`` (id 0) and ``<|pad|>`` (id 1) that
        supports ``return_offsets_mapping``.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tokenizer)


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer saved at ``path`` as a ``tokenizers`` JSON file (default: the shipped one)."""
    if path is None:
        # A saved Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json), so that
        # TransformerLens can reload it by name (it does, to set add_bos_token).
        return PreTrainedTokenizerFast.from_pretrained(SHIPPED_TOKENIZER_PATH.parent)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}; expected a tokenizers JSON file")
    return wrap_tokenizer(Tokenizer.from_file(str(path)))


def train_shipped_tokenizer(path: str | Path = SHIPPED_TOKENIZER_PATH) -> PreTrainedTokenizerFast:
    """Train the shipped tokenizer on the ``train`` split of the embedded corpus v2 and save it to ``path``."""
    from tl_moe.data.corpus import build_corpus

    tokenizer = train_tokenizer(build_corpus(version="v2")["train"]["text"], vocab_size=SHIPPED_VOCAB_SIZE)
    tokenizer.backend_tokenizer.save(str(path), pretty=False)
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the shipped tokenizer on the embedded corpus.")
    parser.add_argument("--output", default=str(SHIPPED_TOKENIZER_PATH), help="where to write tokenizer.json")
    arguments = parser.parse_args(argv)
    tokenizer = train_shipped_tokenizer(arguments.output)
    size_kb = Path(arguments.output).stat().st_size / 1024
    print(f"wrote {arguments.output}: vocabulary {len(tokenizer)}, {size_kb:.0f} KiB")


if __name__ == "__main__":
    main()
