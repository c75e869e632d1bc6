"""Token budgets counted in documents, before any pass: the drivers' edited forwards and the
re-weighting windows must reach documents on both halves of their split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tl_moe.pipeline.checks.errors import BudgetError

__all__ = [
    "DocumentBudget",
    "check_driver_budget",
    "check_reweight_budget",
    "driver_documents",
    "reweight_documents",
]


@dataclass(frozen=True)
class DocumentBudget:
    """Documents an analysis will see on each half of the drivers' :func:`~tl_moe.analysis.splits.document_split`
    halves, counted from the corpus and the budgets before any pass.

    Attributes:
        selection / report: documents on the selection (0) and report (1) half.
        flag: the option that raises them (e.g. ``--driver-tokens``), or None when only a larger
            corpus would.
        tokens: real tokens the budget reaches.
    """

    selection: int
    report: int
    flag: str | None
    tokens: int


def _document_halves(docs: Sequence[int]) -> tuple[int, int]:
    from tl_moe.analysis.drivers import HALVES_KEY
    from tl_moe.analysis.splits import document_split

    if not docs:
        return 0, 0
    half = document_split(torch.tensor(sorted(docs)), key=HALVES_KEY)
    return int((half == 0).sum()), int((half == 1).sum())


def driver_documents(
    dataset: Any, tokenizer: Any, *, seq_len: int, batch_size: int, max_tokens: int, driver_tokens: int
) -> DocumentBudget:
    """Documents that the drivers' edited forwards reach: the batches of the collection pass (the
    stream capped at ``max_tokens``) until ``driver_tokens`` real tokens have been edited, counting
    the documents with a next-token position. Which flag helps: ``--driver-tokens`` while the stream
    goes on past the edited batches, ``--max-tokens`` when the stream ends first, none when the
    corpus ends first."""
    from tl_moe.collect.batching import plan_batches

    has_bos = int(tokenizer.bos_token_id is not None)
    seen, docs = 0, set()
    stream_ended = True
    for batch in plan_batches(
        dataset, tokenizer, batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens
    ):
        if seen >= driver_tokens:
            stream_ended = False
            break
        for window in batch.windows:
            length = window.token_end - window.token_start + has_bos
            seen += length
            if length >= 2:
                docs.add(window.document.doc_index)
    if not stream_ended:
        flag = "--driver-tokens"
    else:
        flag = "--max-tokens" if seen >= max_tokens - 1 else None  # the cap ended the stream, not the corpus
    selection, report = _document_halves(sorted(docs))
    return DocumentBudget(selection, report, flag, seen)


def _advice(flag: str | None, what: str) -> str:
    if flag is None:
        return f"the corpus holds no more {what}: use a corpus with more documents"
    return f"raise {flag}"


def check_driver_budget(
    dataset: Any,
    tokenizer: Any,
    *,
    seq_len: int,
    batch_size: int,
    max_tokens: int,
    driver_tokens: int,
    min_documents: int = 2,
    interval_documents: int | None = None,
) -> DocumentBudget:
    """Refuse a budget whose edited forwards leave fewer than ``min_documents`` documents on a half
    (the drivers, and the associations and re-weighting built on them, then have nothing to select or
    report on); warn when the report half has fewer than ``interval_documents`` (the run's
    ``--min-documents``; None: :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS`), the intervals then being
    unavailable. Both messages name the flag that raises the count (:func:`driver_documents`)."""
    import warnings

    from tl_moe.analysis.stats import MIN_DOCUMENTS

    interval_documents = MIN_DOCUMENTS if interval_documents is None else int(interval_documents)
    budget = driver_documents(
        dataset,
        tokenizer,
        seq_len=seq_len,
        batch_size=batch_size,
        max_tokens=max_tokens,
        driver_tokens=driver_tokens,
    )
    found = (
        f"--driver-tokens {driver_tokens} within --max-tokens {max_tokens} reach {budget.selection} selection "
        f"and {budget.report} report documents"
    )
    if min(budget.selection, budget.report) < min_documents:
        raise BudgetError(
            f"the drivers need at least {min_documents} documents on each half; {found}: "
            f"{_advice(budget.flag, 'documents')}.",
            input_name=budget.flag or "--corpus",
        )
    if budget.report < interval_documents:
        warnings.warn(
            f"{found}; the drivers' intervals need {interval_documents} and will be reported unavailable: "
            f"{_advice(budget.flag, 'documents')}.",
            stacklevel=2,
        )
    return budget


def reweight_documents(
    dataset: Any, tokenizer: Any, *, seq_len: int, tokens_per_group: int, group_column: str = "domain"
) -> dict[str, tuple[int, int]]:
    """group -> (selection, held-out) documents of the re-weighting windows
    (:func:`~tl_moe.analysis.edit_windows.held_out_windows`, same rule, no model)."""
    from tl_moe.analysis.edit_windows import held_out_windows

    selection, evaluation = held_out_windows(
        dataset, tokenizer, seq_len=seq_len, tokens_per_group=tokens_per_group, group_column=group_column
    )
    counts: dict[str, list[set[int]]] = {}
    for side, windows in enumerate((selection, evaluation)):
        for doc, group in zip(windows.doc.tolist(), windows.group, strict=True):
            counts.setdefault(str(group), [set(), set()])[side].add(int(doc))
    return {group: (len(a), len(b)) for group, (a, b) in sorted(counts.items())}


def check_reweight_budget(
    dataset: Any,
    tokenizer: Any,
    *,
    seq_len: int,
    reweight_tokens: int,
    domains: Sequence[str],
    interval_documents: int | None = None,
) -> dict[str, tuple[int, int]]:
    """Refuse a ``--reweight-tokens`` that leaves a domain without a selection or held-out document;
    warn when a domain has fewer than ``interval_documents`` held-out documents (the run's
    ``--min-documents``; None: :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS`; its interval is then
    unavailable), naming ``--reweight-tokens`` when more tokens would reach more documents and the
    corpus when the domain has no more."""
    import warnings

    from tl_moe.analysis.stats import MIN_DOCUMENTS

    least = MIN_DOCUMENTS if interval_documents is None else int(interval_documents)
    counts = reweight_documents(dataset, tokenizer, seq_len=seq_len, tokens_per_group=reweight_tokens)
    empty = [d for d in domains if min(counts.get(str(d), (0, 0))) == 0]
    short = [d for d in domains if counts.get(str(d), (0, 0))[1] < least and d not in empty]

    def advice(names: Sequence[str]) -> str:
        more = reweight_documents(dataset, tokenizer, seq_len=seq_len, tokens_per_group=10 * reweight_tokens)
        grows = [d for d in names if more.get(str(d), (0, 0)) > counts.get(str(d), (0, 0))]
        parts = [f"raise --reweight-tokens for {grows}"] if grows else []
        if len(grows) < len(names):
            parts.append(f"the corpus holds no more documents of {[d for d in names if d not in grows]}")
        return "; ".join(parts)

    if empty:
        raise BudgetError(
            f"re-weighting needs documents of every domain on both halves; --reweight-tokens {reweight_tokens} "
            f"reaches none on a half for {empty}: {advice(empty)}.",
            input_name="--reweight-tokens",
        )
    if short:
        held_out = {d: counts[str(d)][1] for d in short}
        warnings.warn(
            f"--reweight-tokens {reweight_tokens} reaches fewer than {least} held-out documents for "
            f"{held_out}; their intervals will be reported unavailable ({advice(short)}).",
            stacklevel=2,
        )
    return counts
