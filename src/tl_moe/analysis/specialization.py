"""Specialization of experts measured by Jensen–Shannon divergence.

An expert is *specialized* when the distribution of what it sees (routing specialization: the
vocabulary groups of the tokens routed to it) or of what it writes (functional specialization: the
vocabulary groups of its logit-lens top tokens) departs from its layer's pooled distribution more
than a random sample of the same size would. This module holds the math on count tensors:

- :func:`js_divergence` — JSD in bits between batches of distributions,
- :func:`sampling_baseline` — the JSD expected from sampling noise alone, for every expert at once,
- :func:`specialization_scores` — score, baseline and excess per expert, as a
  :class:`SpecializationResult`.

The collection engine accumulates the ``[layer, expert, group]`` count tensors; see
``docs/METHODS.md`` for the definitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

__all__ = [
    "SpecializationResult",
    "js_divergence",
    "sampling_baseline",
    "specialization_scores",
]

# Upper bound on elements held by one chunk of multinomial draws (counts of sample × expert × group).
_SAMPLE_CHUNK_ELEMENTS = 1 << 24


def _float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The floating dtype to compute in: the promoted float dtype, float64 for integer inputs."""
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype if dtype.is_floating_point else torch.float64


def _normalize_rows(x: Float[torch.Tensor, "... n"], name: str) -> Float[torch.Tensor, "... n"]:
    """Divide each row (last axis) by its sum, after checking it is a valid unnormalized distribution."""
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one axis (the distribution axis); got a scalar.")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has an empty distribution axis (last dimension of size 0).")
    if not torch.isfinite(x).all():
        raise ValueError(
            f"{name} contains NaN or infinite entries; only finite non-negative values are accepted."
        )
    if (x < 0).any():
        raise ValueError(f"{name} contains negative entries; probabilities and counts must be >= 0.")
    totals = x.sum(dim=-1, keepdim=True)
    if (totals == 0).any():
        n_zero = int((totals == 0).sum())
        raise ValueError(
            f"{name} has {n_zero} all-zero row(s) along the last axis; a distribution needs positive mass. "
            "Drop or mask empty rows before calling (specialization_scores flags them as NaN)."
        )
    return x / totals


def _js_divergence_normalized(
    p: Float[torch.Tensor, "... n"], q: Float[torch.Tensor, "... n"], base: float
) -> Float[torch.Tensor, "..."]:
    """JSD of already-normalized rows. Each KL term is reduced over its own row (last axis) only."""
    m = 0.5 * (p + q)
    # xlogy(0, .) == 0 implements 0·log 0 = 0; where p > 0, m >= p/2 > 0, so no log of zero is weighted.
    kl_p_to_m = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim=-1)  # per row, never across rows
    kl_q_to_m = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim=-1)  # per row, never across rows
    jsd_nats = 0.5 * (kl_p_to_m + kl_q_to_m)
    return (jsd_nats / math.log(base)).clamp_min(0.0)  # rounding can dip a hair below zero


def js_divergence(
    p: Float[torch.Tensor, "... n"], q: Float[torch.Tensor, "... n"], base: float = 2.0
) -> Float[torch.Tensor, "..."]:
    """Jensen–Shannon divergence between distributions along the last axis.

    ``JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m)`` with ``m = ½ (p + q)``, computed independently for every
    row: leading axes are batch axes and broadcast against each other (``p`` of shape ``[L, E, n]``
    against ``q`` of shape ``[L, 1, n]`` gives ``[L, E]``).

    Args:
        p: non-negative weights (probabilities or counts) of the first distribution(s) over ``n``
            outcomes; each row is normalized to sum to one.
        q: the same for the second distribution(s).
        base: logarithm base; ``2`` gives bits, in which JSD lies in ``[0, 1]``.

    Returns:
        The divergence of each row pair, shape = broadcast of the leading axes, in units of ``log base``.
        Computed in the promoted floating dtype of the inputs (float64 for integer counts).

    Raises:
        ValueError: on negative or non-finite entries, all-zero rows, mismatched last axes, or a base <= 1.
    """
    p = torch.as_tensor(p)
    q = torch.as_tensor(q, device=p.device)
    if base <= 1:
        raise ValueError(f"base must be > 1 (2 for bits, e for nats); got {base}.")
    if p.ndim == 0 or q.ndim == 0 or p.shape[-1] != q.shape[-1]:
        raise ValueError(
            "p and q must share their last (distribution) axis; "
            f"got shapes {tuple(p.shape)} and {tuple(q.shape)}."
        )
    dtype = _float_dtype(p, q)
    p_normalized = _normalize_rows(p.to(dtype), "p")
    q_normalized = _normalize_rows(q.to(dtype), "q")
    return _js_divergence_normalized(p_normalized, q_normalized, base)


def _left_split_probabilities(
    q: Float[torch.Tensor, "... n"],
) -> list[Float[torch.Tensor, "... nodes"]]:
    """For a binary tree over the (zero-padded) support, P(left child | node) at every level.

    Level ``d`` has ``2**d`` nodes; entry ``j`` is the mass of node ``2j`` at level ``d+1`` divided by
    the mass of node ``j`` at level ``d`` (zero for a node without mass).
    """
    n = q.shape[-1]
    depth = max(1, math.ceil(math.log2(n)))
    padded = torch.nn.functional.pad(q, (0, 2**depth - n))
    split_probabilities = []
    for level in range(depth):
        child_mass = padded.reshape(*padded.shape[:-1], 2 ** (level + 1), -1).sum(dim=-1)
        left_mass = child_mass[..., 0::2]
        node_mass = left_mass + child_mass[..., 1::2]
        left = torch.where(
            node_mass > 0, left_mass / node_mass.clamp_min(1e-300), torch.zeros_like(node_mass)
        )
        split_probabilities.append(left.clamp(0.0, 1.0))
    return split_probabilities


def _draw_multinomial_counts(
    split_probabilities: list[Float[torch.Tensor, "... nodes"]],
    sizes: Float[torch.Tensor, "..."],
    n_outcomes: int,
    generator: torch.Generator,
) -> Float[torch.Tensor, "... n"]:
    """One multinomial draw of ``sizes[...]`` trials per row, by binomial splitting down the tree.

    Exact: a multinomial count vector restricted to a node splits between the node's two children as a
    binomial with the children's conditional probabilities. Every row and every node of a level is drawn
    in one ``torch.binomial`` call, so the loop runs over tree levels (``ceil(log2 n)``), not over rows.
    """
    counts = sizes.unsqueeze(-1)
    for left_probability in split_probabilities:
        probability = left_probability.expand_as(counts).contiguous()
        left = torch.binomial(counts, probability, generator=generator)
        right = counts - left
        counts = torch.stack((left, right), dim=-1).flatten(start_dim=-2)
    return counts[..., :n_outcomes]


def sampling_baseline(
    q: Float[torch.Tensor, "*batch n"],
    sizes: Float[torch.Tensor, "*batch"],
    n_samples: int = 16,
    seed: int = 0,
    generator: torch.Generator | None = None,
    base: float = 2.0,
) -> Float[torch.Tensor, "*batch"]:
    """Mean JSD between ``q`` and the empirical distribution of a multinomial sample drawn from ``q``.

    This is the divergence an expert would show from sampling noise alone if its ``sizes[...]`` tokens
    were drawn from the pooled distribution ``q``. ``q[..., :]`` broadcasts against ``sizes[...]``: pass
    ``q`` of shape ``[layer, 1, group]`` with ``sizes`` of shape ``[layer, expert]`` to get every expert
    of every layer in one call. Draws are vectorized over all rows; repeats are drawn in chunks.

    Args:
        q: non-negative weights of the reference distribution(s) over ``n`` outcomes (normalized here).
        sizes: number of draws behind each empirical distribution (non-negative integers; float accepted
            if integral). Rows of size 0 have no empirical distribution and give NaN.
        n_samples: number of independent multinomial samples averaged per row.
        seed: seed of the private generator used when ``generator`` is not given.
        generator: a ``torch.Generator`` on ``q``'s device to draw from (overrides ``seed``).
        base: logarithm base of the divergence (2 = bits).

    Returns:
        The Monte-Carlo mean JSD per row, shape = broadcast of ``q.shape[:-1]`` and ``sizes.shape``.
    """
    q = torch.as_tensor(q)
    sizes = torch.as_tensor(sizes, device=q.device)
    if n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer; got {n_samples}.")
    dtype = torch.float64  # draws and divergences in double precision; the result in q's float dtype
    q_normalized = _normalize_rows(q.to(dtype), "q")
    sizes = sizes.to(torch.float64)
    if not torch.isfinite(sizes).all() or (sizes < 0).any() or (sizes != sizes.round()).any():
        raise ValueError("sizes must hold non-negative integers (number of draws per row).")
    batch_shape = torch.broadcast_shapes(q_normalized.shape[:-1], sizes.shape)
    n_outcomes = q_normalized.shape[-1]
    if generator is None:
        generator = torch.Generator(device=q.device).manual_seed(seed)

    sizes = sizes.to(dtype).expand(batch_shape)
    q_rows = q_normalized.expand(*batch_shape, n_outcomes)
    split_probabilities = _left_split_probabilities(q_normalized)
    empty = sizes == 0
    safe_sizes = torch.where(empty, torch.ones_like(sizes), sizes)

    n_rows = max(1, math.prod(batch_shape))
    padded_outcomes = 2 ** max(1, math.ceil(math.log2(n_outcomes)))
    samples_per_chunk = max(1, min(n_samples, _SAMPLE_CHUNK_ELEMENTS // (n_rows * padded_outcomes)))
    total = torch.zeros(batch_shape, dtype=dtype, device=q.device)
    drawn = 0
    while drawn < n_samples:
        chunk = min(samples_per_chunk, n_samples - drawn)
        chunk_sizes = safe_sizes.expand(chunk, *batch_shape)
        counts = _draw_multinomial_counts(split_probabilities, chunk_sizes, n_outcomes, generator)
        empirical = counts / chunk_sizes.unsqueeze(-1)
        total += _js_divergence_normalized(empirical, q_rows, base).sum(dim=0)
        drawn += chunk
    baseline = total / n_samples
    return baseline.masked_fill(empty, float("nan")).to(_float_dtype(q))


@dataclass(frozen=True)
class SpecializationResult:
    """Specialization of every expert of every layer, in bits.

    Attributes:
        score: ``JSD(P_e ‖ P_layer)`` per expert, ``[layer, expert]``; NaN for experts without counts.
        baseline: mean JSD of same-size multinomial samples from ``P_layer``, ``[layer, expert]``.
        n: number of draws behind each expert's distribution (tokens or top-k entries), ``[layer, expert]``.
        empty: True where an expert had no counts, so it could not be scored.
        n_groups: number of groups (vocabulary clusters or domains) the distributions range over.
        n_samples: Monte-Carlo samples behind each baseline.
        kind: what the counts were (e.g. ``"routing"`` or ``"functional"``), used in labels.
        layers: the block index of each row of the ``layer`` axis (default ``0, 1, ...``); frames
            and figures report these, so a model whose first blocks are dense is labelled right.
    """

    score: Float[torch.Tensor, "layer expert"]
    baseline: Float[torch.Tensor, "layer expert"]
    n: Float[torch.Tensor, "layer expert"]
    empty: Bool[torch.Tensor, "layer expert"]
    n_groups: int
    n_samples: int
    kind: str = "routing"
    metadata: dict = field(default_factory=dict)
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        layers = range(self.score.shape[0]) if self.layers is None else self.layers
        object.__setattr__(self, "layers", tuple(int(layer) for layer in layers))
        if len(self.layers) != self.score.shape[0]:
            raise ValueError(
                f"layers names {len(self.layers)} blocks for {self.score.shape[0]} rows of scores."
            )

    @property
    def excess(self) -> Float[torch.Tensor, "layer expert"]:
        """Specialization beyond sampling noise, ``score − baseline``; NaN for empty experts."""
        return self.score - self.baseline

    @property
    def n_layers(self) -> int:
        return self.score.shape[0]

    @property
    def n_experts(self) -> int:
        return self.score.shape[1]

    def layer_summary(self, min_n: float = 0) -> pd.DataFrame:
        """Per layer: mean, standard deviation and count of the excess over non-empty experts.

        Also, over experts with at least ``min_n`` draws: the mean excess weighted by each expert's
        draws (``token_weighted_mean_excess``: a tiny or dead expert weighs by its size, not as much as
        a large one), how many experts it averages (``n_experts_min_size``) and how many are below the
        minimum (``n_small_experts``; listed by :meth:`small_experts`, not averaged).
        """
        excess = self.excess.double()
        valid = ~self.empty
        n_valid = valid.sum(dim=1)
        mean = torch.where(valid, excess, 0.0).sum(dim=1) / n_valid.clamp_min(1)
        squared_deviation = torch.where(valid, (excess - mean[:, None]) ** 2, 0.0).sum(dim=1)
        std = (squared_deviation / (n_valid - 1).clamp_min(1)).sqrt()
        mean = mean.masked_fill(n_valid == 0, float("nan"))
        std = std.masked_fill(n_valid < 2, float("nan"))
        large = valid & (self.n.double() >= min_n)
        weights = torch.where(large, self.n.double(), 0.0)
        weighted = torch.where(large, excess, 0.0).mul(weights).sum(dim=1) / weights.sum(dim=1).clamp_min(
            1e-300
        )
        weighted = weighted.masked_fill(weights.sum(dim=1) == 0, float("nan"))
        return pd.DataFrame(
            {
                "layer": list(self.layers),
                "mean_excess": mean.numpy(),
                "std_excess": std.numpy(),
                "n_experts": n_valid.numpy(),
                "token_weighted_mean_excess": weighted.numpy(),
                "n_experts_min_size": large.sum(dim=1).numpy(),
                "n_small_experts": (valid & ~large).sum(dim=1).numpy(),
            }
        )

    def small_experts(self, min_n: float) -> pd.DataFrame:
        """The non-empty experts with fewer than ``min_n`` draws (left out of the weighted means)."""
        frame = self.to_frame()
        return frame[~frame["empty_expert"] & (frame["n"] < min_n)].reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, expert): layer, expert, score, baseline, excess, n, empty_expert."""
        layers, experts = torch.meshgrid(
            torch.arange(self.n_layers), torch.arange(self.n_experts), indexing="ij"
        )
        return pd.DataFrame(
            {
                "layer": torch.tensor(self.layers)[layers.flatten()].numpy(),
                "expert": experts.flatten().numpy(),
                "score": self.score.flatten().double().cpu().numpy(),
                "baseline": self.baseline.flatten().double().cpu().numpy(),
                "excess": self.excess.flatten().double().cpu().numpy(),
                "n": self.n.flatten().double().cpu().numpy(),
                "empty_expert": self.empty.flatten().cpu().numpy(),
            }
        )

    def plot(self, ax=None, label: str | None = None, **line_style):
        """Per-layer mean ± one standard deviation of ``score − baseline`` over experts.

        Draws on ``ax`` if given, else on a new figure (no pyplot state, safe under any backend);
        ``line_style`` (e.g. ``linestyle="--"``, ``color="C0"``) goes to the line. Returns the axes.
        """
        if ax is None:
            from matplotlib.figure import Figure

            ax = Figure(figsize=(6, 3.5)).add_subplot()
        summary = self.layer_summary()
        std = summary["std_excess"].fillna(0.0)
        line = ax.plot(
            summary["layer"], summary["mean_excess"], marker="o", label=label or self.kind, **line_style
        )[0]
        ax.fill_between(
            summary["layer"],
            summary["mean_excess"] - std,
            summary["mean_excess"] + std,
            color=line.get_color(),
            alpha=0.2,
        )
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(list(self.layers))
        ax.set_xlabel("layer")
        ax.set_ylabel("JSD − baseline (bits)")
        ax.set_title(f"{self.kind} specialization ({self.n_groups} groups)")
        return ax

    def save(self, path: str | Path) -> None:
        """Write the result with ``torch.save``; read it back with :meth:`load`."""
        torch.save(
            {
                "score": self.score.cpu(),
                "baseline": self.baseline.cpu(),
                "n": self.n.cpu(),
                "empty": self.empty.cpu(),
                "n_groups": self.n_groups,
                "n_samples": self.n_samples,
                "kind": self.kind,
                "metadata": self.metadata,
                "layers": list(self.layers),
            },
            Path(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> SpecializationResult:
        """Read a result written by :meth:`save`."""
        return cls(**torch.load(Path(path), weights_only=True))


def specialization_scores(
    counts: Float[torch.Tensor, "layer expert group"] | Int[torch.Tensor, "layer expert group"],
    sample_sizes: Float[torch.Tensor, "layer expert"] | None = None,
    n_samples: int = 16,
    seed: int = 0,
    kind: str = "routing",
    layers: tuple[int, ...] | None = None,
) -> SpecializationResult:
    """Jensen–Shannon specialization of every expert against its layer's pooled distribution.

    For expert ``e`` of layer ``l``: ``P_e = counts[l, e] / n_e`` with ``n_e = counts[l, e].sum()``;
    ``P_layer = Σ_e counts[l, e] / Σ_e n_e``; score ``S = JSD(P_e ‖ P_layer)`` in bits; baseline ``B`` =
    mean JSD between ``P_layer`` and the empirical distribution of ``n_e`` multinomial draws from it.
    All experts of all layers are computed at once.

    Args:
        counts: non-negative counts per (layer, expert, group). Routing specialization: input tokens
            routed to the expert, by vocabulary group of the token. Functional specialization: entries of
            the expert's logit-lens top-k, by vocabulary group. Domains work the same way.
        sample_sizes: number of draws each expert's baseline uses; defaults to ``counts.sum(-1)``
            (rounded). Pass the number of tokens when each token contributes several counts (top-k).
        n_samples: Monte-Carlo samples per baseline.
        seed: seed of the baseline's sampling.
        kind: label stored on the result (``"routing"``, ``"functional"``, ...).
        layers: block index of each row of ``counts`` (default ``0, 1, ...``).

    Returns:
        A :class:`SpecializationResult`; experts with zero counts get NaN score/baseline and ``empty``.
    """
    counts = torch.as_tensor(counts)
    if counts.ndim != 3:
        raise ValueError(f"counts must be 3-D [layer, expert, group]; got shape {tuple(counts.shape)}.")
    if not torch.isfinite(counts.double()).all() or (counts < 0).any():
        raise ValueError("counts must hold finite non-negative values.")
    counts = counts.to(_float_dtype(counts) if counts.is_floating_point() else torch.float64)
    per_expert_total = counts.sum(dim=-1)
    empty = per_expert_total == 0
    layer_counts = counts.sum(dim=1, keepdim=True)
    empty_layer = layer_counts.sum(dim=-1) == 0
    if empty_layer.any():
        # A layer with no counts at all has no pooled distribution; score its experts as NaN.
        layer_counts = torch.where(empty_layer.unsqueeze(-1), torch.ones_like(layer_counts), layer_counts)

    expert_counts = torch.where(empty.unsqueeze(-1), layer_counts, counts)  # placeholder rows, masked below
    score = js_divergence(expert_counts, layer_counts).masked_fill(empty, float("nan"))

    if sample_sizes is None:
        sizes = per_expert_total.round()
    else:
        sizes = torch.as_tensor(sample_sizes, device=counts.device).to(torch.float64)
        if sizes.shape != per_expert_total.shape:
            raise ValueError(
                f"sample_sizes must have shape [layer, expert] = {tuple(per_expert_total.shape)}; "
                f"got {tuple(sizes.shape)}."
            )
        sizes = sizes.masked_fill(empty, 0.0)
    baseline = sampling_baseline(layer_counts, sizes, n_samples=n_samples, seed=seed)
    baseline = baseline.to(score.dtype).masked_fill(empty | (sizes == 0), float("nan"))
    return SpecializationResult(
        score=score,
        baseline=baseline,
        n=sizes.to(score.dtype),
        empty=empty,
        n_groups=counts.shape[-1],
        n_samples=n_samples,
        kind=kind,
        layers=layers,
    )
