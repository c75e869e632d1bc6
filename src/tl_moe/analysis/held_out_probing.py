"""k-sparse probing with held-out selection: choose the unit on some documents, report it on others.

The paper's protocol reports, per concept, the best test F1 over units: the maximum is taken on the
split whose score is reported, so it favours the many small, noisy units of an MoE. Here:

1. documents are split (seeded, by document id) into a *selection* and a *test* side
   (:func:`tl_moe.analysis.splits.document_split`);
2. every unit's probe is fitted on the selection documents only (:class:`KSparseProbe` with its
   default, class-balanced sample: 75/25 token split, neurons ranked on train, logistic regression);
   its F1 on the selection side's own held-out 25% is its *selection score*;
3. per concept and k, the unit with the best selection score (among units with ``min_examples``
   positives and negatives on the SELECTION side) is chosen, and its fitted probe is applied,
   unchanged, to every token of the test documents routed to that unit. Everything chosen — the
   concepts kept, the units eligible, the unit chosen, its neurons — is decided on selection documents
   only; the test documents only score;
4. the reported numbers are that probe's class-balanced F1 (negatives weighted so that both classes
   weigh the same, whatever the class ratio routing leaves the unit; the paper's code reports F1 at
   that ratio instead) and balanced accuracy on the test documents.

Each chosen probe keeps its confusion counts per test document, so any mean over concepts, and any
paired difference of two such means (two models, or a model and a control on the same documents),
gets a document-level bootstrap interval (:func:`compare`).

A *probe arm* is one family of units on one model's stored tokens: the experts of an MoE, the layers
of a dense model, the dense neurons on each expert's routed tokens (all of them, or random subsets of
``d_expert`` of them: the matched-count control), routing-matched random subsets.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from tl_moe.analysis._step_values import pack_frame, unpack_frame
from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.concept_probing import concept_populations, expert_activation_block
from tl_moe.analysis.probing import STATUS_OK, KSparseProbe
from tl_moe.analysis.stats import (
    MIN_DOCUMENTS,
    PAIRED_METHOD,
    Interval,
    cluster_bootstrap,
    draw_mean_interval,
    paired_item_means,
)
from tl_moe.collect.steps import Step, run_now
from tl_moe.data.concepts import KNOWN_CONCEPTS
from tl_moe.defaults import MIN_EXAMPLES
from tl_moe.models.hook_names import get_act_name

__all__ = [
    "HeldOutArm",
    "UnitBlock",
    "compare",
    "dense_layer_blocks",
    "ROUTED_COUNT_DRAWS",
    "dense_matched_blocks",
    "dense_routed_blocks",
    "dense_routed_count_blocks",
    "expert_blocks",
    "fit_selection_block",
    "held_out_arm",
    "is_document_concept",
    "layer_map",
    "neuron_subset",
    "permuted_labels",
]

# Confusion counts kept per (k, concept, test document): true pos, false neg, false pos, true neg.
TP, FN, FP, TN = range(4)


def is_document_concept(name: str) -> bool:
    """Whether a concept labels whole documents (``domain_*``, ``language_*``), not tokens."""
    concept = KNOWN_CONCEPTS.get(name)
    if concept is not None:
        return concept.document_field is not None
    return name.startswith(("domain_", "language_"))


@dataclass
class UnitBlock:
    """A chunk of probe units sharing one activation tensor.

    Attributes:
        activations: ``[source, token, neurons]`` neuron activations.
        unit_mask: ``[unit, token]`` tokens each unit sees (already restricted to the population).
        activation_index: the row of ``activations`` each unit reads (None: unit i reads row i).
        names: display name per unit; layers: block index per unit.
    """

    activations: Float[torch.Tensor, "source token neurons"]
    unit_mask: Bool[torch.Tensor, "unit token"]
    activation_index: Int[torch.Tensor, " unit"] | None
    names: list[str]
    layers: list[int]


#: A probe arm's units for one concept population: population mask -> chunks of units. A factory whose
#: ``population_independent`` attribute is True yields the same blocks for every population (called with
#: None); :func:`held_out_arm` then builds each block once and probes every population on it.
BlockFactory = Callable[[Bool[torch.Tensor, " token"] | None], Iterator[UnitBlock]]


@dataclass(frozen=True)
class HeldOutArm:
    """The held-out probes of one arm.

    Attributes:
        name: the arm (e.g. ``"moe"``, ``"dense_on_routed_tokens"``).
        units: one row per (unit, concept, k): selection F1 (NaN unless the unit has ``min_examples``
            positives and negatives on the selection side), example counts on both sides (the test
            side's only recorded).
        chosen: one row per (concept, k): the chosen unit, its selection F1, and its test numbers.
        doc_counts: ``[k, concept, test document, 4]`` confusion counts (TP, FN, FP, TN) of the chosen
            probe on each test document (zeros where no unit was chosen).
        concepts: concept names of axis 1; ks: k values of axis 0; test_docs: document ids of axis 2.
        selected: ``[k, concept]`` whether a unit was chosen for the concept on the selection side
            (None: read from ``doc_counts``, for arms assembled from counts alone).
    """

    name: str
    units: pd.DataFrame
    chosen: pd.DataFrame
    doc_counts: np.ndarray
    concepts: tuple[str, ...]
    ks: tuple[int, ...]
    test_docs: np.ndarray

    selected: np.ndarray | None = None

    def has(self) -> np.ndarray:
        """``[k, concept]``: whether a unit was chosen, on the selection documents.

        ``selected`` when given (:func:`held_out_arm` always gives it: a chosen unit may see no test
        token of a concept and still count as chosen); otherwise, for arms built from confusion
        counts alone, every concept with counts.
        """
        if self.selected is not None:
            return np.asarray(self.selected, dtype=bool)
        return self.doc_counts.sum(axis=(2, 3)) > 0


def balanced_f1(counts: np.ndarray) -> np.ndarray:
    """Class-balanced F1 from ``[..., 4]`` confusion counts (false positives scaled by P / N)."""
    tp, fn, fp, tn = (counts[..., i] for i in range(4))
    positives, negatives = tp + fn, fp + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled_fp = fp * positives / negatives
        f1 = 2 * tp / (2 * tp + fn + scaled_fp)
    return np.where((positives > 0) & (negatives > 0), np.nan_to_num(f1, nan=0.0), np.nan)


def balanced_accuracy(counts: np.ndarray) -> np.ndarray:
    tp, fn, fp, tn = (counts[..., i] for i in range(4))
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.5 * (tp / (tp + fn) + tn / (fp + tn))


def held_out_arm(
    name: str,
    stored: StoredTokens,
    blocks: BlockFactory,
    selection: Bool[torch.Tensor, " token"],
    test_docs: np.ndarray,
    probe_params: dict,
    min_examples: int = MIN_EXAMPLES,
    labels: Bool[torch.Tensor, "token concept"] | None = None,
    step: Step = run_now,
    fit_step: Step | None = None,
) -> HeldOutArm:
    """Fit every unit's probes on the selection documents, choose per concept and k, score on test.

    Args:
        stored: the model's stored tokens (labels, domains, document ids).
        blocks: the arm's units for a population mask (see :func:`expert_blocks` and siblings).
        selection: ``[token]`` True on tokens of selection documents.
        test_docs: sorted ids of the test documents (the bootstrap's clusters; shared by the arms
            that are compared, so their confusion counts line up).
        probe_params: :class:`KSparseProbe` settings (``ks``, ``random_state``, ...).
        min_examples: positives and negatives a unit needs on the SELECTION side to be probed / chosen
            (the test side is never consulted to choose).
        labels: labels to probe instead of ``stored.labels`` (e.g. :func:`permuted_labels`).
        step: how each unit of work runs (:class:`~tl_moe.collect.steps.ResumableSteps` to resume an
            interrupted arm): the whole arm is step ``held_out-{name}``, and inside it each block of
            units (at most one layer's) of each concept population is step
            ``held_out-{name}-p{population}-b{block}``.
        fit_step: how each block's fits run, when not ``step``: the fits of a block do not depend on
            ``test_docs`` (only its scoring does), so arms of several studies on the same stored tokens
            (the dense twin's layers, compared with every MoE of a family) can share them.
    """
    packed, values, chosen, doc_counts = step(
        f"held_out-{name}",
        lambda: _packed(
            *_held_out_tables(
                name,
                stored,
                blocks,
                selection,
                test_docs,
                probe_params,
                min_examples,
                labels,
                step if fit_step is None else fit_step,
            )
        ),
    )
    units = unpack_frame(packed, values)
    concepts, ks = tuple(stored.concept_names), _ks(probe_params)
    return HeldOutArm(
        name, units, chosen, doc_counts, concepts, ks, np.asarray(test_docs), _selected(chosen, concepts, ks)
    )


def _packed(frame: pd.DataFrame, *rest):
    """A step's value with its table ``frame`` packed (:func:`~tl_moe.analysis._step_values.pack_frame`):
    ``(coded frame, coded columns' values, *rest)``."""
    return (*pack_frame(frame), *rest)


def _selected(chosen: pd.DataFrame, concepts: tuple[str, ...], ks: tuple[int, ...]) -> np.ndarray:
    """``[k, concept]``: whether ``chosen`` (made on the selection side) holds a unit for the pair."""
    selected = np.zeros((len(ks), len(concepts)), dtype=bool)
    for row in chosen.itertuples() if len(chosen) else ():
        selected[ks.index(int(row.k)), concepts.index(row.concept)] = True
    return selected


def _ks(probe_params: dict) -> tuple[int, ...]:
    return tuple(sorted(set(probe_params.get("ks", (1,)))))


def fit_selection_block(
    block: UnitBlock,
    labels: Bool[torch.Tensor, "token concept"],
    columns: list[int],
    population: Bool[torch.Tensor, " token"],
    selection: Bool[torch.Tensor, " token"],
    concepts: tuple[str, ...],
    params: dict,
    min_examples: int,
) -> tuple[pd.DataFrame, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Pass 1 of :func:`held_out_arm` for one block: fit its units on the selection documents.

    Returns the units' rows (selection F1, example counts on both sides) and the fitted probes of
    the units that may be chosen, as ``(pairs, top, coef, intercept)``: ``pairs`` ``[m, 2]`` the (unit,
    column position) of each, ``top`` ``[m, max k]`` its neurons, ``coef`` ``[m, K, max k]`` and
    ``intercept`` ``[m, K]`` its probes at the fitted ks (a few tensors: cheap to checkpoint).
    """
    ks = _ks(params)
    test = ~selection
    unit_mask = block.unit_mask & population
    probe = KSparseProbe(**params)
    probe.fit(
        block.activations,
        labels[:, columns],
        unit_mask & selection,
        activation_index=block.activation_index,
        unit_names=block.names,
        concept_names=[concepts[c] for c in columns],
    )
    k_index = [probe.ks_.index(k) for k in ks if k in probe.ks_]
    # Eligibility is the selection side's alone (``status_``: min_examples positives and negatives
    # among the unit's selection tokens). The test counts are recorded, never used to choose.
    ok = probe.status_ == STATUS_OK
    test_mask = unit_mask & test
    n_pos = (test_mask.double() @ labels[:, columns].double()).round().long()
    n_neg = test_mask.sum(1, keepdim=True) - n_pos
    n_units, n_cols = ok.shape
    pairs = ok.nonzero()
    units, cols = pairs[:, 0], pairs[:, 1]
    fitted = (
        pairs,
        probe.top_neurons_[units, cols],
        probe.coef_[units, cols][:, k_index],
        probe.intercept_[units, cols][:, k_index],
    )
    grid = {
        "unit": np.repeat(np.array(block.names, dtype=object), n_cols * len(ks)),
        "layer": np.repeat(np.array(block.layers), n_cols * len(ks)),
        "concept": np.tile(
            np.repeat(np.array([concepts[c] for c in columns], dtype=object), len(ks)), n_units
        ),
        "k": np.tile(np.array(ks), n_units * n_cols),
    }
    # ks above the units' neuron count are not fitted (``probe.ks_`` is then a prefix of the sorted
    # ks): their F1 is NaN, so no unit is chosen for them and their comparisons are unavailable.
    f1 = torch.full((n_units, n_cols, len(ks)), math.nan, dtype=probe.f1_.dtype)
    f1[:, :, : len(k_index)] = probe.f1_[:, :, k_index].masked_fill(~ok[:, :, None], math.nan)
    grid["selection_f1"] = f1.flatten().numpy()
    for key, values in (
        ("n_pos_selection", probe.n_pos_),
        ("n_neg_selection", probe.n_neg_),
        ("n_pos_test", n_pos),
        ("n_neg_test", n_neg),
    ):
        grid[key] = values[:, :, None].expand(-1, -1, len(ks)).flatten().numpy()
    return pd.DataFrame(grid), fitted


def _held_out_tables(
    name: str,
    stored: StoredTokens,
    blocks: BlockFactory,
    selection: Bool[torch.Tensor, " token"],
    test_docs: np.ndarray,
    probe_params: dict,
    min_examples: int,
    labels: Bool[torch.Tensor, "token concept"] | None,
    fit_step: Step,
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """:func:`held_out_arm`'s work: the arm's ``units``, ``chosen`` and ``doc_counts`` (each block's fits
    a ``fit_step``)."""
    labels = stored.labels if labels is None else labels
    ks = tuple(sorted(set(probe_params.get("ks", (1,)))))
    params = {**probe_params, "min_examples": min_examples}
    doc_code = torch.from_numpy(np.searchsorted(test_docs, stored.doc_index.numpy())).long()
    doc_code = doc_code.clamp(max=max(0, len(test_docs) - 1))
    test = ~selection
    concepts = tuple(stored.concept_names)
    n_docs = len(test_docs)
    frames: dict[tuple[int, int], pd.DataFrame] = {}
    populations = concept_populations(stored)
    doc_counts = np.zeros((len(ks), len(concepts), n_docs, 4))
    # The running choice per (concept column, k index): best selection F1 so far and its unit. Units
    # arrive in the order of the population's blocks, so a strictly better score replaces the choice
    # and ties keep the first unit, as an argmax over all units would. A new choice is scored on the
    # test documents at once, while its block is at hand (no second pass over the blocks).
    best: dict[tuple[int, int], tuple[float, str]] = {}

    def probe_block(block: UnitBlock, b: int, p: int, columns: list[int], population: torch.Tensor) -> None:
        """Fit the block's units for one population on the selection side (a resumable step); score
        its new choices on the test side."""
        packed, values, fitted = fit_step(
            f"held_out-{name}-p{p}-b{b}",
            lambda: _packed(
                *fit_selection_block(
                    block, labels, columns, population, selection, concepts, params, min_examples
                )
            ),
        )
        frame = frames[(p, b)] = unpack_frame(packed, values)
        n_cols = len(columns)
        scores = frame["selection_f1"].to_numpy(float).reshape(len(block.names), n_cols, len(ks))
        updates: dict[tuple[int, int], list[int]] = {}
        for j, column in enumerate(columns):
            for i in range(len(ks)):
                column_scores = scores[:, j, i]
                if np.isnan(column_scores).all():
                    continue
                u = int(np.nanargmax(column_scores))
                if (column, i) not in best or column_scores[u] > best[(column, i)][0]:
                    best[(column, i)] = (float(column_scores[u]), block.names[u])
                    updates.setdefault((u, j), []).append(i)
        _score_choices(block, population & test, updates, fitted, columns, labels, doc_code, doc_counts)

    # The blocks are built even where a step is saved: a factory may draw random subsets in sequence.
    if getattr(blocks, "population_independent", False):
        # The blocks do not depend on the population: build each once, probe every population on it.
        for b, block in enumerate(blocks(None)):
            for p, (columns, population) in enumerate(populations):
                probe_block(block, b, p, columns, population)
    else:
        for p, (columns, population) in enumerate(populations):
            for b, block in enumerate(blocks(population)):
                probe_block(block, b, p, columns, population)
    units = (
        pd.concat([frames[key] for key in sorted(frames)], ignore_index=True) if frames else pd.DataFrame()
    )
    # The choice per concept and k on the selection score only (first unit of ties): the same as above.
    scored = units.dropna(subset=["selection_f1"])
    best_rows = scored.loc[scored.groupby(["concept", "k"], sort=False)["selection_f1"].idxmax()]
    for row in best_rows.itertuples():
        chosen_unit = best[(concepts.index(row.concept), ks.index(row.k))][1]
        if chosen_unit != row.unit:  # an internal invariant: the running choice is the argmax
            raise RuntimeError(
                f"held-out choice mismatch for {row.concept} k={row.k}: {chosen_unit} != {row.unit}"
            )
    eligible = scored.groupby(["concept", "k"]).size()
    chosen_rows = []
    for row in best_rows.itertuples():
        c, i = concepts.index(row.concept), ks.index(row.k)
        totals = doc_counts[i, c].sum(0)
        chosen_rows.append(
            {
                "concept": row.concept,
                "level": "document" if is_document_concept(row.concept) else "token",
                "k": row.k,
                "unit": row.unit,
                "layer": int(row.layer),
                "selection_f1": row.selection_f1,
                "test_f1": float(balanced_f1(totals)),
                "test_balanced_accuracy": float(balanced_accuracy(totals)),
                "n_pos_test": int(row.n_pos_test),
                "n_neg_test": int(row.n_neg_test),
                "n_test_docs": int((doc_counts[i, c].sum(1) > 0).sum()),
                "units_eligible": int(eligible[(row.concept, row.k)]),
            }
        )
    chosen = pd.DataFrame(chosen_rows)
    if len(chosen):
        chosen = chosen.sort_values(["concept", "k"]).reset_index(drop=True)
    return units, chosen, doc_counts


def _score_choices(
    block: UnitBlock,
    on_test: Bool[torch.Tensor, " token"],
    updates: dict[tuple[int, int], list[int]],
    fitted: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    columns: list[int],
    labels: Bool[torch.Tensor, "token concept"],
    doc_code: Int[torch.Tensor, " token"],
    doc_counts: np.ndarray,
) -> None:
    """Score a block's new choices on the test documents, into ``doc_counts`` ``[k, concept, doc, 4]``.

    ``updates`` maps (unit, column position) to the k positions the unit is now chosen for; ``fitted``:
    the block's probes as :func:`fit_selection_block` returns them;
    ``on_test``: the population's tokens on the test documents. Each unit's test tokens and activation
    rows are gathered once for all the concepts it is chosen for.
    """
    n_docs = doc_counts.shape[2]
    source = (
        torch.arange(len(block.names))
        if block.activation_index is None
        else torch.as_tensor(block.activation_index).long()
    )
    pairs, tops, coefs, intercepts = fitted
    where = {pair: i for i, pair in enumerate(map(tuple, pairs.tolist()))}
    by_unit: dict[int, list[tuple[int, list[int]]]] = {}
    for (u, j), k_positions in updates.items():
        by_unit.setdefault(u, []).append((j, k_positions))
    for u, choices in by_unit.items():
        tokens = (block.unit_mask[u] & on_test).nonzero().flatten()
        docs = doc_code[tokens].numpy()
        rows = block.activations[source[u]].index_select(0, tokens)  # [n, neurons]
        for j, k_positions in choices:
            column = columns[j]
            i = where[(u, j)]
            top, coef, intercept = tops[i], coefs[i], intercepts[i]
            x = rows.index_select(1, top).double()
            predicted = (x @ coef.T + intercept[None] > 0).numpy()  # [n, K]
            truth = labels[tokens, column].numpy()[:, None]
            category = np.where(truth, np.where(predicted, TP, FN), np.where(predicted, FP, TN))
            for position in k_positions:
                doc_counts[position, column] = np.bincount(
                    docs * 4 + category[:, position], minlength=n_docs * 4
                ).reshape(n_docs, 4)


#: Fewest document swaps behind a swap-test p-value (:func:`swap_test`): its floor, 1 / (1 + n), is
#: then far below a Holm threshold over tens of tests (28 tests at 5%: 0.0018). ``--permutations`` may raise it.
SWAP_PERMUTATIONS = 20_000


@dataclass(frozen=True)
class Side:
    """One paired difference inside :func:`compare`: an arm's chosen-probe counts and its control's.

    Attributes:
        first: ``[concept, doc, 4]`` confusion counts of the first arm's chosen probes.
        draws: one such array per seeded draw of the control (one for a control without draws).
    """

    first: Float[np.ndarray, "concept doc 4"]
    draws: tuple[np.ndarray, ...]


def compare(
    a: HeldOutArm,
    b: HeldOutArm | Sequence[HeldOutArm],
    *,
    level: str = "token",
    n_resamples: int = 2000,
    seed: int = 0,
    min_clusters: int = MIN_DOCUMENTS,
    concepts: Collection[str] | None = None,
    ks: Collection[int] | None = None,
    what: str | None = None,
    null: tuple[HeldOutArm, HeldOutArm | Sequence[HeldOutArm]] | None = None,
    permutations: int = 0,
) -> list[dict]:
    """Paired difference ``mean score(a) - mean score(b)`` per k over the concepts both arms probed.

    Scores: class-balanced F1 (``metric="f1"``, the paper's measure; its chance level depends on how
    often a probe says "positive", between 0 and 2/3) and balanced accuracy (chance level 0.5 always).

    ``b`` may be several arms, the seeded draws of one control (e.g. random neuron subsets): a
    concept's control score is then the mean of its scores over the draws. The interval then carries
    the draws' variation: the draws are a sample from the control's population (random neuron subsets),
    so the estimate's variance is the documents' (one-stage document bootstrap of the draw mean, every
    draw kept once) plus the variance between the per-draw estimates over their number, and the interval
    and p-value come from a t distribution with Satterthwaite's degrees of freedom (``draws_df``;
    :func:`~tl_moe.analysis.stats.draw_mean_interval`). With one draw the interval is the document
    bootstrap alone, as for any deterministic control. A ``null`` pairs its draws with the control's
    by index (the same neuron subsets).

    **Per-concept gate** (decided once, on the test documents' labels, before any resampling): a concept
    enters only if, in every compared arm (and draw), the test documents holding a positive of it, and
    those holding a negative, number at least ``min_clusters``. The others are listed in
    ``dropped_concepts`` with the reason, and counted in ``n_concepts_dropped``. A gated concept is
    defined in (almost) every resample, so the two arms average the same concepts.

    The interval resamples test documents (the same documents on both sides); its method is
    :data:`~tl_moe.analysis.stats.PAIRED_METHOD` (with several draws, the t interval above). In the estimate and in every resample a concept
    counts only when it is defined in BOTH arms. Which concepts may enter is decided on the selection
    side: those both arms chose a unit for (``n_concepts_selected``); the gate then keeps those with
    enough test documents. Concepts of the other ``level`` (token vs document) are left out;
    ``concepts`` (names) restricts the comparison further (e.g. to one concept group), ``ks`` to some k.

    ``null`` = ``(a', b')``: the estimate becomes ``(a - b) - (a' - b')``, a difference's excess over
    its own null (e.g. over the same arms probed with permuted labels), over the concepts gated in all
    four arms, with one document bootstrap of the whole statistic (``a_mean``/``b_mean`` are a's and b's);
    its record also carries both parts over the same concepts, each with its own interval of the same
    kind: ``uncorrected_estimate`` / ``uncorrected_ci_low`` / ``uncorrected_ci_high`` (``a - b``) and
    ``null_estimate`` / ``null_ci_low`` / ``null_ci_high`` (``a' - b'``).

    ``permutations`` > 0 (and no ``null``): also a document-level swap test of ``a = b``
    (:func:`swap_test`), two-sided, ``swap_p``.

    One record per k and metric: ``estimate``, ``ci_low``, ``ci_high``, ``bootstrap_bias``,
    ``bootstrap_p`` (two-sided p-value of 0 of the interval's test: the percentile bootstrap's, floor
    ``2 / (1 + n_resamples)``, for a control without draws; with several draws the t test's, which
    carries the draws' variation and has no floor), ``bootstrap_resamples``, ``swap_p`` (the draws held
    fixed: it tests "a = these draws", not "a = the draws' population"), ``n_draws``, ``draws_df`` (the
    t test's degrees of freedom; None for one draw), ``n_concepts`` (scored
    in both arms), ``n_concepts_selected``, ``n_concepts_dropped``, ``dropped_concepts``,
    ``n_documents``, ``n_documents_with_positives`` (test documents that hold a positive of a kept
    concept in either arm), ``a_mean``, ``b_mean`` + interval metadata.
    """
    draws = _draws(a, b)
    groups = [(a, draws)]
    if null is not None:
        groups.append((null[0], _draws(null[0], null[1])))
    label = what or f"{a.name} - {draws[0].name.split('[')[0]}"
    names = [
        name
        for name in a.concepts
        if all(name in arm.concepts for first, controls in groups for arm in (first, *controls))
        and is_document_concept(name) == (level == "document")
        and (concepts is None or name in concepts)
    ]
    records = []
    for ki, k in enumerate(a.ks):
        if ks is not None and k not in ks:
            continue
        selected = [
            name
            for name in names
            if all(_has(arm, ki, name) for first, controls in groups for arm in (first, *controls))
        ]
        if not selected:
            records += _no_concept_records(k, len(a.test_docs), "no concept was probed in both arms")
            continue
        kept, dropped = concept_gate(
            selected,
            [
                (arm.name, _counts(arm, ki, selected))
                for first, controls in groups
                for arm in (first, *controls)
            ],
            min_clusters,
        )
        if not kept:
            reason = f"no concept has positives and negatives in at least {min_clusters} test documents in every arm"
            records += _no_concept_records(k, len(a.test_docs), reason, len(selected), _dropped_text(dropped))
            continue
        sides = [
            Side(_counts(first, ki, kept), tuple(_counts(arm, ki, kept) for arm in controls))
            for first, controls in groups
        ]
        with_positives = _documents_with_positives(sides[0])
        for metric, score in _METRICS.items():
            statistic = _difference_statistic(sides, score)
            n_draws = max(len(side.draws) for side in sides)  # a null's draws count too
            interval, df = _interval(
                statistic,
                n_draws,
                len(a.test_docs),
                n_resamples,
                seed,
                min_clusters,
                f"{label} at k={k}",
                informative_docs=with_positives,
            )
            _, mean_a, mean_b, n_defined, _ = statistic(np.ones((1, len(a.test_docs))))
            parts = (
                _null_parts(
                    sides, score, len(a.test_docs), n_resamples, seed, min_clusters, f"{label} at k={k}"
                )
                if null is not None
                else {}
            )
            swap_p = (
                swap_test(sides[0], score, permutations, seed)
                if permutations > 0 and null is None
                else math.nan
            )
            records.append(
                {
                    "k": k,
                    "metric": metric,
                    **interval.to_dict(),
                    "bootstrap_p": _json_float(interval.p_value) if interval.available else None,
                    "bootstrap_resamples": n_resamples if interval.available else None,
                    "swap_p": _json_float(swap_p),
                    "swap_permutations": permutations if math.isfinite(swap_p) else None,
                    "n_concepts": int(n_defined[0]),
                    "n_concepts_selected": len(selected),
                    "n_concepts_dropped": len(dropped),
                    "dropped_concepts": _dropped_text(dropped),
                    "n_documents_with_positives": with_positives,
                    "n_draws": len(draws),
                    "draws_df": _json_float(df),
                    "a_mean": _json_float(mean_a[0]),
                    "b_mean": _json_float(mean_b[0]),
                    **parts,
                }
            )
    return records


def _null_parts(
    sides: Sequence[Side],
    score: Callable[[np.ndarray], np.ndarray],
    n_docs: int,
    n_resamples: int,
    seed: int,
    min_clusters: int,
    what: str,
) -> dict[str, float | None]:
    """The two parts of a null-corrected difference, each over the same kept concepts with the same kind
    of interval: ``uncorrected_*`` (the first arm minus its control, no null subtracted) and ``null_*``
    (the same arms with permuted labels), so a reader sees how much of the corrected value each part
    carries (a score whose null's expectation is 0, balanced accuracy, gains only noise from the
    subtraction)."""
    out: dict[str, float | None] = {}
    for key, part in (("uncorrected", sides[:1]), ("null", sides[1:])):
        statistic = _difference_statistic(part, score)
        interval, _ = _interval(
            statistic,
            max(len(side.draws) for side in part),
            n_docs,
            n_resamples,
            seed,
            min_clusters,
            f"{what}, {key}",
            informative_docs=_documents_with_positives(part[0]),
        )
        available = interval.available
        out[f"{key}_estimate"] = _json_float(interval.estimate)
        out[f"{key}_ci_low"] = _json_float(interval.low) if available else None
        out[f"{key}_ci_high"] = _json_float(interval.high) if available else None
    return out


def _interval(
    statistic: Callable,
    n_draws: int,
    n_docs: int,
    n_resamples: int,
    seed: int,
    min_clusters: int,
    what: str,
    informative_docs: int | None = None,
) -> tuple[Interval, float]:
    """The interval and p-value of :func:`compare`'s statistic: the document bootstrap
    (:data:`~tl_moe.analysis.stats.PAIRED_METHOD`) for a control without draws; for a control that
    averages several draws, the t interval that adds the variance between the draws
    (:func:`~tl_moe.analysis.stats.draw_mean_interval`), with its degrees of freedom, the documents' part
    counted over ``informative_docs`` (the test documents holding a positive of a kept concept)."""
    options = dict(
        n_resamples=n_resamples, seed=seed, min_clusters=min_clusters, on_too_few="unavailable", what=what
    )
    if n_draws == 1:
        return cluster_bootstrap(lambda w: statistic(w)[0], n_docs, method=PAIRED_METHOD, **options), math.nan

    def mean_and_draws(weights: np.ndarray) -> np.ndarray:  # [batch, 1 + draw]
        estimate, *_, per_draw = statistic(weights)
        return np.column_stack([estimate, per_draw])

    return draw_mean_interval(
        mean_and_draws, n_docs, n_draws, informative_clusters=informative_docs, **options
    )


def _draws(a: HeldOutArm, b: HeldOutArm | Sequence[HeldOutArm]) -> list[HeldOutArm]:
    """``b`` as a list of draws, checked against ``a`` (same ks and test documents)."""
    draws = [b] if isinstance(b, HeldOutArm) else list(b)
    if not draws:
        raise ValueError(f"no control arm to compare {a.name} with.")
    for arm in draws:
        if a.ks != arm.ks or not np.array_equal(a.test_docs, arm.test_docs):
            raise ValueError(
                f"arms {a.name} and {arm.name} were not probed on the same ks and test documents."
            )
    return draws


def _has(arm: HeldOutArm, ki: int, name: str) -> bool:
    return bool(arm.has()[ki, arm.concepts.index(name)])


def _counts(arm: HeldOutArm, ki: int, names: Sequence[str]) -> Float[np.ndarray, "concept doc 4"]:
    return arm.doc_counts[ki, [arm.concepts.index(name) for name in names]]


def concept_gate(
    names: Sequence[str], arms: Sequence[tuple[str, Float[np.ndarray, "concept doc 4"]]], min_documents: int
) -> tuple[list[str], list[tuple[str, str]]]:
    """The per-concept gate of :func:`compare`, decided on the test documents' labels only.

    A concept is kept when, in every arm, at least ``min_documents`` test documents hold a positive of it
    and at least ``min_documents`` hold a negative (among the tokens its chosen probe scores). Returns the
    kept names and ``(name, reason)`` for each dropped one (the first arm and count that fall short).
    """
    kept, dropped = [], []
    for c, name in enumerate(names):
        reason = None
        for arm, counts in arms:
            positives = int(((counts[c, :, TP] + counts[c, :, FN]) > 0).sum())
            negatives = int(((counts[c, :, FP] + counts[c, :, TN]) > 0).sum())
            if positives < min_documents or negatives < min_documents:
                which, n = ("positives", positives) if positives < min_documents else ("negatives", negatives)
                reason = f"{which} in {n} test documents in {arm} (at least {min_documents} needed)"
                break
        if reason is None:
            kept.append(name)
        else:
            dropped.append((name, reason))
    return kept, dropped


def _dropped_text(dropped: Sequence[tuple[str, str]]) -> str | None:
    return "; ".join(f"{name}: {reason}" for name, reason in dropped) or None


def _documents_with_positives(side: Side) -> int:
    """Test documents holding a positive of a kept concept in either arm of ``side``."""
    positives = sum((c[..., TP] + c[..., FN]).sum(0) for c in (side.first, *side.draws))
    return int((positives > 0).sum())


def _no_concept_records(
    k: int, n_documents: int, reason: str, n_selected: int = 0, dropped: str | None = None
) -> list[dict]:
    """One record per metric for a k with no concept to compare: no estimate, the reason."""
    return [_no_concept_record(k, metric, n_documents, reason, n_selected, dropped) for metric in _METRICS]


#: The scores every comparison reports, in order.
_METRICS = {"f1": balanced_f1, "balanced_accuracy": balanced_accuracy}


def _no_concept_record(
    k: int, metric: str, n_documents: int, reason: str, n_selected: int, dropped: str | None
) -> dict:
    return {
        "k": k,
        "metric": metric,
        "estimate": None,
        "ci_low": None,
        "ci_high": None,
        "n_concepts": 0,
        "n_concepts_selected": n_selected,
        "n_concepts_dropped": n_selected,
        "dropped_concepts": dropped,
        "n_documents": n_documents,
        "interval_available": False,
        "interval_unavailable_reason": reason,
    }


def _concept_scores(
    counts: Float[np.ndarray, "concept doc 4"], score: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    """Document weights ``[batch, doc]`` -> each concept's score on the weighted documents ``[batch, concept]``
    (NaN where the weighted documents hold no positive or no negative of the concept)."""
    flat = counts.transpose(1, 0, 2).reshape(counts.shape[1], -1)  # [doc, concept * 4]

    def scores(weights: np.ndarray) -> np.ndarray:
        # Integer weights times integer counts: the matrix product is exact in float64.
        totals = (weights @ flat).reshape(len(weights), counts.shape[0], counts.shape[2])
        return _score(totals, score)

    return scores


def _score(totals: np.ndarray, score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return score(totals)


def _side_differences(
    side: Side, score: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Document weights ``[batch, doc]`` -> ``(a, b, per_draw)``: the first arm's concept scores and the
    control's (mean over its draws) ``[batch, concept]``, and the first arm minus each draw
    ``[batch, concept, draw]`` (NaN where a draw leaves the concept undefined)."""
    first = _concept_scores(side.first, score)
    draws = [_concept_scores(c, score) for c in side.draws]

    def differences(weights: np.ndarray):
        a = first(weights)
        each = np.stack([d(weights) for d in draws], axis=-1)  # [batch, concept, draw]
        return a, each.mean(-1), a[..., None] - each

    return differences


def _difference_statistic(
    sides: Sequence[Side], score: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Document weights ``[batch, doc]`` -> ``(estimate, mean a, mean b, concepts, per draw)``.

    ``estimate`` ``[batch]``: the mean over concepts of the first side's per-concept difference (first
    arm minus the mean of its control's draws) minus each further side's (a null), over the concepts
    defined in every arm and draw of every side on those documents; ``mean a`` / ``mean b``: the first
    side's two means over them; ``per draw`` ``[batch, draw]``: the same statistic with draw ``j`` alone
    as each side's control (draws paired by index across sides; a side with one draw uses it for every
    ``j``), over the same concepts, so ``estimate`` is its mean over draws. Every draw counts once: the
    draws' own variation enters the interval through :func:`~tl_moe.analysis.stats.draw_mean_interval`.
    """
    n_draws = max(len(side.draws) for side in sides)
    if any(len(side.draws) not in (1, n_draws) for side in sides):
        raise ValueError(
            "a difference and its null need the same number of control draws (or one): got "
            + ", ".join(str(len(side.draws)) for side in sides)
        )
    parts = [_side_differences(side, score) for side in sides]

    def statistic(weights: np.ndarray):
        per_draw, first_a, first_b = None, None, None
        for i, differences in enumerate(parts):
            a, b, each = differences(weights)
            each = np.broadcast_to(each, (*each.shape[:-1], n_draws))
            if i == 0:
                per_draw, first_a, first_b = each, a, b
            else:
                per_draw = per_draw - each
        defined = np.isfinite(per_draw).all(-1) & np.isfinite(first_a) & np.isfinite(first_b)
        n = defined.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = lambda x: np.where(defined, x, 0.0).sum(-1) / n  # noqa: E731
            draws = np.where(defined[..., None], per_draw, 0.0).sum(-2) / n[..., None]
            return draws.mean(-1), mean(first_a), mean(first_b), n, draws

    return statistic


def swap_test(
    side: Side,
    score: Callable[[np.ndarray], np.ndarray],
    permutations: int = SWAP_PERMUTATIONS,
    seed: int = 0,
) -> float:
    """Two-sided document-level swap test of "the two arms score the same" (approximate randomization).

    Under the null the first arm's and the control's confusion counts on a test document are
    exchangeable, so each document's counts may swap sides: a random half of the documents swap (the
    same documents for every concept and every draw of the control), the statistic — mean over concepts
    of ``score(first) - mean over draws score(draw)`` on the swapped totals, concepts defined on both
    sides — is recomputed ``permutations`` times, and ``p = (1 + #{|T*| >= |T|}) / (1 + permutations)``.
    Its floor is ``1 / (1 + permutations)``; swapping every document negates the statistic, so the null
    distribution is symmetric about 0.
    """
    n_docs = side.first.shape[1]
    flat = lambda c: c.transpose(1, 0, 2).reshape(n_docs, -1)  # noqa: E731  [doc, concept * 4]
    first = flat(side.first)
    draws = [flat(c) for c in side.draws]
    shape = side.first.shape[0], side.first.shape[2]

    def statistic(keep: np.ndarray) -> np.ndarray:
        """``keep`` ``[batch, doc]`` (1: the document keeps its side) -> the statistic ``[batch]``."""
        a_sides, b_sides = [], []
        for draw in draws:
            # Side a on swapped documents: the draw's counts where swapped, a's where kept.
            moved = keep @ (first - draw)  # [batch, concept * 4]
            a_total, b_total = draw.sum(0) + moved, first.sum(0) - moved
            a_sides.append(_score(a_total.reshape(len(keep), *shape), score))
            b_sides.append(_score(b_total.reshape(len(keep), *shape), score))
        a_mean = sum(a_sides) / len(draws)
        b_mean = sum(b_sides) / len(draws)
        return paired_item_means(a_mean, b_mean)[0]

    observed = float(statistic(np.ones((1, n_docs)))[0])
    if not math.isfinite(observed):
        return math.nan
    rng = np.random.default_rng([seed, 11])
    tolerance = 1e-12 * max(1.0, abs(observed))
    extreme, batch = 0, max(1, min(permutations, 2_000_000 // max(1, first.shape[1])))
    for start in range(0, permutations, batch):
        keep = rng.integers(0, 2, size=(min(batch, permutations - start), n_docs)).astype(np.float64)
        null = statistic(keep)
        extreme += int((np.abs(null) >= abs(observed) - tolerance).sum())
    return (1 + extreme) / (1 + permutations)


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def permuted_labels(stored: StoredTokens, seed: int = 0) -> Bool[torch.Tensor, "token concept"]:
    """Concept labels shuffled across the tokens of each concept's population (counts kept)."""
    generator = torch.Generator().manual_seed(seed)
    labels = stored.labels.clone()
    for columns, population in concept_populations(stored):
        rows = population.nonzero().flatten()
        order = rows[torch.randperm(len(rows), generator=generator)]
        labels[rows[:, None], torch.tensor(columns)[None, :]] = stored.labels[order][:, columns]
    return labels


# --------------------------------------------------------------------------------------------------
# the arms' units
# --------------------------------------------------------------------------------------------------
def _chunk(num_experts: int, n_tokens: int, width: int, max_block_bytes: int) -> int:
    return max(1, min(num_experts, max_block_bytes // max(1, n_tokens * width * 4)))


def expert_blocks(
    stored: StoredTokens, layers: Sequence[int], num_experts: int, max_block_bytes: int = 256 << 20
) -> BlockFactory:
    """Each expert of each layer on its routed tokens (its own neurons): the MoE arm."""

    def factory(population: torch.Tensor) -> Iterator[UnitBlock]:
        for layer in layers:
            post = stored.rows[get_act_name("expert_post", layer)]
            indices = stored.rows[get_act_name("topk_indices", layer)]
            chunk = _chunk(num_experts, post.shape[0], post.shape[-1], max_block_bytes)
            for start in range(0, num_experts, chunk):
                experts = range(start, min(num_experts, start + chunk))
                block, routed = expert_activation_block(post, indices, experts)
                yield UnitBlock(
                    block, routed, None, [f"L{layer}E{e}" for e in experts], [layer] * len(experts)
                )

    factory.population_independent = True  # held_out_arm builds each block once for every population
    return factory


def routed_masks(stored: StoredTokens, layer: int, num_experts: int) -> Bool[torch.Tensor, "expert token"]:
    """Which tokens each expert of ``layer`` was routed (any of its top-k slots)."""
    indices = stored.rows[get_act_name("topk_indices", layer)].long()
    routed = torch.zeros(num_experts, indices.shape[0], dtype=torch.bool)
    tokens = torch.arange(indices.shape[0])
    for slot in range(indices.shape[1]):
        routed[indices[:, slot], tokens] = True
    return routed


def layer_map(moe_layers: Sequence[int], dense_layers: Sequence[int], moe_n_layers: int, dense_n_layers: int):
    """The dense layer at the same relative depth as each MoE layer (the same block when depths agree)."""
    mapping = {}
    for layer in moe_layers:
        depth = (layer + 0.5) / moe_n_layers * dense_n_layers - 0.5
        mapping[layer] = min(dense_layers, key=lambda d: (abs(d - depth), d))
    return mapping


def _dense_activations(dense: StoredTokens, layer: int) -> torch.Tensor:
    return dense.rows[get_act_name("neuron", layer)][None]  # float16 [1, token, d_mlp]


def dense_layer_blocks(dense: StoredTokens, layers: Sequence[int]) -> BlockFactory:
    """Each dense layer on all of the population's tokens: the dense arm."""

    def factory(population: torch.Tensor | None) -> Iterator[UnitBlock]:
        for layer in layers:
            acts = _dense_activations(dense, layer).float()
            mask = (
                torch.ones(1, acts.shape[1], dtype=torch.bool)
                if population is None
                else population[None].clone()
            )
            yield UnitBlock(acts, mask, None, [f"L{layer}"], [layer])

    factory.population_independent = True  # the arm intersects each unit's tokens with the population
    return factory


def _check_aligned(moe: StoredTokens, dense: StoredTokens) -> None:
    if not (
        moe.token_index.shape == dense.token_index.shape
        and torch.equal(moe.token_index, dense.token_index)
        and torch.equal(moe.input_ids, dense.input_ids)
    ):
        raise ValueError(
            "the dense-on-routed-tokens control needs the MoE and the dense model to see the same tokens "
            "(same tokenizer, corpus and --max-tokens, and a --probe-rows-per-class neither store reached)."
        )


def dense_routed_blocks(
    moe: StoredTokens,
    dense: StoredTokens,
    moe_layers: Sequence[int],
    num_experts: int,
    mapping: dict[int, int],
) -> BlockFactory:
    """Dense neurons (layer at the same depth) on exactly the tokens each expert was routed.

    Same units, same tokens, same positives as the MoE arm: only the neurons differ. The key control:
    it separates "expert neurons are less polysemantic" from "routing pre-filters the tokens".
    """
    _check_aligned(moe, dense)

    def factory(population: torch.Tensor) -> Iterator[UnitBlock]:
        for layer in moe_layers:
            acts = _dense_activations(dense, mapping[layer]).float()
            routed = routed_masks(moe, layer, num_experts)
            yield UnitBlock(
                acts,
                routed,
                torch.zeros(num_experts, dtype=torch.long),
                [f"L{layer}E{e}~dense L{mapping[layer]}" for e in range(num_experts)],
                [layer] * num_experts,
            )

    factory.population_independent = True
    return factory


#: Seeded draws of the matched-count routed-token control (each a random subset of the dense neurons
#: the size of an expert); a concept's control score is its mean over the draws.
ROUTED_COUNT_DRAWS = 3


def neuron_subset(d_mlp: int, n_neurons: int, layer: int, draw: int, seed: int) -> Int[torch.Tensor, " n"]:
    """A seeded random subset of ``min(n_neurons, d_mlp)`` of a dense layer's ``d_mlp`` neurons (sorted),
    one per (MoE layer, draw)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * draw + layer)
    return torch.randperm(d_mlp, generator=generator)[: min(n_neurons, d_mlp)].sort().values


def dense_routed_count_blocks(
    moe: StoredTokens,
    dense: StoredTokens,
    moe_layers: Sequence[int],
    num_experts: int,
    mapping: dict[int, int],
    n_neurons: int,
    draw: int,
    seed: int = 0,
) -> BlockFactory:
    """Dense neurons on each expert's routed tokens, ``n_neurons`` of them (the expert's ``d_expert``).

    :func:`dense_routed_blocks` lets a k-sparse probe pick among all ``d_mlp`` dense neurons while the
    expert offers ``d_expert``: choosing among more candidates favours the dense arm. Here every expert
    of MoE layer ``L`` sees the same random subset of ``n_neurons`` neurons of the dense layer at L's depth
    (:func:`neuron_subset`, one per layer and ``draw``); the held-out protocol averages a few draws
    (:data:`ROUTED_COUNT_DRAWS`) per concept inside one document bootstrap (:func:`compare`).
    """
    _check_aligned(moe, dense)

    def factory(population: torch.Tensor) -> Iterator[UnitBlock]:
        for layer in moe_layers:
            acts = _dense_activations(dense, mapping[layer])
            subset = neuron_subset(acts.shape[-1], n_neurons, layer, draw, seed)
            routed = routed_masks(moe, layer, num_experts)
            yield UnitBlock(
                acts[:, :, subset].float(),
                routed,
                torch.zeros(num_experts, dtype=torch.long),
                [f"L{layer}E{e}~dense L{mapping[layer]} draw {draw}" for e in range(num_experts)],
                [layer] * num_experts,
            )

    factory.population_independent = True
    return factory


def dense_matched_blocks(
    moe: StoredTokens,
    dense: StoredTokens,
    moe_layers: Sequence[int],
    num_experts: int,
    mapping: dict[int, int],
    seed: int = 0,
) -> BlockFactory:
    """Dense neurons on random token subsets sized like each expert's routed set, per layer and concept.

    For expert e of layer L and a concept's population P, the subset has ``|routed(L, e) ∩ P|`` tokens
    drawn uniformly from P (so sizes and the domain intersection are matched per layer and concept),
    probed with the neurons of the dense layer at L's depth. What it controls: the number and the
    sizes of the units a maximum runs over; what it keeps out: WHICH tokens routing picks.
    """
    _check_aligned(moe, dense)

    def factory(population: torch.Tensor) -> Iterator[UnitBlock]:
        generator = torch.Generator().manual_seed(seed + int(population.sum()))
        members = population.nonzero().flatten()
        for layer in moe_layers:
            acts = _dense_activations(dense, mapping[layer]).float()
            sizes = (routed_masks(moe, layer, num_experts) & population).sum(1)
            subsets = torch.zeros(num_experts, population.shape[0], dtype=torch.bool)
            for e in range(num_experts):
                pick = members[torch.randperm(len(members), generator=generator)[: int(sizes[e])]]
                subsets[e, pick] = True
            yield UnitBlock(
                acts,
                subsets,
                torch.zeros(num_experts, dtype=torch.long),
                [f"L{layer}D{e}~dense L{mapping[layer]}" for e in range(num_experts)],
                [layer] * num_experts,
            )

    return factory
