"""Checks of a labeling setup before any pass: the explainer and its scorers, the endpoint or local chat
model it names, and the documents the causal checks can reach. Each refuses with one line naming the
input and what is accepted (:class:`~tl_moe.errors.InputError`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from tl_moe.analysis.configs import ExplainConfig
from tl_moe.analysis.splits import document_split
from tl_moe.defaults import MIN_DOCUMENTS
from tl_moe.errors import InputError
from tl_moe.explain.examples import SPLIT_FRACTIONS, SPLIT_KEY, SPLITS

__all__ = [
    "SCORERS",
    "check_causal_budget",
    "check_endpoint_answers",
    "check_explain_config",
    "check_explainer_reachable",
    "check_local_explainer",
]

#: The scorers a label can be scored by (the offline explainer's labels: ``concept`` only).
SCORERS = ("concept", "detection", "fuzzing", "intruder")


def check_explain_config(config: ExplainConfig) -> None:
    """Refuse an explainer spec, scorers or sizes no labeling can use (no network, no file access)."""
    spec = config.explainer
    if spec != "offline" and not spec.startswith(("openai:", "local:")):
        raise InputError(f"--explainer must be offline, openai:URL or local:PATH, got {spec!r}.")
    unknown = [s for s in (config.scorers or ()) if s not in SCORERS]
    if unknown:
        raise InputError(f"--explain-scorers {unknown} unknown; choose from {', '.join(SCORERS)}.")
    if spec == "offline" and set(config.scorers or ()) - {"concept"}:
        raise InputError("the offline explainer's labels are scored by the concept scorer only "
                         "(the detection, fuzzing and intruder scorers need a language model).")  # fmt: skip
    if config.causal_windows < 0:
        raise InputError(f"--explain-causal-windows must be 0 (no causal checks) or positive, got "
                         f"{config.causal_windows}.")  # fmt: skip
    if config.concurrency < 1:
        raise InputError(f"--explain-concurrency must be positive, got {config.concurrency}.")


def check_explainer_reachable(spec: str) -> None:
    """Refuse an ``openai:URL`` nothing answers at, or a ``local:PATH`` that is no chat model."""
    if spec.startswith("openai:"):
        check_endpoint_answers(spec)
    if spec.startswith("local:"):
        check_local_explainer(spec)


def check_endpoint_answers(spec: str) -> None:
    """Refuse ``--explainer openai:URL`` when nothing accepts a connection at URL (a probe of a few seconds)."""
    from tl_moe.network import unreachable_reason

    url = (
        spec.partition(":")[2]
        or os.environ.get("TL_MOE_OPENAI_BASE_URL")
        or os.environ.get("OPENAI_BASE_URL")
    )
    if not url:
        raise InputError(
            f"--explainer {spec!r} names no endpoint; accepted: openai:URL (e.g. openai:http://localhost:8000/v1), "
            "or set TL_MOE_OPENAI_BASE_URL."
        )
    reason = unreachable_reason(url)
    if reason is not None:
        raise InputError(
            f"--explainer {spec!r}: nothing answers at {url} ({reason}); accepted: the URL of a running "
            "OpenAI-compatible server (start it first), local:PATH, or offline."
        )


def check_local_explainer(spec: str) -> None:
    """Refuse ``--explainer local:PATH`` unless PATH is a ``.gguf`` file or a model folder (a ``config.json``
    beside it), before the pass rather than when the labels are due."""
    path = Path(spec.partition(":")[2]).expanduser()
    accepted = (
        "local:PATH of a chat model's folder (saved with save_pretrained) or of a .gguf file, or offline"
    )
    if not spec.partition(":")[2]:
        raise InputError(f"--explainer {spec!r} names no path; accepted: {accepted}.")
    if not path.exists():
        raise InputError(f"--explainer {spec!r}: {str(path)!r} does not exist; accepted: {accepted}.")
    if path.is_file() and path.suffix != ".gguf":
        raise InputError(
            f"--explainer {spec!r}: {str(path)!r} is a file but not a .gguf file; accepted: {accepted}."
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise InputError(
            f"--explainer {spec!r}: {str(path)!r} is a folder without config.json; accepted: {accepted}."
        )


def check_causal_budget(dataset: Any, windows: int, seed: int = 0) -> int:
    """Before the pass: the documents the label causal checks can reach (one window per document of the
    ``causal`` split, at most ``windows``); warns, naming what helps, when fewer than ``MIN_DOCUMENTS``
    (their intervals would be reported unavailable). Returns that count (0 when the checks are off)."""
    if windows <= 0:
        return 0
    rows = torch.arange(len(dataset))
    split = document_split(rows, SPLIT_FRACTIONS, seed=seed, key=SPLIT_KEY)
    available = int((split == SPLITS.index("causal")).sum())
    reach = min(windows, available)
    if reach < MIN_DOCUMENTS:
        advice = (
            f"raise --explain-causal-windows to at least {MIN_DOCUMENTS}"
            if available >= MIN_DOCUMENTS
            else f"the corpus split has only {available} documents in the causal fifth: use a corpus with "
            f"at least {5 * MIN_DOCUMENTS} documents"
        )
        warnings.warn(
            f"--explain-causal-windows {windows} reaches at most {reach} documents; the label causal checks' "
            f"intervals need {MIN_DOCUMENTS} and will be reported unavailable ({advice}).",
            stacklevel=2,
        )
    return reach
