"""Causal checks of labels on held-out documents (the ``causal`` split, never used to label or score).

For each expert whose label a rule can evaluate (every offline label: a concept, a token set, or a
composition — :class:`~tl_moe.explain.labels.LabelRule`; a label given only as a concept is that
concept's rule), on windows of ``causal``-split documents:

- **described** positions are those whose input token the label's rule says yes to
  (:func:`described_positions`: the token's text decoded alone, as the labeler saw it; its concepts
  from the concept library's labeler; its document's domain); **other** positions are the rest;
- the loss of the next-token prediction is computed unchanged and under two interventions on the
  expert (:mod:`tl_moe.models.interventions`, applied with ``run_with_hooks``): **remove** (it cannot
  be selected; tokens re-route) and **boost** (its mixing weight × ``boost``);
- the comparison is made **on the positions where the expert is routed** (its baseline top-k): the
  **effect** of an intervention is ``mean |Δloss|`` on described routed positions minus on the other
  routed positions. An expert changes the loss mostly where it is routed, and a labeled expert is
  routed more often on described tokens than elsewhere (that is how dissection chose its label), so a
  comparison over all positions would credit the label with routing alone;
- the **control expert** is the expert of the same layer whose routing rate *at the described tokens*
  (on the ``explain`` split, where the label was chosen — never on the causal windows) is closest to
  the labeled expert's; the same intervention on it, read on ITS routed positions, gives the control
  effect. For a concept (∧ domain) rule the rates come from the exact dissection counts; for any
  other rule they are measured on the distinct positions of the explain-split random contexts (a
  uniform sample of explain positions that holds every layer's routing), and when these hold fewer
  than :data:`MIN_CONTROL_POSITIONS` described positions, on every stored explain-split context of
  the layer (a sample leaning towards each expert's routed tokens) — :func:`rule_chosen_control`;
  the frame says which (``control_chosen_on``) and on how many positions. The control is *chosen*
  by that rate, not balanced on it (a labeled expert is often routed on most described tokens, and no
  expert of the layer need come close): the **balance diagnostic** gives both experts' rates where the
  control was chosen and their standardized difference (:func:`standardized_difference`), and on the
  causal windows labeled − control routing rate at the described positions and its standardized
  difference; the summary is repeated over the experts whose control is within
  :data:`BALANCE_CALIPER` on the explain documents (``CausalResult.balanced``). The routing rates of
  both experts at described and other positions of the causal windows are reported beside;
- **unadjusted and at equal mixing weight** (two headlines of equal rank): where the label applies the
  labeled expert tends to get a larger mixing weight, and a larger weight alone enlarges both edits'
  effects. That larger weight is part of what the label asserts (the router treats described tokens as
  the expert's: a mediator, not a confounder), so the unadjusted labeled − control difference is the
  label's whole effect, and the weight-adjusted one asks whether the expert matters more there beyond
  its weight. The weight-adjusted effect is the coefficient of "described" in the least-squares fit
  ``|Δloss| = a + b·weight + c·described`` over the expert's routed positions (refitted in every
  resample; one common slope ``b`` for described and other positions), for the labeled and the control
  expert; beside it a check that assumes no linear shape: described − other within quantile strata of
  the weight.

The summary is a mean over labeled experts, and its interval a bootstrap over *documents* (every
window of a document moves together; :func:`~tl_moe.analysis.stats.cluster_bootstrap`): experts that
share documents are not independent. Fewer than the run's ``min_documents`` documents
(:attr:`~tl_moe.analysis.configs.Statistics.min_documents`, ``--min-documents``): the interval is
unavailable, with the reason (as it is when fewer documents hold a described position where a
labeled expert is routed). The summary is also given per group of label kinds (:data:`KIND_GROUPS`).
An expert enters a resample's mean only where its ratio is defined in that resample (labeled −
control: where both are). There is no p-value: the interval is the test.

The paper's check is reported beside it, labelled as such: at described positions where the expert
is routed, its rank by exact direct logit attribution on the actual next token among the routed
experts (rank-1 rate), vs the control expert's rank-1 rate at the described positions where it is
routed (chance with top-k routing: 1 / k).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from tl_moe.analysis.logit_lens import expert_logit_lens
from tl_moe.analysis.readout import LogitReadout
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import _too_few, cluster_bootstrap
from tl_moe.collect.interventional import InterventionRunner
from tl_moe.data.concepts import TokenConceptLabeler
from tl_moe.defaults import MIN_DOCUMENTS
from tl_moe.explain.examples import _HEAD, SPLIT_KEY, SPLITS, ExpertExamples
from tl_moe.explain.explainers import Explanation
from tl_moe.explain.labels import SIMPLE_KINDS, ExplainItems, LabelRule, _unpack, described_by
from tl_moe.models.hook_names import get_act_name
from tl_moe.models.interventions import Intervention

__all__ = [
    "BALANCE_CALIPER",
    "BALANCE_QUANTITIES",
    "MIN_CAUSAL_DOCUMENTS",
    "BY_KIND_QUANTITIES",
    "KIND_GROUPS",
    "CausalResult",
    "CausalWindows",
    "ControlChoice",
    "causal_checks",
    "causal_windows",
    "concept_routing_rates",
    "described_positions",
    "kind_group",
    "label_effects",
    "label_rule",
    "routing_chosen_control",
    "rule_chosen_control",
    "rule_routing_rates",
    "standardized_difference",
]

#: Default fewest documents behind a causal-check interval (fewer: the interval is unavailable, with the
#: reason): the run's ``--min-documents`` default, not a value of its own.
MIN_CAUSAL_DOCUMENTS = MIN_DOCUMENTS
#: Fewest real tokens a window of a short document needs to be used.
MIN_WINDOW_TOKENS = 16
INTERVENTIONS = ("remove", "boost")
#: Strata of mixing weight (quantile bins of each expert's weight on its routed positions) of the
#: stratified check of the weight adjustment.
WEIGHT_STRATA = 5
#: Fewest described positions in the explain-split random contexts behind a rule's control choice
#: (fewer: every stored explain-split context of the layer is pooled too).
MIN_CONTROL_POSITIONS = 20
#: Largest |standardized difference| of routing rates at the described positions, on the explain
#: documents, at which a control counts as balanced (the usual threshold of a balance diagnostic): the
#: experts of the balanced-controls check.
BALANCE_CALIPER = 0.1


@dataclass(frozen=True)
class CausalResult:
    """Per-expert causal effects (``frame``), their summary over experts (``summary``) and per group of
    label kinds (``by_kind``: :data:`KIND_GROUPS`, the quantities of :data:`BY_KIND_QUANTITIES`), the same
    quantities over the experts whose control is balanced on the explain documents (``balanced``:
    |standardized difference| of routing at the described positions at most :data:`BALANCE_CALIPER`;
    empty when none is), the windows' size: ``n_windows`` windows from ``n_documents`` documents, and
    ``min_documents``, the fewest documents behind each of their intervals."""

    frame: pd.DataFrame
    summary: pd.DataFrame
    n_windows: int
    n_documents: int = 0
    by_kind: pd.DataFrame = field(default_factory=pd.DataFrame)
    balanced: pd.DataFrame = field(default_factory=pd.DataFrame)
    min_documents: int = MIN_DOCUMENTS


@dataclass(frozen=True)
class CausalWindows:
    """Windows ``[BOS, tokens...]`` of ``causal``-split documents, right-padded when a document is short.

    Attributes:
        ids: token ids ``[window, pos]``.
        labels: the concept labels of each input token ``[window, pos, concept]``.
        valid: whether each position holds a real token (False: padding or nothing).
        domains: each window's document domain.
        documents: each window's document (its corpus row).
    """

    ids: Int[torch.Tensor, "window pos"]
    labels: Bool[torch.Tensor, "window pos concept"]
    valid: Bool[torch.Tensor, "window pos"]
    domains: list[str | None]
    documents: Int[torch.Tensor, " window"]


def causal_windows(
    dataset: Any,
    tokenizer: Any,
    examples: ExpertExamples,
    *,
    seq_len: int = 128,
    max_windows: int | None = None,
    per_document: int = 1,
    min_tokens: int = MIN_WINDOW_TOKENS,
) -> CausalWindows:
    """Windows of ``causal``-split documents: at most ``per_document`` each (documents are the unit of the
    intervals, so many documents are worth more than many windows of one) and at most ``max_windows`` in
    all (None: every document of the split). A document's last, shorter piece (the whole of a short
    document) is kept when it has at least ``min_tokens`` tokens, right-padded (with causal attention,
    padding never changes an earlier position)."""
    labeler = TokenConceptLabeler(examples.concept_names)
    rows = torch.arange(len(dataset))
    split = document_split(rows, examples.split_fractions, seed=examples.seed, key=SPLIT_KEY)
    bos = tokenizer.bos_token_id
    pad = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, bos, 0) if t is not None)
    lead = int(bos is not None)
    chunk = seq_len - lead
    ids, labels, valid, domains, documents = [], [], [], [], []
    for row in rows[split == SPLITS.index("causal")].tolist():
        document = dataset[row]
        encoding = tokenizer(document["text"], add_special_tokens=False, return_offsets_mapping=True)
        domain = document.get("domain")
        doc_labels = labeler(
            document["text"], encoding["offset_mapping"], domain=domain, language=document.get("language")
        )
        tokens = torch.tensor(encoding["input_ids"], dtype=torch.long)
        for start in list(range(0, len(tokens), chunk))[:per_document]:
            window, window_labels = tokens[start : start + chunk], doc_labels[start : start + chunk]
            if len(window) < min_tokens:
                break
            if lead:
                window = torch.cat([torch.tensor([bos]), window])
                window_labels = torch.cat([window_labels.new_zeros(1, window_labels.shape[1]), window_labels])
            n = len(window)
            ids.append(torch.cat([window, window.new_full((seq_len - n,), pad)]))
            labels.append(
                torch.cat([window_labels, window_labels.new_zeros(seq_len - n, window_labels.shape[1])])
            )
            valid.append(torch.arange(seq_len) < n)
            domains.append(domain)
            documents.append(row)
            if max_windows is not None and len(ids) >= max_windows:
                break
        if max_windows is not None and len(ids) >= max_windows:
            break
    if not ids:
        raise ValueError(f"the causal split holds no document of at least {min_tokens} tokens.")
    return CausalWindows(
        torch.stack(ids), torch.stack(labels), torch.stack(valid), domains, torch.tensor(documents)
    )


def _loss_changes(
    model: Any, ids: Int[torch.Tensor, "window pos"], valid: Bool[torch.Tensor, "window pos"],
    edits: Sequence[Intervention], batch: int = 16,
) -> Float[torch.Tensor, "edit window pos_1"]:  # fmt: skip
    """``|loss(edited) − loss(clean)|`` of predicting ``pos + 1`` from ``pos`` under each edit (each one a
    real forward, resumed from the layer it edits: :class:`~tl_moe.collect.interventional.InterventionRunner`)."""
    changes = []
    runner = InterventionRunner(model, edits=list(edits))
    for part, mask in zip(ids.split(batch), valid.split(batch), strict=True):
        effects = runner.on_batch(part, mask.to(part.device))
        changes.append(effects.loss_change[:, :, :-1].abs().float().cpu())
    return torch.cat(changes, dim=1)


def _keeper(cache: dict[str, torch.Tensor], name: str):
    """A hook storing its tensor in ``cache`` under the name it was asked by (aliases resolve)."""

    def keep(tensor, hook):
        cache[name] = tensor.detach()
        return tensor

    return keep


def _baseline_dla(model: Any, ids: torch.Tensor, layers: Sequence[int], batch: int = 8) -> dict[int, tuple]:
    """Per layer: routed experts ``[window, pos, k]``, each slot's exact DLA on the next token and its
    mixing weight (both ``[window, pos, k]``)."""
    readout = LogitReadout.from_model(model)
    final = f"blocks.{model.moe_cfg.n_layers - 1}.hook_resid_post"
    names = [
        get_act_name(kind, layer)
        for layer in layers
        for kind in ("expert_out", "topk_weights", "topk_indices")
    ]
    out: dict[int, list] = {layer: [] for layer in layers}
    for part in ids.split(batch):
        cache: dict[str, torch.Tensor] = {}
        model.run_with_hooks(part, fwd_hooks=[(name, _keeper(cache, name)) for name in [*names, final]])
        b, p = part.shape
        inverse_rms = readout.inverse_rms(cache[final])
        next_ids = part.roll(-1, dims=1).to(inverse_rms.device)
        for layer in layers:
            expert_out = cache[get_act_name("expert_out", layer)].reshape(
                b, p, model.moe_cfg.experts_per_token, -1
            )
            weights = cache[get_act_name("topk_weights", layer)].reshape(b, p, -1)
            experts = cache[get_act_name("topk_indices", layer)].reshape(b, p, -1).long()
            dla = expert_logit_lens(readout, expert_out, weights, inverse_rms, next_ids).dla[..., 0]
            out[layer].append((experts.cpu(), dla.float().cpu(), weights.float().cpu()))
    return {layer: tuple(torch.cat(parts) for parts in zip(*out[layer], strict=True)) for layer in layers}


def routing_chosen_control(
    examples: ExpertExamples, layer: int, expert: int, concept: int, domain: str | None = None
) -> int:
    """The expert of ``layer`` (not ``expert``) whose routing rate at the tokens a label describes — the
    ``concept``'s tokens, of ``domain`` only when given — is closest to ``expert``'s, on the ``explain``
    split (where the label was chosen, not where it is checked). Ties: closest overall routing frequency."""
    rate = concept_routing_rates(examples, layer, concept, domain)
    return _closest(rate, _explain_frequency(examples, examples.layer_row(layer)), expert)


def concept_routing_rates(
    examples: ExpertExamples, layer: int, concept: int, domain: str | None = None
) -> Float[torch.Tensor, " expert"]:
    """Each expert's routing rate at the ``concept``'s tokens (of ``domain`` only when given) on the
    ``explain`` split, from the exact dissection counts."""
    explain, row = SPLITS.index("explain"), examples.layer_row(layer)
    routed = examples.routed_concept[explain, row, :, concept]  # [expert, domain]
    total = examples.concept_total[explain, concept]  # [domain]
    if domain is not None and domain in examples.domain_names:
        d = examples.domain_names.index(domain)
        routed, total = routed[:, d], total[d]
    else:
        routed, total = routed.sum(-1), total.sum()
    return routed.double() / max(float(total), 1.0)


def standardized_difference(
    a: Float[np.ndarray, "*shape"], b: Float[np.ndarray, "*shape"]
) -> Float[np.ndarray, "*shape"]:
    """The standardized difference of two proportions (routing rates), ``(a − b) / sqrt((a(1−a) +
    b(1−b)) / 2)``: the balance diagnostic of a control (|d| ≤ :data:`BALANCE_CALIPER` is the usual
    reading of balanced). 0 where both are equal; ±inf where they differ and both are 0 or 1."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    spread = np.sqrt((a * (1 - a) + b * (1 - b)) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a == b, 0.0, (a - b) / spread)


def _closest(rate: torch.Tensor, frequency: torch.Tensor, expert: int) -> int:
    """The expert (not ``expert``) whose ``rate`` is closest to ``expert``'s; ties: closest ``frequency``."""
    gaps = (rate - rate[expert]).abs()
    gaps[expert] = float("inf")
    ties = (frequency - frequency[expert]).abs()
    order = sorted(range(len(gaps)), key=lambda x: (round(float(gaps[x]), 12), float(ties[x])))
    return int(order[0])


def _explain_frequency(examples: ExpertExamples, row: int) -> torch.Tensor:
    """Each expert's share of the routed tokens of layer row ``row`` on the ``explain`` split."""
    frequency = examples.routed_total[SPLITS.index("explain"), row].sum(-1).double()
    return frequency / max(float(frequency.sum()), 1.0)


def label_rule(explanation: Explanation, concept_names: Sequence[str]) -> LabelRule | None:
    """The rule a causal check tests: the explanation's own rule, else its concept (∧ its domain when
    given); None for a label no rule can evaluate (free text)."""
    if explanation.rule is not None:
        return explanation.rule
    if explanation.concept not in concept_names:
        return None
    if explanation.domain is not None:
        return LabelRule("concept_and_domain", (explanation.concept,), domain=explanation.domain)
    return LabelRule("concept", (explanation.concept,))


def described_positions(
    rule: LabelRule,
    tokens: Sequence[Sequence[str]],
    labels: Bool[torch.Tensor, "window pos concept"],
    domains: Sequence[str | None],
    concept_names: Sequence[str],
) -> Bool[torch.Tensor, "window pos"]:
    """Whether ``rule`` describes each window position: ``tokens[w][p]`` is the token's text as the
    labeler saw it (one token decoded alone), ``labels`` its concepts, ``domains[w]`` its document's
    domain."""
    n_windows, n_pos = labels.shape[:2]
    items = ExplainItems(
        tuple(t for window in tokens for t in window),
        labels.reshape(n_windows * n_pos, labels.shape[-1]).numpy().astype(bool),
        np.repeat(np.asarray(list(domains), object), n_pos),
        np.zeros(n_windows * n_pos, bool),
    )
    index = {name: i for i, name in enumerate(concept_names)}
    return torch.from_numpy(described_by(rule, items, index).reshape(n_windows, n_pos))


@dataclass(frozen=True)
class RoutingPool:
    """Distinct explain-split positions of stored contexts with one layer's routing.

    Attributes:
        items: each position's token text, concepts and domain (``routed`` unused).
        experts: the experts routed at each position ``[position, k]``.
    """

    items: ExplainItems
    experts: Int[torch.Tensor, "position k"]


def _routing_pool(
    examples: ExpertExamples, tokenizer: Any, row: int, payloads: Sequence[tuple[torch.Tensor, int | None]]
) -> RoutingPool:
    """Every distinct position (by stream index) of the contexts ``payloads`` — pairs of payload rows
    ``[n, row]`` and the layer row of their routing (None: an expert row, holding its own layer's)."""
    width, seen = examples.width, set()
    tokens, words, domains, experts = [], [], [], []
    start = _HEAD + width * (1 + examples.n_words)
    for rows, layer_row in payloads:
        for payload in rows:
            ids = payload[_HEAD : _HEAD + width]
            bits = payload[_HEAD + width : start].reshape(width, examples.n_words)
            topk = examples.routing_of(payload, layer_row)
            domain = int(payload[2])
            name = examples.domain_names[domain] if 0 <= domain < len(examples.domain_names) else "?"
            for j in (ids >= 0).nonzero().flatten().tolist():
                where = int(payload[3]) - examples.before + j
                if where in seen:
                    continue
                seen.add(where)
                tokens.append(examples._decode(tokenizer, [int(ids[j])])[0])
                words.append(bits[j].tolist())
                domains.append(name)
                experts.append(topk[j])
    n_concepts = len(examples.concept_names)
    concepts = _unpack(words, n_concepts) if words else np.zeros((0, n_concepts), bool)
    items = ExplainItems(tuple(tokens), concepts, np.asarray(domains, object), np.zeros(len(tokens), bool))
    return RoutingPool(
        items, torch.stack(experts) if experts else torch.zeros(0, examples.k, dtype=torch.long)
    )


def rule_routing_rates(
    pool: RoutingPool, rule: LabelRule, concept_names: Sequence[str], n_experts: int
) -> tuple[Float[torch.Tensor, " expert"], int]:
    """Each expert's routing rate on the positions of ``pool`` that ``rule`` describes, and how many
    positions those are (rates 0 when none)."""
    index = {name: i for i, name in enumerate(concept_names)}
    described = torch.from_numpy(described_by(rule, pool.items, index))
    routed = torch.zeros(len(described), n_experts, dtype=torch.float64)
    if len(described):
        routed.scatter_(1, pool.experts.long(), 1.0)
    n = int(described.sum())
    return routed[described].sum(0) / max(n, 1), n


@dataclass(frozen=True)
class ControlChoice:
    """The control expert of a label and the explain-side routing it was chosen by.

    Attributes:
        expert: the control expert (same layer).
        positions: the described explain-side positions the rates were measured on (-1: exact counts).
        chosen_on: what the rates were measured on (``dissection counts``, ``random explain contexts``,
            ``all stored explain contexts``).
        labeled_rate, control_rate: the labeled and the control expert's routing rates at the described
            positions there (the balance the choice reached on the explain documents).
    """

    expert: int
    positions: int
    chosen_on: str
    labeled_rate: float
    control_rate: float


def rule_chosen_control(
    examples: ExpertExamples, tokenizer: Any, layer: int, expert: int, rule: LabelRule,
    pools: dict | None = None,
) -> ControlChoice:  # fmt: skip
    """The expert of ``layer`` (not ``expert``) whose routing rate at the positions ``rule`` describes
    is closest to ``expert``'s, on the ``explain`` split. A concept (∧ domain) rule: from the exact
    dissection counts (:func:`routing_chosen_control`). Any other rule: on the distinct positions of
    the explain-split random contexts (a uniform sample of positions, every layer's routing); when they
    hold fewer than :data:`MIN_CONTROL_POSITIONS` described positions, every stored explain-split
    context of the layer (each expert's top and quantile contexts, which hold their layer's routing at
    every position) is pooled in too. Ties: closest overall routing frequency.

    Returns a :class:`ControlChoice`. ``pools`` caches the pools across calls."""
    row = examples.layer_row(layer)
    if rule.kind in ("concept", "concept_and_domain") and rule.concepts[0] in examples.concept_names:
        concept = examples.concept_names.index(rule.concepts[0])
        rate = concept_routing_rates(examples, layer, concept, rule.domain)
        control = routing_chosen_control(examples, layer, expert, concept, rule.domain)
        return ControlChoice(control, -1, "dissection counts", float(rate[expert]), float(rate[control]))
    pools = {} if pools is None else pools
    explain = SPLITS.index("explain")
    random_rows = examples.random_payload[explain][: int(examples.random_kept[explain])]
    if ("random", row) not in pools:
        pools[("random", row)] = _routing_pool(examples, tokenizer, row, [(random_rows, row)])
    rate, n = rule_routing_rates(pools[("random", row)], rule, examples.concept_names, examples.n_experts)
    chosen_on = "random explain contexts"
    if n < MIN_CONTROL_POSITIONS:
        if ("all", row) not in pools:
            stored = [(random_rows, row)]
            for x in range(examples.n_experts):
                stored += [(rows, None) for rows in examples._expert_events(explain, row, x)]
            pools[("all", row)] = _routing_pool(examples, tokenizer, row, stored)
        rate, n = rule_routing_rates(pools[("all", row)], rule, examples.concept_names, examples.n_experts)
        chosen_on = "all stored explain contexts"
    control = _closest(rate, _explain_frequency(examples, row), expert)
    return ControlChoice(control, n, chosen_on, float(rate[expert]), float(rate[control]))


def _per_document(
    values: Float[np.ndarray, "item n"], documents: Int[np.ndarray, " n"], n_documents: int
) -> Float[np.ndarray, "item document"]:
    """Sums of ``values`` over each document's positions."""
    onehot = np.zeros((values.shape[-1], n_documents))
    onehot[np.arange(values.shape[-1]), documents] = 1.0
    return values @ onehot


def _nanmean(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no expert is defined: NaN
        return np.nanmean(values, axis=-1)


def _adjustment_moments(
    weight: Float[np.ndarray, "item n"], delta: Float[np.ndarray, "item n"], mask: Bool[np.ndarray, "item n"]
) -> dict[str, Float[np.ndarray, "item n"]]:
    """The per-position terms whose sums give a group's count, its sums of mixing weight ``w`` and
    ``|Δloss|`` ``y``, and of ``w²`` and ``w·y`` (the sufficient statistics of the weight adjustment)."""
    w, y, m = weight.astype(np.float64), delta.astype(np.float64), mask.astype(np.float64)
    return {"n": m, "w": w * m, "y": y * m, "ww": w * w * m, "wy": w * y * m}


def _weight_adjusted(summed: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """Described − other mean ``|Δloss|`` at equal mixing weight: the coefficient of "described" in the
    least-squares fit ``|Δ| = a + b·w + c·described`` over the routed positions (``c = (ȳ_D − ȳ_O) −
    b·(w̄_D − w̄_O)``, ``b`` the slope pooled within the two groups), from the groups' (resampled) sums."""
    stats = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for group in ("described", "other"):
            n, w, y, ww, wy = (summed[f"{prefix}_{group}_{m}"] for m in ("n", "w", "y", "ww", "wy"))
            stats[group] = (w / n, y / n, ww - w * w / n, wy - w * y / n)
        (w_d, y_d, sxx_d, sxy_d), (w_o, y_o, sxx_o, sxy_o) = stats["described"], stats["other"]
        sxx = sxx_d + sxx_o
        slope = np.where(sxx > 1e-12, (sxy_d + sxy_o) / np.where(sxx > 1e-12, sxx, 1.0), np.nan)
        return (y_d - y_o) - slope * (w_d - w_o)


def _stratum_sums(
    weight: Float[np.ndarray, "item n"], delta: Float[np.ndarray, "item n"], mask: Bool[np.ndarray, "item n"],
    routed: Bool[np.ndarray, "item n"], documents: Int[np.ndarray, " n"], n_documents: int,
) -> tuple[Float[np.ndarray, "item stratum document"], Float[np.ndarray, "item stratum document"]]:  # fmt: skip
    """Per item, stratum of mixing weight (:data:`WEIGHT_STRATA` quantile bins of the weight over the
    item's ``routed`` positions) and document: the sum of ``delta`` and the count over ``mask``."""
    values = np.zeros((2, weight.shape[0], WEIGHT_STRATA, n_documents))
    for i in range(weight.shape[0]):
        if not routed[i].any():
            continue
        edges = np.quantile(weight[i][routed[i]], np.linspace(0, 1, WEIGHT_STRATA + 1)[1:-1])
        stratum = np.searchsorted(edges, weight[i], side="right")
        at = mask[i]
        np.add.at(values[0, i], (stratum[at], documents[at]), delta[i][at].astype(np.float64))
        np.add.at(values[1, i], (stratum[at], documents[at]), 1.0)
    return values[0], values[1]


def _stratified(weights: np.ndarray, strata: dict, prefix: str) -> np.ndarray:
    """Described − other mean ``|Δloss|`` within strata of mixing weight, averaged over the strata that
    hold both with the (resampled) described positions as weights: ``[batch, item]``."""
    (y_d, n_d), (y_o, n_o) = strata[f"{prefix}_described"], strata[f"{prefix}_other"]
    y_d, n_d, y_o, n_o = (np.einsum("bd,isd->bis", weights, a) for a in (y_d, n_d, y_o, n_o))
    with np.errstate(divide="ignore", invalid="ignore"):
        both = (n_d > 0) & (n_o > 0)
        gap = np.where(both, y_d / np.where(both, n_d, 1) - y_o / np.where(both, n_o, 1), 0.0)
        share = np.where(both, n_d, 0.0)
        return (gap * share).sum(-1) / share.sum(-1)


def label_effects(
    documents: Int[np.ndarray, " n"],
    described: Bool[np.ndarray, "item n"],
    other: Bool[np.ndarray, "item n"],
    routed: Bool[np.ndarray, "arm item n"],
    deltas: dict[str, Float[np.ndarray, "arm item n"]],
    *,
    rank_one: Bool[np.ndarray, "arm item n"] | None = None,
    mixing_weight: Float[np.ndarray, "arm item n"] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    min_documents: int = MIN_DOCUMENTS,
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Per-item effects and their means over items with document-bootstrap intervals.

    Positions ``n`` are the loss positions of all windows, each in one of the documents ``documents``
    (indices ``0 .. D - 1``). Per item (a labeled expert), arm 0 is the labeled expert and arm 1 its
    control expert: ``routed`` says where each arm's expert is routed, ``deltas[name]`` is ``|Δloss|``
    under the intervention ``name`` on that arm's expert, and ``rank_one`` where it has the highest DLA
    among the routed experts, ``mixing_weight`` its mixing weight (0 where not routed). ``described`` /
    ``other``: the label's described / other positions.

    Every quantity is a ratio of per-document sums (documents resampled together):

    - ``{name}_effect`` (arm 0) / ``{name}_control_effect`` (arm 1): ``mean |Δ|`` on described routed
      positions minus on other routed positions; ``{name}_labeled_minus_control``: their difference;
    - ``routing_described`` / ``routing_other`` (and ``control_``): the share of described / other
      positions where the arm's expert is routed; the control's balance at the described positions:
      ``routing_described labeled - control`` and ``routing_described standardized difference``
      (:func:`standardized_difference` per item, then the mean);
    - ``weight_described`` / ``weight_other`` (and ``control_``): the mean mixing weight on described /
      other routed positions (a larger weight where the label applies would also enlarge the effect);
    - ``{name}_effect_weight_adjusted`` (and ``control_``, ``{name}_labeled_minus_control_weight_adjusted``,
      the headline): the same comparison at equal mixing weight — the coefficient of "described" in the
      least-squares fit ``|Δ| = a + b·weight + c·described`` over the arm's routed positions
      (:func:`_weight_adjusted`), refitted in every resample; needs ``mixing_weight``;
    - ``{name}_effect_weight_stratified`` (and ``control_``, ``{name}_labeled_minus_control_weight_stratified``):
      a check of the linear adjustment that assumes no shape: described − other within
      :data:`WEIGHT_STRATA` quantile strata of the expert's mixing weight, averaged over the strata with
      the described positions as weights;
    - ``dla_rank1_rate`` (and ``control_``, ``labeled - control``): the rank-1 share at described routed
      positions.

    Returns ``(per_item, summary)``: ``per_item[quantity]`` ``[item]`` on the observed documents, and a
    frame with the mean over items, its interval (``available`` False with a ``reason`` when fewer than
    ``min_documents`` documents), and the number of items and documents.
    """
    n_documents = int(documents.max()) + 1 if len(documents) else 0
    ratios: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (numerators, denominators) [item, D]

    def add(name: str, numerator: np.ndarray, denominator: np.ndarray) -> None:
        ratios[name] = (
            _per_document(numerator.astype(np.float64), documents, n_documents),
            _per_document(denominator.astype(np.float64), documents, n_documents),
        )

    sums: dict[str, np.ndarray] = {}  # name -> per-document sums [item, D] of the weight adjustment
    strata: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (Σ|Δ|, count) [item, stratum, D]

    for arm, who in enumerate(("", "control_")):
        on, off = described & routed[arm], other & routed[arm]
        add(f"{who}routing_described", on, described)
        add(f"{who}routing_other", off, other)
        for name, delta in deltas.items():
            add(f"{who}{name}_described", delta[arm] * on, on)
            add(f"{who}{name}_other", delta[arm] * off, off)
            if mixing_weight is not None:
                for group, mask in (("described", on), ("other", off)):
                    for moment, values in _adjustment_moments(mixing_weight[arm], delta[arm], mask).items():
                        sums[f"{who}{name}_{group}_{moment}"] = _per_document(values, documents, n_documents)
                    strata[f"{who}{name}_{group}"] = _stratum_sums(
                        mixing_weight[arm], delta[arm], mask, on | off, documents, n_documents
                    )
        if mixing_weight is not None:
            add(f"{who}weight_described", mixing_weight[arm] * on, on)
            add(f"{who}weight_other", mixing_weight[arm] * off, off)
        if rank_one is not None:
            add(f"{who}dla_rank1_rate", rank_one[arm] & on, on)

    def per_item(weights: np.ndarray) -> dict[str, np.ndarray]:  # [batch, D] -> quantity: [batch, item]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = {k: (weights @ num.T) / (weights @ den.T) for k, (num, den) in ratios.items()}
        summed = {k: weights @ v.T for k, v in sums.items()}
        out = {}
        for name in deltas:
            for who in ("", "control_"):
                out[f"{who}{name}_effect"] = r[f"{who}{name}_described"] - r[f"{who}{name}_other"]
            out[f"{name}_labeled_minus_control"] = out[f"{name}_effect"] - out[f"control_{name}_effect"]
            if mixing_weight is not None:
                for who in ("", "control_"):
                    out[f"{who}{name}_effect_weight_adjusted"] = _weight_adjusted(summed, f"{who}{name}")
                out[f"{name}_labeled_minus_control_weight_adjusted"] = (
                    out[f"{name}_effect_weight_adjusted"] - out[f"control_{name}_effect_weight_adjusted"]
                )
                for who in ("", "control_"):
                    out[f"{who}{name}_effect_weight_stratified"] = _stratified(
                        weights, strata, f"{who}{name}"
                    )
                out[f"{name}_labeled_minus_control_weight_stratified"] = (
                    out[f"{name}_effect_weight_stratified"] - out[f"control_{name}_effect_weight_stratified"]
                )
        for who in ("", "control_"):
            out[f"{who}routing_described"] = r[f"{who}routing_described"]
            out[f"{who}routing_other"] = r[f"{who}routing_other"]
        # the control's balance at the described positions: labeled − control routing rate, standardized
        out["routing_described labeled - control"] = r["routing_described"] - r["control_routing_described"]
        out["routing_described standardized difference"] = standardized_difference(
            r["routing_described"], r["control_routing_described"]
        )
        if mixing_weight is not None:
            for who in ("", "control_"):
                out[f"{who}weight_described"] = r[f"{who}weight_described"]
                out[f"{who}weight_other"] = r[f"{who}weight_other"]
        if rank_one is not None:
            out["dla_rank1_rate"] = r["dla_rank1_rate"]
            out["control_dla_rank1_rate"] = r["control_dla_rank1_rate"]
            out["dla_rank1_rate labeled - control"] = r["dla_rank1_rate"] - r["control_dla_rank1_rate"]
        return out

    observed = {k: v[0] for k, v in per_item(np.ones((1, n_documents))).items()}
    names = list(observed)

    def statistic(weights: np.ndarray) -> np.ndarray:  # [batch, D] -> [batch, quantity]
        values = per_item(weights)
        return np.stack([_nanmean(values[k]) for k in names], axis=-1)

    # Documents where some labeled expert is routed on a described position: below min_documents the
    # described side rests on too few independent units, whatever the windows' count.
    described_documents = int((_per_document((described & routed[0]).astype(np.float64), documents,
                                             n_documents).sum(0) > 0).sum())  # fmt: skip
    if described_documents < min_documents <= n_documents:
        intervals = [
            _too_few(described_documents, min_documents, "the causal checks' described routed positions",
                     "unavailable", float(np.atleast_1d(e)[0]), 0.95)
            for e in statistic(np.ones((1, n_documents)))[0]
        ]  # fmt: skip
    else:
        intervals = cluster_bootstrap(
            statistic, n_documents, n_resamples=n_resamples, seed=seed, min_clusters=min_documents,
            on_too_few="unavailable", what="the causal checks",
        )  # fmt: skip
    rows = [
        {
            "quantity": name,
            "experts": int(np.isfinite(observed[name]).sum()),
            "documents": n_documents,
            "documents with described routed positions": described_documents,
            "mean": interval.estimate,
            "ci low": interval.low,
            "ci high": interval.high,
            "interval": "available" if interval.available else f"unavailable: {interval.reason}",
        }  # fmt: skip
        for name, interval in zip(names, intervals, strict=True)
    ]
    return observed, pd.DataFrame(rows)


def causal_checks(
    model: Any,
    dataset: Any,
    examples: ExpertExamples,
    explanations: Sequence[Explanation],
    *,
    seq_len: int = 128,
    max_windows: int | None = None,
    boost: float = 2.0,
    min_described: int = 5,
    n_resamples: int = 2000,
    seed: int = 0,
    min_documents: int = MIN_DOCUMENTS,
    progress: bool = True,
) -> CausalResult:
    """The causal checks of every label in ``explanations`` that a rule can evaluate (see the module
    docstring).

    An expert is checked when it is routed on at least ``min_described`` described positions and as
    many other positions of the windows; the others are listed with the reason. Every interval needs
    ``min_documents`` documents (the run's ``--min-documents``); fewer: unavailable, with the reason."""
    from tqdm.auto import tqdm

    windows = causal_windows(dataset, model.tokenizer, examples, seq_len=seq_len, max_windows=max_windows)
    device = next(model.parameters()).device
    ids = windows.ids.to(device)
    rules = {(e.layer, e.expert): label_rule(e, examples.concept_names) for e in explanations if e.ok}
    labeled = [e for e in explanations if e.ok and rules[(e.layer, e.expert)] is not None]
    pools: dict = {}
    matching = [
        rule_chosen_control(examples, model.tokenizer, e.layer, e.expert, rules[(e.layer, e.expert)], pools)
        for e in labeled
    ]
    controls = [choice.expert for choice in matching]
    tokens = [examples._decode(model.tokenizer, window.tolist()) for window in windows.ids]
    layers = sorted({e.layer for e in labeled})
    needed = sorted({(e.layer, x) for e, c in zip(labeled, controls, strict=True) for x in (e.expert, c)})
    edits = {(layer, x, name): Intervention("remove", layer, x) if name == "remove"
             else Intervention("scale", layer, x, factor=boost)
             for layer, x in needed for name in INTERVENTIONS}  # fmt: skip
    with torch.no_grad():
        dla = _baseline_dla(model, ids, layers)
        listed, step = (
            list(edits.values()),
            32,
        )  # edits per call (each call: all windows, many edits per forward)
        changes = torch.cat([
            _loss_changes(model, ids, windows.valid, listed[start : start + step])
            for start in tqdm(range(0, len(listed), step), desc="causal", unit="edit group", disable=not progress)
        ])  # fmt: skip
    deltas = dict(zip(edits, changes, strict=True))
    # Loss position i predicts token i + 1 from token i: both must be real tokens; position 0 (BOS) is left out.
    scored = windows.valid[:, 1:].clone()
    scored[:, 0] = False
    _, document_of_window = np.unique(windows.documents.numpy(), return_inverse=True)
    documents = np.repeat(document_of_window, scored.shape[1]).reshape(scored.shape)[scored.numpy()]
    k = model.moe_cfg.experts_per_token

    def at_scored(tensor: torch.Tensor) -> np.ndarray:
        return tensor[scored].numpy()

    rows, items = [], []
    for e, choice in zip(labeled, matching, strict=True):
        control_expert = choice.expert
        rule = rules[(e.layer, e.expert)]
        described = described_positions(rule, tokens, windows.labels, windows.domains, examples.concept_names)
        described = described[:, :-1] & scored
        other = scored & ~described
        experts, slot_dla, slot_weight = (t[:, :-1] for t in dla[e.layer])
        best_slot = slot_dla.argmax(-1)  # [w, p]: the routed slot with the highest DLA on the next token
        routed = [(experts == x).any(-1) for x in (e.expert, control_expert)]
        rank_one = [
            (experts.gather(-1, best_slot[..., None])[..., 0] == x) for x in (e.expert, control_expert)
        ]
        row: dict[str, Any] = {
            "layer": e.layer, "expert": e.expert, "label": e.label, "kind": rule.kind,
            "control_expert": control_expert, "control_chosen_on": choice.chosen_on,
            "control_chosen_positions": choice.positions if choice.positions >= 0 else None,
            "explain_routing_described": choice.labeled_rate,
            "control_explain_routing_described": choice.control_rate,
            "explain_routing_standardized_difference": float(
                standardized_difference(choice.labeled_rate, choice.control_rate)
            ),
            "n_described": int(described.sum()), "n_other": int(other.sum()),
            "n_described_routed": int((described & routed[0]).sum()),
            "n_other_routed": int((other & routed[0]).sum()),
            "control_n_described_routed": int((described & routed[1]).sum()),
        }  # fmt: skip
        least = min(row["n_described_routed"], row["n_other_routed"])
        row["status"] = (
            "ok" if least >= min_described else f"too few routed described/other positions ({least})"
        )
        rows.append(row)
        if row["status"] == "ok":
            items.append({
                "row": len(rows) - 1, "described": at_scored(described), "other": at_scored(other),
                "routed": np.stack([at_scored(r) for r in routed]),
                "rank_one": np.stack([at_scored(r) for r in rank_one]),
                "weight": np.stack([at_scored((slot_weight * (experts == x)).sum(-1))
                                    for x in (e.expert, control_expert)]),
                "deltas": {name: np.stack([at_scored(deltas[(e.layer, x, name)])
                                           for x in (e.expert, control_expert)]) for name in INTERVENTIONS},
            })  # fmt: skip
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["kind group"] = [kind_group(kind) for kind in frame["kind"]]
    summary, by_kind, balanced = pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    bootstrap = dict(n_resamples=n_resamples, seed=seed, min_documents=min_documents)
    if items:
        observed, summary = _item_effects(documents, items, **bootstrap)
        at = [i["row"] for i in items]
        for name, values in observed.items():
            frame.loc[at, name] = values
        chance = {"quantity": "dla_rank1 chance (1/k)", "experts": 0, "documents": summary["documents"].iloc[0],
                  "mean": 1 / k, "ci low": np.nan, "ci high": np.nan, "interval": "none (a constant)"}  # fmt: skip
        summary = pd.concat([summary, pd.DataFrame([chance])], ignore_index=True)
        groups = [kind_group(rows[i["row"]]["kind"]) for i in items]
        parts = []
        for group in KIND_GROUPS:
            chosen = [i for i, g in zip(items, groups, strict=True) if g == group]
            if chosen:
                part = _item_effects(documents, chosen, **bootstrap)[1]
                parts.append(part[part["quantity"].isin(BY_KIND_QUANTITIES)].assign(**{"kind group": group}))
        by_kind = pd.concat(parts, ignore_index=True)[["kind group", *summary.columns]]
        balanced = _balanced_effects(documents, items, rows, **bootstrap)
    n_documents = int(len(np.unique(windows.documents.numpy())))
    return CausalResult(frame, summary, int(ids.shape[0]), n_documents, by_kind, balanced, int(min_documents))


def _balanced_effects(
    documents: np.ndarray,
    items: Sequence[dict],
    rows: Sequence[dict],
    *,
    n_resamples: int,
    seed: int,
    min_documents: int = MIN_DOCUMENTS,
) -> pd.DataFrame:
    """:data:`BY_KIND_QUANTITIES` and the balance diagnostic over the checked experts whose control was
    balanced where it was chosen (|explain-side standardized difference| ≤ :data:`BALANCE_CALIPER`);
    empty when none was. The experts are chosen on the explain documents, the effects read on the
    causal windows; each interval over at least ``min_documents`` documents."""
    chosen = [i for i in items
              if abs(rows[i["row"]]["explain_routing_standardized_difference"]) <= BALANCE_CALIPER]  # fmt: skip
    if not chosen:
        return pd.DataFrame()
    part = _item_effects(documents, chosen, n_resamples=n_resamples, seed=seed, min_documents=min_documents)[
        1
    ]
    wanted = (*BY_KIND_QUANTITIES, *BALANCE_QUANTITIES)
    return part[part["quantity"].isin(wanted)].reset_index(drop=True)


#: The groups of label kinds the causal checks are reported by: one concept, one token set, or a
#: composition of two parts (concept ∧/∨ token set, concept ∨ concept, concept ∧ domain).
KIND_GROUPS = ("concept", "tokens", "composition")
#: The quantities reported per kind group.
BY_KIND_QUANTITIES = (
    "remove_labeled_minus_control_weight_adjusted",
    "remove_labeled_minus_control_weight_stratified",
    "remove_labeled_minus_control",
    "boost_labeled_minus_control_weight_adjusted",
    "dla_rank1_rate labeled - control",
)


#: The balance diagnostic of the controls on the causal windows (labeled vs control expert's routing
#: rate at the described positions).
BALANCE_QUANTITIES = (
    "routing_described",
    "control_routing_described",
    "routing_described labeled - control",
    "routing_described standardized difference",
)


def kind_group(kind: str) -> str:
    """The group of a label kind (:data:`KIND_GROUPS`)."""
    return kind if kind in SIMPLE_KINDS else "composition"


def _item_effects(
    documents: np.ndarray,
    items: Sequence[dict],
    *,
    n_resamples: int,
    seed: int,
    min_documents: int = MIN_DOCUMENTS,
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """:func:`label_effects` of the checked experts ``items`` (as :func:`causal_checks` gathers them), each
    interval over at least ``min_documents`` documents."""
    return label_effects(
        documents,
        np.stack([i["described"] for i in items]),
        np.stack([i["other"] for i in items]),
        np.stack([i["routed"] for i in items], axis=1),
        {name: np.stack([i["deltas"][name] for i in items], axis=1) for name in INTERVENTIONS},
        rank_one=np.stack([i["rank_one"] for i in items], axis=1),
        mixing_weight=np.stack([i["weight"] for i in items], axis=1),
        n_resamples=n_resamples,
        seed=seed,
        min_documents=min_documents,
    )
