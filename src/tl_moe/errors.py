"""The error every known bad input raises: a one-line message naming the input and what is accepted.

The command line prints these without a traceback; any other exception is a bug and keeps its
traceback. Library code raises a subclass (they are also ``ValueError``s, so ``except ValueError``
keeps working in user code).
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A user-supplied input (model, corpus, option, file) is not acceptable; the message says why."""
