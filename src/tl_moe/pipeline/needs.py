"""The accumulator specs the built-in analyses share (typed keys, never strings).

Two analyses asking for an equal spec on the same model share one accumulator in the model's single
collection pass: domain experts and specialization both read :class:`RoutedByDomain`; the logit-lens
and specialization analyses both read :class:`ExpertLens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tl_moe.analysis.activations import TokenActivationStore
from tl_moe.analysis.bounded_store import BoundedTokenStore
from tl_moe.analysis.concept_probing import expert_probing_hooks
from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensAccumulator
from tl_moe.analysis.routing_stats import routed_tokens_by_domain, routed_tokens_by_group, tokens_by_domain
from tl_moe.collect.accumulator import Accumulator
from tl_moe.models.config import MoEConfig
from tl_moe.models.hook_names import get_act_name
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.protocol import AccumulatorSpec

__all__ = [
    "DenseNeurons",
    "ExpertLens",
    "ExpertNeurons",
    "RoutedByDomain",
    "RoutedByTokenGroup",
    "RoutingPerToken",
    "TokensByDomain",
]


@dataclass(frozen=True)
class TokensByDomain(AccumulatorSpec):
    """Counts ``[domain]`` of real, non-BOS tokens streamed."""

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return tokens_by_domain(len(run.domain_names))


@dataclass(frozen=True)
class RoutedByDomain(AccumulatorSpec):
    """Counts ``[sparse layer, expert, domain]`` of routed (token, slot) pairs."""

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return routed_tokens_by_domain(model.moe_cfg, len(run.domain_names))

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        return len(cfg.sparse_layers) * cfg.num_experts * len(run.domain_names) * 8


@dataclass(frozen=True)
class RoutedByTokenGroup(AccumulatorSpec):
    """Counts ``[sparse layer, expert, vocabulary cluster]`` of routed tokens (cluster of the input token)."""

    uses_token_groups = True

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return routed_tokens_by_group(model.moe_cfg, run.token_groups)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        return len(cfg.sparse_layers) * cfg.num_experts * run.options.n_token_groups * 8


@dataclass(frozen=True)
class ExpertLens(AccumulatorSpec):
    """Corpus logit lens of every expert of every sparse layer, binned by vocabulary cluster."""

    uses_token_groups = True

    top_n: int = 3

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return ExpertLogitLensAccumulator(
            model, layers=list(model.moe_cfg.sparse_layers), top_n=self.top_n, token_groups=run.token_groups
        )

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        cells = len(cfg.sparse_layers) * cfg.num_experts
        # per-expert output sums (float64) + sparse (key, count) pairs over expert x cluster
        return cells * (cfg.d_model * 8 + run.options.n_token_groups * 16 + 64)


def _bounded(hooks: list[str], run: RunContext, routing: list[str] = (), num_experts: int = 1) -> Accumulator:
    """The probing store of ``run``: bounded per (unit, concept, class, side) unless
    ``--probe-rows-per-class none`` asks for every token."""
    options = run.options
    if options.config("probing").rows_per_class is None:
        return TokenActivationStore(hooks, max_tokens=options.max_tokens)
    return BoundedTokenStore(
        hooks,
        rows_per_class=options.config("probing").rows_per_class,
        routing=routing,
        num_experts=num_experts,
        seed=options.seed,
        selection_fraction=options.selection_fraction,
        split_seed=options.seed,
    )


def _n_concepts() -> int:
    from tl_moe.data.concepts import TokenConceptLabeler

    return len(TokenConceptLabeler().concept_names)


def stored_tokens_estimate(run: RunContext, units_per_layer: int, experts_per_token: int) -> int:
    """Tokens a probing store is expected to keep: every token streamed when unbounded, else
    ``min(max_tokens, 2 sides x N x units / k x (concepts + 1))`` — each (concept, side) keeps about
    N x units / k distinct positives (a token counts for k units), the negatives and the catch-all
    share theirs through the common priority — independent of ``max_tokens`` once it is larger."""
    options = run.options
    if options.config("probing").rows_per_class is None:
        return options.max_tokens
    per_slice = options.config("probing").rows_per_class * -(-units_per_layer // experts_per_token)
    return min(options.max_tokens, 2 * per_slice * (_n_concepts() + 1))


@dataclass(frozen=True)
class ExpertNeurons(AccumulatorSpec):
    """Stored expert neurons (``expert_post``) and routing (``topk_indices``) of ``layers``, per token.

    ``layers=None``: every sparse layer of the model the pass runs on. Bounded by
    ``--probe-rows-per-class`` (:class:`~tl_moe.analysis.bounded_store.BoundedTokenStore`).
    """

    layers: tuple[int, ...] | None = None

    def build(self, model: Any, run: RunContext) -> Accumulator:
        cfg = model.moe_cfg
        layers = tuple(cfg.sparse_layers) if self.layers is None else self.layers
        routing = [get_act_name("topk_indices", layer) for layer in layers]
        return _bounded(expert_probing_hooks(cfg, layers), run, routing, cfg.num_experts)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        layers = len(cfg.sparse_layers) if self.layers is None else len(self.layers)
        k = cfg.experts_per_token
        # float16 neurons + int64 indices per slot, ids and labels
        per_token = layers * k * (cfg.d_expert * 2 + 8) + 64
        if run.options.config("probing").rows_per_class is None:
            return run.options.max_tokens * per_token
        # the bounded store adds an int32 unit per slot and a side flag per token, two tables per key
        per_token += layers * k * 4 + 1
        key_tables = layers * cfg.num_experts * (_n_concepts() + 1) * 4 * 16
        return stored_tokens_estimate(run, cfg.num_experts, k) * per_token + key_tables


@dataclass(frozen=True)
class DenseNeurons(AccumulatorSpec):
    """Stored FFN neurons (``blocks.L.mlp.hook_post``) of every dense layer, per token.

    Bounded by ``--probe-rows-per-class``: every dense layer sees every token, so they share one unit.
    """

    def build(self, model: Any, run: RunContext) -> Accumulator:
        cfg = model.moe_cfg
        if cfg.is_moe and not cfg.dense_layers:
            from tl_moe.errors import InputError

            raise InputError(
                f"--dense-baseline {run.dense} is an MoE with no dense FFN layer; pass a dense model or 'none'."
            )
        hooks = [get_act_name("neuron", layer, model) for layer in cfg.dense_layers]
        return _bounded(hooks, run)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        per_token = len(cfg.dense_layers) * (cfg.d_mlp or 0) * 2 + 64
        if run.options.config("probing").rows_per_class is None:
            return run.options.max_tokens * per_token
        key_tables = (_n_concepts() + 1) * 4 * 16
        return stored_tokens_estimate(run, 1, 1) * (per_token + 5) + key_tables


@dataclass(frozen=True)
class RoutingPerToken(AccumulatorSpec):
    """Stored top-k expert indices of every sparse layer, per token, with the token's document.

    What document-level permutation tests need (e.g. of domain experts): routing per document.
    """

    def build(self, model: Any, run: RunContext) -> Accumulator:
        hooks = [get_act_name("topk_indices", layer) for layer in model.moe_cfg.sparse_layers]
        return TokenActivationStore(hooks, max_tokens=run.options.max_tokens)
