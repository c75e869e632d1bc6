"""The config of the explain analysis (a label per expert, scored against controls)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tl_moe.errors import InputError
from tl_moe.settings import check_least_integers, is_real, name_list, option

__all__ = ["EXPLAIN_CAUSAL_WINDOWS", "ExplainConfig"]

#: Default of ``--explain.causal-windows``: one window per document, enough to reach every document of
#: the embedded corpus's ``causal`` split (56 of the validation split), so that the causal checks'
#: document bootstrap has at least ``--min-documents`` (default 30) documents (docs/EXPLAIN.md, "Causal checks").
EXPLAIN_CAUSAL_WINDOWS = 64


@dataclass(frozen=True)
class ExplainConfig:
    """The labeler, its scorers and its causal checks."""

    explainer: str = option(
        "offline",
        "labeler of the 'explain' analysis: offline (concept dissection), openai:URL or local:PATH",
        legacy="explainer",
    )
    model: str | None = option(
        None,
        "model name at an openai: endpoint (default: TL_MOE_OPENAI_MODEL, else the server's first)",
        legacy="explain_model",
    )
    scorers: tuple[str, ...] | None = option(
        None,
        "comma-separated scorers of the labels: concept, detection, fuzzing, intruder "
        "(default: concept offline, detection with a language model)",
        parse=name_list,
        legacy="explain_scorers",
    )
    concurrency: int = option(
        8,
        "requests in flight at once when labeling with a language model",
        parse=int,
        legacy="explain_concurrency",
    )
    timeout: float = option(
        60.0, "seconds per language-model request attempt", parse=float, legacy="explain_timeout"
    )
    retries: int = option(
        4,
        "retries of a rate-limited or failed request (capped exponential backoff)",
        parse=int,
        legacy="explain_retries",
    )
    causal_windows: int = option(
        EXPLAIN_CAUSAL_WINDOWS,
        "windows (one per document) of held-out documents for the causal checks of the labels "
        "(0: no causal checks)",
        parse=int,
        legacy="explain_causal_windows",
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        check_least_integers(self, {"concurrency": 1, "retries": 0, "causal_windows": 0}, "explain")
        if not is_real(self.timeout) or not 0 < self.timeout < math.inf:
            raise InputError(f"--explain-timeout must be a positive number of seconds, got {self.timeout!r}.")
