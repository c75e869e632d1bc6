from tl_moe.data.concepts import (
    CONCEPTS,
    Concept,
    TokenConceptLabeler,
    applicable_concepts,
    concepts_table,
    document_concept,
    label_text,
    label_tokens,
)
from tl_moe.data.corpus import build_corpus, corpus_stats, load_corpus, split_of

__all__ = [
    "CONCEPTS",
    "Concept",
    "TokenConceptLabeler",
    "applicable_concepts",
    "build_corpus",
    "concepts_table",
    "corpus_stats",
    "document_concept",
    "label_text",
    "label_tokens",
    "load_corpus",
    "split_of",
]
