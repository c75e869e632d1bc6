"""Character-span finders behind the token-level concepts: each maps a text to ``[(start, end), ...]``.

``start`` / ``end`` are character offsets into the text, end exclusive, like Python slices.
"""

Span = tuple[int, int]
