"""A hooked experts implementation for transformers' experts-implementation registry.

transformers 5 dispatches every fused experts module (``@use_experts_implementation``)
through ``ALL_EXPERTS_FUNCTIONS[config._experts_implementation]``. We register one more
implementation, ``"tl_moe"``: the same grouped computation (tokens sorted by expert, one
grouped matmul per projection, no Python loop over experts), plus three hook points per
layer on the ``[batch, pos, k, ...]`` slot layout:

- ``hook_expert_pre``  — gate pre-activation (``x @ W_gate``; ``x @ W_up`` for ungated experts),
- ``hook_expert_post`` — neuron activations, the input to the down-projection,
- ``hook_expert_out``  — the expert's output before the routing weight.

A hook point with nothing attached costs nothing: tensors are only permuted into slot order
when a hook (or a cache) is listening, and an edited tensor is permuted back so the edit
flows downstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import nn
from transformer_lens.hook_points import HookPoint
from transformers.integrations.moe import ExpertsInterface

from tl_moe.errors import InputError

IMPLEMENTATION_NAME = "tl_moe"
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class HookEditError(InputError):
    """A user hook at a tl_moe hook point returned a tensor the MoE block cannot use."""


def checked_edit(hook: HookPoint, received: torch.Tensor, returned: object) -> torch.Tensor:
    """``returned`` (what the hooks at ``hook`` gave back for ``received``) if it is a tensor of
    ``received``'s shape; else one line naming the hook point, the shape received and the one
    expected. Free when nothing edited (the same tensor comes back); no device sync."""
    if returned is received:
        return returned
    if isinstance(returned, torch.Tensor) and returned.shape == received.shape:
        return returned
    got = (
        f"a tensor of shape {list(returned.shape)}"
        if isinstance(returned, torch.Tensor)
        else f"a {type(returned).__name__}"
    )
    raise HookEditError(
        f"a hook on {hook.name} returned {got}; accepted: a tensor of the shape it received, "
        f"{list(received.shape)} (edit the values, keep the shape)."
    )


@dataclass
class ExpertHookPoints:
    """The hook points of one layer's routed experts, and the token layout of the batch.

    ``token_shape`` is ``(batch, pos)`` of the tensor the MoE block received; it is set by
    a pre-hook on the block just before the experts run.
    """

    pre: HookPoint
    post: HookPoint
    out: HookPoint
    token_shape: tuple[int, ...] = ()


_HOOKS_ATTRIBUTE = "_tl_moe_expert_hooks"


def bind_expert_hooks(experts: nn.Module, hooks: ExpertHookPoints) -> None:
    """Make ``experts`` fire ``hooks`` when it runs under the ``"tl_moe"`` implementation.

    The hook points are kept in the module's own ``__dict__`` (not a side table keyed by
    identity), so a ``copy.deepcopy`` of the model carries them, memo-shared with the copied
    bridge's hook points.
    """
    object.__setattr__(experts, _HOOKS_ATTRIBUTE, hooks)


def unbind_expert_hooks(experts: nn.Module) -> None:
    """Stop ``experts`` from firing tl_moe hook points."""
    experts.__dict__.pop(_HOOKS_ATTRIBUTE, None)


def expert_hooks_of(experts: nn.Module) -> ExpertHookPoints | None:
    """The hook points bound to ``experts``, if any."""
    return experts.__dict__.get(_HOOKS_ATTRIBUTE)


def token_layout(token_shape: tuple[int, ...], n_tokens: int) -> tuple[int, ...]:
    """``token_shape`` (the ``[batch, pos]`` layout recorded on the MoE block) if it holds
    ``n_tokens`` tokens, else the flat ``(n_tokens,)``: the one place tensors of flattened
    tokens get their layout back."""
    if token_shape and math.prod(token_shape) == n_tokens:
        return tuple(token_shape)
    return (n_tokens,)


def unflatten_tokens(tensor: torch.Tensor, token_shape: tuple[int, ...]) -> torch.Tensor:
    """``tensor`` of shape ``[*any, d]`` reshaped to ``[*token_layout, d]``."""
    n_tokens = tensor.shape[:-1].numel()
    return tensor.reshape(*token_layout(token_shape, n_tokens), tensor.shape[-1])


UPSTREAM_HOOK_NAMES = ("hook_expert_pre", "hook_expert_post", "hook_expert_out")


def has_upstream_expert_hooks(component: nn.Module) -> bool:
    """Whether TransformerLens's own MoE component already declares the per-expert hook points.

    A TransformerLens carrying the upstream expert hooks declares ``hook_expert_pre`` /
    ``hook_expert_post`` / ``hook_expert_out`` on its MoE bridge and fires them through its own
    experts implementation, on the same ``[batch, pos, k, ...]`` slot layout; tl_moe then uses
    them instead of installing its own. Call it before tl_moe attaches (it would see its own).
    """
    return all(isinstance(component._modules.get(name), HookPoint) for name in UPSTREAM_HOOK_NAMES)


def _is_listening(hook: HookPoint | None) -> bool:
    """Whether a hook point has a forward or a backward hook (TransformerLens registers ``dir="bwd"``
    hooks as full backward hooks, which fire only if the hook point is called)."""
    return hook is not None and bool(
        hook._forward_hooks or hook._backward_hooks or getattr(hook, "_backward_pre_hooks", None)
    )


def _grouped_mm_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``F.grouped_mm`` accepts these operands (it needs 16-byte aligned strides)."""
    if not hasattr(F, "grouped_mm") or x.dtype != weight.dtype or x.dtype not in _GROUPED_MM_DTYPES:
        return False
    if x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) < (8, 0):
        return False
    for tensor in (x, weight):
        if tensor.data_ptr() % 16:
            return False
        if any((stride * tensor.element_size()) % 16 for stride in tensor.stride() if stride != 1):
            return False
    return True


def _grouped_mm(
    x: Float[torch.Tensor, "routed d_in"],
    w: Float[torch.Tensor, "n_experts d_in d_out"],
    offsets: Int[torch.Tensor, " n_experts"],
) -> Float[torch.Tensor, "routed d_out"]:
    """``F.grouped_mm`` where its alignment rules allow, else one matmul per expert with tokens."""
    if _grouped_mm_usable(x, w):
        return F.grouped_mm(x, w, offs=offsets)
    pieces, start = [], 0
    for expert, end in enumerate(offsets.tolist()):
        if end > start:
            pieces.append(x[start:end] @ w[expert])
        start = end
    return torch.cat(pieces) if pieces else x.new_zeros(0, w.shape[-1])


class _GroupedMatmul(torch.autograd.Function):
    """Grouped matmul whose backward re-checks alignment on its own operands.

    ``F.grouped_mm``'s backward needs aligned, non-expanded gradients and transposed operands;
    a forward that was aligned can still have a backward that is not (``intermediate_size=37``,
    or the expanded gradient of ``.sum()``). The backward here makes the gradient contiguous
    and takes the per-expert fallback wherever the grouped kernel would refuse.
    """

    @staticmethod
    def forward(ctx, x, w, offsets):
        ctx.save_for_backward(x, w, offsets)
        return _grouped_mm(x, w, offsets)

    @staticmethod
    def backward(ctx, grad):
        x, w, offsets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _grouped_mm(grad, w.transpose(-2, -1), offsets)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(w)
            start = 0
            for expert, end in enumerate(offsets.tolist()):
                if end > start:
                    grad_w[expert] = x[start:end].transpose(0, 1) @ grad[start:end]
                start = end
        return grad_x, grad_w, None


def grouped_linear(
    x: Float[torch.Tensor, "routed d_in"],
    weight: Float[torch.Tensor, "n_experts ..."],
    offsets: Int[torch.Tensor, " n_experts"],
    transposed: bool,
) -> Float[torch.Tensor, "routed d_out"]:
    """Apply expert ``e``'s linear map to rows ``offsets[e-1]:offsets[e]`` of ``x``.

    Like transformers' ``grouped_mm`` implementation, the input is cast to the weights' dtype.

    Args:
        x: Inputs sorted by expert.
        weight: Fused expert weights, ``[E, d_out, d_in]`` (or ``[E, d_in, d_out]`` if
            ``transposed``).
        offsets: Cumulative row counts per expert (int32).
        transposed: Layout flag of the experts module.
    """
    w = weight if transposed else weight.transpose(-2, -1)  # [E, d_in, d_out]
    x = x.to(w.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return _GroupedMatmul.apply(x, w, offsets)
    return _grouped_mm(x, w, offsets)


def _split_gate_up(experts: nn.Module, gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the gate and up halves of a fused gate/up projection output."""
    if getattr(experts, "is_concatenated", True):
        return gate_up.chunk(2, dim=-1)
    return gate_up[..., ::2], gate_up[..., 1::2]


def _join_gate_up(experts: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_split_gate_up`."""
    if getattr(experts, "is_concatenated", True):
        return torch.cat([gate, up], dim=-1)
    return torch.stack([gate, up], dim=-1).flatten(-2)


class _SlotLayout:
    """Moves per-(token, slot) rows between expert-sorted order and ``[*token_shape, k, ...]``."""

    def __init__(self, order: torch.Tensor, token_shape: tuple[int, ...], k: int):
        self.order = order
        self.token_shape = token_shape
        self.k = k
        self._inverse: torch.Tensor | None = None

    @property
    def inverse(self) -> torch.Tensor:
        if self._inverse is None:
            self._inverse = torch.empty_like(self.order)
            self._inverse[self.order] = torch.arange(self.order.numel(), device=self.order.device)
        return self._inverse

    def to_slots(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[self.inverse].reshape(*self.token_shape, self.k, rows.shape[-1])

    def to_sorted(self, slots: torch.Tensor) -> torch.Tensor:
        return slots.reshape(-1, slots.shape[-1])[self.order]

    def fire(self, hook: HookPoint | None, rows: torch.Tensor) -> torch.Tensor:
        """Run ``hook`` on ``rows`` in slot layout if anything listens; return sorted rows."""
        if not _is_listening(hook):
            return rows
        slots = self.to_slots(rows)
        return self.to_sorted(checked_edit(hook, slots, hook(slots)))


def hooked_experts_forward(
    self: nn.Module,
    hidden_states: Float[torch.Tensor, "tokens d_model"],
    top_k_index: Int[torch.Tensor, "tokens k"],
    top_k_weights: Float[torch.Tensor, "tokens k"],
) -> Float[torch.Tensor, "tokens d_model"]:
    """Grouped experts forward that fires tl_moe's per-expert hook points.

    Numerically the same computation as transformers' ``grouped_mm`` implementation.
    """
    if getattr(self, "_is_expert_parallel", False):
        raise NotImplementedError("tl_moe's experts implementation does not support expert parallelism.")
    hooks = expert_hooks_of(self)
    n_tokens, k = top_k_index.shape
    token_shape = token_layout(hooks.token_shape if hooks is not None else (), n_tokens)

    expert_ids = top_k_index.reshape(-1)
    sorted_ids, order = torch.sort(expert_ids, stable=True)
    counts = torch.bincount(sorted_ids, minlength=self.num_experts)
    offsets = torch.cumsum(counts, dim=0).to(torch.int32)
    layout = _SlotLayout(order, token_shape, k)
    x = hidden_states[order // k]

    has_bias = getattr(self, "has_bias", False)
    if getattr(self, "has_gate", True):
        gate_up = grouped_linear(x, self.gate_up_proj, offsets, self.is_transposed)
        if has_bias:
            gate_up = gate_up + self.gate_up_proj_bias[sorted_ids]
        if _is_listening(hooks and hooks.pre):
            gate, up = _split_gate_up(self, gate_up)
            gate = layout.fire(hooks.pre, gate)
            gate_up = _join_gate_up(self, gate, up)
        post = self._apply_gate(gate_up)
    else:
        pre = grouped_linear(x, self.up_proj, offsets, self.is_transposed)
        if has_bias:
            pre = pre + self.up_proj_bias[sorted_ids]
        pre = layout.fire(hooks and hooks.pre, pre)
        post = self.act_fn(pre)

    post = layout.fire(hooks and hooks.post, post)
    out = grouped_linear(post, self.down_proj, offsets, self.is_transposed)
    if has_bias:
        out = out + self.down_proj_bias[sorted_ids]
    if getattr(self, "has_post_expert_norm", False):
        out = self.post_expert_norm(out)
    out = layout.fire(hooks and hooks.out, out)

    # As transformers does: the (float32) routing weights multiply the expert outputs by type
    # promotion, and the k slots are summed in that precision before the cast back.
    weighted = out * top_k_weights.reshape(-1)[order].unsqueeze(-1)
    per_slot = weighted[layout.inverse].view(n_tokens, k, -1)
    return per_slot.sum(dim=1).to(hidden_states.dtype)


def register_experts_implementation() -> None:
    """Register ``"tl_moe"`` with transformers' experts-implementation registry (idempotent)."""
    ExpertsInterface.register(IMPLEMENTATION_NAME, hooked_experts_forward)
