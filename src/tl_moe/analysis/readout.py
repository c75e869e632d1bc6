"""How a vector written into the residual stream reaches the logits, with the final norm frozen.

A causal LM turns its final residual ``h`` into logits as

    logits = logit_scale · (W_U · (gain ⊙ normalize(h) + norm_bias) + b_U),
    normalize(h) = center(h) · inverse_rms,   inverse_rms = 1 / sqrt(mean(center(h)²) + eps),

where ``center`` subtracts the mean for a LayerNorm and is the identity for an RMSNorm. With
``inverse_rms`` frozen at its value for a position, the map is affine in ``h``, so every vector
added into the residual stream (an attention output, a weighted expert output, ...) gets an exact
share of the logits. :class:`LogitReadout` holds the pieces of that map for one model; the logit
lens and the direct logit attribution are built on it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tl_moe.models.introspect import hf_model_of, unwrap

__all__ = ["LogitReadout"]


@dataclass(frozen=True)
class LogitReadout:
    """The final norm, unembedding and output scalings of one model.

    Attributes:
        unembed: The unembedding matrix ``W_U``, Hugging Face layout (one row per vocabulary token).
        unembed_bias: The unembedding bias ``b_U`` (None if the model has none).
        gain: The final norm's gain ``γ`` (ones for a norm without weight).
        norm_bias: The final norm's additive bias ``β`` (None for RMSNorm and bias-free LayerNorms).
        centered: Whether the final norm subtracts the mean first (LayerNorm) or not (RMSNorm).
        eps: The epsilon under the square root of the final norm.
        logit_scale: Factor applied to the logits (``1 / logits_scaling`` for GraniteMoE, else 1).
        residual_multiplier: Factor applied to every block output before it is added to the
            residual stream (GraniteMoE's ``residual_multiplier``, else 1). Block-internal outputs
            such as expert outputs reach the logits multiplied by it.
    """

    unembed: Float[torch.Tensor, "vocab d_model"]
    unembed_bias: Float[torch.Tensor, " vocab"] | None
    gain: Float[torch.Tensor, " d_model"]
    norm_bias: Float[torch.Tensor, " d_model"] | None
    centered: bool
    eps: float
    logit_scale: float = 1.0
    residual_multiplier: float = 1.0

    @classmethod
    def from_model(cls, model) -> LogitReadout:
        """Read the final norm and unembedding off a TransformerBridge or Hugging Face causal LM.

        Raises:
            NotImplementedError: for a final norm or an output transformation this map cannot
                express exactly (e.g. logit soft-capping, a Gemma-style ``1 + weight`` gain).
        """
        hf = hf_model_of(model)
        config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
        if getattr(config, "final_logit_softcapping", None) is not None:
            raise NotImplementedError(
                f"{hf.config.model_type} soft-caps its logits (tanh), which is not linear in the residual "
                "stream; direct logit attribution supports models whose logits are an affine map of the "
                "normalized final residual."
            )
        base = getattr(hf, "model", hf)
        norm = unwrap(getattr(base, "norm", None) or getattr(base, "final_layernorm", None))
        if norm is None:
            raise NotImplementedError(f"Cannot find the final norm (`model.norm`) of {type(hf).__name__}.")
        head = unwrap(hf.get_output_embeddings())
        weight = head.weight.detach()
        bias = getattr(head, "bias", None)
        centered, gain, norm_bias, eps = _final_norm_parts(norm, weight)
        return cls(
            unembed=weight,
            unembed_bias=None if bias is None else bias.detach(),
            gain=gain,
            norm_bias=norm_bias,
            centered=centered,
            eps=eps,
            logit_scale=1.0 / float(getattr(config, "logits_scaling", None) or 1.0),
            residual_multiplier=float(getattr(config, "residual_multiplier", None) or 1.0),
        )

    @property
    def d_vocab(self) -> int:
        return int(self.unembed.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.unembed.shape[1])

    def inverse_rms(self, final_resid: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "..."]:
        """``1 / sqrt(mean(center(h)²) + eps)`` of the final residual ``h`` at each position (float32+)."""
        h = final_resid.to(torch.promote_types(final_resid.dtype, torch.float32))
        if self.centered:
            h = h - h.mean(dim=-1, keepdim=True)
        return torch.rsqrt(h.pow(2).mean(dim=-1) + self.eps)

    def _prepare(self, x: torch.Tensor, through_final_norm: bool) -> torch.Tensor:
        """``gain ⊙ center(x)`` (or ``x`` itself), in the dtype the unembedding matmul runs in."""
        dtype = _matmul_dtype(x.dtype, self.unembed.dtype)
        x = x.to(dtype)
        if through_final_norm:
            if self.centered:
                x = x - x.mean(dim=-1, keepdim=True)
            x = x * self.gain.to(device=x.device, dtype=dtype)
        return x

    def vocab_logits(
        self, x: Float[torch.Tensor, "... d_model"], through_final_norm: bool = True
    ) -> Float[torch.Tensor, "... vocab"]:
        """Logits over the whole vocabulary that the residual-stream vectors ``x`` write.

        ``logit_scale · W_U (gain ⊙ center(x))`` — the per-position ``inverse_rms``, the residual
        multiplier and the constant terms (biases) are not applied. With ``through_final_norm``
        False, the gain and centering are skipped too (the bare ``x · W_U``).
        """
        x = self._prepare(x, through_final_norm)
        return (x @ self.unembed.to(device=x.device, dtype=x.dtype).T) * self.logit_scale

    def target_logits(
        self,
        x: Float[torch.Tensor, "*lead m d_model"],
        target_ids: Int[torch.Tensor, "*lead n"],
        through_final_norm: bool = True,
    ) -> Float[torch.Tensor, "*lead m n"]:
        """As :meth:`vocab_logits`, only for the target tokens of each leading index.

        ``x[..., j, :]`` is read on ``target_ids[..., t]`` for every slot ``j`` and target ``t``;
        only the ``n`` needed unembedding rows are gathered, never the full vocabulary.
        """
        lead = target_ids.shape[:-1]
        if x.shape[: len(lead)] != lead or x.ndim != len(lead) + 2:
            raise ValueError(
                f"x must be [*lead, m, d_model] with the leading shape of target_ids [*lead, n]; got x of "
                f"shape {tuple(x.shape)} and target_ids of shape {tuple(target_ids.shape)}."
            )
        _check_token_ids(target_ids, self.d_vocab)
        x = self._prepare(x, through_final_norm)
        rows = self.unembed[target_ids.to(device=self.unembed.device, dtype=torch.long)]
        rows = rows.to(device=x.device, dtype=x.dtype)  # [*lead, n, d_model]
        return (x @ rows.transpose(-1, -2)) * self.logit_scale

    def constant_logits(self) -> Float[torch.Tensor, " vocab"]:
        """The logits no residual-stream vector writes: ``logit_scale · (W_U β + b_U)``."""
        total = torch.zeros(self.d_vocab, dtype=_matmul_dtype(torch.float32, self.unembed.dtype))
        total = total.to(self.unembed.device)
        if self.norm_bias is not None:
            total = total + self.unembed.to(total.dtype) @ self.norm_bias.to(total)
        if self.unembed_bias is not None:
            total = total + self.unembed_bias.to(total)
        return total * self.logit_scale


def _matmul_dtype(x_dtype: torch.dtype, weight_dtype: torch.dtype) -> torch.dtype:
    """Half-precision unembeddings stay in their dtype (no full-size copy); otherwise promote to float32+."""
    if weight_dtype in (torch.float16, torch.bfloat16):
        return weight_dtype
    return torch.promote_types(torch.promote_types(x_dtype, weight_dtype), torch.float32)


def _check_token_ids(ids: torch.Tensor, d_vocab: int) -> None:
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"token ids must be an integer tensor, got dtype {ids.dtype}.")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= d_vocab):
        raise ValueError(
            f"token ids must lie in [0, {d_vocab}); got values in [{int(ids.min())}, {int(ids.max())}]."
        )


def _final_norm_parts(
    norm: torch.nn.Module, unembed: torch.Tensor
) -> tuple[bool, torch.Tensor, torch.Tensor | None, float]:
    """(centered, gain, bias, eps) of a final norm module, read by calling it on known inputs.

    The norm is assumed to compute ``gain ⊙ center(x) / sqrt(mean(center(x)²) + eps) + bias``; its
    class name and parameter names are not trusted (Llama's RMSNorm multiplies by ``weight``,
    Qwen3-Next's and Gemma's by ``1 + weight``). A float32 copy of the norm is called on probe
    vectors: the zero vector gives the bias, a large zero-mean vector the gain, a constant vector
    whether the mean is subtracted, a small one the epsilon. The recovered map is then checked on
    random vectors, and a norm it does not reproduce is refused.
    """
    probe = _float32_copy(norm)
    d_model = unembed.shape[1]
    device = _module_device(norm, unembed.device)
    with torch.no_grad():
        bias = _call(probe, torch.zeros(d_model, device=device))
        signs = _zero_mean_signs(d_model).to(device)
        mean_square = float(signs.pow(2).mean())
        # out = gain ⊙ S·signs / sqrt(S²·mean_square + eps)
        per_sign = (_call(probe, _PROBE_SCALE * signs) - bias) / signs
        centered = _is_centered(probe, per_sign, bias)
        eps = _epsilon(norm, probe, per_sign * math.sqrt(mean_square), bias, signs)
        gain = per_sign * math.sqrt(mean_square + eps / _PROBE_SCALE**2)
        _check_reproduces(probe, norm, centered, gain, bias, eps)
    has_bias = bool(bias.abs().max() > 0)
    return centered, gain, (bias if has_bias else None), eps


# The magnitude of the gain probe: large enough that the epsilon does not matter in float32.
_PROBE_SCALE = 100.0
# How closely the recovered map must reproduce the norm on random inputs (relative, float32).
_PROBE_RTOL = 1e-4


def _float32_copy(norm: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of ``norm`` with float32 copies of its own parameters and buffers."""
    if list(norm.children()):
        raise NotImplementedError(
            f"Final norm {type(norm).__name__} has submodules; logit attribution needs a single norm module."
        )
    probe = copy.copy(norm)
    probe._parameters = {
        name: None if p is None else torch.nn.Parameter(p.detach().float().clone(), requires_grad=False)
        for name, p in norm._parameters.items()
    }
    probe._buffers = {
        name: None if b is None else (b.detach().float().clone() if b.is_floating_point() else b)
        for name, b in norm._buffers.items()
    }
    return probe


def _module_device(norm: torch.nn.Module, fallback: torch.device) -> torch.device:
    tensors = list(norm.parameters()) + list(norm.buffers())
    return tensors[0].device if tensors else fallback


def _call(probe: torch.nn.Module, x: torch.Tensor) -> Float[torch.Tensor, " d_model"]:
    """The norm's output for one float32 input vector (its forward only, without hooks)."""
    return probe.forward(x[None, None, :].float())[0, 0].float()


def _zero_mean_signs(d_model: int) -> Float[torch.Tensor, " d_model"]:
    """A vector of ±1 (and one -2 when ``d_model`` is odd) whose mean is exactly 0."""
    signs = torch.ones(d_model)
    signs[1::2] = -1.0
    if d_model % 2:
        signs[-3:] = torch.tensor([1.0, 1.0, -2.0])
    return signs


def _is_centered(probe: torch.nn.Module, gain: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether the norm subtracts the mean: a constant input then leaves only the bias."""
    out = _call(probe, torch.full_like(gain, _PROBE_SCALE))
    return bool((out - bias).abs().max() <= 1e-3 * gain.abs().max().clamp_min(1e-12))


def _epsilon(
    norm: torch.nn.Module, probe: torch.nn.Module, gain: torch.Tensor, bias: torch.Tensor, signs: torch.Tensor
) -> float:
    """The norm's epsilon: its attribute if it has one, else measured on a small input."""
    for attribute in ("variance_epsilon", "eps", "epsilon", "variance_eps"):
        value = getattr(norm, attribute, None)
        if isinstance(value, (int, float)):
            return float(value)
    small = 1e-2
    widest = int(gain.abs().argmax())
    ratio = (_call(probe, small * signs) - bias)[widest] / (gain[widest] * small * signs[widest])
    mean_square = float(signs.pow(2).mean()) * small**2
    return max(float(1.0 / ratio.double() ** 2) - mean_square, 0.0)


def _check_reproduces(
    probe: torch.nn.Module, norm: torch.nn.Module, centered: bool, gain, bias, eps: float
) -> None:
    """Refuse a norm that the recovered ``gain ⊙ normalize(x) + bias`` does not reproduce."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, gain.shape[0], generator=generator).to(gain.device) * torch.tensor(
        [[0.1], [1.0], [10.0], [1000.0]], device=gain.device
    )
    h = x - x.mean(-1, keepdim=True) if centered else x
    expected = gain * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) + bias
    actual = probe.forward(x[None].float())[0].float()
    scale = expected.abs().max().clamp_min(1e-12)
    if not bool(torch.isfinite(actual).all()) or (actual - expected).abs().max() > _PROBE_RTOL * scale:
        raise NotImplementedError(
            f"Final norm {type(norm).__name__} is not of the form gain ⊙ x / RMS(x) (+ bias), with or "
            "without mean subtraction, so its logit attribution cannot be computed exactly; supported are "
            "RMSNorms (weight or 1 + weight gain) and LayerNorms."
        )
