"""``ExpertEffects``: the exact causal effect of every expert of some layers on next-token loss.

For each kind of edit (remove / zero / scale), each layer and each expert ``e``, it sums the
per-token loss change ``loss(edited) - loss(clean)`` over the real next-token positions of each
document (the edited loss of every position is a real forward, not an approximation), with the
positions counted per document. Per-domain and per-expert totals follow from these per-document sums
(each document has one domain); beside them, per domain, the sums of squares and the same sums over
the positions routed to ``e`` in the clean forward. Sums are float64 and merge by addition, so
checkpoint/resume, ``shard=`` and torch.distributed give the single-pass result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_moe.collect.interventional import InterventionalAccumulator, InterventionEffects
from tl_moe.collect.meta import BatchMeta
from tl_moe.models.interventions import Intervention, _check_factor
from tl_moe.models.introspect import config_of

EFFECT_KINDS = ("remove", "zero", "scale")

_PER_DOMAIN = ("loss_change_sq", "loss_change_routed", "loss_change_routed_sq", "n_routed")
_PER_DOCUMENT = ("sums", "counts", "doc_domain", "doc_clean_loss")


def _grow(tensor: torch.Tensor, size: int, fill: int = 0) -> torch.Tensor:
    """``tensor`` padded with ``fill`` along its last axis to ``size`` columns (unchanged when as long)."""
    if tensor.shape[-1] >= size:
        return tensor
    pad = tensor.new_full((*tensor.shape[:-1], size - tensor.shape[-1]), fill)
    return torch.cat([tensor, pad], dim=-1)


def _by_domain(values: torch.Tensor, domain: Int[torch.Tensor, " m"], n_domains: int) -> torch.Tensor:
    """``values [..., m]`` summed over the positions of each domain: ``[..., n_domains]``."""
    return values.new_zeros(*values.shape[:-1], n_domains).index_add(-1, domain, values)


@dataclass(frozen=True)
class ExpertEffectsResult:
    """Summed per-token loss changes of single-expert edits, per document.

    Axes: ``kind`` (as in ``kinds``), ``layer`` (block indices ``layers``), ``expert``, ``document``
    (corpus row), ``domain`` (``domain_names``).

    Attributes:
        sums: Σ over the document's real next-token positions of ``loss(edited) - loss(clean)``.
        counts: those positions per document.
        resumed: whether every edited forward resumed from the edited layer (False: some ran on the
            whole model, the fallback of :class:`~tl_moe.collect.interventional.InterventionRunner`).
        doc_domain: each document's domain code (-1: no position seen).
        doc_clean_loss: Σ of the clean loss per document.
        loss_change_sq: Σ of the squared loss change per domain (for variances).
        loss_change_routed / loss_change_routed_sq: the loss-change sums restricted to positions whose
            token was routed to the expert (clean forward), per domain.
        n_routed: routed positions per layer, expert and domain.

    A result built from per-document sums alone (``kinds, layers, sums, counts``) serves the
    per-document analyses (drivers); the per-domain fields are None then.
    """

    kinds: tuple[str, ...]
    layers: tuple[int, ...]
    sums: Float[torch.Tensor, "kind layer expert document"]
    counts: Int[torch.Tensor, " document"]
    resumed: bool = True
    domain_names: tuple[str, ...] = ()
    factor: float | None = None
    doc_domain: Int[torch.Tensor, " document"] | None = None
    doc_clean_loss: Float[torch.Tensor, " document"] | None = None
    loss_change_sq: Float[torch.Tensor, "kind layer expert domain"] | None = None
    loss_change_routed: Float[torch.Tensor, "kind layer expert domain"] | None = None
    loss_change_routed_sq: Float[torch.Tensor, "kind layer expert domain"] | None = None
    n_routed: Int[torch.Tensor, "layer expert domain"] | None = None

    def _per_domain(self, values: torch.Tensor) -> torch.Tensor:
        """Per-document ``values [..., document]`` summed over the documents of each domain."""
        if self.doc_domain is None:
            raise ValueError("this result holds per-document sums only (no document domains).")
        seen = self.doc_domain >= 0
        return _by_domain(values[..., seen], self.doc_domain[seen], len(self.domain_names))

    @property
    def loss_change(self) -> Float[torch.Tensor, "kind layer expert domain"]:
        """Σ of ``loss(edited) - loss(clean)`` over the real next-token positions of each domain."""
        return self._per_domain(self.sums)

    @property
    def n_tokens(self) -> Int[torch.Tensor, " domain"]:
        """Real next-token positions per domain."""
        return self._per_domain(self.counts)

    @property
    def clean_loss(self) -> Float[torch.Tensor, " domain"]:
        """Σ of the clean loss per domain."""
        return self._per_domain(self.doc_clean_loss)

    @property
    def mean_loss_change(self) -> Float[torch.Tensor, "kind layer expert domain"]:
        """Mean loss change over all positions of each domain (NaN without tokens)."""
        n = self.n_tokens.to(self.sums.dtype)
        return torch.where(n > 0, self.loss_change / n.clamp(min=1), torch.nan)

    @property
    def mean_loss_change_routed(self) -> Float[torch.Tensor, "kind layer expert domain"]:
        """Mean loss change over the positions routed to the expert (NaN where none)."""
        n = self.n_routed.to(self.sums.dtype).unsqueeze(0)
        return torch.where(n > 0, self.loss_change_routed / n.clamp(min=1), torch.nan)

    def to_frame(self, by_domain: bool = True):
        """One row per (kind, layer, expert[, domain]) with sums, counts and means."""
        import pandas as pd

        rows = []
        loss_change, n_tokens = self.loss_change, self.n_tokens
        domains = list(range(len(self.domain_names))) if by_domain else [None]
        for k, kind in enumerate(self.kinds):
            for li, layer in enumerate(self.layers):
                for e in range(self.sums.shape[2]):
                    for d in domains:
                        pick = slice(None) if d is None else d
                        total = float(loss_change[k, li, e, pick].sum())
                        routed = float(self.loss_change_routed[k, li, e, pick].sum())
                        n = int(n_tokens[pick].sum())
                        n_routed = int(self.n_routed[li, e, pick].sum())
                        rows.append(
                            {
                                "kind": kind,
                                "layer": layer,
                                "expert": e,
                                "domain": "all" if d is None else self.domain_names[d],
                                "n_tokens": n,
                                "n_routed": n_routed,
                                "loss_change_sum": total,
                                "loss_change_routed_sum": routed,
                                "mean_loss_change": total / n if n else float("nan"),
                                "mean_loss_change_routed": routed / n_routed if n_routed else float("nan"),
                            }
                        )
        return pd.DataFrame(rows)


class ExpertEffects(InterventionalAccumulator):
    """Loss change of removing / zeroing / scaling each expert of ``layers``, per document and domain.

    Args:
        layers: block indices of sparse layers; None: every sparse layer of the model.
        kinds: any of ``"remove"`` (the expert cannot be selected; tokens re-route),
            ``"zero"`` (selected, output zeroed), ``"scale"`` (mixing weight × ``factor``).
        factor: the factor of ``"scale"`` edits (finite).
        max_tokens: run the edits on the first this many real tokens of the stream (later batches
            run no edited forward: each edit costs one forward of the layers from the edited one on);
            None: every token.

    Example::

        effects = ExpertEffects(layers=[3], kinds=("remove", "zero"))
        result = collect(model, corpus, {"effects": effects})["effects"]
        result.to_frame(by_domain=False)  # kind, layer, expert, mean_loss_change, ...
        result.sums                       # [kind, layer, expert, document]
    """

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        kinds: Sequence[str] = ("remove", "zero"),
        factor: float | None = None,
        max_tokens: int | None = None,
    ) -> None:
        if isinstance(kinds, str):
            kinds = (kinds,)
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in EFFECT_KINDS]
        if unknown or not kinds or len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds must be distinct values of {EFFECT_KINDS}; got {kinds}.")
        if "scale" in kinds:
            if factor is None:
                raise ValueError("kinds include 'scale': pass factor=... (a finite number).")
            factor = _check_factor(factor)
        elif factor is not None:
            raise ValueError("factor is only used with kinds including 'scale'.")
        if max_tokens is not None and max_tokens < 0:
            raise ValueError(f"max_tokens must be non-negative or None; got {max_tokens}.")
        self.kinds = kinds
        self.factor = factor
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.requested_layers = None if layers is None else tuple(int(layer) for layer in layers)
        self.layers: tuple[int, ...] | None = None
        self.domain_names: tuple[str, ...] | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.seen = 0  # real tokens of the batches whose edits ran
        self.resumed = True  # False once a batch's edited forwards ran on the whole model

    def config(self) -> dict[str, Any]:
        return {
            "layers": None if self.requested_layers is None else list(self.requested_layers),
            "kinds": list(self.kinds),
            "factor": self.factor,
            "max_tokens": self.max_tokens,
        }

    def _resolve(self, model: Any) -> tuple[int, ...]:
        cfg = config_of(model)
        if self.requested_layers is None:
            layers = tuple(cfg.sparse_layers)
        else:
            layers = tuple(int(layer) % cfg.n_layers for layer in self.requested_layers)
            dense = [layer for layer in layers if layer not in cfg.sparse_layers]
            if dense:
                raise ValueError(
                    f"layers {dense} are not sparse layers; sparse layers are {list(cfg.sparse_layers)}."
                )
        self.layers = layers
        self.num_experts = cfg.num_experts
        return layers

    def hook_names(self, model: Any) -> list[str]:
        return [f"blocks.{layer}.mlp.hook_topk_indices" for layer in self._resolve(model)]

    def interventions(self, model: Any) -> list[Intervention]:
        layers = self._resolve(model)
        return [
            Intervention(kind, layer, (e,), self.factor if kind == "scale" else None)
            for kind in self.kinds
            for layer in layers
            for e in range(self.num_experts)
        ]

    def wants_effects(self, meta: BatchMeta) -> bool:
        return self.max_tokens is None or self.seen < self.max_tokens

    def _empty_state(self, n_domains: int) -> dict[str, torch.Tensor]:
        edits = len(self.kinds) * len(self.layers) * self.num_experts
        f64 = dict(dtype=torch.float64)
        return {
            "sums": torch.zeros(edits, 0, **f64),
            "counts": torch.zeros(0, dtype=torch.long),
            "doc_domain": torch.zeros(0, dtype=torch.long),
            "doc_clean_loss": torch.zeros(0, **f64),
            "loss_change_sq": torch.zeros(edits, n_domains, **f64),
            "loss_change_routed": torch.zeros(edits, n_domains, **f64),
            "loss_change_routed_sq": torch.zeros(edits, n_domains, **f64),
            "n_routed": torch.zeros(len(self.layers) * self.num_experts, n_domains, dtype=torch.long),
        }

    def _routed(self, effects: InterventionEffects) -> Int[torch.Tensor, "cell m"]:
        """1 where the position's token was routed to the (layer, expert) cell in the clean forward."""
        valid, n_experts = effects.valid, self.num_experts
        routed = [
            torch.nn.functional.one_hot(
                effects.acts[f"blocks.{layer}.mlp.hook_topk_indices"].long()[valid], n_experts
            ).any(-2)
            for layer in self.layers
        ]  # each [m, experts]
        return torch.cat([r.T for r in routed]).long().cpu()

    def _document_domains(self, state: dict[str, torch.Tensor], docs: torch.Tensor, domain: torch.Tensor):
        """Record each document's domain (ValueError when a document changes domain)."""
        known = state["doc_domain"][docs]
        recorded = state["doc_domain"].index_put((docs,), domain)
        clash = ((known >= 0) & (known != domain)) | (recorded[docs] != domain)
        if bool(clash.any()):
            raise ValueError(f"document {int(docs[clash][0])} appears under two domains.")
        state["doc_domain"] = recorded

    def update_effects(self, effects: InterventionEffects, meta: BatchMeta) -> None:
        n_domains = len(meta.domain_names)
        if self.state is None:
            self.state = self._empty_state(n_domains)
            self.domain_names = tuple(meta.domain_names)
        elif tuple(meta.domain_names) != self.domain_names:
            raise ValueError(f"domain names changed from {self.domain_names} to {meta.domain_names}.")
        self.seen += int(meta.n_tokens)
        self.resumed = self.resumed and effects.resumed
        valid = effects.valid
        docs = meta.doc_index.to(valid.device)[valid].long().cpu()
        domain = meta.domain.to(valid.device)[valid].long().cpu()
        delta = effects.loss_change[:, valid].double().cpu()  # [edit, m]
        routed = self._routed(effects)  # [layer * expert, m]
        routed_delta = delta * routed.repeat(len(self.kinds), 1).to(delta.dtype)
        s = dict(self.state)
        size = max(s["counts"].numel(), int(docs.max()) + 1 if docs.numel() else 0)
        for name in _PER_DOCUMENT:
            s[name] = _grow(s[name], size, -1 if name == "doc_domain" else 0)
        self._document_domains(s, docs, domain)
        s["sums"] = s["sums"].index_add(1, docs, delta)
        s["counts"] = s["counts"].index_add(0, docs, torch.ones_like(docs))
        s["doc_clean_loss"] = s["doc_clean_loss"].index_add(0, docs, effects.clean_loss[valid].double().cpu())
        s["loss_change_sq"] = s["loss_change_sq"] + _by_domain(delta * delta, domain, n_domains)
        s["loss_change_routed"] = s["loss_change_routed"] + _by_domain(routed_delta, domain, n_domains)
        routed_sq = _by_domain(routed_delta * routed_delta, domain, n_domains)
        s["loss_change_routed_sq"] = s["loss_change_routed_sq"] + routed_sq
        s["n_routed"] = s["n_routed"] + _by_domain(routed, domain, n_domains)
        self.state = s

    def merge(self, other: ExpertEffects) -> ExpertEffects:
        self._check_mergeable(other)
        self.seen += other.seen
        self.resumed = self.resumed and other.resumed
        if other.state is None:
            return self
        if self.state is None:
            self.state = {k: v.clone() for k, v in other.state.items()}
            self.layers, self.domain_names = other.layers, other.domain_names
            self.num_experts = other.num_experts
            return self
        if other.domain_names != self.domain_names:
            raise ValueError(
                f"cannot merge effects over domains {other.domain_names} into {self.domain_names}."
            )
        size = max(self.state["counts"].numel(), other.state["counts"].numel())
        merged = {}
        for name, value in self.state.items():
            if name == "doc_domain":
                mine, theirs = _grow(value, size, -1), _grow(other.state[name], size, -1)
                if bool(((mine >= 0) & (theirs >= 0) & (mine != theirs)).any()):
                    raise ValueError("cannot merge effects whose documents have different domains.")
                merged[name] = torch.maximum(mine, theirs)
            elif name in _PER_DOCUMENT:
                merged[name] = _grow(value, size) + _grow(other.state[name], size)
            else:
                merged[name] = value + other.state[name]
        self.state = merged
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "layers": None if self.layers is None else list(self.layers),
            "domain_names": None if self.domain_names is None else list(self.domain_names),
            "num_experts": getattr(self, "num_experts", None),
            "seen": self.seen,
            "resumed": self.resumed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = None if state["state"] is None else dict(state["state"])
        self.layers = None if state["layers"] is None else tuple(state["layers"])
        self.domain_names = None if state["domain_names"] is None else tuple(state["domain_names"])
        if state["num_experts"] is not None:
            self.num_experts = int(state["num_experts"])
        self.seen, self.resumed = int(state["seen"]), bool(state["resumed"])

    def finalize(self) -> ExpertEffectsResult:
        if self.state is None:
            raise RuntimeError("ExpertEffects.finalize() called before any batch was folded in.")
        cells = (len(self.kinds), len(self.layers), self.num_experts, -1)
        s = self.state
        return ExpertEffectsResult(
            kinds=self.kinds,
            layers=self.layers,
            sums=s["sums"].reshape(cells).clone(),
            counts=s["counts"].clone(),
            resumed=self.resumed,
            domain_names=self.domain_names,
            factor=self.factor,
            doc_domain=s["doc_domain"].clone(),
            doc_clean_loss=s["doc_clean_loss"].clone(),
            loss_change_sq=s["loss_change_sq"].reshape(cells).clone(),
            loss_change_routed=s["loss_change_routed"].reshape(cells).clone(),
            loss_change_routed_sq=s["loss_change_routed_sq"].reshape(cells).clone(),
            n_routed=s["n_routed"].reshape(cells[1:]).clone(),
        )
