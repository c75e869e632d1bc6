"""Each expert's examples, gathered in the collection pass: what an explainer reads and a scorer tests.

:class:`ExpertExamplesAccumulator` folds every routed (token, slot) event of the chosen sparse layers
into, per (document split, layer, expert):

- the **top contexts** by REAP-style saliency ``routing weight × ‖expert output‖`` (the output before
  its mixing weight), kept exactly (:class:`~tl_moe.collect.KeyedTopN`: highest score, ties by the
  smaller token id);
- a **uniform sample of routed events** (bottom-k hashing of the token id), from which contexts spread
  over the expert's saliency quantiles are drawn at the end (delphi's quantile sampling, made exact);

and, per split, a uniform sample of **random contexts** with the routing of every layer at every
context position (the pool of routed-elsewhere negatives), plus the **dissection counts**
``routed[split, layer, expert, concept, domain]`` of routed tokens positive for each concept of the
concept library, with the matching totals (network dissection without a second pass).

Every document belongs to exactly one split, fixed by a hash of its row index: ``explain`` (what the
explainer sees), ``score`` (what the scorer is tested on) and ``causal`` (held out for causal checks).
So explanation, scoring and causal-check examples never share a document. Each stored context is the
window of ``before`` tokens before the routed token and ``after`` tokens after it (never crossing a
document), with the tokens routed to the same expert marked and every token's concept labels.

All state merges exactly (top-n of the union; counts add), so checkpoint/resume and sharded runs give
the single-pass result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from tl_moe.analysis.splits import document_split
from tl_moe.collect.accumulator import Accumulator, Activations, same_device
from tl_moe.collect.hashing import uniform_priority
from tl_moe.collect.meta import BatchMeta
from tl_moe.collect.topk import KeyedTopN
from tl_moe.models.hook_names import get_act_name
from tl_moe.models.introspect import moe_config

__all__ = [
    "SPLITS",
    "Context",
    "ExpertExamples",
    "ExpertExamplesAccumulator",
    "ExpertRecord",
]

SPLITS = ("explain", "score", "causal")
"""The document splits, in the order of every ``split`` axis."""

SPLIT_FRACTIONS = (0.5, 0.3, 0.2)
"""The default share of documents in each split (:data:`SPLITS` order)."""

SPLIT_KEY = "avalanche32"
"""The :func:`~tl_moe.analysis.splits.document_split` key of the explanation splits."""

_BITS = 62  # concept bits packed per int64 word (sign bit and one spare left alone)
_HEAD = 6  # payload columns before the context: doc, doc position, domain, token id, marks, saliency
_ROW_LAYOUT = 2  # expert rows: head, ids, concept words, routing, the expert's weight per position


def _pack_bits(labels: torch.Tensor, n_words: int) -> Int[torch.Tensor, "... words"]:
    """Bool ``[..., n]`` -> int64 ``[..., n_words]`` holding ``_BITS`` labels per word."""
    n = labels.shape[-1]
    padded = F.pad(labels.to(torch.int64), (0, n_words * _BITS - n))
    weights = (1 << torch.arange(_BITS, device=labels.device, dtype=torch.int64)).expand(n_words, _BITS)
    return (padded.reshape(*labels.shape[:-1], n_words, _BITS) * weights).sum(-1)


def _best_per_key(
    keys: Int[torch.Tensor, " n"], scores: Float[torch.Tensor, " n"], ids: Int[torch.Tensor, " n"], n: int
) -> torch.Tensor:
    """Mask of the events among the ``n`` best of their key (score desc, id asc: KeyedTopN's order).

    Only these can be in a key's top-n of the whole stream, so payloads are built for them alone.
    """
    order = torch.argsort(ids, stable=True)
    order = order[torch.argsort(scores[order], descending=True, stable=True)]
    order = order[torch.argsort(keys[order], stable=True)]
    sorted_keys = keys[order]
    counts = torch.bincount(sorted_keys)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=keys.device) - first[sorted_keys]
    keep = torch.zeros_like(keys, dtype=torch.bool)
    keep[order[rank < n]] = True
    return keep


def _packed_len(width: int) -> int:
    """int64 columns holding ``width`` float32 weights (two per column)."""
    return -(-width // 2)


def _pack_weights(weights: Float[torch.Tensor, "n width"]) -> Int[torch.Tensor, "n packed"]:
    """float32 weights ``[n, width]`` stored bit-exactly in int64 columns (two per column)."""
    padded = F.pad(weights.to(torch.float32), (0, 2 * _packed_len(weights.shape[-1]) - weights.shape[-1]))
    return padded.contiguous().view(torch.int64)


def _windows(values: torch.Tensor, before: int, after: int, fill: int) -> torch.Tensor:
    """``[B, P, ...]`` -> ``[B, P, ..., before + 1 + after]``: each position's context (``fill`` outside)."""
    moved = values.movedim(1, -1)
    padded = F.pad(moved, (before, after), value=fill)
    return padded.unfold(-1, before + 1 + after, 1).movedim(-2, 1)


@dataclass(frozen=True)
class Context:
    """One context of an expert: a window of tokens around a target token.

    Attributes:
        token_ids: the window's token ids (tokens outside the document are left out).
        tokens: each token's text.
        marks: whether each token was routed to the expert the context is shown for.
        target: index of the token the context is about (the routed token of a positive context).
        activation: the target's saliency for the expert (routing weight × ‖output‖; 0 if not routed).
        doc_index: dataset row of the document.
        token_index: stream-wide id of the target token.
        domain: the document's domain.
        concept_words: per token, its concept labels packed in int64 words (see :meth:`has`).
        source: ``top``, ``quantile``, ``random`` or ``contrastive``.
    """

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    marks: tuple[bool, ...]
    target: int
    activation: float
    doc_index: int
    token_index: int
    domain: str
    concept_words: tuple[tuple[int, ...], ...]
    source: str

    def has(self, concept: int, position: int | None = None) -> bool:
        """Whether the token at ``position`` (default: the target) is positive for concept ``concept``."""
        word = self.concept_words[self.target if position is None else position][concept // _BITS]
        return bool((word >> (concept % _BITS)) & 1)

    def text(self, mark: bool = True, left: str = "<<", right: str = ">>") -> str:
        """The window as text, marked tokens wrapped in ``left``/``right`` when ``mark``."""
        return "".join(
            f"{left}{token}{right}" if mark and marked else token
            for token, marked in zip(self.tokens, self.marks, strict=True)
        )

    def with_marks(self, marks: Sequence[bool]) -> Context:
        return Context(**{**self.__dict__, "marks": tuple(bool(m) for m in marks)})


@dataclass(frozen=True)
class ExpertRecord:
    """Everything an explainer and a scorer get for one expert (delphi's "latent record").

    Attributes:
        layer: block index of the sparse layer.
        expert: expert index.
        explanation: contexts from ``explain``-split documents: top by saliency, then quantile-spread.
        positives: the expert's contexts from ``score``-split documents (top, then quantile-spread).
        negatives: ``score``-split contexts whose target was NOT routed to the expert: random ones
            and contrastive ones (other experts' top contexts), each marked for this expert.
        lens_tokens: the expert's top logit-lens tokens (texts), when a lens was given.
        n_routed: routed tokens per split.
        status: ``ok``, or why the expert cannot be labeled/scored (``too few contexts ...``).
        explain_negatives: ``explain``-split contexts drawn like ``negatives`` (what an offline labeler
            compares the explanation contexts with; never scored).
    """

    layer: int
    expert: int
    explanation: tuple[Context, ...]
    positives: tuple[Context, ...]
    negatives: tuple[Context, ...]
    lens_tokens: tuple[str, ...] = ()
    n_routed: tuple[int, ...] = (0, 0, 0)
    status: str = "ok"
    explain_negatives: tuple[Context, ...] = ()

    @property
    def key(self) -> tuple[int, int]:
        return (self.layer, self.expert)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class ExpertExamples:
    """The finalized examples of every expert of the accumulated layers (see the module docstring).

    Attributes:
        layers: block index of each row of the layer axis.
        n_experts, k: experts per layer and slots per token.
        before, after: context tokens kept before and after the target.
        concept_names, domain_names: names of the concept and domain axes.
        top_scores / top_payload: ``[split, layer, expert, n_top]`` kept top events (payload rows).
        sample_payload: ``[split, layer, expert, n_sample]`` uniform sample of routed events.
        random_payload: ``[split, n_random]`` random contexts with every layer's routing.
        routed_concept: ``[split, layer, expert, concept, domain]`` routed tokens positive per concept.
        routed_total: ``[split, layer, expert, domain]`` routed tokens.
        concept_total: ``[split, concept, domain]`` tokens positive per concept.
        token_total: ``[split, domain]`` tokens (BOS excluded).
        out_sum: ``[layer, expert, d_model]`` sum of the expert's outputs over its routed tokens (all splits).
    """

    layers: tuple[int, ...]
    n_experts: int
    k: int
    before: int
    after: int
    concept_names: tuple[str, ...]
    domain_names: tuple[str, ...]
    top_scores: Float[torch.Tensor, "split layer expert n"]
    top_payload: Int[torch.Tensor, "split layer expert n row"]
    sample_scores: Float[torch.Tensor, "split layer expert n"]
    sample_payload: Int[torch.Tensor, "split layer expert n row"]
    random_payload: Int[torch.Tensor, "split n row"]
    random_kept: Int[torch.Tensor, " split"]
    routed_concept: Float[torch.Tensor, "split layer expert concept domain"]
    routed_total: Float[torch.Tensor, "split layer expert domain"]
    concept_total: Float[torch.Tensor, "split concept domain"]
    token_total: Float[torch.Tensor, "split domain"]
    out_sum: Float[torch.Tensor, "layer expert d_model"] | None = None
    n_words: int = 1
    seed: int = 0
    split_fractions: tuple[float, ...] = SPLIT_FRACTIONS
    _decoded: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def width(self) -> int:
        return self.before + 1 + self.after

    def layer_row(self, layer: int) -> int:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not accumulated; layers: {list(self.layers)}.")
        return self.layers.index(layer)

    def _decode(self, tokenizer: Any, ids: Sequence[int]) -> tuple[str, ...]:
        out = []
        for token in ids:
            if token not in self._decoded:
                self._decoded[token] = tokenizer.decode([token])
            out.append(self._decoded[token])
        return tuple(out)

    def _context(self, row: torch.Tensor, tokenizer: Any, marks_of: Any, source: str) -> Context:
        """A :class:`Context` from one payload row (``marks_of(row) -> marks`` per window position).

        Read through numpy, and the window's tokens, concept words and document kept per target token
        (the same window comes back as a negative of many experts): a run builds thousands of contexts."""
        values = row.numpy()
        window = self._window(values, tokenizer)
        marks = np.asarray(marks_of(row))[window["valid"]]
        return Context(
            token_ids=window["token_ids"],
            tokens=window["tokens"],
            marks=tuple(marks.tolist()),
            target=window["target"],
            activation=float(values[5:6].view(np.float64)[0]),
            doc_index=window["doc_index"],
            token_index=window["token_index"],
            domain=window["domain"],
            concept_words=window["concept_words"],
            source=source,
        )

    def _window(self, values: np.ndarray, tokenizer: Any) -> dict[str, Any]:
        """What every payload row of one target token shares: its window's tokens and concept words."""
        memo = self._decoded.setdefault("windows", {})
        key = int(values[3])
        if key in memo:
            return memo[key]
        width = self.width
        ids = values[_HEAD : _HEAD + width]
        words = values[_HEAD + width : _HEAD + width + width * self.n_words].reshape(width, self.n_words)
        valid = ids >= 0
        token_ids = ids[valid].tolist()
        domain = int(values[2])
        memo[key] = {
            "valid": valid,
            "token_ids": tuple(token_ids),
            "tokens": self._decode(tokenizer, token_ids),
            "target": int(np.flatnonzero(np.flatnonzero(valid) == self.before)[0]),
            "doc_index": int(values[0]),
            "token_index": key,
            "domain": self.domain_names[domain] if 0 <= domain < len(self.domain_names) else "?",
            "concept_words": tuple(map(tuple, words[valid].tolist())),
        }
        return memo[key]

    def _bit_marks(self, row: torch.Tensor) -> np.ndarray:
        """Whether each window position of an expert row was routed to its expert (the marks bitmask)."""
        return ((int(row[4]) >> np.arange(self.width)) & 1).astype(bool)

    def routing_of(self, row: torch.Tensor, layer_row: int | None) -> Int[torch.Tensor, "width k"]:
        """The experts chosen at each context position of a payload row: a random row's routing of
        the layer ``layer_row`` (it holds every layer's) or an expert row's routing of its own layer (None)."""
        start = _HEAD + self.width * (1 + self.n_words)
        n_layers = 1 if layer_row is None else len(self.layers)
        topk = row[start : start + self.width * n_layers * self.k].reshape(self.width, n_layers, self.k)
        return topk[:, 0 if layer_row is None else layer_row]

    def context_weights(self, row: torch.Tensor) -> Float[torch.Tensor, " width"]:
        """An expert row's routing weight of its expert at each context position (0 where not routed
        to it, NaN outside the document): what a dashboard shows as each token's strength."""
        start = _HEAD + self.width * (1 + self.n_words) + self.width * self.k
        packed = row[start : start + _packed_len(self.width)].contiguous()
        if len(packed) < _packed_len(self.width):  # rows of an older layout hold no weights
            return torch.full((self.width,), float("nan"))
        return packed.view(torch.float32)[: self.width].clone()

    def _routing_marks(self, row: torch.Tensor, layer_row: int | None, expert: int) -> torch.Tensor:
        """Whether each context position was routed to ``expert`` (see :meth:`routing_of`)."""
        return (self.routing_of(row, layer_row) == expert).any(-1)

    def _expert_events(self, split: int, layer_row: int, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept top rows (best first) and the quantile-ordered sample rows of one expert."""
        memo = self._decoded.setdefault("events", {})
        if (split, layer_row, expert) in memo:
            return memo[(split, layer_row, expert)]
        top_ok = torch.isfinite(self.top_scores[split, layer_row, expert])
        top = self.top_payload[split, layer_row, expert][top_ok]
        sample_ok = torch.isfinite(self.sample_scores[split, layer_row, expert])
        sample = self.sample_payload[split, layer_row, expert][sample_ok]
        if len(sample):  # saliency order, so slicing evenly spreads over quantiles
            saliency = sample[:, 5].contiguous().view(torch.float64)
            sample = sample[torch.argsort(saliency, descending=True, stable=True)]
        memo[(split, layer_row, expert)] = (top, sample)
        return top, sample

    def top_contexts(
        self, layer: int, expert: int, tokenizer: Any, n: int = 3
    ) -> list[tuple[Context, tuple[float, ...]]]:
        """The expert's ``n`` highest-saliency contexts over every split, each with the expert's routing
        weight at each of its tokens (0 where not routed to it): what a dashboard card shows."""
        row = self.layer_row(layer)
        rows = torch.cat([self._expert_events(s, row, expert)[0] for s in range(len(SPLITS))])
        if not len(rows):
            return []
        saliency = rows[:, 5].contiguous().view(torch.float64)
        order = torch.argsort(saliency, descending=True, stable=True)[:n]
        out = []
        for payload in rows[order]:
            valid = payload[_HEAD : _HEAD + self.width] >= 0
            weights = self.context_weights(payload)[valid]
            out.append((self._context(payload, tokenizer, self._bit_marks, "top"), tuple(weights.tolist())))
        return out

    def saliency_sample(self, layer: int, expert: int) -> Float[torch.Tensor, " n"]:
        """Saliency (routing weight × ‖output‖) of the expert's uniform sample of routed tokens, every
        split pooled: an unbiased picture of its saliency distribution (not only its top)."""
        row = self.layer_row(layer)
        rows = torch.cat([self._expert_events(s, row, expert)[1] for s in range(len(SPLITS))])
        return (
            rows[:, 5].contiguous().view(torch.float64) if len(rows) else torch.zeros(0, dtype=torch.float64)
        )

    def _positive_contexts(
        self, split: int, layer_row: int, expert: int, n_top: int, n_quantile: int, tokenizer: Any
    ) -> list[Context]:
        top, sample = self._expert_events(split, layer_row, expert)
        chosen = [("top", row) for row in top[:n_top]]
        seen = {int(row[3]) for _, row in chosen}
        rest = [row for row in sample if int(row[3]) not in seen]
        if rest and n_quantile > 0:
            picks = np.unique(np.linspace(0, len(rest) - 1, min(n_quantile, len(rest))).round().astype(int))
            chosen += [("quantile", rest[i]) for i in picks]
        return [self._context(row, tokenizer, self._bit_marks, source) for source, row in chosen]

    def record(
        self,
        layer: int,
        expert: int,
        tokenizer: Any,
        *,
        n_explain_top: int = 20,
        n_explain_quantile: int = 40,
        n_score_top: int = 10,
        n_score_quantile: int = 10,
        n_random_negatives: int = 10,
        n_contrastive_negatives: int = 10,
        n_explain_random_negatives: int = 40,
        min_contexts: int = 5,
        lens_tokens: Sequence[str] = (),
        seed: int = 0,
    ) -> ExpertRecord:
        """The :class:`ExpertRecord` of one expert: explanation set, scoring positives and negatives.

        Negatives are drawn for THIS expert (seeded by its layer and index): random score-split
        contexts whose target was routed elsewhere, and other experts' top score-split contexts whose
        target was not routed to it (contrastive), each marked with this expert's routing.
        An expert with fewer than ``min_contexts`` explanation or scoring contexts gets a status
        saying so (it is reported, never fatal).
        """
        row = self.layer_row(layer)
        explain_split, score_split = SPLITS.index("explain"), SPLITS.index("score")
        explanation = self._positive_contexts(
            explain_split, row, expert, n_explain_top, n_explain_quantile, tokenizer
        )
        positives = self._positive_contexts(
            score_split, row, expert, n_score_top, n_score_quantile, tokenizer
        )
        negatives = self._negatives(
            score_split,
            row,
            expert,
            n_random_negatives,
            n_contrastive_negatives,
            tokenizer,
            [seed, layer, expert],
        )
        explain_negatives = self._negatives(
            explain_split, row, expert, n_explain_random_negatives, n_contrastive_negatives, tokenizer,
            [seed, layer, expert, 1],
        )  # fmt: skip
        n_routed = tuple(int(self.routed_total[s, row, expert].sum()) for s in range(len(SPLITS)))
        status = "ok"
        if len(explanation) < min_contexts or len(positives) < min_contexts:
            status = (
                f"too few contexts: {len(explanation)} to explain, {len(positives)} to score "
                f"(need {min_contexts}; routed tokens per split {n_routed})"
            )
        elif len(negatives) < min_contexts:
            status = f"too few negatives: {len(negatives)} (need {min_contexts})"
        return ExpertRecord(
            layer,
            expert,
            tuple(explanation),
            tuple(positives),
            tuple(negatives),
            tuple(lens_tokens),
            n_routed,
            status,
            tuple(explain_negatives),
        )

    def _negatives(
        self, split: int, row: int, expert: int, n_random: int, n_contrastive: int, tokenizer: Any, seed: list
    ) -> list[Context]:
        """Negatives of ``expert`` from ``split`` documents: random contexts whose target was routed
        elsewhere, then other experts' top contexts whose target this expert did not receive."""
        rng = np.random.default_rng(seed)
        negatives: list[Context] = []
        pool = self.random_payload[split][: int(self.random_kept[split])]
        if len(pool):
            start = _HEAD + self.width * (1 + self.n_words)
            at_target = pool[:, start:].reshape(len(pool), self.width, len(self.layers), self.k)[
                :, self.before, row
            ]
            elsewhere = (~(at_target == expert).any(-1)).nonzero().flatten().tolist()
            for i in rng.permutation(elsewhere)[:n_random]:
                negatives.append(
                    self._context(pool[i], tokenizer, lambda r: self._routing_marks(r, row, expert), "random")
                )
        candidates = []
        for other in rng.permutation(self.n_experts):
            if other == expert:
                continue
            top, _ = self._expert_events(split, row, int(other))
            for event in top[:3]:
                candidates.append(event)
        used = {c.token_index for c in negatives}
        for event in candidates:
            if len([n for n in negatives if n.source == "contrastive"]) >= n_contrastive:
                break
            token_id = int(event[3])
            if token_id in used:
                continue
            context = self._contrastive(event, row, expert, tokenizer)
            if context is not None:
                used.add(token_id)
                negatives.append(context)
        return negatives

    def _contrastive(self, event: torch.Tensor, row: int, expert: int, tokenizer: Any) -> Context | None:
        """Another expert's top context as a negative for ``expert`` (of the same layer), marked with
        ``expert``'s own routing, if its target was not routed to ``expert``."""
        marks = self._routing_marks(event, None, expert)
        if bool(marks[self.before]):
            return None
        return self._context(event, tokenizer, lambda r: self._routing_marks(r, None, expert), "contrastive")

    def lens_tokens(self, readout: Any, tokenizer: Any, n: int = 8) -> dict[tuple[int, int], tuple[str, ...]]:
        """Each expert's top ``n`` tokens of the logit lens of its mean routed output (the lens is
        linear, so this is the mean lens), through ``readout`` (an
        :class:`~tl_moe.analysis.readout.LogitReadout`); empty for an expert that received no token."""
        if self.out_sum is None:
            return {}
        routed = self.routed_total.sum((0, 3))  # [L, E]
        mean = self.out_sum / routed.clamp(min=1)[..., None]
        top = readout.vocab_logits(mean.to(torch.float32)).topk(n, dim=-1).indices
        return {
            (layer, e): tuple(tokenizer.decode([t]) for t in top[row, e].tolist())
            if routed[row, e] > 0
            else ()
            for row, layer in enumerate(self.layers)
            for e in range(self.n_experts)
        }

    def records(self, tokenizer: Any, readout: Any = None, **options: Any) -> list[ExpertRecord]:
        """:meth:`record` of every expert of every accumulated layer, with its logit-lens tokens when
        a ``readout`` (:class:`~tl_moe.analysis.readout.LogitReadout`) is given."""
        lens = self.lens_tokens(readout, tokenizer) if readout is not None else {}
        return [
            self.record(layer, expert, tokenizer, lens_tokens=lens.get((layer, expert), ()), **options)
            for layer in self.layers
            for expert in range(self.n_experts)
        ]


class ExpertExamplesAccumulator(Accumulator):
    """Collects :class:`ExpertExamples` in the collection pass (see the module docstring).

    Args:
        model: the tl_moe-loaded model (or its MoEConfig-bearing object) the pass runs on.
        domain_names: the corpus's domain names (``collect.domain_names(dataset)``).
        concept_names: names of the concept labeler's columns the pass is run with (``None``: no
            concept labels; dissection counts stay zero).
        layers: sparse layers (default: all).
        n_top: top contexts kept per (split, layer, expert).
        n_sample: uniform sample of routed events kept per (split, layer, expert).
        n_random: random contexts kept per split (the routed-elsewhere negative pool).
        before, after: context tokens before / after the target.
        split_fractions: fractions of documents in the explain / score / causal splits.
        seed: seed of the document split and the samples.
    """

    def __init__(
        self,
        model: Any,
        domain_names: Sequence[str],
        concept_names: Sequence[str] | None,
        *,
        layers: Sequence[int] | None = None,
        n_top: int = 20,
        n_sample: int = 40,
        n_random: int = 400,
        before: int = 24,
        after: int = 7,
        split_fractions: Sequence[float] = SPLIT_FRACTIONS,
        seed: int = 0,
    ) -> None:
        cfg = getattr(model, "moe_cfg", None) or moe_config(model)
        if not cfg.is_moe:
            raise ValueError(f"{cfg.architecture} is a dense model; expert examples need routed experts.")
        self.layers = tuple(cfg.sparse_layers if layers is None else (int(x) for x in layers))
        bad = [x for x in self.layers if x not in cfg.sparse_layers]
        if not self.layers or bad:
            raise ValueError(
                f"layers must be sparse layers of the model {list(cfg.sparse_layers)}; got {layers!r}."
            )
        if before + 1 + after > 63:
            raise ValueError(
                f"contexts hold at most 63 tokens (marks are a bitmask); got {before + 1 + after}."
            )
        if (
            len(split_fractions) != len(SPLITS)
            or min(split_fractions) <= 0
            or abs(sum(split_fractions) - 1) > 1e-9
        ):
            raise ValueError(
                f"split_fractions needs three positive fractions summing to 1, got {split_fractions}."
            )
        self.n_experts, self.k = cfg.num_experts, cfg.experts_per_token
        self.domain_names = tuple(domain_names)
        self.concept_names = tuple(concept_names or ())
        self.n_words = max(1, -(-len(self.concept_names) // _BITS))
        self.n_top, self.n_sample, self.n_random = int(n_top), int(n_sample), int(n_random)
        self.before, self.after, self.seed = int(before), int(after), int(seed)
        self.split_fractions = tuple(float(f) for f in split_fractions)
        n_keys = len(SPLITS) * len(self.layers) * self.n_experts
        self.top = KeyedTopN(n_keys, self.n_top)
        self.sample = KeyedTopN(n_keys, self.n_sample)
        self.random = KeyedTopN(len(SPLITS), self.n_random)
        S, L, E, C, D = (
            len(SPLITS),
            len(self.layers),
            self.n_experts,
            len(self.concept_names),
            len(self.domain_names),
        )
        self.routed_concept = torch.zeros(S, L, E, C, D, dtype=torch.float64)
        self.routed_total = torch.zeros(S, L, E, D, dtype=torch.float64)
        self.concept_total = torch.zeros(S, C, D, dtype=torch.float64)
        self.token_total = torch.zeros(S, D, dtype=torch.float64)
        self.out_sum = torch.zeros(L, E, cfg.d_model, dtype=torch.float64)  # routed outputs, for the lens

    def config(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "n_experts": self.n_experts,
            "domains": list(self.domain_names),
            "concepts": list(self.concept_names),
            "n_top": self.n_top,
            "n_sample": self.n_sample,
            "n_random": self.n_random,
            "before": self.before,
            "after": self.after,
            "split_fractions": list(self.split_fractions),
            "seed": self.seed,
            "row_layout": _ROW_LAYOUT,
        }

    def hook_names(self, model: Any) -> list[str]:
        return [
            get_act_name(kind, layer)
            for layer in self.layers
            for kind in ("topk_indices", "topk_weights", "expert_out")
        ]

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        first = acts[get_act_name("topk_indices", self.layers[0])]
        device = first.device
        batch, pos = meta.attention_mask.shape
        L, E, k = len(self.layers), self.n_experts, self.k
        C, D, S = len(self.concept_names), len(self.domain_names), len(SPLITS)
        doc = meta.doc_index.to(device)
        doc_position = meta.doc_position.to(device)
        token_index = meta.token_index.to(device)
        real = meta.attention_mask.to(device) & (doc_position >= 0)
        split = document_split(doc.clamp(min=0), self.split_fractions, seed=self.seed, key=SPLIT_KEY)
        domain = meta.domain.to(device)
        if meta.concept_labels is not None and C:
            labels = meta.concept_labels.to(device)
            if labels.shape[-1] != C:
                raise ValueError(f"the pass's concept labeler has {labels.shape[-1]} concepts, expected {C}.")
        else:
            labels = torch.zeros(batch, pos, C, dtype=torch.bool, device=device)
        labels = labels & real[..., None]
        ctx_doc = _windows(torch.where(real, doc, -1), self.before, self.after, -1)  # [B, P, W]
        ctx_ok = (ctx_doc == doc[..., None]) & (ctx_doc >= 0)
        ctx_ids = torch.where(
            ctx_ok,
            _windows(torch.where(real, meta.input_ids.to(device), -1), self.before, self.after, -1),
            -1,
        )
        ctx_words = _windows(_pack_bits(labels, self.n_words), self.before, self.after, 0).transpose(-1, -2)
        topk = torch.stack(
            [
                acts[get_act_name("topk_indices", layer)].reshape(batch, pos, k).long()
                for layer in self.layers
            ],
            2,
        )  # [B, P, L, k]
        ctx_topk = _windows(torch.where(real[..., None, None], topk, -1), self.before, self.after, -1)
        ctx_topk = torch.where(ctx_ok[:, :, None, None, :], ctx_topk, -1).movedim(-1, 2)  # [B, P, W, L, k]

        def rows(b, p, marks, saliency, routing):
            head = torch.stack(
                [doc[b, p], doc_position[b, p], domain[b, p], token_index[b, p], marks,
                 saliency.to(torch.float64).view(torch.int64)], 1
            )  # fmt: skip
            return torch.cat([head, ctx_ids[b, p], ctx_words[b, p].reshape(len(b), -1), routing], 1)

        # dissection counts: one matmul of (split, layer, expert) routing against (concept, domain) labels
        onehot_domain = F.one_hot(domain[real], D).to(torch.float32)  # [n, D]
        feats = (labels[real].to(torch.float32)[:, :, None] * onehot_domain[:, None, :]).reshape(-1, C * D)
        split_real = split[real]
        split_onehot = F.one_hot(split_real, S).to(torch.float32)  # [n, S]
        routed_real = F.one_hot(topk[real], E).amax(2).to(torch.float32)  # [n, L, E]
        per_split = (split_onehot[:, :, None, None] * routed_real[:, None]).reshape(len(split_real), -1)
        routed_concept = (per_split.T @ torch.cat([feats, onehot_domain], 1)).double()  # [S*L*E, C*D + D]
        routed_total = routed_concept[:, C * D :].reshape(S, L, E, D)
        routed_concept = routed_concept[:, : C * D].reshape(S, L, E, C, D)
        bit_weights = 1 << torch.arange(self.width_, device=device, dtype=torch.int64)
        offers: dict[int, list] = {id(self.top): [], id(self.sample): []}
        b, p, slot = real[..., None].expand(-1, -1, k).nonzero(as_tuple=True)
        token = token_index[b, p]
        out_sums = []
        for row, layer in enumerate(self.layers):
            weights = acts[get_act_name("topk_weights", layer)].reshape(batch, pos, k)
            out = acts[get_act_name("expert_out", layer)].reshape(batch, pos, k, -1)
            saliency = weights.double() * out.double().norm(dim=-1)  # [B, P, k]
            ctx_weights = _windows(
                torch.where(real[..., None], weights.float(), 0.0), self.before, self.after, 0
            )
            out_sums.append(
                torch.zeros(E, out.shape[-1], dtype=torch.float64, device=device).index_add(
                    0, topk[:, :, row][real].reshape(-1), out[real].reshape(-1, out.shape[-1]).double()
                )
            )
            expert = topk[:, :, row][b, p, slot]
            keys = (split[b, p] * L + row) * E + expert
            score = saliency[b, p, slot]
            prio = uniform_priority(token * (L * E) + row * E + expert, self.seed + 1)
            for store, scores in ((self.top, score), (self.sample, 1.0 - prio)):
                enter = scores >= store.scores.to(device)[keys, -1]
                enter &= _best_per_key(keys, scores, token, store.n)
                if not bool(enter.any()):
                    continue
                eb, ep, ee = b[enter], p[enter], expert[enter]
                routing = ctx_topk[eb, ep][:, :, row]  # [n, W, k]
                routed_here = routing == ee[:, None, None]
                marks = ((routed_here.any(-1)).long() * bit_weights).sum(1)
                strength = (ctx_weights[eb, ep].transpose(1, 2) * routed_here).sum(-1)  # [n, W]
                offers[id(store)].append(
                    (
                        keys[enter],
                        scores[enter],
                        token[enter],
                        rows(
                            eb,
                            ep,
                            marks,
                            score[enter],
                            torch.cat([routing.reshape(len(eb), -1), _pack_weights(strength)], 1),
                        ),  # fmt: skip
                    )
                )
        self.out_sum = same_device(self.out_sum, out_sums[0]) + torch.stack(out_sums)
        for store in (self.top, self.sample):  # one offer per store and batch: the merge is the cost
            if offers[id(store)]:
                store.offer(*(torch.cat(parts) for parts in zip(*offers[id(store)], strict=True)))
        self.routed_concept = same_device(self.routed_concept, routed_concept) + routed_concept.reshape(
            self.routed_concept.shape
        )
        self.routed_total = same_device(self.routed_total, routed_total) + routed_total
        self.concept_total = same_device(self.concept_total, feats) + (
            split_onehot.T @ feats
        ).double().reshape(S, C, D)
        self.token_total = same_device(self.token_total, feats) + (split_onehot.T @ onehot_domain).double()
        # random contexts with every layer's routing at every context position
        b, p = real.nonzero(as_tuple=True)
        token = token_index[b, p]
        prio = 1.0 - uniform_priority(token, self.seed + 2)
        keys = split[b, p]
        enter = (prio >= self.random.scores.to(device)[keys, -1]) & _best_per_key(
            keys, prio, token, self.n_random
        )
        if bool(enter.any()):
            eb, ep = b[enter], p[enter]
            zeros = torch.zeros(len(eb), dtype=torch.int64, device=device)
            routing = ctx_topk[eb, ep].reshape(len(eb), -1)  # [n, W * L * k]
            self.random.offer(
                keys[enter], prio[enter], token[enter], rows(eb, ep, zeros, zeros.double(), routing)
            )

    @property
    def width_(self) -> int:
        return self.before + 1 + self.after

    def merge(self, other: ExpertExamplesAccumulator) -> ExpertExamplesAccumulator:
        self._check_mergeable(other)
        self.top.merge(other.top)
        self.sample.merge(other.sample)
        self.random.merge(other.random)
        for name in ("routed_concept", "routed_total", "concept_total", "token_total", "out_sum"):
            mine = getattr(self, name)
            setattr(self, name, mine + getattr(other, name).to(mine.device))
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "top": self.top.state_dict(),
            "sample": self.sample.state_dict(),
            "random": self.random.state_dict(),
            "routed_concept": self.routed_concept,
            "routed_total": self.routed_total,
            "concept_total": self.concept_total,
            "token_total": self.token_total,
            "out_sum": self.out_sum,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.top.load_state_dict(state["top"])
        self.sample.load_state_dict(state["sample"])
        self.random.load_state_dict(state["random"])
        for name in ("routed_concept", "routed_total", "concept_total", "token_total", "out_sum"):
            setattr(self, name, state[name])

    def finalize(self) -> ExpertExamples:
        S, L, E = len(SPLITS), len(self.layers), self.n_experts
        width = self.width_
        row_len = _HEAD + width * (1 + self.n_words) + width * self.k + _packed_len(width)

        def payload(store: KeyedTopN, n: int) -> torch.Tensor:
            if store.payload is None:
                return torch.full((S, L, E, n, row_len), -1, dtype=torch.int64)
            return store.payload.cpu().reshape(S, L, E, n, -1)

        random_len = _HEAD + width * (1 + self.n_words) + width * L * self.k
        random_payload = (
            torch.full((S, self.n_random, random_len), -1, dtype=torch.int64)
            if self.random.payload is None
            else self.random.payload.cpu()
        )
        return ExpertExamples(
            layers=self.layers,
            n_experts=E,
            k=self.k,
            before=self.before,
            after=self.after,
            concept_names=self.concept_names,
            domain_names=self.domain_names,
            top_scores=self.top.scores.cpu().reshape(S, L, E, -1),
            top_payload=payload(self.top, self.n_top),
            sample_scores=self.sample.scores.cpu().reshape(S, L, E, -1),
            sample_payload=payload(self.sample, self.n_sample),
            random_payload=random_payload,
            random_kept=self.random.n_kept.cpu(),
            routed_concept=self.routed_concept.cpu(),
            routed_total=self.routed_total.cpu(),
            concept_total=self.concept_total.cpu(),
            token_total=self.token_total.cpu(),
            out_sum=self.out_sum.cpu(),
            n_words=self.n_words,
            seed=self.seed,
            split_fractions=self.split_fractions,
        )
