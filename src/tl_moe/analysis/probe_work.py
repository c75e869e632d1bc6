"""How many probes the probing analysis fits, from the run's shapes alone (no activations).

One fit is a unit x a concept x a probe size. The units of each protocol and arm are those the
probing analysis fits (:mod:`tl_moe.analysis.paper_study`, :mod:`tl_moe.analysis.held_out_study`):

- the MoE's experts (its probed layers x experts): the paper protocol, the held-out ``moe`` arm and,
  with a dense baseline, the ``moe_permuted_labels`` arm, the matched-count routed-token draws
  (``ROUTED_COUNT_DRAWS`` of them when the dense layer is wider than an expert, else one) and their
  permuted-label null, all on ``d_expert`` neurons over each expert's routed tokens;
- the untrained MoE's experts: the held-out ``untrained_moe`` arm;
- a dense baseline's layers: the paper protocol (whole layers, and one routing-matched draw per
  expert), the held-out ``dense`` and ``dense_permuted_labels`` arms (whole layers), and its neurons on
  each expert's routed tokens (``dense_on_routed_tokens`` and ``dense_matched_subsets``).

:func:`probing_work` lists them; :func:`eligible_concepts` says how many concepts a unit of a given
number of tokens is fitted for at given concept rates (balanced routing): an upper bound when no
stored tokens are at hand.

:func:`count_probing_fits` counts the fits exactly instead: it runs both protocols' own code on stored
tokens inside :func:`~tl_moe.analysis.probing.tally_fits`, so every decision (concepts kept, concept
populations, per-document balancing, routing, the document split, ks above a unit's width) is the
analysis's, and no probe is fitted. :func:`repeat_tokens` stretches a short sample of stored tokens to
a run's length (its documents repeated as new ones), which is how ``tl-moe plan`` counts a run's fits
from its calibration pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float

from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.probing import FitTally, tally_fits
from tl_moe.errors import InputError

__all__ = [
    "ProbeWork",
    "ProbingFits",
    "count_probing_fits",
    "repeat_tokens",
    "eligible_concepts",
    "family_work",
    "moe_work",
    "probing_work",
    "routed_rows",
    "store_cap",
]


@dataclass(frozen=True)
class ProbeWork:
    """Probe units of one width that probing's finalize fits, and the tokens each unit sees.

    Attributes:
        width: neurons of each unit.
        units: units fitted (for each concept and probe size).
        rows: tokens a unit sees (its fits run on them; the held-out protocol fits its selection share).
        concepts: concepts each unit is fitted for.
        held_out: fitted by the held-out protocol (its eligibility counts the selection documents alone);
            else by the paper protocol.
        analysis: the analysis whose finalize fits them (``probing``, or ``sparsity`` for the family).
        ks: probe sizes fitted per unit and concept (None: every probe size of the run).
        rows_probed: ``rows`` are the tokens each fit probes (counted by :func:`count_probing_fits`),
            not the tokens a unit sees.
    """

    width: int
    units: int
    rows: int
    concepts: int
    held_out: bool = False
    analysis: str = "probing"
    ks: int | None = None
    rows_probed: bool = False

    def fits(self, n_ks: int) -> int:
        """Probe fits of this work at ``n_ks`` probe sizes (its own ``ks`` when set): units x concepts x
        probe sizes."""
        return self.units * self.concepts * (n_ks if self.ks is None else self.ks)


def eligible_concepts(rates: Float[torch.Tensor, " concept"], rows: int, min_examples: int) -> int:
    """Concepts a unit seeing ``rows`` tokens is probed for: expected positives and negatives (at the
    concepts' ``rates``) both at least ``min_examples``; the rest the analysis skips."""
    positives = rates * rows
    return int(((positives >= min_examples) & (rows - positives >= min_examples)).sum())


def store_cap(rows_per_class: int | None, concepts: int) -> int | None:
    """Most tokens the probing store keeps per unit (``rows_per_class`` x 2 classes x 2 sides x
    concepts; None: every token)."""
    return None if rows_per_class is None else rows_per_class * 4 * concepts


def routed_rows(cfg: Any, tokens: int, cap: int | None) -> int:
    """Tokens an expert of ``cfg`` (a :class:`~tl_moe.models.config.MoEConfig`) sees when routing is
    balanced, bounded by the probing store's ``cap``."""
    routed = tokens * cfg.experts_per_token // max(cfg.num_experts, 1)
    return min(routed, cap or routed)


def moe_work(cfg: Any, layers: int, rows: int, concepts: int, dense_width: int | None) -> list[ProbeWork]:
    """An MoE's expert units (``layers`` probed layers x its experts): the paper protocol's, and the
    held-out arm's; with a dense baseline of ``dense_width`` neurons also the permuted-label arm and
    the matched-count routed-token draws (d_expert dense neurons on each expert's tokens) with their
    permuted null."""
    from tl_moe.analysis.held_out_probing import ROUTED_COUNT_DRAWS

    experts = layers * cfg.num_experts
    rounds = 1
    if dense_width is not None:
        draws = ROUTED_COUNT_DRAWS if dense_width > cfg.d_expert else 1  # all neurons: one draw is all
        rounds += 1 + 2 * draws
    return [
        ProbeWork(cfg.d_expert, experts, rows, concepts),
        ProbeWork(cfg.d_expert, experts * rounds, rows, concepts, held_out=True),
    ]


def family_work(cfg: Any, tokens: int, cap: int | None, concepts: int, dense_cfg: Any) -> list[ProbeWork]:
    """A sparsity-family member's units (all its sparse layers): its experts by the paper protocol and,
    with the dense twin ``dense_cfg`` (or None), the held-out arms of :func:`moe_work` plus the twin's
    neurons on the member's routed tokens (two arms). The twin's own layers are not counted: their
    held-out fits depend on the dense pass alone and are shared with the probing analysis."""
    layers = len(cfg.sparse_layers)
    rows = routed_rows(cfg, tokens, cap)
    if dense_cfg is None:  # no dense twin: the family's held-out protocol is not run
        work = [w for w in moe_work(cfg, layers, rows, concepts, None) if not w.held_out]
    else:
        width = dense_cfg.d_mlp
        work = moe_work(cfg, layers, rows, concepts, width)
        work.append(ProbeWork(width, 2 * layers * cfg.num_experts, rows, concepts, True))
    return [replace(w, analysis="sparsity") for w in work]


def probing_work(
    cfg: Any,
    layers: int,
    tokens: int,
    concepts: int,
    rows_per_class: int | None = None,
    dense_cfg: Any = None,
    untrained: bool = False,
) -> list[ProbeWork]:
    """The probing analysis's units per width and protocol (each fitted for every concept and probe
    size), for an MoE of config ``cfg`` probed at ``layers`` layers over ``tokens`` stored tokens:
    its experts (:func:`moe_work`), the untrained MoE's held-out arm when ``untrained``, and with a
    dense baseline ``dense_cfg`` its layers by both protocols and its neurons on each expert's routed
    tokens. ``rows_per_class`` (``--probe-rows-per-class``) bounds the stored rows of ``concepts``."""
    cap = store_cap(rows_per_class, concepts)
    whole = min(tokens, cap or tokens)
    rows = routed_rows(cfg, tokens, cap)
    dense_width = None if dense_cfg is None else dense_cfg.d_mlp
    work = moe_work(cfg, layers, rows, concepts, dense_width)
    if untrained:
        work.append(ProbeWork(cfg.d_expert, layers * cfg.num_experts, rows, concepts, held_out=True))
    if dense_cfg is not None:
        dense_layers = len(dense_cfg.dense_layers)
        experts = layers * cfg.num_experts
        work += [
            ProbeWork(dense_width, dense_layers, whole, concepts),  # paper protocol: whole layers
            ProbeWork(dense_width, dense_layers * cfg.num_experts, rows, concepts),  # and one draw per expert
            ProbeWork(dense_width, dense_layers * 2, whole, concepts, True),  # held-out and permuted arms
            ProbeWork(dense_width, 2 * experts, rows, concepts, True),  # on routed tokens, matched subsets
        ]
    return work


@dataclass(frozen=True)
class ProbingFits:
    """The probe fits both probing protocols make on given stored tokens (:func:`count_probing_fits`).

    Attributes:
        paper: the paper protocol's fits (experts, dense layers and routing-matched draws).
        held_out: the held-out protocol's fits, every arm (empty when it is unavailable).
        held_out_unavailable: why the held-out protocol fits nothing (too few documents or examples),
            or None.
    """

    paper: FitTally
    held_out: FitTally
    held_out_unavailable: str | None = None

    @property
    def fits(self) -> int:
        return self.paper.fits + self.held_out.fits


def count_probing_fits(
    paper: Any,
    held_out: Any,
    moe: StoredTokens,
    dense: StoredTokens | None = None,
    untrained: StoredTokens | None = None,
) -> ProbingFits:
    """The fits of ``paper`` (a :class:`~tl_moe.analysis.paper_study.PaperProtocol`) and ``held_out``
    (a :class:`~tl_moe.analysis.held_out_study.HeldOutProbing`) on these stored tokens, counted by
    running their own probing code with no fit made (:func:`~tl_moe.analysis.probing.tally_fits`). The
    held-out protocol's refusal (too few documents or examples) is recorded as the run records it."""
    with tally_fits() as paper_tally:
        paper.probe_units(moe, dense)
    reason = None
    with tally_fits() as held_out_tally:
        try:
            held_out.arms(moe, dense, untrained)
        except InputError as error:  # as the probing analysis: the protocol is unavailable
            reason = str(error)
    if reason is not None:
        held_out_tally = FitTally()
    return ProbingFits(paper_tally, held_out_tally, reason)


def repeat_tokens(stored: StoredTokens, n_tokens: int) -> StoredTokens:
    """``stored`` repeated to ``n_tokens`` tokens (cut within its last copy): each copy's documents and
    tokens are new ones (ids offset past the previous copy's), labels, domains, token ids and integer
    rows (routing) copied, float rows (activations) all zero and not held in memory (a broadcast view).
    A bounded probing store stays one (same class and counts), so a store that dropped rows is still
    exempt from the same-tokens check the run exempts it from. For counting decisions that depend on
    counts, not on activation values."""
    n = len(stored.token_index)
    if n == 0 or n_tokens == n:
        return stored
    index = torch.arange(n_tokens) % n
    copy = torch.arange(n_tokens) // n

    def offset(ids: torch.Tensor) -> torch.Tensor:
        return ids[index] + copy * (int(ids.max()) + 1)

    rows = {
        key: torch.zeros((), dtype=value.dtype).expand(n_tokens, *value.shape[1:])
        if value.dtype.is_floating_point
        else value[index]
        for key, value in stored.rows.items()
    }
    return replace(
        stored,
        token_index=offset(stored.token_index),
        input_ids=stored.input_ids[index],
        domain=stored.domain[index],
        labels=None if stored.labels is None else stored.labels[index],
        rows=rows,
        doc_index=None if stored.doc_index is None else offset(stored.doc_index),
    )
