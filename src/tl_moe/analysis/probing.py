"""k-sparse probing of expert (or dense FFN) neurons for token-level concepts.

For every probe *unit* (an expert of an MoE layer, or a dense layer) and every binary concept,
:class:`KSparseProbe` takes the tokens the unit saw (``sampling="balanced"``: a class-balanced
sample of them; ``sampling="all"``: all of them, at the class ratio the unit sees), splits them
75/25 stratified (seeded), ranks the unit's neurons by ``|mean(pos) - mean(neg)|`` on the train
split, fits an L2 logistic-regression probe with balanced class weights on the top-k neurons for
each k, and reports F1 on the test split. All (unit, concept, k) probes are solved together in batches
(:mod:`tl_moe.analysis.probing_math`); a unit with fewer than ``min_examples`` positive or negative
tokens for a concept is reported with status ``"not_enough_samples"``.

:func:`subsample_like_routing` (defined in :mod:`tl_moe.analysis.probing_math`) builds the token
subsets that make a dense model's best-of-layers comparable with an MoE's best-of-experts.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from tl_moe.analysis._sampling_plans import SamplingPlan, sampling_plans
from tl_moe.analysis.probing_math import (
    binary_f1,
    fit_logistic_nested,
    rank_neurons_by_mean_difference,
    stratified_test_sizes,
    subsample_like_routing,
)
from tl_moe.defaults import MIN_EXAMPLES

__all__ = [
    "PROBE_STATUS",
    "SAMPLINGS",
    "STATUS_NOT_ENOUGH_SAMPLES",
    "STATUS_OK",
    "FitTally",
    "KSparseProbe",
    "subsample_like_routing",
    "tally_fits",
]

STATUS_OK = 0
STATUS_NOT_ENOUGH_SAMPLES = 1
#: Meaning of the integer codes in :attr:`KSparseProbe.status_`.
PROBE_STATUS: dict[int, str] = {STATUS_OK: "ok", STATUS_NOT_ENOUGH_SAMPLES: "not_enough_samples"}
#: How :class:`KSparseProbe` picks a unit's tokens: a class-balanced sample, or every token.
SAMPLINGS = ("balanced", "all")

# Problems sharing a chunk have at least this fraction of the largest one's examples, or at most
# _PAD_EXAMPLES fewer (bounds padding). Each chunk costs a fixed few milliseconds of small tensor
# operations per Newton step, about what a problem's _PAD_EXAMPLES padding rows cost to fit, so small
# problems are grouped by an absolute padding bound rather than a relative one.
_MIN_FILL = 0.85
_PAD_EXAMPLES = 256


@dataclass
class FitTally:
    """The probe fits :meth:`KSparseProbe.fit` decided to make inside :func:`tally_fits` (none made).

    Attributes:
        calls: one ``(neurons per unit, problems fitted, tokens probed by them, ks fitted)`` per
            ``fit`` call; a problem is a (unit, concept) with status ``"ok"``, and each is fitted once
            per k.
    """

    calls: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def fits(self) -> int:
        """Probe fits: problems x ks, over every call."""
        return sum(problems * ks for _, problems, _, ks in self.calls)


_TALLY: ContextVar[FitTally | None] = ContextVar("probe_fit_tally", default=None)


@contextmanager
def tally_fits() -> Iterator[FitTally]:
    """Inside, :meth:`KSparseProbe.fit` decides every (unit, concept) as it always does (``status_``,
    ``ks_``, the class counts) but fits nothing: F1, coefficients and intercepts stay NaN / zero, and
    the yielded :class:`FitTally` records the fits each call would have made. Code that fits probes
    (a protocol's arms, say) run inside it tells how many fits it makes, by its own decisions."""
    tally = FitTally()
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is finite: its maximum and minimum are (NaN propagates through both)."""
    return x.numel() == 0 or bool(torch.isfinite(x.amax()) & torch.isfinite(x.amin()))


def _token_rows(
    activations: Float[torch.Tensor, "source n_tokens neurons"],
    source: Int[torch.Tensor, " problem"],
    index: Int[torch.Tensor, "problem n"],
) -> Float[torch.Tensor, "problem n neurons"]:
    """``activations[source[p], index[p, i]]`` for every problem p and entry i.

    One ``index_select`` of whole rows of the flattened activations: on CPU about a third faster
    than the equivalent advanced indexing, and the same values.
    """
    index = index.to(activations.device)
    if not activations.is_contiguous():
        return activations[source[:, None], index]
    n_sources, n_tokens, n_neurons = activations.shape
    flat = (source[:, None] * n_tokens + index).flatten()
    return activations.view(-1, n_neurons).index_select(0, flat).view(*index.shape, n_neurons)


# Token orders kept per (seed, token count), for the most concepts asked so far; a few entries.
_ORDERS: dict[tuple[int, int], torch.Tensor] = {}
_ORDERS_KEPT = 2


def _token_orders(seed: int, n_concepts: int, n_tokens: int) -> Int[torch.Tensor, "concept n_tokens"]:
    """One random token order per concept: a permutation of ``range(n_tokens)`` per row, seeded.

    Row ``c`` is the argsort of row ``c`` of ``torch.rand(n_concepts, n_tokens)`` drawn from a CPU
    generator seeded with ``seed``, so results do not depend on the device. The generator fills the
    rows in order, so the orders of fewer concepts are the first rows of those of more: a run fits
    many probes with the same seed and token count (each layer, block and concept population of
    its units), and the orders are drawn and sorted once for the most concepts asked. Callers must
    not modify the returned tensor.
    """
    cached = _ORDERS.get((seed, n_tokens))
    if cached is None or cached.shape[0] < n_concepts:
        generator = torch.Generator().manual_seed(seed)
        cached = torch.rand(n_concepts, n_tokens, generator=generator).argsort(dim=1)
        _ORDERS.pop((seed, n_tokens), None)
        while len(_ORDERS) >= _ORDERS_KEPT:
            _ORDERS.pop(next(iter(_ORDERS)))
        _ORDERS[(seed, n_tokens)] = cached
    return cached[:n_concepts]


# The inverse permutations of the token orders, kept like them.
_POSITIONS: dict[tuple[int, int], torch.Tensor] = {}


def _token_positions(seed: int, n_concepts: int, n_tokens: int) -> Int[torch.Tensor, "concept n_tokens"]:
    """Each token's place in its concept's :func:`_token_orders` row (the inverse permutations).

    Like the orders, a function of the seed and the token count (fewer concepts: the first rows).
    """
    cached = _POSITIONS.get((seed, n_tokens))
    if cached is None or cached.shape[0] < n_concepts:
        orders = _token_orders(seed, n_concepts, n_tokens)
        ranks = torch.arange(n_tokens).expand(n_concepts, -1)
        cached = torch.empty_like(orders).scatter_(1, orders, ranks)
        _POSITIONS.pop((seed, n_tokens), None)
        while len(_POSITIONS) >= _ORDERS_KEPT:
            _POSITIONS.pop(next(iter(_POSITIONS)))
        _POSITIONS[(seed, n_tokens)] = cached
    return cached[:n_concepts]


def _unit_tokens(
    unit_mask: Bool[torch.Tensor, "unit n_tokens"],
) -> tuple[Int[torch.Tensor, " routed"], Int[torch.Tensor, " unit"], Int[torch.Tensor, " unit"]]:
    """Each unit's tokens in increasing order, end to end, with the start and count of each unit's run."""
    count = unit_mask.sum(1)
    return unit_mask.nonzero(as_tuple=True)[1], count.cumsum(0) - count, count


def _problem_tokens(
    tokens: Int[torch.Tensor, " routed"],
    start: Int[torch.Tensor, " problem"],
    count: Int[torch.Tensor, " problem"],
) -> tuple[Int[torch.Tensor, " entry"], Int[torch.Tensor, " entry"]]:
    """The runs ``tokens[start[p] : start[p] + count[p]]`` end to end, and the problem of each entry."""
    problem = torch.repeat_interleave(torch.arange(len(count), device=tokens.device), count)
    run_start = count.cumsum(0) - count
    offset = torch.arange(len(problem), device=tokens.device) - run_start[problem]
    return problem, tokens[start[problem] + offset]


def _padded_lists(
    problem: Int[torch.Tensor, " entry"],
    tokens: Int[torch.Tensor, " entry"],
    n_problems: int,
    all_problem: Int[torch.Tensor, " candidate"],
    all_tokens: Int[torch.Tensor, " candidate"],
) -> tuple[Int[torch.Tensor, "problem n_max"], Bool[torch.Tensor, "problem n_max"]]:
    """Flat (problem, token) entries, grouped by problem in increasing token order, as padded rows.

    As :func:`~tl_moe.analysis.probing_math.padded_indices` of the entries' masks, gathered from
    the candidates: padding repeats a row's first entry, or, in a row without entries, its first
    candidate (token 0 without candidates).
    """
    counts = torch.bincount(problem, minlength=n_problems)
    n_max = int(counts.max()) if n_problems else 0
    position = torch.arange(len(problem), device=problem.device) - (counts.cumsum(0) - counts)[problem]
    index = torch.zeros(n_problems, n_max, dtype=torch.long, device=problem.device)
    index[problem, position] = tokens
    valid = torch.arange(n_max, device=problem.device)[None, :] < counts[:, None]
    candidates = torch.bincount(all_problem, minlength=n_problems)
    first = all_tokens[(candidates.cumsum(0) - candidates).clamp(max=max(len(all_tokens) - 1, 0))]
    first = torch.where(candidates > 0, first, 0) if len(all_tokens) else torch.zeros_like(candidates)
    if n_max:
        first = torch.where(counts > 0, index[:, 0], first)
    return torch.where(valid, index, first[:, None]), valid


class KSparseProbe:
    """Best-k-neuron logistic probes per (unit, concept), batched over units, concepts and k.

    Args:
        ks: numbers of top-ranked neurons to probe with. A k larger than the number of neurons is
            skipped with a warning (not clipped, which would repeat a probe); ``ks_`` lists those used.
        C: inverse L2 strength of the logistic regression (scikit-learn's ``C``).
        test_size: fraction of each class's sampled tokens held out for F1, in (0, 1).
        min_examples: a (unit, concept) needs at least this many positive and negative tokens among
            the unit's tokens; otherwise its status is ``"not_enough_samples"`` and its F1 is NaN.
        sampling: ``"balanced"`` (default): ``min(#pos, #neg)`` tokens of each class are sampled and
            split 75/25 per class, so train and test are balanced. ``"all"``: every token the unit saw
            is split 75/25 stratified (scikit-learn's ``train_test_split(stratify=y)`` sizes), so the
            test F1 is at the unit's own class ratio (the reference code of the paper's protocol).
        max_examples_per_class: cap on sampled tokens per class (None: no cap beyond balance);
            ``sampling="balanced"`` only.
        random_state: seed of the token sampling and split; the same seed gives the same result.
        device: where the probes are solved; default the device of the activations.
        max_batch_elements: bound on elements of the per-chunk working tensors (problems x tokens,
            problems x sampled tokens x neurons); lower it to use less memory.
        dtype: precision of the Newton solver: float32 (default; about twice as fast, F1 equal to
            scikit-learn's within 0.01) or float64 (coefficients equal to scikit-learn's to ~1e-6).

    Fitted attributes (CPU tensors):
        ks_: the ks probed (tuple). ``f1_``: ``[unit, concept, k]`` test F1, NaN unless status is ok.
        status_: ``[unit, concept]`` codes, see :data:`PROBE_STATUS`.
        top_neurons_: ``[unit, concept, max(ks_)]`` neuron indices by decreasing mean difference
            (-1 unless ok). ``coef_``: ``[unit, concept, k, max(ks_)]`` probe weights on those
            neurons (zero beyond k). ``intercept_``: ``[unit, concept, k]``.
        n_pos_, n_neg_: ``[unit, concept]`` positive / negative tokens available to the unit.
        n_examples_: ``[unit, concept]`` tokens probed, both classes, train + test (0 unless ok).
        unit_names_, concept_names_: labels used by :meth:`to_frame`.
    """

    def __init__(
        self,
        ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
        C: float = 1.0,
        test_size: float = 0.25,
        min_examples: int = MIN_EXAMPLES,
        sampling: Literal["balanced", "all"] = "balanced",
        max_examples_per_class: int | None = None,
        random_state: int = 0,
        device: torch.device | str | None = None,
        max_batch_elements: int = 1 << 25,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.ks = ks
        self.C = C
        self.test_size = test_size
        self.min_examples = min_examples
        self.sampling = sampling
        self.max_examples_per_class = max_examples_per_class
        self.random_state = random_state
        self.device = device
        self.max_batch_elements = max_batch_elements
        self.dtype = dtype

    # ----------------------------------------------------------------------------------------------
    # validation and sampling plan
    # ----------------------------------------------------------------------------------------------
    def _validate_config(self) -> tuple[int, ...]:
        ks = tuple(self.ks)
        if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty sequence of positive ints; got {self.ks!r}.")
        if not (self.C > 0 and math.isfinite(self.C)):
            raise ValueError(f"C must be a finite positive number; got {self.C}.")
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size must be in (0, 1); got {self.test_size}.")
        if not isinstance(self.min_examples, int) or self.min_examples < 2:
            raise ValueError(f"min_examples must be an int >= 2; got {self.min_examples!r}.")
        if math.ceil(self.test_size * self.min_examples) >= self.min_examples:
            raise ValueError(
                f"min_examples={self.min_examples} with test_size={self.test_size} would leave no training "
                "example for a class; raise min_examples or lower test_size."
            )
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}; got {self.sampling!r}.")
        cap = self.max_examples_per_class
        if cap is not None and self.sampling != "balanced":
            raise ValueError("max_examples_per_class caps a balanced sample; it needs sampling='balanced'.")
        if cap is not None and (not isinstance(cap, int) or cap < self.min_examples):
            raise ValueError(
                f"max_examples_per_class must be None or an int >= min_examples ({self.min_examples}); got {cap!r}."
            )
        if self.max_batch_elements < 1:
            raise ValueError(f"max_batch_elements must be >= 1; got {self.max_batch_elements}.")
        return tuple(sorted(set(ks)))

    @staticmethod
    def _validate_masks(
        labels: torch.Tensor,
        unit_mask: torch.Tensor,
        n_tokens: int | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> None:
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.bool or labels.ndim != 2:
            raise ValueError(
                "labels must be a bool tensor [n_tokens, concept] (True = token shows the concept)."
            )
        if not isinstance(unit_mask, torch.Tensor) or unit_mask.dtype != torch.bool or unit_mask.ndim != 2:
            raise ValueError(
                "unit_mask must be a bool tensor [unit, n_tokens] (True = the unit saw the token)."
            )
        if labels.shape[0] == 0 or labels.shape[1] == 0 or unit_mask.shape[0] == 0:
            raise ValueError(
                f"empty input: labels {tuple(labels.shape)}, unit_mask {tuple(unit_mask.shape)}; need at "
                "least one token, one concept and one unit."
            )
        if unit_mask.shape[1] != labels.shape[0] or (n_tokens is not None and labels.shape[0] != n_tokens):
            raise ValueError(
                f"token axes disagree: labels has {labels.shape[0]} tokens, unit_mask {unit_mask.shape[1]}"
                + (f", activations {n_tokens}." if n_tokens is not None else ".")
            )
        if token_mask is not None and (
            not isinstance(token_mask, torch.Tensor)
            or token_mask.dtype != torch.bool
            or token_mask.shape != labels.shape
        ):
            raise ValueError(
                f"token_mask must be a bool tensor shaped like labels {tuple(labels.shape)} "
                "(True = the concept may use the token)."
            )
        counts = labels.sum(0)
        for what, bad in (("positive", counts == 0), ("negative", counts == labels.shape[0])):
            if bad.any():
                idx = bad.nonzero().flatten()[:10].tolist()
                raise ValueError(f"concept(s) {idx} have no {what} token at all; drop them before probing.")

    def _sampling_plan(
        self, labels: torch.Tensor, unit_mask: torch.Tensor, token_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Counts per (unit, concept), the tokens per class to sample, status, each token's sampling position.

        The tokens per class are ``min(n_pos, n_neg)`` (capped) for balanced sampling, and unused
        (every token is probed) otherwise.
        """
        n_pos, n_neg, n_per_class, status = self._class_counts(labels, unit_mask, token_mask)
        positions = _token_positions(self.random_state, labels.shape[1], labels.shape[0]).to(labels.device)
        return n_pos, n_neg, n_per_class, status, positions

    def _class_counts(
        self, labels: torch.Tensor, unit_mask: torch.Tensor, token_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positive and negative tokens per (unit, concept), the tokens per class to sample, and status:
        ``"ok"`` where both classes reach ``min_examples``."""
        units = unit_mask.to(torch.float64)
        usable = torch.ones_like(labels) if token_mask is None else token_mask
        n_pos = (units @ (labels & usable).to(torch.float64)).round().long()
        n_neg = (units @ (~labels & usable).to(torch.float64)).round().long()
        enough = (n_pos >= self.min_examples) & (n_neg >= self.min_examples)
        n_per_class = torch.minimum(n_pos, n_neg)
        if self.max_examples_per_class is not None:
            n_per_class = n_per_class.clamp(max=self.max_examples_per_class)
        n_per_class = n_per_class.masked_fill(~enough, 0)
        status = torch.where(enough, STATUS_OK, STATUS_NOT_ENOUGH_SAMPLES).to(torch.int8)
        return n_pos, n_neg, n_per_class, status

    def train_test_masks(
        self,
        labels: Bool[torch.Tensor, "n_tokens concept"],
        unit_mask: Bool[torch.Tensor, "unit n_tokens"],
        token_mask: Bool[torch.Tensor, "n_tokens concept"] | None = None,
    ) -> tuple[Bool[torch.Tensor, "unit concept n_tokens"], Bool[torch.Tensor, "unit concept n_tokens"]]:
        """The train and test tokens :meth:`fit` uses for each (unit, concept) with these inputs.

        For inspection and for reproducing a probe with another tool; needs unit x concept x token
        memory. All False where the status would be ``"not_enough_samples"``.
        """
        self._validate_config()
        self._validate_masks(labels, unit_mask, token_mask=token_mask)
        _, _, n_per_class, status, positions = self._sampling_plan(labels, unit_mask, token_mask)
        n_units, n_concepts = n_per_class.shape
        unit = torch.arange(n_units).repeat_interleave(n_concepts)
        concept = torch.arange(n_concepts).repeat(n_units)
        train, test = self._split(
            labels, unit_mask, token_mask, positions, n_per_class, status, unit, concept
        )
        return train.view(n_units, n_concepts, -1), test.view(n_units, n_concepts, -1)

    def _split(
        self,
        labels: torch.Tensor,
        unit_mask: torch.Tensor,
        token_mask: torch.Tensor | None,
        positions: torch.Tensor,
        n_per_class: torch.Tensor,
        status: torch.Tensor,
        unit: Int[torch.Tensor, " problem"],
        concept: Int[torch.Tensor, " problem"],
    ) -> tuple[Bool[torch.Tensor, "problem n_tokens"], Bool[torch.Tensor, "problem n_tokens"]]:
        """Train and test token masks of the (unit, concept) problems given by index."""
        masks = []
        for index, valid in self._split_indices(
            labels, unit_mask, token_mask, positions, n_per_class, status, unit, concept
        ):
            mask = torch.zeros(len(unit), labels.shape[0], dtype=torch.bool, device=labels.device)
            row = torch.arange(len(unit), device=labels.device)[:, None].expand_as(index)
            mask[row[valid], index[valid]] = True
            masks.append(mask)
        return masks[0], masks[1]

    def _split_indices(
        self,
        labels: torch.Tensor,
        unit_mask: torch.Tensor,
        token_mask: torch.Tensor | None,
        positions: torch.Tensor,
        n_per_class: torch.Tensor,
        status: torch.Tensor,
        unit: Int[torch.Tensor, " problem"],
        concept: Int[torch.Tensor, " problem"],
        unit_tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Train and test tokens of the (unit, concept) problems given by index, as padded index lists.

        ``((train_index, train_valid), (test_index, test_valid))`` in increasing token order, as
        :func:`~tl_moe.analysis.probing_math.padded_indices` of the train and test masks. The split
        is computed on each problem's own tokens (the unit's, inside the concept's token mask), laid
        end to end in one flat list, not on every token: one sort orders every problem's candidates
        by class and sampling position, and ranks within each class follow from the class's start.
        ``unit_tokens`` (:func:`_unit_tokens` of ``unit_mask``) saves listing the units' tokens again.
        """
        tokens, start, count = _unit_tokens(unit_mask) if unit_tokens is None else unit_tokens
        n_problems, n_tokens = len(unit), labels.shape[0]
        problem, tokens = _problem_tokens(tokens, start[unit], count[unit])
        keep = None if token_mask is None else token_mask[tokens, concept[problem]]
        if self.sampling != "balanced":
            ok = (status[unit, concept] == STATUS_OK)[problem]
            keep = ok if keep is None else keep & ok
        if keep is not None:
            problem, tokens = problem[keep], tokens[keep]
        positive = labels[tokens, concept[problem]]
        if self.sampling == "balanced":
            take = n_per_class[unit, concept]
            tests = torch.ceil(take.to(torch.float64) * self.test_size).long()
            n_test, n_take = (tests, tests), (take, take)
        else:
            n_pos = torch.bincount(problem[positive], minlength=n_problems)
            n_all = torch.bincount(problem, minlength=n_problems)
            n_test = stratified_test_sizes(n_pos, n_all, self.test_size)
            n_take = (n_pos, n_all - n_pos)
        # Groups (problem, class), class 0 positive: each group's candidates in sampling order.
        group = 2 * problem + (~positive).long()
        key = group * n_tokens + positions[concept[problem], tokens]
        if 2 * n_problems * n_tokens < 2**31:  # the keys are distinct: any sort gives this order
            key = key.int()
        order = key.sort().indices
        sorted_group = group[order]
        group_size = torch.bincount(group, minlength=2 * n_problems)
        rank = (
            torch.arange(len(order), device=order.device) - (group_size.cumsum(0) - group_size)[sorted_group]
        )
        group_test = torch.stack(n_test, dim=1).flatten()[sorted_group]
        group_take = torch.stack(n_take, dim=1).flatten()[sorted_group]
        flags = []
        for chosen in (rank >= group_test) & (rank < group_take), rank < group_test:
            flag = torch.zeros_like(chosen).scatter_(0, order, chosen)
            flags.append(_padded_lists(problem[flag], tokens[flag], n_problems, problem, tokens))
        return flags[0], flags[1]

    # ----------------------------------------------------------------------------------------------
    # fitting
    # ----------------------------------------------------------------------------------------------
    def fit(
        self,
        activations: Float[torch.Tensor, "source n_tokens neurons"],
        labels: Bool[torch.Tensor, "n_tokens concept"],
        unit_mask: Bool[torch.Tensor, "unit n_tokens"] | None = None,
        *,
        activation_index: Int[torch.Tensor, "unit"] | None = None,  # noqa: F821 (jaxtyping shape)
        token_mask: Bool[torch.Tensor, "n_tokens concept"] | None = None,
        unit_names: Sequence[str] | None = None,
        concept_names: Sequence[str] | None = None,
    ) -> KSparseProbe:
        """Probe every (unit, concept) pair.

        Args:
            activations: neuron activations of each unit on every token: for an expert, the input of
                its down-projection (values on tokens not routed to it are never read); for a dense
                layer, its FFN neurons.
            labels: whether each token shows each concept.
            unit_mask: which tokens each unit saw (routed tokens for experts). Default: all tokens.
            activation_index: the row of ``activations`` each unit reads; lets several units (e.g.
                token subsets of one dense layer, from :func:`subsample_like_routing`) share one
                activation tensor without copies. Default: unit i reads row i.
            token_mask: tokens each concept may use (e.g. a per-document balanced sample, see
                :func:`~tl_moe.analysis.probing_math.balance_per_document`); a unit probes a concept
                on its tokens inside this mask. Default: every token.
            unit_names, concept_names: labels for :meth:`to_frame` (default: indices).
        """
        ks = self._validate_config()
        if not isinstance(activations, torch.Tensor) or activations.ndim != 3:
            raise ValueError("activations must be a 3-D tensor [unit, n_tokens, neurons].")
        if not activations.dtype.is_floating_point:
            raise ValueError(f"activations must be floating point; got {activations.dtype}.")
        if activations.numel() == 0:
            raise ValueError(f"activations is empty: shape {tuple(activations.shape)}.")
        n_sources, n_tokens, n_neurons = activations.shape
        if unit_mask is None:
            unit_mask = torch.ones(n_sources, n_tokens, dtype=torch.bool, device=activations.device)
        self._validate_masks(labels, unit_mask, n_tokens, token_mask)
        n_units, n_concepts = unit_mask.shape[0], labels.shape[1]
        if activation_index is None:
            if n_units != n_sources:
                raise ValueError(
                    f"unit_mask has {n_units} units but activations {n_sources}; pass activation_index "
                    "to map units onto activation rows."
                )
            activation_index = torch.arange(n_units)
        activation_index = torch.as_tensor(activation_index).long().cpu()
        if (
            activation_index.shape != (n_units,)
            or not ((activation_index >= 0) & (activation_index < n_sources)).all()
        ):
            raise ValueError(f"activation_index must hold {n_units} row indices in [0, {n_sources}).")
        self.unit_names_ = self._names(unit_names, n_units, "unit_names")
        self.concept_names_ = self._names(concept_names, n_concepts, "concept_names")
        self.ks_ = tuple(k for k in ks if k <= n_neurons)
        if len(self.ks_) < len(ks):
            warnings.warn(
                f"ks {[k for k in ks if k > n_neurons]} exceed the {n_neurons} neurons per unit and are skipped.",
                UserWarning,
                stacklevel=2,
            )

        device = torch.device(self.device) if self.device is not None else activations.device
        labels, unit_mask = labels.to(device), unit_mask.to(device)
        token_mask = None if token_mask is None else token_mask.to(device)
        tally = _TALLY.get()
        # The plan (class counts, each chunk's split) depends on the labels and masks alone: arms that
        # probe other neurons on the same tokens and labels reuse it (the same tensors, the same fits).
        plans = sampling_plans()
        plan = (
            SamplingPlan()
            if plans is None
            else plans.plan(self._plan_settings(device), (labels, unit_mask, token_mask))
        )
        if tally is None:
            n_pos, n_neg, n_per_class, status = plan.keep(
                "counts", lambda: self._class_counts(labels, unit_mask, token_mask)
            )
            positions = _token_positions(self.random_state, labels.shape[1], labels.shape[0]).to(
                labels.device
            )
        else:  # deciding only: no token is sampled
            n_pos, n_neg, n_per_class, status = self._class_counts(labels, unit_mask, token_mask)
        ok = status == STATUS_OK
        n_examples = (2 * n_per_class if self.sampling == "balanced" else n_pos + n_neg).masked_fill(~ok, 0)
        max_k, n_k = max(self.ks_), len(self.ks_)
        self.f1_ = torch.full((n_units, n_concepts, n_k), math.nan, dtype=torch.float64)
        self.top_neurons_ = torch.full((n_units, n_concepts, max_k), -1, dtype=torch.long)
        self.coef_ = torch.zeros(n_units, n_concepts, n_k, max_k, dtype=torch.float64)
        self.intercept_ = torch.full((n_units, n_concepts, n_k), math.nan, dtype=torch.float64)
        self.status_ = status.cpu()
        self.n_pos_, self.n_neg_, self.n_examples_ = n_pos.cpu(), n_neg.cpu(), n_examples.cpu()
        if tally is not None:
            tally.calls.append((n_neurons, int(ok.sum()), int(n_examples.sum()), n_k))
            return self

        problems = ok.nonzero().cpu()
        sizes = n_examples.cpu()[problems[:, 0], problems[:, 1]]
        order = sizes.argsort(descending=True, stable=True)
        split = functools.partial(
            self._split_indices,
            labels,
            unit_mask,
            token_mask,
            positions,
            n_per_class,
            status,
            unit_tokens=plan.keep("unit_tokens", lambda: _unit_tokens(unit_mask)),
        )
        for chunk in self._chunks(sizes[order], n_tokens, n_neurons + 2 * max_k + 2):
            chunk_problems = problems[order[chunk]]

            def planned(unit, concept, chunk_problems=chunk_problems):
                return plan.split(chunk_problems, lambda: split(unit, concept))

            self._fit_chunk(activations, labels, activation_index, planned, chunk_problems, device)
        return self

    def _plan_settings(self, device: torch.device) -> tuple:
        """What a sampling plan depends on besides the labels and masks (a chunk's split is keyed by its
        problems, so the chunking need not be the same)."""
        return (
            self.sampling,
            self.test_size,
            self.min_examples,
            self.max_examples_per_class,
            self.random_state,
            str(device),
        )

    def _chunks(self, sizes: Int[torch.Tensor, "problem"], n_tokens: int, row_width: int) -> list[slice]:  # noqa: F821 (jaxtyping shape)
        """Consecutive slices of problems sorted by decreasing size (tokens probed), within the memory bound.

        A chunk also ends where problems get smaller than ``_MIN_FILL`` of its largest one and more than
        ``_PAD_EXAMPLES`` smaller, so that padding every problem to the largest wastes little work.
        """
        chunks, start = [], 0
        while start < len(sizes):
            largest = int(sizes[start])
            per_problem = max(6 * n_tokens, largest * row_width)
            stop = min(len(sizes), start + max(1, self.max_batch_elements // per_problem))
            padding = largest - sizes[start:stop]
            small = ((sizes[start:stop] < _MIN_FILL * largest) & (padding > _PAD_EXAMPLES)).nonzero()
            if len(small):
                stop = start + max(1, int(small[0]))
            chunks.append(slice(start, stop))
            start = stop
        return chunks

    @staticmethod
    def _names(names: Sequence[str] | None, n: int, what: str) -> list:
        if names is None:
            return list(range(n))
        names = list(names)
        if len(names) != n:
            raise ValueError(f"{what} has {len(names)} entries; expected {n}.")
        return names

    def _fit_chunk(
        self,
        activations: torch.Tensor,
        labels: torch.Tensor,
        activation_index: torch.Tensor,
        split: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        chunk: Int[torch.Tensor, "problem 2"],
        device: torch.device,
    ) -> None:
        """Sample, split, rank and fit every probe of one chunk of (unit, concept) problems.

        ``split(unit, concept)`` gives the chunk's train and test tokens as padded index lists.
        """
        unit, concept = chunk[:, 0].to(device), chunk[:, 1].to(device)
        (train_idx, train_valid), (test_idx, test_valid) = split(unit, concept)
        source = activation_index[chunk[:, 0]].to(activations.device)
        rows = _token_rows(activations, source, train_idx).to(device)
        y_train = labels[train_idx, concept[:, None]] & train_valid
        y_test = labels[test_idx, concept[:, None]] & test_valid
        max_k = max(self.ks_)
        top = rank_neurons_by_mean_difference(rows, y_train, train_valid)[:, :max_k]
        x_train = rows.gather(2, top[:, None, :].expand(-1, rows.shape[1], -1)).to(self.dtype)
        del rows  # the test rows below take its place in memory
        test_rows = _token_rows(activations, source, test_idx)
        top_src = top.to(activations.device)
        x_test = test_rows.gather(2, top_src[:, None, :].expand(-1, test_rows.shape[1], -1))
        x_test = x_test.to(device=device, dtype=self.dtype)
        # A non-finite activation makes its neuron's separation NaN or inf, which sorts it to the top.
        if not all(_all_finite(x) for x in (x_train, x_test)):
            raise ValueError("activations hold NaN or infinite values on tokens that units saw.")

        fits = fit_logistic_nested(
            x_train,
            y_train.to(self.dtype),
            train_valid.to(self.dtype),
            self.ks_,
            C=self.C,
            dtype=self.dtype,
            check_input=False,
        )
        f1, coefs, intercepts = [], [], []
        for k, (coef, intercept) in zip(self.ks_, fits, strict=True):
            # [1, k] @ [k, n] per problem: on CPU several times faster than [n, k] @ [k, 1].
            logits = torch.bmm(coef[:, None, :], x_test[..., :k].transpose(1, 2))[:, 0] + intercept[:, None]
            f1.append(binary_f1(logits > 0, y_test, test_valid))
            coefs.append(torch.nn.functional.pad(coef, (0, max_k - k)))
            intercepts.append(intercept)
        u, c = chunk[:, 0], chunk[:, 1]
        self.f1_[u, c] = torch.stack(f1, dim=1).cpu()
        self.coef_[u, c] = torch.stack(coefs, dim=1).cpu().to(self.coef_.dtype)
        self.intercept_[u, c] = torch.stack(intercepts, dim=1).cpu().to(self.intercept_.dtype)
        self.top_neurons_[u, c] = top.cpu()

    # ----------------------------------------------------------------------------------------------
    # results
    # ----------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "f1_"):
            raise RuntimeError(
                "This KSparseProbe is not fitted yet; call fit(activations, labels, unit_mask)."
            )

    def to_frame(self) -> pd.DataFrame:
        """One row per (unit, concept, k): unit, concept, k, f1, status, n_pos, n_neg."""
        self._check_fitted()
        n_units, n_concepts, n_k = self.f1_.shape
        unit = torch.arange(n_units)[:, None, None].expand(-1, n_concepts, n_k).flatten()
        concept = torch.arange(n_concepts)[None, :, None].expand(n_units, -1, n_k).flatten()
        k_index = torch.arange(n_k).repeat(n_units * n_concepts)
        status_names = [PROBE_STATUS[int(code)] for code in self.status_.flatten()]
        return pd.DataFrame(
            {
                "unit": [self.unit_names_[i] for i in unit.tolist()],
                "concept": [self.concept_names_[i] for i in concept.tolist()],
                "k": [self.ks_[i] for i in k_index.tolist()],
                "f1": self.f1_.flatten().numpy(),
                "status": [status_names[i] for i in (unit * n_concepts + concept).tolist()],
                "n_pos": self.n_pos_[unit, concept].numpy(),
                "n_neg": self.n_neg_[unit, concept].numpy(),
            }
        )

    def best_f1(self) -> Float[torch.Tensor, "concept k"]:
        """Best test F1 over units per concept and k (NaN where no unit had enough samples)."""
        self._check_fitted()
        best = self.f1_.nan_to_num(nan=-math.inf).amax(dim=0)
        return best.masked_fill(best == -math.inf, math.nan)

    def best_unit(self) -> Int[torch.Tensor, "concept k"]:
        """Index of the unit with the best F1 per concept and k (lowest index on ties; -1 if none)."""
        self._check_fitted()
        best = self.f1_.nan_to_num(nan=-math.inf).argmax(dim=0)
        return best.masked_fill(self.best_f1().isnan(), -1)

    def n_units_near_best(self, fraction: float = 0.95) -> Int[torch.Tensor, "concept k"]:
        """How many units reach at least ``fraction`` of the best unit's F1, per concept and k."""
        self._check_fitted()
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1]; got {fraction}.")
        threshold = fraction * self.best_f1()
        return (self.f1_ >= threshold[None]).sum(dim=0)

    def best_frame(self, fraction: float = 0.95) -> pd.DataFrame:
        """Per concept and k: best_f1, best_unit (name) and n_units_near_best."""
        best, unit, near = self.best_f1(), self.best_unit(), self.n_units_near_best(fraction)
        rows = [
            {
                "concept": name,
                "k": k,
                "best_f1": float(best[c, j]),
                "best_unit": self.unit_names_[int(unit[c, j])] if unit[c, j] >= 0 else None,
                "n_units_near_best": int(near[c, j]),
            }
            for c, name in enumerate(self.concept_names_)
            for j, k in enumerate(self.ks_)
        ]
        frame = pd.DataFrame(rows)
        frame["best_unit"] = frame["best_unit"].astype(object)
        return frame

    def mean_best_f1(self) -> pd.Series:
        """The paper's headline number: best F1 over units, averaged over concepts, per k.

        Concepts that no unit could probe are left out of the mean.
        """
        best = self.best_f1()
        return pd.Series(best.nanmean(dim=0).numpy(), index=pd.Index(self.ks_, name="k"), name="mean_best_f1")
