"""The logit lens on experts: what each expert (or neuron) writes into the vocabulary.

Two views:

- **static, data-free** (:func:`top_tokens_static`, :func:`neuron_top_tokens`): the columns of an
  expert's down-projection read through the unembedding. Column ``n`` of expert ``e`` is what the
  expert adds to the residual stream per unit of activation of its neuron ``n``. An expert as a
  whole is summarised by its *mean output direction*, the unweighted mean of its down-projection
  columns (its output when every neuron is active at the same level); output biases (GPT-OSS) are
  left out because they do not depend on which neurons fire.
- **per token** (:func:`expert_logit_lens`): the hooked output of each routed expert slot read
  through the unembedding (*raw lens*, before the routing weight), and its exact *direct logit
  attribution* (routing weight × residual multiplier × output × γ / RMS of the final residual ·
  W_U), optionally only at target tokens so ``[batch, pos, k, vocab]`` is never built.

Both read the final norm and unembedding through :class:`~tl_moe.analysis.readout.LogitReadout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_moe.analysis.readout import LogitReadout
from tl_moe.models.architectures import get_spec
from tl_moe.models.introspect import config_of, decoder_layers, hf_model_of, layer_modules, unwrap

__all__ = [
    "ExpertLens",
    "TopTokens",
    "down_projection",
    "expert_logit_lens",
    "neuron_top_tokens",
    "top_tokens_static",
]


@dataclass(frozen=True)
class TopTokens:
    """The tokens most promoted and most suppressed by each of a set of units (experts or neurons).

    Attributes:
        unit_names: One name per unit (row), e.g. ``"expert 3"``, ``"shared"``, ``"expert 3 neuron 7"``.
        promoted_ids: Token ids with the highest logits, best first.
        promoted_logits: Their logits.
        suppressed_ids: Token ids with the lowest logits, most negative first.
        suppressed_logits: Their logits.
    """

    unit_names: tuple[str, ...]
    promoted_ids: Int[torch.Tensor, "unit k"]
    promoted_logits: Float[torch.Tensor, "unit k"]
    suppressed_ids: Int[torch.Tensor, "unit k"]
    suppressed_logits: Float[torch.Tensor, "unit k"]

    def to_frame(self, tokenizer=None) -> pd.DataFrame:
        """One row per (unit, direction, rank); a ``token`` column when a tokenizer is given."""
        rows = []
        for direction, ids, logits in (
            ("promoted", self.promoted_ids, self.promoted_logits),
            ("suppressed", self.suppressed_ids, self.suppressed_logits),
        ):
            for unit, name in enumerate(self.unit_names):
                for rank, (token, logit) in enumerate(
                    zip(ids[unit].tolist(), logits[unit].tolist(), strict=True)
                ):
                    rows.append(
                        {
                            "unit": name,
                            "direction": direction,
                            "rank": rank,
                            "token_id": token,
                            "logit": logit,
                        }
                    )
        frame = pd.DataFrame(rows)
        if tokenizer is not None and len(frame):
            frame["token"] = [tokenizer.decode([token]) for token in frame["token_id"]]
        return frame


def _ranked(logits: Float[torch.Tensor, "unit vocab"], names: Sequence[str], k: int) -> TopTokens:
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k must be between 1 and the vocabulary size {logits.shape[-1]}, got {k}.")
    top = logits.topk(k, dim=-1)
    bottom = logits.topk(k, dim=-1, largest=False)
    return TopTokens(tuple(names), top.indices, top.values, bottom.indices, bottom.values)


def down_projection(
    model, layer: int, unit: int | str | None = None
) -> Float[torch.Tensor, "... d_model d_in"]:
    """Down-projection weights of a layer's FFN units, columns = what each neuron writes.

    Args:
        model: A TransformerBridge or Hugging Face causal LM.
        layer: Block index.
        unit: For a sparse layer, ``None`` for all routed experts ``[n_experts, d_model, d_expert]``
            (GPT-OSS's transposed ``[E, d_expert, d_model]`` layout is transposed back), an int for
            one routed expert ``[d_model, d_expert]``, or ``"shared"`` for the fused shared experts
            ``[d_model, d_shared]``. For a dense layer, ``None`` gives ``[d_model, d_mlp]``.
    """
    hf = hf_model_of(model)
    layers = decoder_layers(hf)
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range for a model with {len(layers)} layers.")
    modules = layer_modules(layers[layer], get_spec(hf.config.model_type))
    if unit == "shared":
        if modules.shared is None:
            raise ValueError(f"layer {layer} of this {hf.config.model_type} model has no shared experts.")
        return unwrap(modules.shared.down_proj).weight.detach()
    if not modules.is_sparse:
        if unit is not None:
            raise ValueError(f"layer {layer} is a dense FFN layer; pass unit=None (got {unit!r}).")
        return unwrap(modules.ffn.down_proj).weight.detach()
    down = modules.experts.down_proj.detach()
    if getattr(modules.experts, "is_transposed", False):
        down = down.transpose(-1, -2)
    if unit is None:
        return down
    if not isinstance(unit, int) or not 0 <= unit < down.shape[0]:
        raise ValueError(
            f"unit must be None, 'shared' or an expert index in [0, {down.shape[0]}); got {unit!r}."
        )
    return down[unit]


def top_tokens_static(
    model, layer: int, k: int = 10, through_final_norm: bool = True, readout: LogitReadout | None = None
) -> TopTokens:
    """Per expert of ``layer``, the tokens its mean output direction promotes and suppresses most.

    The mean output direction of a unit is the mean of its down-projection columns. Units are
    the routed experts ``0 .. E-1`` followed by ``"shared"`` on a sparse layer, and the single
    ``"dense"`` FFN on a dense layer. Logits are ``logit_scale · W_U (γ ⊙ direction)`` with the
    final norm's gain γ (and centering, for a LayerNorm) when ``through_final_norm``.
    """
    readout = readout or LogitReadout.from_model(model)
    cfg = config_of(model)
    layer %= cfg.n_layers
    if layer in cfg.sparse_layers:
        directions = [down_projection(model, layer).mean(dim=-1)]
        names = [f"expert {e}" for e in range(cfg.num_experts)]
        if cfg.n_shared_experts:
            directions.append(down_projection(model, layer, "shared").mean(dim=-1)[None])
            names.append("shared")
        direction = torch.cat(directions)
    else:
        direction = down_projection(model, layer).mean(dim=-1)[None]
        names = ["dense"]
    return _ranked(readout.vocab_logits(direction, through_final_norm), names, k)


def neuron_top_tokens(
    model,
    layer: int,
    expert: int | str | None,
    neurons: int | Sequence[int],
    k: int = 10,
    through_final_norm: bool = True,
    readout: LogitReadout | None = None,
) -> TopTokens:
    """The tokens that single neurons promote and suppress most: their down-projection columns · W_U.

    Args:
        expert: Routed expert index, ``"shared"``, or None on a dense layer.
        neurons: One neuron index or several (each one row of the result).
    """
    readout = readout or LogitReadout.from_model(model)
    columns = down_projection(model, layer, expert)
    index = torch.as_tensor([neurons] if isinstance(neurons, int) else list(neurons), dtype=torch.long)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= columns.shape[-1]:
        raise ValueError(f"neurons must be indices in [0, {columns.shape[-1]}); got {neurons!r}.")
    unit = "dense" if expert is None else (expert if expert == "shared" else f"expert {expert}")
    names = [f"{unit} neuron {n}" for n in index.tolist()]
    return _ranked(readout.vocab_logits(columns[:, index].T, through_final_norm), names, k)


@dataclass(frozen=True)
class ExpertLens:
    """Logit lens of the routed expert slots of one layer on a batch.

    Attributes:
        raw: What each slot's expert output writes, before its routing weight and without the
            per-position norm scale: ``logit_scale · W_U (γ ⊙ expert_out)`` (LayerNorm: centred).
        dla: Direct logit attribution of each slot: its exact share of the model's logits with the
            final norm's scale frozen, ``raw × routing weight × residual multiplier × inverse_rms``.
        target_ids: The tokens the last axis is about (None: the whole vocabulary).
    """

    raw: Float[torch.Tensor, "batch pos k n"]
    dla: Float[torch.Tensor, "batch pos k n"]
    target_ids: Int[torch.Tensor, "batch pos n"] | None


def expert_logit_lens(
    readout: LogitReadout,
    expert_out: Float[torch.Tensor, "batch pos k d_model"],
    topk_weights: Float[torch.Tensor, "batch pos k"],
    inverse_rms: Float[torch.Tensor, "batch pos"],
    target_ids: Int[torch.Tensor, "batch pos"] | Int[torch.Tensor, "batch pos n"] | None = None,
) -> ExpertLens:
    """Raw logit lens and direct logit attribution of every routed expert slot.

    Args:
        readout: The model's :class:`LogitReadout`.
        expert_out: ``blocks.L.mlp.hook_expert_out`` — each slot's expert output before its weight.
        topk_weights: ``blocks.L.mlp.hook_topk_weights`` — each slot's routing weight.
        inverse_rms: ``readout.inverse_rms(final residual)`` — 1 / RMS of the final residual
            (``blocks.{last}.hook_resid_post``) at each position, with the final norm's own eps.
        target_ids: Tokens to read at each position: ``[batch, pos]`` (e.g. the next token; the
            result's last axis then has size 1) or ``[batch, pos, n]``. None reads the whole
            vocabulary, ``[batch, pos, k, vocab]`` — mind the memory for large vocabularies.
    """
    batch_pos = expert_out.shape[:2]
    if expert_out.ndim != 4 or topk_weights.shape != expert_out.shape[:3] or inverse_rms.shape != batch_pos:
        raise ValueError(
            "expected expert_out [batch, pos, k, d_model], topk_weights [batch, pos, k] and inverse_rms "
            f"[batch, pos]; got {tuple(expert_out.shape)}, {tuple(topk_weights.shape)}, "
            f"{tuple(inverse_rms.shape)}."
        )
    if target_ids is None:
        raw = readout.vocab_logits(expert_out)
    else:
        targets = target_ids[..., None] if target_ids.ndim == 2 else target_ids
        if targets.ndim != 3 or targets.shape[:2] != batch_pos:
            raise ValueError(
                f"target_ids must be [batch, pos] or [batch, pos, n] with [batch, pos] = {list(batch_pos)}; "
                f"got {tuple(target_ids.shape)}."
            )
        raw = readout.target_logits(expert_out, targets)
        target_ids = targets
    factor = topk_weights.to(raw) * readout.residual_multiplier * inverse_rms.to(raw)[..., None]
    return ExpertLens(raw=raw, dla=raw * factor[..., None], target_ids=target_ids)
