"""Domain ``chat``: short multilingual dialogues from the ``chatterbot-corpus`` package's YAML files."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path

import yaml

from tl_moe.data.sources.base import Document, DomainSource, pack_blocks

TARGET_CHUNK_CHARS = 1000
CHAT_LANGUAGES = {
    "english": "en",
    "spanish": "es",
    "german": "de",
    "french": "fr",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
    "russian": "ru",
}
"""Folders of the corpus that are read, and the ISO 639-1 code each becomes in the ``language`` column."""

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def chat_data_dir() -> Path | None:
    """The ``data`` folder of the installed ``chatterbot_corpus`` package, or ``None``."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location, "data")
        if path.is_dir():
            return path
    return None


def conversations_of(yaml_text: str) -> list[str]:
    """Each conversation of a chatterbot YAML file as one text, one message per line."""
    data = yaml.load(yaml_text, Loader=_YAML_LOADER)
    if not isinstance(data, dict):
        return []
    texts = []
    for conversation in data.get("conversations") or []:
        messages = conversation if isinstance(conversation, list) else [conversation]
        lines = [str(message).strip() for message in messages if message is not None and str(message).strip()]
        if lines:
            texts.append("\n".join(lines))
    return texts


def _language_documents(folder: Path, language: str, rng: random.Random) -> list[Document]:
    documents = []
    for path in sorted(folder.glob("*.yml")):
        conversations = conversations_of(path.read_text(encoding="utf-8"))
        for chunk in pack_blocks(conversations, TARGET_CHUNK_CHARS):
            source = f"chatterbot-corpus:{folder.name}/{path.name}"
            documents.append(Document(text=chunk, domain="chat", language=language, source=source))
    rng.shuffle(documents)
    return documents


def iter_chat_documents(rng: random.Random) -> Iterator[Document]:
    """Chunks of about 1 KB of conversations, taking languages in turn so that a budget is shared fairly."""
    data_dir = chat_data_dir()
    if data_dir is None:
        return
    queues = [
        _language_documents(data_dir / folder, language, rng)
        for folder, language in CHAT_LANGUAGES.items()
        if (data_dir / folder).is_dir()
    ]
    position = 0
    while any(position < len(queue) for queue in queues):
        for queue in queues:
            if position < len(queue):
                yield queue[position]
        position += 1


CHAT_SOURCE = DomainSource(
    domain="chat",
    description="Multilingual chatbot dialogues (" + ", ".join(CHAT_LANGUAGES) + ") from chatterbot-corpus.",
    iter_documents=iter_chat_documents,
    packages=("chatterbot-corpus",),
    licence="BSD-3-Clause",
)
