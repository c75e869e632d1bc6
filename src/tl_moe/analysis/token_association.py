"""Token–expert association: which input tokens go with which experts, tested within documents.

Definitions (docs/METHODS.md, "Token–expert association"). For block ``L``, expert ``e`` and token id
``t``, over a set of documents: ``N`` tokens (BOS left out), ``n_t`` occurrences of ``t``, ``n_e``
tokens whose routed set contains ``e``, ``n_te`` occurrences of ``t`` routed to ``e``:

- ``lift = (n_te / n_t) / (n_e / N)`` = P(e routed | token t) / P(e routed); ``PMI = log2 lift`` (bits);
- ``O/E within documents = n_te / Σ_d n_t[d] n_e[d] / N[d]``: the co-occurrences against their
  expectation when, inside every document, the token sits at random positions;
- **null** (one-sided, enrichment): inside each document, token ids are permuted among the document's
  positions, never across documents; each document's routing and its multiset of tokens stay fixed.
  It keeps every document-level confound (domain, topic: a Python document has both ``def`` and the
  Python expert) out of the association. The null law of ``n_te`` is a sum over documents of
  hypergeometric counts, computed exactly (:func:`within_document_pvalues`), so p-values are those of
  infinitely many permutations; Benjamini–Hochberg over every tested (block, expert, token) triple.
- **held out**: documents are split in halves by :func:`tl_moe.analysis.splits.document_split` (the drivers'
  halves, :data:`~tl_moe.analysis.drivers.HALVES_KEY`);
  tokens are supported, tested and selected on the selection half; the lift of every discovery is
  then measured on the report half, with a 95% document-bootstrap interval when at least
  ``min_report_documents`` (:data:`~tl_moe.defaults.MIN_DOCUMENTS`) report documents hold its token
  (else the interval is unavailable, with the reason). A discovery is **confirmed** when its
  report-half lift exceeds 1 after a multiplicity correction over the measured discoveries: the
  two-sided bootstrap p-value of ``lift = 1`` (:attr:`~tl_moe.analysis.stats.Interval.p_value`),
  Benjamini–Hochberg at ``fdr``, with Benjamini–Yekutieli (any dependence) as the check.

:class:`RoutingRecords` is the accumulator: one record per streamed token (token id, document,
position in the document, routed experts of every sparse block), capped at ``max_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_moe.analysis.drivers import HALVES_KEY
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import Interval, benjamini_hochberg, cluster_bootstrap
from tl_moe.collect.accumulator import Accumulator, Activations
from tl_moe.collect.meta import BatchMeta
from tl_moe.defaults import MIN_DOCUMENTS
from tl_moe.models.hook_names import get_act_name

__all__ = [
    "AssociationTable",
    "benjamini_yekutieli",
    "RoutingRecords",
    "RoutingRecordsResult",
    "cooccurrence_counts",
    "token_expert_associations",
    "within_document_pvalues",
]

_FIELDS = ("token_index", "doc_index", "doc_position", "token_id", "experts")


class RoutingRecords(Accumulator):
    """The routed experts of every streamed token, with its id and document (first ``max_tokens``).

    Args:
        layers: sparse blocks whose ``hook_topk_indices`` are recorded.
        max_tokens: records kept (stream order); merging keeps the ``max_tokens`` earliest records of
            the union, which is what one pass keeps.
    """

    def __init__(self, layers: Sequence[int], max_tokens: int = 200_000) -> None:
        self.layers = tuple(int(layer) for layer in layers)
        self.max_tokens = int(max_tokens)
        self._parts: list[dict[str, torch.Tensor]] = []
        self._kept = 0

    def config(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "max_tokens": self.max_tokens}

    def hook_names(self, model: Any) -> list[str]:
        return [get_act_name("topk_indices", layer) for layer in self.layers]

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        room = self.max_tokens - self._kept
        if room <= 0:
            return
        real = meta.tokens(meta.doc_position) >= 0  # BOS has no document position
        experts = torch.stack(
            [meta.tokens(acts[get_act_name("topk_indices", layer)])[real] for layer in self.layers], dim=1
        )  # [tokens, layer, k]
        part = {
            "token_index": meta.tokens(meta.token_index)[real].long().cpu(),
            "doc_index": meta.tokens(meta.doc_index)[real].long().cpu(),
            "doc_position": meta.tokens(meta.doc_position)[real].long().cpu(),
            "token_id": meta.tokens(meta.input_ids)[real].long().cpu(),
            "experts": experts.to(torch.int32).cpu(),
        }
        part = {name: value[:room] for name, value in part.items()}
        self._parts.append(part)
        self._kept += int(part["token_index"].numel())

    def _joined(self) -> dict[str, torch.Tensor]:
        if not self._parts:
            empty = torch.zeros(0, dtype=torch.long)
            return {
                **{name: empty for name in _FIELDS[:-1]},
                "experts": torch.zeros(0, len(self.layers), 0, dtype=torch.int32),
            }
        joined = {name: torch.cat([part[name] for part in self._parts]) for name in _FIELDS}
        self._parts = [joined]
        return joined

    def merge(self, other: RoutingRecords) -> RoutingRecords:
        self._check_mergeable(other)
        mine, theirs = self._joined(), other._joined()
        if not theirs["token_index"].numel():
            return self
        if not mine["token_index"].numel():
            both = theirs
        else:
            both = {name: torch.cat([mine[name], theirs[name]]) for name in _FIELDS}
        order = torch.argsort(both["token_index"])[: self.max_tokens]
        self._parts = [{name: value[order] for name, value in both.items()}]
        self._kept = int(order.numel())
        return self

    def state_dict(self) -> dict[str, Any]:
        return dict(self._joined())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._parts = [{name: state[name] for name in _FIELDS}]
        self._kept = int(state["token_index"].numel())

    def finalize(self) -> RoutingRecordsResult:
        joined = self._joined()
        return RoutingRecordsResult(self.layers, **{name: value.clone() for name, value in joined.items()})


@dataclass(frozen=True)
class RoutingRecordsResult:
    """One row per streamed token (BOS left out), in stream order.

    Attributes:
        layers: the sparse blocks of the ``experts`` axis.
        token_index: stream-wide id of the position (see :class:`~tl_moe.collect.meta.BatchMeta`).
        doc_index: corpus row of the token's document.
        doc_position: index of the token in its document's token list.
        token_id: the input token id.
        experts: ``[token, layer, k]`` the experts the token was routed to in each block.
    """

    layers: tuple[int, ...]
    token_index: Int[torch.Tensor, " token"]
    doc_index: Int[torch.Tensor, " token"]
    doc_position: Int[torch.Tensor, " token"]
    token_id: Int[torch.Tensor, " token"]
    experts: Int[torch.Tensor, "token layer k"]

    def __len__(self) -> int:
        return int(self.token_index.numel())


def cooccurrence_counts(
    slots: Int[np.ndarray, " token"], experts: Int[np.ndarray, "token layer k"], n_slots: int, n_experts: int
) -> Int[np.ndarray, "slot layer expert"]:
    """``counts[s, l, e]``: tokens of slot ``s`` (a tested token id; -1: untested) routed to ``e`` in
    block ``l`` (an expert appears at most once in a token's top-k, so a token counts once)."""
    n_layers = experts.shape[1]
    keep = slots >= 0
    keys = (slots[keep, None, None] * n_layers + np.arange(n_layers)[None, :, None]) * n_experts
    keys = keys + experts[keep]
    counts = np.bincount(keys.ravel(), minlength=n_slots * n_layers * n_experts)
    return counts.reshape(n_slots, n_layers, n_experts)


EXACT_MAX_COUNT = 5000
"""Token ids with at most this many occurrences get the exact null distribution; more frequent ones the
normal approximation of the same sum of hypergeometric counts (with a continuity correction)."""


def within_document_pvalues(
    observed: Int[np.ndarray, "slot cell"],
    token_docs: Float[np.ndarray, "document slot"],
    expert_docs: Float[np.ndarray, "document cell"],
    sizes: Float[np.ndarray, " document"],
    *,
    progress: bool = False,
) -> Float[np.ndarray, "slot cell"]:
    """One-sided p-values of the co-occurrence counts under within-document permutation of token ids.

    Permuting the token ids among the positions of each document, independently across documents, makes
    the count of token ``s`` routed to cell ``c`` (a block's expert) in document ``d`` hypergeometric —
    ``n_s[d]`` draws from ``sizes[d]`` positions of which ``expert_docs[d, c]`` are routed to ``c`` — and
    the corpus count their sum over documents. Its distribution is the convolution of those
    hypergeometric laws: the exact permutation distribution (what infinitely many permutations give),
    so p-values are not bounded below by ``1 / (1 + B)`` and survive a Benjamini–Hochberg correction
    over thousands of tests.

    Args:
        observed: ``[slot, cell]`` observed co-occurrences.
        token_docs: ``[document, slot]`` occurrences of each tested token id per document.
        expert_docs: ``[document, cell]`` tokens routed to each cell per document.
        sizes: ``[document]`` tokens per document.

    Returns:
        ``[slot, cell]`` ``P(count ≥ observed)`` under the null.
    """
    from scipy.signal import fftconvolve
    from scipy.stats import hypergeom, norm
    from tqdm.auto import tqdm

    n_slots, n_cells = observed.shape
    pvalues = np.ones((n_slots, n_cells))
    for slot in tqdm(range(n_slots), desc="within-document null", disable=not progress, leave=False):
        docs = np.nonzero(token_docs[:, slot] > 0)[0]
        draws = token_docs[docs, slot].astype(np.int64)
        population, routed = (
            sizes[docs].astype(np.int64),
            expert_docs[docs].astype(np.int64),
        )  # [doc], [doc, cell]
        if draws.sum() > EXACT_MAX_COUNT:
            mean = (draws[:, None] * routed / population[:, None]).sum(0)
            var = (
                draws[:, None]
                * routed
                * (population - routed.T).T
                * (population - draws)[:, None]
                / (population**2 * np.maximum(population - 1, 1))[:, None]
            ).sum(0)
            z = (observed[slot] - 0.5 - mean) / np.sqrt(np.maximum(var, 1e-300))
            pvalues[slot] = np.where(var > 0, norm.sf(z), (observed[slot] <= mean).astype(float))
            continue
        law = np.ones((n_cells, 1))
        for n, size, k in zip(draws, population, routed, strict=True):
            pmf = hypergeom.pmf(np.arange(n + 1)[None, :], size, k[:, None], n)  # [cell, n + 1]
            law = fftconvolve(law, pmf, axes=1) if law.shape[1] > 64 else _convolve_rows(law, pmf)
        law = np.clip(law, 0.0, None)
        tail = np.cumsum(law[:, ::-1], axis=1)[:, ::-1]  # tail[c, j] = P(count ≥ j)
        pvalues[slot] = np.minimum(1.0, tail[np.arange(n_cells), observed[slot]])
    return pvalues


def _convolve_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise full convolution of ``a [rows, m]`` and ``b [rows, n]`` (exact sums, small sizes)."""
    out = np.zeros((a.shape[0], a.shape[1] + b.shape[1] - 1))
    for j in range(b.shape[1]):
        out[:, j : j + a.shape[1]] += a * b[:, j : j + 1]
    return out


@dataclass(frozen=True)
class AssociationTable:
    """The association tests of one run.

    Attributes:
        table: one row per discovery (selection half, q ≤ fdr, lift > 1), with the report half's lift,
            its 95% document-bootstrap interval (or ``report interval unavailable``: why), the
            bootstrap p-value of lift = 1, its BH and BY q-values over the measured discoveries, and
            ``confirmed`` / ``confirmed (BY)``.
        tested: every tested (layer, expert, token) triple with its selection-half statistics.
        summary: the headline numbers (counts, and mean report-half lift of discoveries vs the
            undiscovered tested triples, with intervals).
    """

    table: pd.DataFrame
    tested: pd.DataFrame
    summary: dict[str, Any]


def _document_expert_counts(
    block: Int[np.ndarray, " token"], experts: Int[np.ndarray, "token layer k"], n_blocks: int, n_experts: int
) -> np.ndarray:
    """``[document, layer * expert]`` tokens of each document routed to each expert of each block."""
    n_layers = experts.shape[1]
    keys = (block[:, None, None] * n_layers + np.arange(n_layers)[None, :, None]) * n_experts + experts
    counts = np.bincount(keys.ravel(), minlength=n_blocks * n_layers * n_experts)
    return counts.reshape(n_blocks, n_layers * n_experts).astype(np.float64)


def _document_token_counts(block: np.ndarray, slots: np.ndarray, n_blocks: int, n_slots: int) -> np.ndarray:
    """``[document, slot]`` occurrences of each tested token id in each document."""
    keep = slots >= 0
    counts = np.bincount(block[keep] * n_slots + slots[keep], minlength=n_blocks * n_slots)
    return counts.reshape(n_blocks, n_slots).astype(np.float64)


def token_expert_associations(
    records: RoutingRecordsResult,
    n_experts: int,
    *,
    min_count: int = 20,
    min_documents: int = 5,
    min_report_documents: int = MIN_DOCUMENTS,
    fdr: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    token_names: Callable[[int], str] | None = None,
    halves: Int[np.ndarray, " token"] | None = None,
    progress: bool = False,
) -> AssociationTable:
    """Lift / PMI of every supported (block, expert, token id), tested within documents, held out.

    Args:
        records: the routing of every streamed token.
        n_experts: experts per block.
        min_count, min_documents: a token id is tested when it occurs at least ``min_count`` times in at
            least ``min_documents`` documents of the selection half.
        min_report_documents: a report-half lift gets a document-bootstrap interval (and is tested
            for confirmation) when at least this many report documents hold its token; otherwise the
            lift is an estimate only and ``report interval unavailable`` says why.
        fdr: the Benjamini–Hochberg rate of the within-document test (:func:`within_document_pvalues`)
            and of the confirmation of the report-half lifts.
        n_resamples, seed: the document bootstrap of the report-half lifts.
        token_names: the text of a token id (for the table).
        halves: ``[token]`` 0 (selection) / 1 (report) per record; default
            :func:`~tl_moe.analysis.splits.document_split` half of the document
            (:data:`~tl_moe.analysis.drivers.HALVES_KEY`).
    """
    doc = records.doc_index.numpy()
    token = records.token_id.numpy()
    experts = records.experts.numpy().astype(np.int64)
    half = document_split(doc, key=HALVES_KEY) if halves is None else np.asarray(halves)
    n_layers = experts.shape[1]
    sel = half == 0
    # supported token ids (selection half)
    sel_token, sel_doc = token[sel], doc[sel]
    ids, counts = np.unique(sel_token, return_counts=True)
    pairs = np.unique(np.stack([sel_token, sel_doc]), axis=1) if sel.any() else np.zeros((2, 0), int)
    doc_ids, doc_counts = np.unique(pairs[0], return_counts=True)
    n_docs_of = dict(zip(doc_ids.tolist(), doc_counts.tolist(), strict=True))
    supported = np.array(
        [
            t
            for t, c in zip(ids.tolist(), counts.tolist(), strict=True)
            if c >= min_count and n_docs_of[t] >= min_documents
        ],
        dtype=np.int64,
    )
    slot_of = {t: s for s, t in enumerate(supported.tolist())}
    n_slots = len(supported)
    slots = np.array([slot_of.get(t, -1) for t in token.tolist()], dtype=np.int64)
    layers = records.layers
    names = token_names or str
    summary: dict[str, Any] = {
        "selection tokens": int(sel.sum()),
        "selection documents": int(np.unique(doc[sel]).size),
        "report documents": int(np.unique(doc[~sel]).size),
        "tested token ids": n_slots,
        "tested triples": n_slots * n_layers * n_experts,
    }
    if n_slots == 0:
        empty = pd.DataFrame()
        summary.update(
            {
                "discoveries": 0,
                "discoveries (Benjamini–Yekutieli)": 0,
                "confirmed": 0,
                "confirmed (Benjamini–Yekutieli)": 0,
            }
        )
        return AssociationTable(empty, empty, summary)

    n_sel = int(sel.sum())
    observed = cooccurrence_counts(slots[sel], experts[sel], n_slots, n_experts)  # [slot, layer, expert]
    n_t = np.bincount(slots[sel][slots[sel] >= 0], minlength=n_slots)  # [slot]
    _, sel_block = np.unique(doc[sel], return_inverse=True)
    n_blocks = int(sel_block.max()) + 1
    size = np.bincount(sel_block, minlength=n_blocks).astype(float)
    t_doc = _document_token_counts(sel_block, slots[sel], n_blocks, n_slots)  # [doc, slot]
    e_doc = _document_expert_counts(sel_block, experts[sel], n_blocks, n_experts)  # [doc, layer * expert]
    n_e = e_doc.sum(0).reshape(n_layers, n_experts)
    # expectation under the within-document null: Σ_d n_t[d] n_e[d] / N[d]
    expected = ((t_doc / size[:, None]).T @ e_doc).reshape(n_slots, n_layers, n_experts)
    pvalues = within_document_pvalues(
        observed.reshape(n_slots, -1), t_doc, e_doc, size, progress=progress
    ).reshape(observed.shape)

    with np.errstate(divide="ignore", invalid="ignore"):  # an expert no token reached: NaN lift
        lift = (observed / n_t[:, None, None]) / (n_e[None] / n_sel)
        pmi = np.log2(lift)
    qvalues, discovered = benjamini_hochberg(pvalues.ravel(), fdr)
    qvalues, discovered = qvalues.reshape(pvalues.shape), discovered.reshape(pvalues.shape)
    by_qvalues = benjamini_yekutieli(pvalues.ravel()).reshape(pvalues.shape)
    s_idx, l_idx, e_idx = np.meshgrid(
        np.arange(n_slots), np.arange(n_layers), np.arange(n_experts), indexing="ij"
    )
    tested = pd.DataFrame(
        {
            "layer": np.asarray(layers)[l_idx.ravel()],
            "expert": e_idx.ravel(),
            "token id": supported[s_idx.ravel()],
            "token": [names(int(t)) for t in supported[s_idx.ravel()]],
            "count": n_t[s_idx.ravel()],
            "routed to expert": observed.ravel(),
            "lift": lift.ravel(),
            "PMI (bits)": pmi.ravel(),
            "O/E within documents": (observed / np.maximum(expected, 1e-300)).ravel(),
            "p": pvalues.ravel(),
            "q": qvalues.ravel(),
            "q (BY)": by_qvalues.ravel(),
        }
    )
    chosen = discovered.ravel() & (lift.ravel() > 1)
    tested["discovered"] = chosen
    tested["discovered (BY)"] = (by_qvalues.ravel() <= fdr) & (lift.ravel() > 1)

    # report half: per-document counts of every tested triple whose token occurs there
    rep = ~sel
    rep_doc_ids, rep_block = np.unique(doc[rep], return_inverse=True)
    n_rep = len(rep_doc_ids)
    rep_slots, rep_experts = slots[rep], experts[rep]
    t_rep = _document_token_counts(rep_block, rep_slots, n_rep, n_slots)
    e_rep = _document_expert_counts(rep_block, rep_experts, n_rep, n_experts)
    size_rep = np.bincount(rep_block, minlength=n_rep).astype(float)
    docs_with = (t_rep > 0).sum(0)  # [slot] report documents holding the token
    row_slot, row_le = s_idx.ravel(), (l_idx * n_experts + e_idx).ravel()
    holding = docs_with[row_slot]
    measurable = holding >= min_report_documents
    tested["report documents with token"] = holding
    for name in ("report count", "report lift", "report ci low", "report ci high", "report p"):
        tested[name] = np.nan
    tested["report interval unavailable"] = [
        ""
        if n >= min_report_documents
        else f"{n} report documents hold the token; a document-level interval needs at least "
        f"{min_report_documents}"
        for n in holding
    ]
    present = np.nonzero(holding > 0)[0]  # rows (slot * layers + layer) * E + expert with a report lift
    if len(present):
        columns_of = np.full(len(tested), -1)
        columns_of[present] = np.arange(len(present))
        co = _report_cooccurrences(
            rep_slots, rep_experts, rep_block, columns_of, n_rep, n_layers, n_experts, len(present)
        )  # [doc, present row] token t routed to e
        token_cols, expert_cols = t_rep[:, row_slot[present]], e_rep[:, row_le[present]]

        def lifts_of(w: np.ndarray) -> np.ndarray:  # [batch, doc] -> [batch, present rows]
            p_e_given_t = (w @ co) / np.maximum(w @ token_cols, 1e-12)  # absent token: lift 0
            p_e = (w @ expert_cols) / np.maximum(w @ size_rep, 1e-12)[:, None]
            return p_e_given_t / np.maximum(p_e, 1e-12)

        tested.loc[present, "report count"] = token_cols.sum(0)
        tested.loc[present, "report lift"] = lifts_of(np.ones((1, n_rep)))[0]
        inside = measurable[present]  # [present rows] the ones with an interval
        targets = present[inside]
        if len(targets):
            is_disc = chosen[targets]

            def statistic(w: np.ndarray) -> np.ndarray:  # [batch, doc] -> [batch, targets + 3]
                lifts = lifts_of(w)[:, inside]
                disc = lifts[:, is_disc].mean(1) if is_disc.any() else np.full(len(w), np.nan)
                other = lifts[:, ~is_disc].mean(1) if (~is_disc).any() else np.full(len(w), np.nan)
                # lift − 1: the intervals' p-values are those of "lift = 1"
                return np.concatenate([lifts - 1.0, np.stack([disc, other, disc - other], 1)], axis=1)

            intervals = cluster_bootstrap(
                statistic,
                n_rep,
                n_resamples=n_resamples,
                seed=seed,
                on_too_few="unavailable",
                what="the lift",
            )
            per_target, means = intervals[: len(targets)], intervals[len(targets) :]
            tested.loc[targets, "report ci low"] = [1.0 + i.low for i in per_target]
            tested.loc[targets, "report ci high"] = [1.0 + i.high for i in per_target]
            tested.loc[targets, "report p"] = [i.p_value if i.available else np.nan for i in per_target]
            reasons = [i.reason or "" for i in per_target]
            tested.loc[targets, "report interval unavailable"] = reasons
            labels = ("discoveries", "other tested triples", "discoveries − others")
            for label, interval in zip(labels, means, strict=True):
                summary[f"mean report lift | {label}"] = _interval_record(interval)
    _confirm(tested, fdr)
    table = (
        tested[tested["discovered"]]
        .sort_values(["q", "lift"], ascending=[True, False])
        .reset_index(drop=True)
    )
    discovered = tested["discovered"]
    with_interval = discovered & tested["report ci low"].notna()
    summary["discoveries"] = int(discovered.sum())
    summary["discoveries (Benjamini–Yekutieli)"] = int(tested["discovered (BY)"].sum())
    summary["discoveries measured on the report half"] = int(with_interval.sum())
    summary["discoveries without a report interval"] = int((discovered & ~with_interval).sum())
    summary["least report documents for an interval"] = int(min_report_documents)
    summary["report interval above 1 (unadjusted)"] = int(
        (with_interval & (tested["report ci low"] > 1)).sum()
    )
    summary["confirmed"] = int(tested["confirmed"].sum())
    summary["confirmed (Benjamini–Yekutieli)"] = int(tested["confirmed (BY)"].sum())
    summary["fdr"] = fdr
    return AssociationTable(table, tested, summary)


def _report_cooccurrences(
    rep_slots: np.ndarray,
    rep_experts: np.ndarray,
    rep_block: np.ndarray,
    columns_of: np.ndarray,
    n_rep: int,
    n_layers: int,
    n_experts: int,
    n_columns: int,
) -> Float[np.ndarray, "document column"]:
    """``[report document, column]``: occurrences of the column's token routed to its expert, where
    ``columns_of`` maps a tested row ``(slot * layers + layer) * experts + expert`` to its column
    (-1: not counted)."""
    keep = rep_slots >= 0
    rows = (rep_slots[keep, None, None] * n_layers + np.arange(n_layers)[None, :, None]) * n_experts
    columns = columns_of[rows + rep_experts[keep]]  # [token, layer, k]
    blocks = np.broadcast_to(rep_block[keep, None, None], columns.shape)
    hit = columns >= 0
    counts = np.bincount(blocks[hit] * n_columns + columns[hit], minlength=n_rep * n_columns)
    return counts.reshape(n_rep, n_columns).astype(np.float64)


def _confirm(tested: pd.DataFrame, fdr: float) -> None:
    """Confirmation of the discoveries on the report half, corrected for multiplicity: over the
    discoveries with a report interval, Benjamini–Hochberg of the bootstrap p-values of ``lift = 1``
    (``report q``; confirmed: ``report q ≤ fdr`` and report lift > 1), and Benjamini–Yekutieli as the
    check under any dependence (``report q (BY)``, ``confirmed (BY)``)."""
    family = tested["discovered"].to_numpy() & np.isfinite(tested["report p"].to_numpy(dtype=float))
    p = np.where(family, tested["report p"].to_numpy(dtype=float), np.nan)
    q_bh, _ = benjamini_hochberg(p, fdr)
    q_by = benjamini_yekutieli(p)
    above = tested["report lift"].to_numpy(dtype=float) > 1
    tested["report q"], tested["report q (BY)"] = q_bh, q_by
    tested["confirmed"] = family & (np.nan_to_num(q_bh, nan=1.0) <= fdr) & above
    tested["confirmed (BY)"] = family & (np.nan_to_num(q_by, nan=1.0) <= fdr) & above


def benjamini_yekutieli(pvalues: Float[np.ndarray, " test"]) -> Float[np.ndarray, " test"]:
    """Benjamini–Yekutieli adjusted p-values (valid under any dependence between the tests; NaN stays
    NaN and does not count). A check on Benjamini–Hochberg where tests are negatively dependent, as
    the experts of one token are (routing to one expert is routing away from the others)."""
    import scipy.stats

    pvalues = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(pvalues.shape, np.nan)
    tested = np.isfinite(pvalues)
    if tested.any():
        adjusted[tested] = scipy.stats.false_discovery_control(pvalues[tested], method="by")
    return adjusted


def _interval_record(interval: Interval) -> dict[str, Any]:
    record = interval.to_dict()
    return {
        "estimate": record["estimate"],
        "ci_low": record["ci_low"],
        "ci_high": record["ci_high"],
        "n": interval.n,
    }
