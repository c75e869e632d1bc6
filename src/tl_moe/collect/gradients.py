"""Gradient passes: one forward and one backward of each batch, for first-order (attribution-patching)
estimates.

An accumulator that subclasses :class:`GradientAccumulator` names the sparse layers whose mixing
weights it wants differentiated (``gradient_layers(model)``); for every batch of ``collect`` the
engine runs :func:`slot_gradients` once for all such accumulators and hands each a
:class:`SlotGradients`: at every ``(batch, pos, slot)`` of those layers, the mixing weight ``w``
(``hook_topk_weights``), the expert it belongs to (``hook_topk_indices``) and
``∂L/∂w``, where ``L`` is the summed next-token loss of the batch's valid positions.

How the derivative is taken: the hook on ``hook_topk_weights`` returns ``w + δ`` with ``δ`` a zero
leaf that requires grad, and ``torch.autograd.grad(L, δ)`` gives ``∂L/∂w`` — the *total* derivative:
a change of ``w`` in block ``L`` reaches the loss through the residual stream, attention to later
positions and the (soft) mixing weights of later sparse blocks; the top-k *selection* of later blocks
is piecewise constant, so it contributes nothing to the derivative. Nothing is detached, no parameter
gradient is computed or stored, and the model is left unchanged.

The pass runs with gradients enabled inside ``collect``'s ``torch.inference_mode``
(``inference_mode(False)``); inputs are cloned out of inference mode first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from tl_moe.collect.accumulator import Accumulator, Activations
from tl_moe.collect.interventional import FINAL_RESIDUAL
from tl_moe.collect.meta import BatchMeta
from tl_moe.errors import InputError
from tl_moe.models.hook_names import get_act_name
from tl_moe.models.introspect import config_of

__all__ = ["GradientAccumulator", "GradientRunner", "SlotGradients", "slot_gradients"]


@dataclass(frozen=True)
class SlotGradients:
    """One batch's mixing weights and the gradient of the batch loss with respect to them.

    Positions follow :class:`BatchMeta` (``[batch, pos]``); the loss at ``(b, p)`` is that of
    predicting token ``p + 1`` from position ``p``, defined where ``valid``.

    Attributes:
        layers: the sparse blocks, in the order of the per-layer tuples below.
        weights: per layer, the mixing weight of each slot, ``[batch, pos, k]``.
        indices: per layer, the expert of each slot, ``[batch, pos, k]``.
        grads: per layer, ``∂L/∂weights`` with ``L = Σ_valid loss``, ``[batch, pos, k]``.
        loss: next-token loss (0 where not valid), ``[batch, pos]``.
        valid: positions whose token and next token are real, ``[batch, pos]``.
    """

    layers: tuple[int, ...]
    weights: tuple[Float[torch.Tensor, "batch pos k"], ...]
    indices: tuple[Int[torch.Tensor, "batch pos k"], ...]
    grads: tuple[Float[torch.Tensor, "batch pos k"], ...]
    loss: Float[torch.Tensor, "batch pos"]
    valid: Bool[torch.Tensor, "batch pos"]

    def first_order_zeroing(self) -> tuple[Float[torch.Tensor, "batch pos k"], ...]:
        """Per layer, ``-w · ∂L/∂w``: the first-order estimate of ``L(slot zeroed) - L``."""
        return tuple(-(w * g) for w, g in zip(self.weights, self.grads, strict=True))


class _ReachedFinalResidual(Exception):
    pass


def _as_token_grid(x: torch.Tensor, batch: int, pos: int) -> torch.Tensor:
    return x.reshape(batch, pos, *x.shape[-1:]) if x.ndim == 2 else x


def _next_token_loss(model: Any, final: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``logsumexp - target logit`` at ``[m, d_model]`` final residuals, in at least float32 (float64
    models keep float64)."""
    logits = model.unembed(model.ln_final(final.unsqueeze(0)))[0]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[:, None].long())[:, 0]


def slot_gradients(
    model: Any,
    input_ids: Int[torch.Tensor, "batch pos"],
    attention_mask: Bool[torch.Tensor, "batch pos"] | None,
    layers: Sequence[int],
) -> SlotGradients:
    """One forward and one backward of a batch: mixing weights and ``∂(Σ loss)/∂w`` in ``layers``.

    Args:
        model: a tl_moe-loaded bridge.
        input_ids: the batch (on the model's device).
        attention_mask: True on real tokens (default: all real).
        layers: sparse blocks whose mixing weights are differentiated.

    Example::

        grads = slot_gradients(model, tokens, None, layers=[1])
        (-grads.weights[0] * grads.grads[0])  # first-order effect of zeroing each slot
    """
    layers = tuple(int(layer) for layer in layers)
    with torch.inference_mode(False), torch.enable_grad():
        ids = input_ids.clone()
        if attention_mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        else:
            mask = attention_mask.clone().bool()
        batch, pos = ids.shape
        targets = torch.zeros_like(ids)
        targets[:, :-1] = ids[:, 1:]
        valid = torch.zeros_like(mask)
        valid[:, :-1] = mask[:, :-1] & mask[:, 1:]
        probes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        chosen: dict[int, torch.Tensor] = {}
        captured: dict[str, torch.Tensor] = {}

        def probe(layer: int):
            def hook(weights: torch.Tensor, hook: Any) -> torch.Tensor:
                delta = torch.zeros_like(weights, requires_grad=True)
                probes[layer] = (weights.detach(), delta)
                return weights + delta

            return hook

        def keep(layer: int):
            def hook(indices: torch.Tensor, hook: Any) -> None:
                chosen[layer] = indices.detach()

            return hook

        def stop(resid: torch.Tensor, hook: Any) -> None:
            captured["final"] = resid
            raise _ReachedFinalResidual

        hooks = [(get_act_name("topk_weights", layer), probe(layer)) for layer in layers]
        hooks += [(get_act_name("topk_indices", layer), keep(layer)) for layer in layers]
        hooks.append((FINAL_RESIDUAL, stop))
        with model.hooks(fwd_hooks=hooks):
            try:
                model(ids, attention_mask=mask.to(ids.dtype), return_type=None)
            except _ReachedFinalResidual:
                pass
        missing = [layer for layer in layers if layer not in probes or layer not in chosen]
        if missing or "final" not in captured:
            raise RuntimeError(f"the routing hooks of layers {missing} or the final residual did not fire.")
        per_token = _next_token_loss(model, captured["final"][valid], targets[valid])
        deltas = [probes[layer][1] for layer in layers]
        if per_token.numel():
            grads = torch.autograd.grad(per_token.sum(), deltas, allow_unused=True)
        else:
            grads = (None,) * len(layers)
        loss = torch.zeros(batch, pos, dtype=per_token.dtype, device=per_token.device)
        loss[valid] = per_token.detach()
    weights = tuple(_as_token_grid(probes[layer][0], batch, pos) for layer in layers)
    return SlotGradients(
        layers=layers,
        weights=weights,
        indices=tuple(_as_token_grid(chosen[layer], batch, pos).long() for layer in layers),
        grads=tuple(
            torch.zeros_like(w) if g is None else _as_token_grid(g.detach(), batch, pos)
            for w, g in zip(weights, grads, strict=True)
        ),
        loss=loss,
        valid=valid,
    )


class GradientAccumulator(Accumulator, ABC):
    """An accumulator that also receives one backward pass of each batch (see the module docstring).

    Implement ``gradient_layers(model)`` and ``update_gradients(grads, meta)``, plus
    ``merge``/``state_dict``/``load_state_dict``/``finalize`` as for any :class:`Accumulator`.
    ``hook_names`` (default: none) and ``update`` (default: nothing) still see the clean forward.
    """

    @abstractmethod
    def gradient_layers(self, model: Any) -> Sequence[int]:
        """The sparse blocks whose mixing weights the backward differentiates."""

    @abstractmethod
    def update_gradients(self, grads: SlotGradients, meta: BatchMeta) -> None:
        """Fold in one batch's :class:`SlotGradients`."""

    def wants_gradients(self, meta: BatchMeta) -> bool:
        """Whether this batch's backward should run for this accumulator (e.g. False once a token
        budget is spent); when no accumulator wants it, no gradient pass runs."""
        return True

    def hook_names(self, model: Any) -> list[str]:
        return []

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        return None


class GradientRunner:
    """Runs one gradient pass per batch for a set of gradient accumulators (used by ``collect``)."""

    def __init__(self, model: Any, accumulators: Mapping[str, GradientAccumulator]) -> None:
        cfg = config_of(model)
        self.model = model
        self.accumulators = dict(accumulators)
        self.layers: dict[str, tuple[int, ...]] = {}
        for name, acc in self.accumulators.items():
            layers = tuple(int(layer) % cfg.n_layers for layer in acc.gradient_layers(model))
            dense = [layer for layer in layers if layer not in cfg.sparse_layers]
            if dense:
                raise InputError(
                    f"accumulator {name!r} asks for gradients at dense layers {dense}; sparse layers are "
                    f"{list(cfg.sparse_layers)}."
                )
            self.layers[name] = layers

    def run(self, meta: BatchMeta, input_device: torch.device) -> None:
        wanting = [name for name, acc in self.accumulators.items() if acc.wants_gradients(meta)]
        if not wanting:
            return
        union = sorted({layer for name in wanting for layer in self.layers[name]})
        every = slot_gradients(
            self.model, meta.input_ids.to(input_device), meta.attention_mask.to(input_device), union
        )
        device = meta.input_ids.device
        for name in wanting:
            rows = [union.index(layer) for layer in self.layers[name]]
            self.accumulators[name].update_gradients(
                SlotGradients(
                    layers=self.layers[name],
                    weights=tuple(every.weights[i].to(device) for i in rows),
                    indices=tuple(every.indices[i].to(device) for i in rows),
                    grads=tuple(every.grads[i].to(device) for i in rows),
                    loss=every.loss.to(device),
                    valid=every.valid.to(device),
                ),
                meta,
            )
