"""One registry that spells every tl_moe hook name: :func:`get_act_name`."""

from __future__ import annotations

import operator
from dataclasses import dataclass

from tl_moe.errors import InputError


@dataclass(frozen=True)
class HookKind:
    """One kind of hook point.

    Attributes:
        attribute: The hook point's attribute on ``blocks.{L}.mlp``.
        shape: Shape of the hooked tensor, TransformerLens style.
        meaning: What the tensor is.
        on_edit: What editing it does downstream.
        needs: ``"sparse"`` (routed layers only), ``"shared"`` (layers with shared experts),
            ``"shared_gate"``, ``"scores"`` (routers with scores before selection) or
            ``"dense"`` (dense FFN layers only).
    """

    attribute: str
    shape: str
    meaning: str
    on_edit: str
    needs: str = "sparse"


HOOK_KINDS: dict[str, HookKind] = {
    "router_logits": HookKind(
        "hook_router_logits",
        "[batch, pos, n_experts]",
        "Router logits (the router's linear map of the MoE block input).",
        "Re-routes: scores, selection and mixing weights are recomputed from the edited logits.",
    ),
    "router_probs": HookKind(
        "hook_router_probs",
        "[batch, pos, n_experts]",
        "Routing scores over all experts before selection: softmax (most models) or sigmoid "
        "(DeepSeek-V3, GLM-4-MoE) of the logits. Absent on top-k-then-softmax routers (GPT-OSS, GraniteMoE).",
        "Re-routes: selection and mixing weights are recomputed from the edited scores.",
        needs="scores",
    ),
    "topk_indices": HookKind(
        "hook_topk_indices",
        "[batch, pos, k]",
        "Selected experts per token, best first.",
        "Re-routes to the edited experts; their mixing weights are gathered from the (possibly "
        "edited) scores with the model's own renormalization and scaling.",
    ),
    "topk_weights": HookKind(
        "hook_topk_weights",
        "[batch, pos, k]",
        "Final mixing weight of each selected expert (after renormalization and scaling).",
        "Used as-is to mix the expert outputs (no renormalization is re-applied).",
    ),
    "expert_pre": HookKind(
        "hook_expert_pre",
        "[batch, pos, k, d_expert]",
        "Pre-activation of the expert in slot k: the gate projection x·W_gate (x·W_up for ungated experts).",
        "The expert's activation is recomputed from the edited pre-activation.",
    ),
    "expert_post": HookKind(
        "hook_expert_post",
        "[batch, pos, k, d_expert]",
        "Neuron activations of the expert in slot k: the input to its down-projection, act(x·W_gate)⊙(x·W_up).",
        "The expert's output is recomputed from the edited neurons.",
    ),
    "expert_out": HookKind(
        "hook_expert_out",
        "[batch, pos, k, d_model]",
        "Output of the expert in slot k before its mixing weight.",
        "The block output is recomputed as Σ_k weight·edited output (+ shared experts).",
    ),
    "shared_post": HookKind(
        "hook_shared_post",
        "[batch, pos, d_shared]",
        "Neuron activations of the (fused) shared experts: the input to their down-projection.",
        "The shared experts' output is recomputed from the edited neurons.",
        needs="shared",
    ),
    "shared_out": HookKind(
        "hook_shared_out",
        "[batch, pos, d_model]",
        "Output of the shared experts, before the shared gate (where there is one).",
        "The edited output is what the block adds (after gating).",
        needs="shared",
    ),
    "shared_gate": HookKind(
        "hook_shared_gate",
        "[batch, pos, 1]",
        "Shared-expert gate logit; the shared output is multiplied by its sigmoid (Qwen-MoE).",
        "The shared output is scaled by sigmoid(edited logit).",
        needs="shared_gate",
    ),
    "neuron": HookKind(
        "hook_post",
        "[batch, pos, d_mlp]",
        "Neuron activations of a dense FFN layer (TransformerLens's own blocks.{L}.mlp.hook_post).",
        "The layer's output is recomputed from the edited neurons.",
        needs="dense",
    ),
}


class HookNameError(InputError):
    """Raised for a hook kind or layer that does not exist on a model."""


def get_act_name(kind: str, layer: int, model=None) -> str:
    """The full hook name of ``kind`` at ``layer``, e.g. ``blocks.3.mlp.hook_expert_post``.

    Args:
        kind: One of :data:`HOOK_KINDS` (``router_logits``, ``router_probs``, ``topk_indices``,
            ``topk_weights``, ``expert_pre``, ``expert_post``, ``expert_out``, ``shared_post``,
            ``shared_out``, ``shared_gate``, ``neuron``).
        layer: Block index; negative values count from the end when ``model`` is given.
        model: Optional bridge or :class:`~tl_moe.models.config.MoEConfig`; when given, the
            layer range and whether the layer has this hook are checked.
    """
    if not isinstance(kind, str) or kind not in HOOK_KINDS:
        raise HookNameError(f"Unknown hook kind {kind!r}. Known kinds: {', '.join(HOOK_KINDS)}.")
    if isinstance(layer, bool) or not hasattr(type(layer), "__index__"):
        raise HookNameError(
            f"layer {layer!r} is a {type(layer).__name__}, not a layer number; accepted: an int "
            "(negative counts from the end when model= is given)."
        )
    layer = operator.index(layer)
    if model is not None:
        layer = _check_layer(kind, layer, model)
    elif layer < 0:
        raise HookNameError(f"Negative layer {layer} needs `model=` to resolve.")
    return f"blocks.{layer}.mlp.{HOOK_KINDS[kind].attribute}"


def _check_layer(kind: str, layer: int, model) -> int:
    from tl_moe.models.introspect import config_of

    cfg = config_of(model)
    if not -cfg.n_layers <= layer < cfg.n_layers:
        raise HookNameError(
            f"Layer {layer} is out of range: the model has {cfg.n_layers} layers (0..{cfg.n_layers - 1})."
        )
    layer %= cfg.n_layers
    needs = HOOK_KINDS[kind].needs
    sparse = layer in cfg.sparse_layers
    if needs == "dense":
        if sparse:
            raise HookNameError(
                f"Layer {layer} of this {cfg.architecture} model is a sparse MoE layer; 'neuron' is for dense "
                f"FFN layers ({list(cfg.dense_layers)}). Use 'expert_post' for expert neurons."
            )
        return layer
    if not sparse:
        where = f"sparse layers are {list(cfg.sparse_layers)}" if cfg.is_moe else "it is a dense model"
        raise HookNameError(
            f"Hook kind {kind!r} needs a routed-expert layer, but layer {layer} of this {cfg.architecture} "
            f"model has a dense FFN ({where}). Use 'neuron' for dense FFN neurons."
        )
    if needs == "scores" and not cfg.routing.has_scores:
        raise HookNameError(
            f"{cfg.architecture} routes by top-k of the logits then softmax; it has no scores over all experts "
            "before selection. Use 'router_logits'."
        )
    if needs == "shared" and not cfg.n_shared_experts:
        raise HookNameError(f"{cfg.architecture} has no shared experts.")
    if needs == "shared_gate" and not cfg.shared_gated:
        raise HookNameError(f"{cfg.architecture} has no shared-expert gate.")
    return layer


def hook_names(model) -> dict[str, str]:
    """Every tl_moe hook point ``model`` has, name -> kind, in layer order (``tl-moe hooks MODEL``).

    A layer lists only the hooks it has: dense layers their ``neuron`` hook, sparse layers the router
    and expert hooks, and the shared-expert hooks where there are shared experts.
    """
    cfg = getattr(model, "moe_cfg", None)
    if cfg is None:
        raise HookNameError(
            "hook_names needs a model loaded with tl_moe.load (or attached with tl_moe.attach)."
        )
    names = {}
    for layer in range(cfg.n_layers):
        for kind in HOOK_KINDS:
            try:
                names[get_act_name(kind, layer, model)] = kind
            except HookNameError:
                continue  # this layer has no such hook (dense layer, no shared experts, ...)
    return names


def hook_table_markdown() -> str:
    """The hook-point table of the README, generated from :data:`HOOK_KINDS`."""
    lines = [
        "| kind | hook name | shape | what it is | editing it |",
        "|---|---|---|---|---|",
    ]
    for kind, spec in HOOK_KINDS.items():
        lines.append(
            f"| `{kind}` | `blocks.{{L}}.mlp.{spec.attribute}` | `{spec.shape}` | {spec.meaning} | {spec.on_edit} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(hook_table_markdown())
