"""Interventions on experts, as TransformerLens hook functions.

Each function returns a list of ``(hook_name, hook_fn)`` pairs for ``run_with_hooks``
or ``hooks()``; lists compose by concatenation::

    hooks = remove_experts(model, layer=3, experts=[5]) + scale_expert_weights(model, 4, [1], 2.0)
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)

=========================  ==========================================================  ===========
function                   what changes                                                re-routes?
=========================  ==========================================================  ===========
``remove_experts``         the experts cannot be selected; tokens go to the next best  yes
``zero_expert_outputs``    the experts are selected as usual but contribute nothing    no
``scale_expert_weights``   the experts' mixing weights are multiplied by a factor      no
``force_routing``          every token is sent to the given experts                    yes (forced)
``activate_experts``       the experts are switched on: each token also selects them   yes (forced)
``ablate_expert_neurons``  chosen neurons of an expert are set to a value (0 default)  no
=========================  ==========================================================  ===========

**Per-row versions** (``remove_experts_per_row``, ``zero_expert_outputs_per_row``,
``scale_expert_weights_per_row``, ``force_routing_per_row``) edit a different expert (or set
of experts) in each row of the batch, so many ablations run as one batched forward. A typed
:class:`Intervention` describes one edit; :func:`batched_hooks` turns one intervention per row
(or None for a clean row) into the hooks of such a forward.

**Order rule.** Edits compose independently of the order their hook lists are concatenated
in. Routing edits decide which experts each token uses: ``remove`` and ``activate`` edit the
router logits (scores), ``force`` the top-k indices; a removed expert cannot also be forced or
activated (:func:`batched_hooks` refuses such a row in one line; hook lists concatenated by hand
are not checked). Contribution edits (``zero``, ``scale``,
``ablate_expert_neurons``) then act on the slots that hold their experts in the *final* top-k
indices of the layer, i.e. after every routing edit made with this module, whichever came
first in the list. (A routing edit written by hand on ``hook_topk_indices`` is only seen by
contribution edits listed after it.) Contribution edits commute with each other: zeroing and
scaling multiply.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int

from tl_moe.errors import InputError
from tl_moe.models.config import MoEConfig
from tl_moe.models.hook_names import get_act_name
from tl_moe.models.introspect import config_of

FwdHooks = list[tuple[str, Callable]]
InterventionKind = Literal["remove", "zero", "scale", "force", "activate"]
INTERVENTION_KINDS: tuple[str, ...] = ("remove", "zero", "scale", "force", "activate")


def _config(model) -> MoEConfig:
    return config_of(model)


# --- input validation -------------------------------------------------------------------------


def _is_integer(value) -> bool:
    """A Python/NumPy integer or a 0-d integer tensor; never a bool, float or string."""
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and type(value).__name__ != "bool_"


def _expert_list(cfg: MoEConfig, experts, name: str = "experts") -> list[int]:
    """Validate expert indices: an integer or a non-empty sequence of integers in range."""
    accepted = f"an expert index or a non-empty list of expert indices (integers in 0..{cfg.num_experts - 1})"
    if isinstance(experts, (str, bytes)):
        raise TypeError(f"{name} must be {accepted}; got the string {experts!r}.")
    if isinstance(experts, bool):
        raise TypeError(f"{name} must be {accepted}; got non-integer {experts!r}.")
    if _is_integer(experts):
        values = [experts]
    elif isinstance(experts, torch.Tensor):
        if experts.is_floating_point() or experts.dtype == torch.bool or experts.is_complex():
            raise TypeError(f"{name} must be {accepted}; got a {experts.dtype} tensor.")
        values = experts.reshape(-1).tolist()
    elif isinstance(experts, Sequence) or hasattr(experts, "__array__"):
        values = list(experts.tolist() if hasattr(experts, "tolist") else experts)
    else:
        raise TypeError(f"{name} must be {accepted}; got {type(experts).__name__} {experts!r}.")
    bad_type = [v for v in values if not _is_integer(v)]
    if bad_type:
        raise TypeError(f"{name} must be {accepted}; got non-integer {bad_type[0]!r} in {values!r}.")
    values = [int(v) for v in values]
    if not values or any(not 0 <= v < cfg.num_experts for v in values):
        raise ValueError(f"{name} must be {accepted}; got {values}.")
    return values


MAX_FACTOR = 1e6
"""Largest ``|factor|`` of a mixing-weight scale. A million already swamps the residual stream with the
experts' outputs; far larger factors (1e38) overflow float32 activations and give a NaN loss rather
than an edit. (In float16 overflow can start below this bound: its largest value is 65504.)"""


def _check_factor(factor, name: str = "factor", bound: float | None = MAX_FACTOR) -> float:
    """``factor`` as a float if it is a finite real of magnitude at most ``bound`` (None: no bound).

    A negative factor is accepted on purpose: it flips the sign of the experts' contribution (the
    ``--reweight-factors`` grid of the re-weighting analysis takes positive factors only).
    """
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
        raise TypeError(f"{name} must be a finite real number; got {type(factor).__name__} {factor!r}.")
    if not math.isfinite(float(factor)):
        raise ValueError(f"{name} must be a finite real number; got {factor!r}.")
    if bound is not None and abs(float(factor)) > bound:
        raise InputError(
            f"{name} {factor!r} is too large a scale (the scaled outputs would overflow); accepted: a finite number "
            f"with |{name}| <= {bound:g} (MAX_FACTOR)."
        )
    return float(factor)


def _check_layer(cfg: MoEConfig, layer) -> int:
    if not _is_integer(layer):
        raise TypeError(f"layer must be an integer block index; got {type(layer).__name__} {layer!r}.")
    return int(layer) % cfg.n_layers if -cfg.n_layers <= int(layer) < cfg.n_layers else int(layer)


def _row_mask(cfg: MoEConfig, experts, name: str = "experts") -> Bool[torch.Tensor, "rows n_experts"]:
    """Per-row experts -> ``[rows, n_experts]`` bool mask of the experts edited in each row.

    Accepts an integer tensor ``[batch]`` (one expert per row) or ``[batch, m]`` (m per row,
    ``-1`` for "no expert"), or a sequence with one entry per row: an expert index, a list of
    them, or None / an empty list for a row left unedited.
    """
    n = cfg.num_experts
    accepted = (
        f"one entry per row: an integer tensor [batch] or [batch, m] of expert indices in 0..{n - 1} "
        "(-1 = none), or a list of per-row expert lists"
    )
    if isinstance(experts, (str, bytes)) or _is_integer(experts):
        raise TypeError(f"{name} must have {accepted}; got {experts!r}.")
    if isinstance(experts, torch.Tensor):
        if experts.is_floating_point() or experts.dtype == torch.bool or experts.ndim not in (1, 2):
            raise TypeError(
                f"{name} must have {accepted}; got a {experts.dtype} tensor of shape {tuple(experts.shape)}."
            )
        table = experts.long().reshape(experts.shape[0], -1)
        if table.numel() and (table.min() < -1 or table.max() >= n):
            raise ValueError(f"{name} must have {accepted}; got values outside -1..{n - 1}.")
        mask = torch.zeros(table.shape[0], n + 1, dtype=torch.bool, device=experts.device)
        mask.scatter_(1, torch.where(table < 0, n, table), True)
        return mask[:, :n]
    if not isinstance(experts, Sequence):
        raise TypeError(f"{name} must have {accepted}; got {type(experts).__name__}.")
    mask = torch.zeros(len(experts), n, dtype=torch.bool)
    for row, entry in enumerate(experts):
        if entry is None or (isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 0):
            continue
        mask[row, _expert_list(cfg, entry, f"{name}[{row}]")] = True
    return mask


def _row_factors(factor, rows: int, name: str = "factor") -> Float[torch.Tensor, " rows"] | float:
    """A finite factor per row (a ``[rows]`` tensor) or one finite factor for all rows."""
    if isinstance(factor, torch.Tensor) and factor.ndim > 0:
        if factor.shape != (rows,):
            raise ValueError(
                f"{name} must be a number or a [{rows}] tensor; got shape {tuple(factor.shape)}."
            )
        if not bool(torch.isfinite(factor).all()):
            raise ValueError(f"{name} must be finite; got {factor.tolist()}.")
        if bool((factor.abs() > MAX_FACTOR).any()):
            raise InputError(
                f"{name} {factor.tolist()!r:.80} holds too large a scale (the scaled outputs would overflow); "
                f"accepted: finite numbers with |{name}| <= {MAX_FACTOR:g} (MAX_FACTOR)."
            )
        return factor.float()
    if isinstance(factor, torch.Tensor):
        factor = factor.item()
    return _check_factor(factor, name)


# --- shared per-forward state: the final top-k indices of a layer -----------------------------

# The ``hook_topk_indices`` hook point of a layer -> the top-k indices after the latest tl_moe hook
# on it (recording or forcing) in the current forward. Contribution edits read it when they act,
# which is after every hook on that hook point has fired: that is what makes order irrelevant.
_FINAL_INDICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _SlotSelection:
    """Which slots of a forward hold the chosen experts, read from the layer's final top-k indices.

    ``record`` (a ``hook_topk_indices`` hook) remembers the hook point; :meth:`slots` is called by
    the contribution edit's own hook, later in the forward, when every routing edit has run.
    """

    def __init__(self, chosen: Bool[torch.Tensor, "rows n_experts"]):
        self.chosen = chosen
        self.point = None

    def record(self, indices, hook):
        self.point = hook
        _FINAL_INDICES[hook] = indices
        return indices

    def at_slots(self, table: torch.Tensor) -> torch.Tensor:
        """``table[row, expert]`` (``[rows, n_experts]``) read at each slot's final expert."""
        indices = _FINAL_INDICES[self.point].long()
        return torch.gather(_rows_like(table.to(indices.device), indices), -1, indices)

    def slots(self) -> Bool[torch.Tensor, "batch pos k"]:
        """Whether each slot ``[batch, pos, k]`` holds a chosen expert."""
        return self.at_slots(self.chosen)


def _rows_like(per_row: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[rows, X]`` broadcast to ``target``'s leading token dims ``[batch, pos, X]``."""
    rows = per_row.shape[0]
    if rows == 1:
        return per_row.reshape(1, *([1] * (target.ndim - 2)), -1).expand(
            *target.shape[:-1], per_row.shape[-1]
        )
    if target.ndim < 3 or target.shape[0] != rows:
        raise ValueError(
            f"a per-row intervention for {rows} rows met a tensor of shape {tuple(target.shape)}; "
            f"run it on a batch of {rows} rows."
        )
    return per_row.reshape(rows, *([1] * (target.ndim - 2)), -1).expand(*target.shape[:-1], per_row.shape[-1])


# --- the edits, per row (the per-call functions are the one-row, broadcast case) --------------


def _remove_hooks(cfg: MoEConfig, layer: int, chosen: Bool[torch.Tensor, "rows n_experts"]) -> FwdHooks:
    most = int(chosen.sum(-1).max()) if chosen.numel() else 0
    if most > cfg.num_experts - cfg.experts_per_token:
        raise ValueError(
            f"Cannot remove {most} of {cfg.num_experts} experts when each token needs {cfg.experts_per_token}."
        )

    def mask(tensor, hook):
        return tensor.masked_fill(_rows_like(chosen.to(tensor.device), tensor), float("-inf"))

    kind = "router_probs" if cfg.routing.selection_bias else "router_logits"
    return [(get_act_name(kind, layer, cfg), mask)]


ACTIVATION_MARGIN = 1e-3
"""Relative margin by which an activated expert's router logit exceeds the token's largest one."""


def _activate_hooks(cfg: MoEConfig, layer: int, chosen: Bool[torch.Tensor, "rows n_experts"]) -> FwdHooks:
    """Router logits of the chosen experts set just above the token's largest logit (SteerMoE's
    switch-on): they enter the top-k, and the mixing weights follow from the edited logits."""
    most = int(chosen.sum(-1).max()) if chosen.numel() else 0
    if most > cfg.experts_per_token:
        raise ValueError(f"Cannot activate {most} experts when each token selects {cfg.experts_per_token}.")
    if cfg.routing.selection_bias:
        raise ValueError(
            "activate_experts needs a router without a per-expert selection bias "
            f"(this {cfg.architecture} router selects with one)."
        )

    def activate(logits, hook):
        top = logits.amax(-1, keepdim=True)
        raised = top + ACTIVATION_MARGIN * top.abs().clamp(min=1.0)
        return torch.where(_rows_like(chosen.to(logits.device), logits), raised, logits)

    return [(get_act_name("router_logits", layer, cfg), activate)]


def _zero_hooks(cfg: MoEConfig, layer: int, chosen: Bool[torch.Tensor, "rows n_experts"]) -> FwdHooks:
    selection = _SlotSelection(chosen)

    def zero(out, hook):
        return out * (~selection.slots()).unsqueeze(-1).to(out.dtype)

    return [
        (get_act_name("topk_indices", layer, cfg), selection.record),
        (get_act_name("expert_out", layer, cfg), zero),
    ]


def _scale_hooks(cfg: MoEConfig, layer: int, factors: Float[torch.Tensor, "rows n_experts"]) -> FwdHooks:
    """Mixing weights × ``factors[row, expert]`` (1 where an expert is not scaled: exact no-op)."""
    selection = _SlotSelection(factors != 1.0)

    def scale(weights, hook):
        return weights * selection.at_slots(factors.to(weights.dtype))

    return [
        (get_act_name("topk_indices", layer, cfg), selection.record),
        (get_act_name("topk_weights", layer, cfg), scale),
    ]


def _force_hooks(
    cfg: MoEConfig,
    layer: int,
    forced: Int[torch.Tensor, "... k"],
    rows: Bool[torch.Tensor, " rows"] | None = None,
) -> FwdHooks:
    def force(indices, hook):
        target = forced.to(indices.device, indices.dtype)
        if rows is None:
            edited = target.expand_as(indices).clone()
        else:
            which = rows.to(indices.device).reshape(-1, *([1] * (indices.ndim - 1)))
            edited = torch.where(
                which, target.reshape(target.shape[0], *([1] * (indices.ndim - 2)), -1), indices
            )
        _FINAL_INDICES[hook] = edited
        return edited

    return [(get_act_name("topk_indices", layer, cfg), force)]


def remove_experts(model, layer: int, experts: int | Sequence[int]) -> FwdHooks:
    """Remove experts from routing: tokens re-route to the next best experts.

    The layer then computes what the model would with those experts deleted: a softmax
    router renormalizes over the remaining experts (their logits are set to ``-inf``). For
    routers that select with a per-expert bias (DeepSeek-V3, GLM-4-MoE, ERNIE) the experts'
    scores are set to ``-inf`` instead, which equals setting their selection bias to
    ``-inf``; the other experts' scores are unchanged.
    """
    cfg = _config(model)
    layer = _check_layer(cfg, layer)
    chosen = torch.zeros(1, cfg.num_experts, dtype=torch.bool)
    chosen[0, _expert_list(cfg, experts)] = True
    return _remove_hooks(cfg, layer, chosen)


def zero_expert_outputs(model, layer: int, experts: int | Sequence[int]) -> FwdHooks:
    """Zero the experts' outputs wherever they are selected, without re-routing."""
    cfg = _config(model)
    layer = _check_layer(cfg, layer)
    chosen = torch.zeros(1, cfg.num_experts, dtype=torch.bool)
    chosen[0, _expert_list(cfg, experts)] = True
    return _zero_hooks(cfg, layer, chosen)


def scale_expert_weights(model, layer: int, experts: int | Sequence[int], factor: float) -> FwdHooks:
    """Multiply the experts' mixing weights by ``factor`` (no renormalization, no re-routing)."""
    cfg = _config(model)
    layer = _check_layer(cfg, layer)
    factors = torch.ones(1, cfg.num_experts)
    factors[0, _expert_list(cfg, experts)] = _check_factor(factor)
    return _scale_hooks(cfg, layer, factors)


def force_routing(model, layer: int, experts: Sequence[int] | Int[torch.Tensor, "batch pos k"]) -> FwdHooks:
    """Route every token to ``experts`` (k of them, or a ``[batch, pos, k]`` tensor).

    Mixing weights are then computed by the model's own rule from its scores at the forced
    experts (renormalized and scaled where the model does so).
    """
    cfg = _config(model)
    layer = _check_layer(cfg, layer)
    if isinstance(experts, torch.Tensor) and experts.ndim > 1:
        if experts.is_floating_point() or experts.dtype == torch.bool:
            raise TypeError(f"experts must be an integer tensor of expert indices; got {experts.dtype}.")
        forced = experts.long()
        if forced.shape[-1] != cfg.experts_per_token:
            raise ValueError(
                f"Forced routing needs k={cfg.experts_per_token} experts per token, got {forced.shape[-1]}."
            )
        if forced.min() < 0 or forced.max() >= cfg.num_experts:
            raise ValueError(f"Forced experts must lie in 0..{cfg.num_experts - 1}.")
        if (forced.sort(dim=-1).values.diff(dim=-1) == 0).any():
            raise InputError(
                f"force_routing experts repeat an expert within a token's k={cfg.experts_per_token}; "
                "accepted: k distinct expert indices per token."
            )
    else:
        listed = _expert_list(cfg, experts)
        if len(listed) != cfg.experts_per_token:
            raise ValueError(
                f"Forced routing needs exactly k={cfg.experts_per_token} experts per token, got {listed}."
            )
        if len(set(listed)) != len(listed):
            raise InputError(
                f"force_routing experts {listed} repeat an expert; accepted: "
                f"k={cfg.experts_per_token} distinct expert indices in 0..{cfg.num_experts - 1}."
            )
        forced = torch.tensor(listed)
    return _force_hooks(cfg, layer, forced)


def activate_experts(model, layer: int, experts: int | Sequence[int]) -> FwdHooks:
    """Switch experts on (SteerMoE-style): every token also selects them.

    Their router logits are set just above the token's largest logit (by ``ACTIVATION_MARGIN``
    relative), so with ``m ≤ k`` experts each token's top-k holds them and its ``k - m`` best
    others; mixing weights follow the model's own rule from the edited logits. Routers that select
    with a per-expert bias are refused.
    """
    cfg = _config(model)
    layer = _check_layer(cfg, layer)
    chosen = torch.zeros(1, cfg.num_experts, dtype=torch.bool)
    chosen[0, _expert_list(cfg, experts)] = True
    return _activate_hooks(cfg, layer, chosen)


def remove_experts_per_row(model, layer: int, experts) -> FwdHooks:
    """:func:`remove_experts` with a different expert (or set of experts) in each row.

    Args:
        experts: ``Int[Tensor, "batch"]`` (one expert per row), ``Int[Tensor, "batch m"]``
            (``-1`` pads a row with fewer), or a list with one entry per row (an index, a list
            of indices, or None for a row left as it is).

    Row ``b`` of the batch then equals ``remove_experts(model, layer, experts[b])`` run on
    that row alone.
    """
    cfg = _config(model)
    return _remove_hooks(cfg, _check_layer(cfg, layer), _row_mask(cfg, experts))


def zero_expert_outputs_per_row(model, layer: int, experts) -> FwdHooks:
    """:func:`zero_expert_outputs` with different experts per row (``experts`` as in
    :func:`remove_experts_per_row`)."""
    cfg = _config(model)
    return _zero_hooks(cfg, _check_layer(cfg, layer), _row_mask(cfg, experts))


def scale_expert_weights_per_row(
    model, layer: int, experts, factor: float | Float[torch.Tensor, " batch"]
) -> FwdHooks:
    """:func:`scale_expert_weights` with different experts (and optionally factors) per row.

    Args:
        experts: as in :func:`remove_experts_per_row`.
        factor: one finite factor, or a ``[batch]`` tensor of finite factors.
    """
    cfg = _config(model)
    chosen = _row_mask(cfg, experts)
    per_row = _row_factors(factor, chosen.shape[0])
    if isinstance(per_row, torch.Tensor):
        per_row = per_row[:, None].to(torch.float32)
    factors = torch.where(chosen, torch.as_tensor(per_row, dtype=torch.float32), torch.ones(()))
    return _scale_hooks(cfg, _check_layer(cfg, layer), factors)


def force_routing_per_row(
    model, layer: int, experts: Int[torch.Tensor, "batch k"], rows: Bool[torch.Tensor, " batch"] | None = None
) -> FwdHooks:
    """Route every token of row ``b`` to ``experts[b]`` (k indices per row).

    Args:
        rows: optional ``[batch]`` mask; rows where it is False keep their own routing.
    """
    cfg = _config(model)
    if not isinstance(experts, torch.Tensor) or experts.ndim != 2 or experts.is_floating_point():
        raise TypeError("experts must be an integer tensor [batch, k] of expert indices.")
    if experts.dtype == torch.bool or experts.shape[-1] != cfg.experts_per_token:
        raise ValueError(f"Forced routing needs k={cfg.experts_per_token} expert indices per row.")
    if experts.min() < 0 or experts.max() >= cfg.num_experts:
        raise ValueError(f"Forced experts must lie in 0..{cfg.num_experts - 1}.")
    return _force_hooks(cfg, _check_layer(cfg, layer), experts.long(), rows)


def ablate_expert_neurons(
    model, layer: int, expert: int, neurons: Sequence[int], value: float | torch.Tensor = 0.0
) -> FwdHooks:
    """Set neurons of one expert to ``value`` (0: zero-ablation; a ``[len(neurons)]`` tensor,
    e.g. their mean activation: mean-ablation) wherever the expert is selected."""
    cfg = _config(model)
    layer = _check_layer(cfg, layer)
    if not _is_integer(expert):
        raise TypeError(f"expert must be one integer expert index; got {expert!r}.")
    chosen = torch.zeros(1, cfg.num_experts, dtype=torch.bool)
    chosen[0, _expert_list(cfg, [expert], "expert")] = True
    selection = _SlotSelection(chosen)
    bad = (
        isinstance(neurons, (str, bytes))
        or not isinstance(neurons, Sequence)
        or not all(_is_integer(n) for n in neurons)
    )
    if bad:
        raise TypeError(f"neurons must be a list of integer neuron indices; got {neurons!r}.")
    neurons = [int(n) for n in neurons]
    if not neurons or min(neurons) < 0 or max(neurons) >= cfg.d_expert:
        raise ValueError(
            f"Neurons must be a non-empty list of indices in 0..{cfg.d_expert - 1}; got {neurons}."
        )
    value = _ablation_value(value, len(neurons))

    def ablate(post, hook):
        replacement = torch.as_tensor(value, dtype=post.dtype, device=post.device).expand(len(neurons))
        edited = post.clone()
        slots = selection.slots()  # [batch, pos, k]
        current = edited[..., neurons]
        edited[..., neurons] = torch.where(slots.unsqueeze(-1), replacement, current)
        return edited

    return [
        (get_act_name("topk_indices", layer, cfg), selection.record),
        (get_act_name("expert_post", layer, cfg), ablate),
    ]


def _ablation_value(value, n_neurons: int) -> float | torch.Tensor:
    """The value neurons are set to: one finite number, or a finite ``[n_neurons]`` tensor (one per neuron)."""
    accepted = f"accepted: a finite number, or a finite tensor of shape [{n_neurons}] (one value per neuron)"
    if not isinstance(value, torch.Tensor):
        return _check_factor(value, "value", bound=None)
    if value.ndim != 0 and tuple(value.shape) != (n_neurons,):
        raise InputError(
            f"ablate_expert_neurons value has shape {list(value.shape)} for {n_neurons} neurons; {accepted}."
        )
    if value.dtype == torch.bool or value.is_complex() or not bool(torch.isfinite(value).all()):
        raise InputError(
            f"ablate_expert_neurons value {value.tolist()!r:.80} is not finite real numbers; {accepted}."
        )
    return value


# --- typed interventions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Intervention:
    """One edit of one layer's experts, as a value (hashable, comparable, JSON-able).

    Attributes:
        kind: ``"remove"`` (cannot be selected; tokens re-route), ``"zero"`` (selected, output
            zeroed), ``"scale"`` (mixing weight × ``factor``), ``"force"`` (every token routed
            to ``experts``, exactly k of them) or ``"activate"`` (every token also selects
            ``experts``, at most k of them; :func:`activate_experts`).
        layer: block index (negative counts from the end).
        experts: expert indices (an int is accepted and stored as a 1-tuple).
        factor: the scale factor (``"scale"`` only; finite).

    ``Intervention("remove", 3, 5).hooks(model)`` equals ``remove_experts(model, 3, [5])``.
    """

    kind: InterventionKind
    layer: int
    experts: tuple[int, ...]
    factor: float | None = None

    def __post_init__(self):
        if self.kind not in INTERVENTION_KINDS:
            raise ValueError(f"kind must be one of {INTERVENTION_KINDS}; got {self.kind!r}.")
        if not _is_integer(self.layer):
            raise TypeError(f"layer must be an integer block index; got {self.layer!r}.")
        experts = self.experts
        if isinstance(experts, (str, bytes)):
            raise TypeError(f"experts must be integer expert indices; got the string {experts!r}.")
        if _is_integer(experts):
            experts = (experts,)
        if isinstance(experts, torch.Tensor):
            experts = tuple(experts.reshape(-1).tolist())
        experts = tuple(experts)
        bad = [e for e in experts if not _is_integer(e)]
        if bad or not experts:
            raise TypeError(
                f"experts must be a non-empty list of integer expert indices; got {self.experts!r}."
            )
        object.__setattr__(self, "experts", tuple(int(e) for e in experts))
        object.__setattr__(self, "layer", int(self.layer))
        if self.kind == "scale":
            object.__setattr__(self, "factor", _check_factor(self.factor))
        elif self.factor is not None:
            raise ValueError(f"factor is only used by 'scale' interventions; got factor={self.factor!r}.")

    def hooks(self, model) -> FwdHooks:
        """The hook functions of this intervention, applied to every row."""
        if self.kind == "remove":
            return remove_experts(model, self.layer, list(self.experts))
        if self.kind == "zero":
            return zero_expert_outputs(model, self.layer, list(self.experts))
        if self.kind == "scale":
            return scale_expert_weights(model, self.layer, list(self.experts), self.factor)
        if self.kind == "activate":
            return activate_experts(model, self.layer, list(self.experts))
        return force_routing(model, self.layer, list(self.experts))

    def as_dict(self) -> dict:
        return {"kind": self.kind, "layer": self.layer, "experts": list(self.experts), "factor": self.factor}


RowEdits = Intervention | Sequence[Intervention] | None


#: Routing edits that contradict each other on the same expert of the same layer and row: a removed
#: expert cannot be forced or switched on.
_CONFLICTING_ROUTING = (("remove", "force"), ("remove", "activate"))


def _check_routing_edits_agree(cfg: MoEConfig, row: int, edits: Sequence[Intervention]) -> None:
    """Refuse, in one line, a row whose edits remove an expert and also force or activate it."""
    experts: dict[tuple[str, int], set[int]] = {}
    for edit in edits:
        experts.setdefault((edit.kind, _check_layer(cfg, edit.layer)), set()).update(edit.experts)
    for (kind, layer), chosen in experts.items():
        for removed_kind, other in _CONFLICTING_ROUTING:
            both = sorted(chosen & experts.get((other, layer), set())) if kind == removed_kind else []
            if both:
                raise InputError(
                    f"row {row} both removes and {'forces' if other == 'force' else 'activates'} expert(s) "
                    f"{both} at layer {layer}; accepted: a removed expert is neither forced nor activated "
                    "in the same forward (run the edits as separate rows)."
                )


def batched_hooks(model, rows: Sequence[RowEdits]) -> FwdHooks:
    """Hooks for one forward whose row ``b`` is edited by ``rows[b]``.

    Args:
        rows: per row of the batch, an :class:`Intervention`, a list of them (applied
            together) or None (the row is left as it is).

    Row ``b`` of the result equals a forward of that row alone with the hooks of ``rows[b]``.
    """
    cfg = _config(model)
    n_rows = len(rows)
    per_row = [() if r is None else (r,) if isinstance(r, Intervention) else tuple(r) for r in rows]
    for edits in per_row:
        for edit in edits:
            if not isinstance(edit, Intervention):
                raise TypeError(f"rows must hold Interventions (or lists of them, or None); got {edit!r}.")
    groups: dict[tuple[str, int], list[tuple[int, Intervention]]] = {}
    for row, edits in enumerate(per_row):
        _check_routing_edits_agree(cfg, row, edits)
        for edit in edits:
            groups.setdefault((edit.kind, _check_layer(cfg, edit.layer)), []).append((row, edit))
    hooks: FwdHooks = []
    for (kind, layer), members in groups.items():
        if kind == "force":
            forced = torch.zeros(n_rows, cfg.experts_per_token, dtype=torch.long)
            which = torch.zeros(n_rows, dtype=torch.bool)
            for row, edit in members:
                if which[row]:
                    raise ValueError(f"row {row} has two 'force' interventions at layer {layer}.")
                forced[row] = torch.tensor(edit.experts)
                which[row] = True
            hooks += force_routing_per_row(cfg, layer, forced, which)
            continue
        chosen = torch.zeros(n_rows, cfg.num_experts, dtype=torch.bool)
        factors = torch.ones(n_rows, cfg.num_experts)
        for row, edit in members:
            experts = _expert_list(cfg, list(edit.experts))
            chosen[row, experts] = True
            if kind == "scale":
                factors[row, experts] = factors[row, experts] * edit.factor
        if kind == "remove":
            hooks += _remove_hooks(cfg, layer, chosen)
        elif kind == "activate":
            hooks += _activate_hooks(cfg, layer, chosen)
        elif kind == "zero":
            hooks += _zero_hooks(cfg, layer, chosen)
        else:
            hooks += _scale_hooks(cfg, layer, factors)
    return hooks
