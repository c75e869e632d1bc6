"""``ExpertEffects``: the causal effect of every expert of some layers on next-token loss.

For each kind of edit (remove / zero / scale), each layer and each expert ``e``, it sums the
per-token loss change ``loss(edited) - loss(clean)`` over all real next-token positions and
over the positions routed to ``e`` in the clean forward, with counts, per domain. Sums are
float64 and merge by addition, so checkpoint/resume, ``shard=`` and torch.distributed give the
single-pass result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_moe.collect.accumulator import same_device
from tl_moe.collect.interventional import InterventionalAccumulator, InterventionEffects
from tl_moe.collect.meta import BatchMeta
from tl_moe.models.interventions import Intervention, _check_factor
from tl_moe.models.introspect import config_of

EFFECT_KINDS = ("remove", "zero", "scale")


@dataclass(frozen=True)
class ExpertEffectsResult:
    """Summed per-token loss changes of single-expert edits.

    Axes: ``kind`` (as in ``kinds``), ``layer`` (block indices ``layers``), ``expert``,
    ``domain`` (``domain_names``).

    Attributes:
        loss_change: Σ over real next-token positions of ``loss(edited) - loss(clean)``.
        loss_change_sq: Σ of its square (for variances).
        n_tokens: real next-token positions per domain.
        loss_change_routed / loss_change_routed_sq: the same sums restricted to positions
            whose token was routed to the expert (clean forward).
        n_routed: routed positions per layer, expert and domain.
        clean_loss: Σ of the clean loss per domain.
    """

    kinds: tuple[str, ...]
    layers: tuple[int, ...]
    domain_names: tuple[str, ...]
    factor: float | None
    loss_change: Float[torch.Tensor, "kind layer expert domain"]
    loss_change_sq: Float[torch.Tensor, "kind layer expert domain"]
    n_tokens: Int[torch.Tensor, " domain"]
    loss_change_routed: Float[torch.Tensor, "kind layer expert domain"]
    loss_change_routed_sq: Float[torch.Tensor, "kind layer expert domain"]
    n_routed: Int[torch.Tensor, "layer expert domain"]
    clean_loss: Float[torch.Tensor, " domain"]

    @property
    def mean_loss_change(self) -> Float[torch.Tensor, "kind layer expert domain"]:
        """Mean loss change over all positions of each domain (NaN without tokens)."""
        n = self.n_tokens.to(self.loss_change.dtype)
        return torch.where(n > 0, self.loss_change / n.clamp(min=1), torch.nan)

    @property
    def mean_loss_change_routed(self) -> Float[torch.Tensor, "kind layer expert domain"]:
        """Mean loss change over the positions routed to the expert (NaN where none)."""
        n = self.n_routed.to(self.loss_change.dtype).unsqueeze(0)
        return torch.where(n > 0, self.loss_change_routed / n.clamp(min=1), torch.nan)

    def to_frame(self, by_domain: bool = True):
        """One row per (kind, layer, expert[, domain]) with sums, counts and means."""
        import pandas as pd

        rows = []
        domains = list(range(len(self.domain_names))) if by_domain else [None]
        for k, kind in enumerate(self.kinds):
            for li, layer in enumerate(self.layers):
                for e in range(self.loss_change.shape[2]):
                    for d in domains:
                        pick = slice(None) if d is None else d
                        total = float(self.loss_change[k, li, e, pick].sum())
                        routed = float(self.loss_change_routed[k, li, e, pick].sum())
                        n = int(self.n_tokens[pick].sum())
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
    """Loss change of removing / zeroing / scaling each expert of ``layers``, per domain.

    Args:
        layers: block indices of sparse layers; None: every sparse layer of the model.
        kinds: any of ``"remove"`` (the expert cannot be selected; tokens re-route),
            ``"zero"`` (selected, output zeroed), ``"scale"`` (mixing weight × ``factor``).
        factor: the factor of ``"scale"`` edits (finite).

    Example::

        effects = ExpertEffects(layers=[3], kinds=("remove", "zero"))
        result = collect(model, corpus, {"effects": effects})["effects"]
        result.to_frame(by_domain=False)  # kind, layer, expert, mean_loss_change, ...
    """

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        kinds: Sequence[str] = ("remove", "zero"),
        factor: float | None = None,
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
        self.kinds = kinds
        self.factor = factor
        self.requested_layers = None if layers is None else tuple(layers)
        self.layers: tuple[int, ...] | None = None
        self.domain_names: tuple[str, ...] | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def config(self) -> dict[str, Any]:
        return {
            "layers": None if self.requested_layers is None else list(self.requested_layers),
            "kinds": list(self.kinds),
            "factor": self.factor,
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

    def _empty_state(self, n_domains: int, device: torch.device) -> dict[str, torch.Tensor]:
        shape = (len(self.kinds), len(self.layers), self.num_experts, n_domains)
        f64 = dict(dtype=torch.float64, device=device)
        return {
            "loss_change": torch.zeros(shape, **f64),
            "loss_change_sq": torch.zeros(shape, **f64),
            "loss_change_routed": torch.zeros(shape, **f64),
            "loss_change_routed_sq": torch.zeros(shape, **f64),
            "n_tokens": torch.zeros(n_domains, dtype=torch.long, device=device),
            "n_routed": torch.zeros(shape[1:], dtype=torch.long, device=device),
            "clean_loss": torch.zeros(n_domains, **f64),
        }

    def update_effects(self, effects: InterventionEffects, meta: BatchMeta) -> None:
        n_domains = len(meta.domain_names)
        if self.state is None:
            self.state = self._empty_state(n_domains, meta.input_ids.device)
            self.domain_names = tuple(meta.domain_names)
        elif tuple(meta.domain_names) != self.domain_names:
            raise ValueError(f"domain names changed from {self.domain_names} to {meta.domain_names}.")
        valid = effects.valid
        domain = meta.domain[valid]  # [m]
        kinds, layers, n_experts = len(self.kinds), len(self.layers), self.num_experts
        delta = effects.loss_change[:, valid].to(torch.float64)  # [kinds*layers*experts, m]
        delta = delta.reshape(kinds, layers, n_experts, -1)
        routed = torch.stack(
            [
                torch.nn.functional.one_hot(
                    effects.acts[f"blocks.{layer}.mlp.hook_topk_indices"].long()[valid], n_experts
                ).any(-2)
                for layer in self.layers
            ]
        ).transpose(1, 2)  # [layers, experts, m]
        routed_delta = delta * routed.unsqueeze(0).to(delta.dtype)

        def by_domain(values: torch.Tensor) -> torch.Tensor:
            flat = values.reshape(-1, values.shape[-1]).T  # [m, cells]
            out = flat.new_zeros(n_domains, flat.shape[1]).index_add(0, domain, flat)
            return out.T.reshape(*values.shape[:-1], n_domains)

        s = {key: same_device(value, delta) for key, value in self.state.items()}
        s["loss_change"] = s["loss_change"] + by_domain(delta)
        s["loss_change_sq"] = s["loss_change_sq"] + by_domain(delta * delta)
        s["loss_change_routed"] = s["loss_change_routed"] + by_domain(routed_delta)
        s["loss_change_routed_sq"] = s["loss_change_routed_sq"] + by_domain(routed_delta * routed_delta)
        s["n_routed"] = s["n_routed"] + by_domain(routed.long())
        s["n_tokens"] = s["n_tokens"] + torch.bincount(domain, minlength=n_domains)
        clean = effects.clean_loss[valid].to(torch.float64)
        s["clean_loss"] = s["clean_loss"] + clean.new_zeros(n_domains).index_add(0, domain, clean)
        self.state = s

    def merge(self, other: ExpertEffects) -> ExpertEffects:
        self._check_mergeable(other)
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
        self.state = {k: v + other.state[k].to(v.device) for k, v in self.state.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "layers": None if self.layers is None else list(self.layers),
            "domain_names": None if self.domain_names is None else list(self.domain_names),
            "num_experts": getattr(self, "num_experts", None),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = None if state["state"] is None else dict(state["state"])
        self.layers = None if state["layers"] is None else tuple(state["layers"])
        self.domain_names = None if state["domain_names"] is None else tuple(state["domain_names"])
        if state["num_experts"] is not None:
            self.num_experts = int(state["num_experts"])

    def finalize(self) -> ExpertEffectsResult:
        if self.state is None:
            raise RuntimeError("ExpertEffects.finalize() called before any batch was folded in.")
        return ExpertEffectsResult(
            kinds=self.kinds,
            layers=self.layers,
            domain_names=self.domain_names,
            factor=self.factor,
            **self.state,
        )
