"""k-sparse probing of a model's stored activations: experts of an MoE, or dense FFN layers.

Turns a :class:`~tl_moe.analysis.activations.StoredTokens` into :class:`KSparseProbe` fits.
Each concept is probed only on the tokens of documents it is defined on (a code concept on
code, a LaTeX concept on math), so negatives are other tokens of the same kind of text, not
tokens of another domain. Experts are probed in chunks so memory stays bounded.

:func:`probe_experts` and :func:`probe_dense` run the paper's protocol as its reference code
samples, splits and scores (:data:`PAPER_PROTOCOL`): per concept, each document's positive tokens
and as many of its negative tokens, drawn before any routing
(:func:`~tl_moe.analysis.probing_math.balance_per_document`); each unit then probes every token of
that sample it saw, 75/25 stratified, with a class-weighted fit, and its F1 is at the class ratio
routing left it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from tl_moe.analysis._step_values import pack_frame, unpack_frame
from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.probing import KSparseProbe, subsample_like_routing
from tl_moe.analysis.probing_math import balance_per_document
from tl_moe.collect.steps import Step, run_now
from tl_moe.data.concepts import KNOWN_CONCEPTS
from tl_moe.defaults import MIN_EXAMPLES
from tl_moe.errors import AnalysisUnavailable
from tl_moe.models.hook_names import get_act_name

#: The paper protocol's sampling, in words (also part of the checkpoint key of its results).
PAPER_PROTOCOL = (
    "per-document balanced sample before routing; every sampled token a unit saw, 75/25 stratified; "
    "class-weighted fit; F1 at the unit's class ratio"
)


def concept_populations(stored: StoredTokens) -> list[tuple[list[int], Bool[torch.Tensor, " token"]]]:
    """Concept columns grouped by the tokens they are defined on: ``[(columns, token_mask), ...]``.

    A concept's tokens are those of its ``applies_to`` domains and, for a concept restricted to
    ``languages`` (the part-of-speech group), of documents whose ``language_<code>`` column is set
    (when the stored labels have those columns; without them the language is unknown and not used).
    """
    if stored.labels is None or stored.concept_names is None:
        raise ValueError("Probing needs concept labels: run the collection with a concept labeler.")
    by_scope: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = {}
    for column, name in enumerate(stored.concept_names):
        concept = KNOWN_CONCEPTS.get(name)
        scope = (tuple(concept.applies_to), tuple(concept.languages)) if concept else ((), ())
        by_scope.setdefault(scope, []).append(column)
    populations = []
    for (domains, languages), columns in by_scope.items():
        if domains:
            codes = [i for i, d in enumerate(stored.domain_names) if d in domains]
            mask = torch.isin(stored.domain, torch.tensor(codes, dtype=stored.domain.dtype))
        else:
            mask = torch.ones_like(stored.domain, dtype=torch.bool)
        language_columns = [
            stored.concept_names.index(f"language_{code}")
            for code in languages
            if f"language_{code}" in stored.concept_names
        ]
        if language_columns:
            mask = mask & stored.labels[:, language_columns].any(dim=1)
        populations.append((columns, mask))
    return populations


#: Each concept population's columns, token mask and per-document balanced sample ``[token, column]``.
PaperSamples = list[tuple[list[int], Bool[torch.Tensor, " token"], Bool[torch.Tensor, "token column"]]]


def paper_samples(stored: StoredTokens, seed: int) -> PaperSamples:
    """The paper protocol's tokens of one model: per concept population, each document's positives and
    as many of its negatives (:func:`~tl_moe.analysis.probing_math.balance_per_document`), drawn once
    for all of the model's units (they do not depend on the unit)."""
    if stored.doc_index is None:
        raise ValueError(
            "the paper protocol balances each concept per document: the stored tokens need document ids."
        )
    return [
        # seed + 1: the negatives' draw is a random stream apart from the token split's (seed).
        (
            columns,
            population,
            balance_per_document(stored.labels[:, columns], stored.doc_index, population, seed=seed + 1),
        )
        for columns, population in concept_populations(stored)
    ]


def _probe(
    activations: Float[torch.Tensor, "source token neurons"],
    unit_mask: Bool[torch.Tensor, "unit token"],
    stored: StoredTokens,
    unit_names: Sequence[str],
    probe_params: dict,
    activation_index: Int[torch.Tensor, " unit"] | None = None,
    samples: PaperSamples | None = None,
) -> pd.DataFrame:
    """Paper protocol: each population's concepts probed on their per-document balanced samples
    (``samples``: :func:`paper_samples` of ``stored``, drawn here when not given)."""
    if samples is None:
        samples = paper_samples(stored, probe_params.get("random_state", 0))
    frames = []
    for columns, population, sample in samples:
        labels = stored.labels[:, columns]
        probe = KSparseProbe(**{**probe_params, "sampling": "all"})
        probe.fit(
            activations,
            labels,
            unit_mask & population,
            activation_index=activation_index,
            token_mask=sample,
            unit_names=unit_names,
            concept_names=[stored.concept_names[c] for c in columns],
        )
        frames.append(probe.to_frame())
    return pd.concat(frames, ignore_index=True)


def _usable(stored: StoredTokens, min_positives: int) -> StoredTokens:
    """Drop concept columns with fewer than ``min_positives`` positive, or negative, tokens overall (a
    concept positive on every token, e.g. on a one-domain slice, has nothing to tell apart)."""
    positives = stored.labels.sum(0)
    negatives = stored.labels.shape[0] - positives
    keep = [c for c in range(stored.labels.shape[1]) if int(min(positives[c], negatives[c])) >= min_positives]
    if not keep:
        raise AnalysisUnavailable(
            f"No concept has {min_positives} positive tokens in the stored sample; collect more tokens."
        )
    return stored.with_concepts(keep)


def expert_probing_hooks(cfg, layers: Sequence[int] | None = None) -> list[str]:
    """The hooks :func:`probe_experts` reads for ``layers`` (default: every sparse layer): each layer's
    ``expert_post`` and ``topk_indices``; pass them to a
    :class:`~tl_moe.analysis.activations.TokenActivationStore`."""
    return [
        name
        for layer in (cfg.sparse_layers if layers is None else layers)
        for name in (get_act_name("expert_post", layer), get_act_name("topk_indices", layer))
    ]


def routed_counts(stored: StoredTokens, layer: int, num_experts: int) -> Int[torch.Tensor, " expert"]:
    """Tokens (slots) each expert of ``layer`` received in the stored sample."""
    indices = stored.rows[get_act_name("topk_indices", layer)].long()
    return torch.bincount(indices.reshape(-1), minlength=num_experts)


def expert_activation_block(
    post: Float[torch.Tensor, "token k d_expert"],
    indices: Int[torch.Tensor, "token k"],
    experts: range,
) -> tuple[Float[torch.Tensor, "expert token d_expert"], Bool[torch.Tensor, "expert token"]]:
    """Neuron activations of ``experts`` on every token (zero where not routed) and the routed mask."""
    n_tokens, k, width = post.shape
    block = torch.zeros(len(experts), n_tokens, width)
    routed = torch.zeros(len(experts), n_tokens, dtype=torch.bool)
    # Rows of the flattened [expert * token] views: one row copy per routed (token, slot), no 2-D indexing.
    flat, flat_routed = block.view(-1, width), routed.view(-1)
    for slot in range(k):
        local = indices[:, slot].long() - experts.start
        tokens = ((local >= 0) & (local < len(experts))).nonzero().flatten()
        rows = local[tokens] * n_tokens + tokens
        flat.index_copy_(0, rows, post[:, slot].index_select(0, tokens).float())
        flat_routed[rows] = True
    return block, routed


def probe_expert_layer(
    stored: StoredTokens,
    layer: int,
    num_experts: int,
    probe_params: dict,
    max_block_bytes: int = 256 << 20,
    samples: PaperSamples | None = None,
) -> pd.DataFrame:
    """Probe every expert of one sparse ``layer`` (``stored`` already restricted by :func:`_usable`).

    One row per (expert, concept, k); the unit of work :func:`probe_experts` checkpoints. ``samples``:
    :func:`paper_samples` of ``stored`` (drawn here when not given).
    """
    if samples is None:
        samples = paper_samples(stored, probe_params.get("random_state", 0))
    post = stored.rows[get_act_name("expert_post", layer)]
    indices = stored.rows[get_act_name("topk_indices", layer)]
    per_expert_bytes = post.shape[0] * post.shape[-1] * 4
    chunk = max(1, min(num_experts, max_block_bytes // max(1, per_expert_bytes)))
    frames = []
    for start in range(0, num_experts, chunk):
        experts = range(start, min(num_experts, start + chunk))
        block, routed = expert_activation_block(post, indices, experts)
        names = {f"L{layer}E{e}": e for e in experts}
        frame = _probe(block, routed, stored, list(names), probe_params, samples=samples)
        frame["layer"], frame["expert"] = layer, frame["unit"].map(names).astype(int)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def probe_experts(
    stored: StoredTokens,
    sparse_layers: Sequence[int],
    num_experts: int,
    probe_params: dict | None = None,
    min_positives: int = MIN_EXAMPLES,
    max_block_bytes: int = 256 << 20,
    progress: bool = True,
    step: Step = run_now,
    step_prefix: str = "paper-moe",
) -> pd.DataFrame:
    """Probe every expert of every sparse layer (paper protocol); one row per (layer, expert, concept, k).

    ``stored.rows`` must hold the hooks of :func:`expert_probing_hooks` for ``sparse_layers``.
    Experts are probed in blocks of at most ``max_block_bytes`` of activations. Units are named
    ``L{layer}E{expert}`` for display; the ``layer`` and ``expert`` columns hold the integers.
    Each layer is one ``step`` (key ``{step_prefix}-L{layer}``): with a
    :class:`~tl_moe.collect.steps.ResumableSteps`, an interrupted call resumes after the last
    finished layer.
    """
    from tqdm.auto import tqdm

    stored = _usable(stored, min_positives)
    params = probe_params or {}
    samples = functools.cache(lambda: paper_samples(stored, params.get("random_state", 0)))
    frames = []
    for layer in tqdm(sparse_layers, desc="probe experts (layers)", disable=not progress):
        frames.append(
            _table_step(
                step,
                f"{step_prefix}-L{layer}",
                lambda layer=layer: probe_expert_layer(
                    stored, layer, num_experts, params, max_block_bytes, samples=samples()
                ),
            )
        )
    return pd.concat(frames, ignore_index=True)


def probe_dense(
    stored: StoredTokens,
    layers: Sequence[int],
    probe_params: dict | None = None,
    min_positives: int = MIN_EXAMPLES,
    routed_counts: Int[torch.Tensor, " expert"] | None = None,
    seed: int = 0,
    step: Step = run_now,
    step_prefix: str = "paper-dense",
) -> pd.DataFrame:
    """Probe the FFN neurons of dense ``layers`` (paper protocol; ``stored.rows`` holds each layer's
    ``neuron`` hook).

    With ``routed_counts`` (tokens each expert of an MoE layer received), each dense layer is also
    probed on random token subsets of those sizes (:func:`subsample_like_routing`), so its
    best-of-units has as many draws, of the same sizes, as the MoE's best-of-experts; those rows
    have ``draw >= 0``. Two ``step`` s: the whole layers (``{step_prefix}-layers``), then the draws
    (``{step_prefix}-draws``); each fits all ``layers`` at once.
    """
    stored = _usable(stored, min_positives)
    params = probe_params or {}
    layer_of = {f"L{layer}": layer for layer in layers}
    samples = functools.cache(lambda: paper_samples(stored, params.get("random_state", 0)))

    def activations() -> torch.Tensor:
        return torch.stack([stored.rows[get_act_name("neuron", layer)].float() for layer in layers])

    def whole_layers() -> pd.DataFrame:
        acts = activations()
        everyone = torch.ones(len(layers), acts.shape[1], dtype=torch.bool)
        frame = _probe(acts, everyone, stored, list(layer_of), params, samples=samples())
        frame["layer"], frame["draw"] = frame["unit"].map(layer_of).astype(int), -1
        return frame

    frame = _table_step(step, f"{step_prefix}-layers", whole_layers)
    if routed_counts is None:
        return frame

    def draws() -> pd.DataFrame:
        acts = activations()
        everyone = torch.ones(len(layers), acts.shape[1], dtype=torch.bool)
        counts = routed_counts.clamp(max=acts.shape[1])
        subsets, source = subsample_like_routing(everyone, counts, n_draws=counts.numel(), seed=seed)
        unit_of = {f"L{layer}D{draw}": (layer, draw) for layer in layers for draw in range(counts.numel())}
        fair = _probe(
            acts, subsets, stored, list(unit_of), params, activation_index=source, samples=samples()
        )
        fair["layer"] = fair["unit"].map(lambda unit: unit_of[unit][0]).astype(int)
        fair["draw"] = fair["unit"].map(lambda unit: unit_of[unit][1]).astype(int)
        return fair

    return pd.concat([frame, _table_step(step, f"{step_prefix}-draws", draws)], ignore_index=True)


def _table_step(step: Step, key: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``step(key, compute)`` for a table, saved packed (:func:`~tl_moe.analysis._step_values.pack_frame`)."""
    return unpack_frame(*step(key, lambda: pack_frame(compute())))


def best_f1_by_k(frame: pd.DataFrame) -> pd.DataFrame:
    """Per concept and k, the best F1 over the frame's units; then the mean over concepts per k."""
    ok = frame.dropna(subset=["f1"])
    per_concept = ok.groupby(["concept", "k"])["f1"].max().reset_index()
    return per_concept.groupby("k")["f1"].agg(["mean", "count"]).reset_index()


def experts_near_best(frame: pd.DataFrame, k: int = 1, fraction: float = 0.95) -> pd.DataFrame:
    """Per concept, the best expert's F1 at ``k`` and how many experts reach ``fraction`` of it."""
    ok = frame[(frame["k"] == k)].dropna(subset=["f1"])
    best = ok.groupby("concept")["f1"].transform("max")
    ok = ok.assign(near=ok["f1"] >= fraction * best)
    summary = ok.groupby("concept").agg(best_f1=("f1", "max"), experts_near_best=("near", "sum"))
    top = ok.loc[ok.groupby("concept")["f1"].idxmax(), ["concept", "unit"]].set_index("concept")
    return summary.join(top.rename(columns={"unit": "best_expert"})).reset_index()
