"""The config of the associations analysis (token–expert association and the drivers' position effect)."""

from __future__ import annotations

from dataclasses import dataclass

from tl_moe.errors import InputError
from tl_moe.settings import is_integer, option

__all__ = ["AssociationsConfig"]


@dataclass(frozen=True)
class AssociationsConfig:
    """Which token ids are tested, and which positions of a segment are early."""

    min_count: int = option(
        20, "associations: occurrences (selection half) a token id needs to be tested", parse=int
    )
    min_token_documents: int = option(
        5,
        "associations: documents (selection half) a token id must occur in to be tested (a report-half lift "
        "gets an interval from the run's --min-documents report documents holding its token on)",
        parse=int,
    )
    early: int = option(3, "position effect: positions of a segment below this are early", parse=int)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse a setting that is not a positive integer, in one line naming its flag."""
        for name in ("min_count", "min_token_documents", "early"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                flag = f"--associations.{name.replace('_', '-')}"
                raise InputError(f"{flag} must be a positive integer, got {value!r}.")
