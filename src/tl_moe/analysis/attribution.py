"""Exact direct logit attribution: the model's logits split over everything that writes them.

With the final norm's scale frozen at each position (see :mod:`tl_moe.analysis.readout`), the
logits are a sum of one share per vector added into the residual stream plus a constant:

- ``"embed"`` — the block-0 input (token embeddings, after any embedding multiplier);
- ``"blocks.L.attn"`` — what block ``L``'s attention sub-layer added (its residual update);
- ``"blocks.L.mlp"`` — what a dense FFN layer added;
- per routed slot of a sparse layer — routing weight × residual multiplier × expert output
  (in :attr:`LogitDecomposition.routed`, with the expert of each slot);
- ``"blocks.L.shared"`` — the (gated) shared experts' output × residual multiplier;
- ``"bias"`` — ``logit_scale · (W_U β + b_U)``, the part no residual vector writes.

Attention and dense-FFN shares are read as residual-stream differences
(``hook_resid_mid - hook_resid_pre``, ``hook_resid_post - hook_resid_mid``), which is what the
sub-layer added whatever its internal post-norms or multipliers; routed and shared shares come
from tl_moe's expert hook points.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_moe.analysis.readout import LogitReadout
from tl_moe.models.introspect import config_of, decoder_layers, hf_model_of

__all__ = ["LogitDecomposition", "decompose_logits"]


@dataclass(frozen=True)
class LogitDecomposition:
    """Every component's direct share of the logits at each position.

    The last axis is the vocabulary, or the ``n`` target tokens of each position when the
    decomposition was asked for ``target_ids``.

    Attributes:
        components: Shares of the embedding, attention sub-layers, dense FFN layers, shared
            experts and the constant ``"bias"`` (see the module docstring for the names).
        routed: Per sparse layer, the share of each routed slot (weight × expert output).
        routed_experts: Per sparse layer, the expert in each slot.
        logits: The model's own logits (at the targets), to compare with :meth:`total`.
        inverse_rms: ``1 / RMS`` of the final residual at each position (the frozen norm scale).
        target_ids: The targets of each position, or None for the whole vocabulary.
    """

    components: dict[str, Float[torch.Tensor, "batch pos n"]]
    routed: dict[int, Float[torch.Tensor, "batch pos k n"]]
    routed_experts: dict[int, Int[torch.Tensor, "batch pos k"]]
    logits: Float[torch.Tensor, "batch pos n"]
    inverse_rms: Float[torch.Tensor, "batch pos"]
    target_ids: Int[torch.Tensor, "batch pos n"] | None

    def total(self) -> Float[torch.Tensor, "batch pos n"]:
        """Sum of every share; equals :attr:`logits` up to float rounding."""
        total = sum(self.components.values())
        for shares in self.routed.values():
            total = total + shares.sum(dim=2)
        return total

    def as_dict(self) -> dict[str, Float[torch.Tensor, "batch pos n"]]:
        """A flat ``name -> share`` dict, routed slots named ``"blocks.L.slot{j}"``."""
        flat = dict(self.components)
        for layer, shares in self.routed.items():
            for slot in range(shares.shape[2]):
                flat[f"blocks.{layer}.slot{slot}"] = shares[:, :, slot]
        return flat

    def by_expert(self, layer: int, n_experts: int) -> Float[torch.Tensor, "batch pos n_experts n"]:
        """The routed shares of ``layer`` scattered onto expert ids (zero for experts not routed to)."""
        shares, experts = self.routed[layer], self.routed_experts[layer]
        out = shares.new_zeros((*shares.shape[:2], n_experts, shares.shape[-1]))
        index = experts.to(torch.long)[..., None].expand_as(shares)
        return out.scatter_add(2, index, shares)

    def to_frame(self, batch: int = 0, position: int = -1, target: int = 0) -> pd.DataFrame:
        """A DLA table for one position and target: one row per component, largest share first."""
        rows = [
            {"component": name, "layer": None, "expert": None, "dla": float(share[batch, position, target])}
            for name, share in self.components.items()
        ]
        for layer, shares in self.routed.items():
            experts = self.routed_experts[layer][batch, position].tolist()
            for slot, expert in enumerate(experts):
                value = float(shares[batch, position, slot, target])
                rows.append(
                    {
                        "component": f"blocks.{layer}.expert{expert}",
                        "layer": layer,
                        "expert": expert,
                        "dla": value,
                    }
                )
        return pd.DataFrame(rows).sort_values("dla", ascending=False, ignore_index=True)


def _hook_names(n_layers: int, sparse: tuple[int, ...], shared: bool, gated: bool) -> list[str]:
    names = []
    for layer in range(n_layers):
        names += [
            f"blocks.{layer}.hook_resid_pre",
            f"blocks.{layer}.hook_resid_mid",
            f"blocks.{layer}.hook_resid_post",
        ]
        if layer in sparse:
            mlp = f"blocks.{layer}.mlp"
            names += [f"{mlp}.hook_expert_out", f"{mlp}.hook_topk_weights", f"{mlp}.hook_topk_indices"]
            names += [f"{mlp}.hook_shared_out"] if shared else []
            names += [f"{mlp}.hook_shared_gate"] if gated else []
    return names


def _check_sparse_blocks_are_plain_sums(model, sparse: tuple[int, ...]) -> None:
    """Refuse sparse blocks whose residual update is not multiplier × (Σ weighted experts + shared)."""
    layers = decoder_layers(hf_model_of(model))
    for layer in sparse:
        if hasattr(layers[layer], "post_feedforward_layernorm"):
            raise NotImplementedError(
                f"Layer {layer} normalizes the MoE output before adding it to the residual stream, so the "
                "block's logit share is not a sum of per-expert shares. Per-expert attribution supports "
                "pre-norm MoE blocks (olmoe, mixtral, qwen2_moe, qwen3_moe, ernie4_5_moe, deepseek_v2/v3, "
                "glm4_moe, gpt_oss) and GraniteMoE's residual multiplier."
            )


@torch.no_grad()
def decompose_logits(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    target_ids: Int[torch.Tensor, "batch pos"] | Int[torch.Tensor, "batch pos n"] | None = None,
    readout: LogitReadout | None = None,
) -> LogitDecomposition:
    """Split the logits of ``model`` on ``tokens`` into the direct share of every component.

    Args:
        model: A tl_moe-loaded TransformerBridge.
        tokens: Input token ids.
        target_ids: Tokens to attribute at each position (``[batch, pos]`` e.g. the next token, or
            ``[batch, pos, n]``); None attributes the whole vocabulary (``[batch, pos, vocab]`` per
            component).
        readout: The model's :class:`LogitReadout` (read from the model when None).

    Returns:
        A :class:`LogitDecomposition`; its :meth:`~LogitDecomposition.total` reproduces the logits.
    """
    readout = readout or LogitReadout.from_model(model)
    cfg = config_of(model)
    _check_sparse_blocks_are_plain_sums(model, cfg.sparse_layers)
    if target_ids is not None:
        target_ids = target_ids[..., None] if target_ids.ndim == 2 else target_ids
        if target_ids.shape[:2] != tokens.shape or target_ids.ndim != 3:
            raise ValueError(
                f"target_ids must be [batch, pos] or [batch, pos, n] matching tokens {tuple(tokens.shape)}; "
                f"got {tuple(target_ids.shape)}."
            )
        target_ids = target_ids.to(torch.long)
    names = _hook_names(cfg.n_layers, cfg.sparse_layers, bool(cfg.n_shared_experts), cfg.shared_gated)
    wanted = set(names)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
    silent = [name for name in names if name not in cache.cache_dict]
    if silent:
        raise RuntimeError(
            f"These hook points did not fire during the forward, so the logits cannot be decomposed: {silent}."
        )
    inverse_rms = readout.inverse_rms(cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"])

    def share(vectors: torch.Tensor, weight: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Logit share of residual vectors ``[b, p, (m,) d]`` (each scaled by ``weight``)."""
        slotted = vectors if vectors.ndim == 4 else vectors[:, :, None]
        if target_ids is None:
            read = readout.vocab_logits(slotted)
        else:
            read = readout.target_logits(slotted, target_ids.to(slotted.device))
        scale = inverse_rms.to(read)[:, :, None] * (weight if isinstance(weight, float) else weight.to(read))
        read = read * scale[..., None]
        return read if vectors.ndim == 4 else read[:, :, 0]

    components = {"embed": share(cache["blocks.0.hook_resid_pre"])}
    routed, routed_experts = {}, {}
    for layer in range(cfg.n_layers):
        block = f"blocks.{layer}"
        components[f"{block}.attn"] = share(
            cache[f"{block}.hook_resid_mid"] - cache[f"{block}.hook_resid_pre"]
        )
        if layer not in cfg.sparse_layers:
            components[f"{block}.mlp"] = share(
                cache[f"{block}.hook_resid_post"] - cache[f"{block}.hook_resid_mid"]
            )
            continue
        weights = cache[f"{block}.mlp.hook_topk_weights"] * readout.residual_multiplier
        routed[layer] = share(cache[f"{block}.mlp.hook_expert_out"], weights)
        routed_experts[layer] = cache[f"{block}.mlp.hook_topk_indices"]
        if cfg.n_shared_experts:
            shared = cache[f"{block}.mlp.hook_shared_out"]
            if cfg.shared_gated:
                shared = torch.sigmoid(cache[f"{block}.mlp.hook_shared_gate"]) * shared
            components[f"{block}.shared"] = share(shared * readout.residual_multiplier)
    constant = readout.constant_logits().to(logits.device)
    if target_ids is None:
        components["bias"] = constant.to(components["embed"].dtype).expand(components["embed"].shape).clone()
        own_logits = logits
    else:
        components["bias"] = constant[target_ids.to(constant.device)].to(components["embed"].dtype)
        own_logits = logits.gather(-1, target_ids.to(logits.device))
    return LogitDecomposition(
        components=components,
        routed=routed,
        routed_experts=routed_experts,
        logits=own_logits,
        inverse_rms=inverse_rms,
        target_ids=target_ids,
    )
