"""The error every known bad input raises: a one-line message naming the input and what is accepted.

The command line prints these without a traceback; any other exception is a bug and keeps its
traceback. Library code raises a subclass (they are also ``ValueError``s, so ``except ValueError``
keeps working in user code).
"""

from __future__ import annotations

__all__ = ["AnalysisUnavailable", "InputError"]


class InputError(ValueError):
    """A user-supplied input (model, corpus, option, file) is not acceptable; the message says why.

    Attributes:
        input: the input it names (``"--seq-len"``, ``"device="``) when the raiser knows it, else None.
    """

    def __init__(self, message: str, *, input_name: str | None = None) -> None:
        super().__init__(message)
        self.input = input_name


class AnalysisUnavailable(InputError):
    """An analysis cannot give a result on what this run collected (e.g. a corpus too small for it).

    Raised by an analysis's finalize step after the pass; the pipeline then reports that analysis as
    unavailable, with this message as the reason, and completes the others.
    """
