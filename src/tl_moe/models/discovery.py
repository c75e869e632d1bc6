"""The routing rule of a model, read from its config and verified against its own router.

tl_moe recomputes routing from the router logits (so an edited logit re-routes). That is only
right if the rule it recomputes with is the model's. The rule is read from config keys where
they say it (``norm_topk_prob``, ``scoring_func``, ``n_group``/``topk_group``,
``routed_scaling_factor``), from a small declarative override where an architecture has a
fact no key states (:data:`ROUTING_OVERRIDES`), and is then *verified*: the model's router runs
on random inputs (with a random selection bias where it has one) and the recomputed
selection and mixing weights must equal the router's. Where the config does not pin a choice
down, the few plausible rules are tried; if none reproduces the router, the model is refused
with an error naming what did not match.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from tl_moe.models.architectures import ARCHITECTURES, UnsupportedArchitectureError, selection_bias_of
from tl_moe.models.config import RoutingRule
from tl_moe.models.routing import mixing_weights, routing_scores, select_experts

# Facts about a router that no config key states, by model_type (declarative overrides).
ROUTING_OVERRIDES: dict[str, dict] = {
    "lfm2_moe": {"renormalize_eps": 1e-6},
}

_SCORE_KEYS = (
    "scoring_func",
    "score_func",
    "score_function",
    "router_score_function",
    "moe_router_score_function",
)
_SCALE_KEYS = ("routed_scaling_factor", "route_scale", "moe_routed_scaling_factor")


def _first(config, names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def rule_from_config(config, has_bias: bool) -> tuple[RoutingRule, dict]:
    """The rule the config keys state, and which fields they left open (``field -> options``)."""
    open_fields: dict[str, list] = {}
    score = str(_first(config, _SCORE_KEYS, "") or "").lower()
    if "sigmoid" in score:
        kind = "sigmoid_topk"
    elif "softmax" in score:
        kind = "softmax_topk"
    else:
        kind = "sigmoid_topk" if has_bias else "softmax_topk"
        open_fields["kind"] = ["softmax_topk", "sigmoid_topk", "topk_softmax"]
    renormalize = getattr(config, "norm_topk_prob", None)
    if renormalize is None:
        open_fields["renormalize"] = [True, False]
        renormalize = kind == "sigmoid_topk"
    n_groups = int(_first(config, ("n_group", "num_expert_group"), 1) or 1)
    topk_groups = int(_first(config, ("topk_group",), n_groups) or n_groups)
    grouped = n_groups > 1 and topk_groups < n_groups and getattr(config, "topk_method", "") != "greedy"
    rule = RoutingRule(
        kind=kind,
        renormalize=bool(renormalize),
        renormalize_eps=1e-20 if kind == "sigmoid_topk" else 0.0,
        selection_bias=has_bias,
        n_groups=n_groups if grouped else 1,
        topk_groups=topk_groups if grouped else 1,
        group_score="top2_sum" if kind == "sigmoid_topk" else "max",
        scaling_factor=float(_first(config, _SCALE_KEYS, 1.0)),
    )
    if grouped:
        open_fields["group_score"] = ["top2_sum", "max"]
    return rule.replace(**ROUTING_OVERRIDES.get(config.model_type, {})), open_fields


@dataclass
class RouterSample:
    """One run of a router on random inputs: its outputs and the selection bias it used."""

    logits: torch.Tensor
    weights: torch.Tensor
    indices: torch.Tensor
    bias: torch.Tensor | None


def sample_router(mods, n_tokens: int = 64, seed: int = 0) -> RouterSample:
    """Run ``mods.router`` on random hidden states, with a random selection bias if it uses one."""

    router: nn.Module = mods.router
    param = next(router.parameters(), None)
    if param is None:
        param = next(mods.experts.parameters())
    n_experts = int(mods.experts.num_experts)
    d_model = next(p.shape[-1] for p in router.parameters() if p.dim() == 2)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, d_model, generator=generator).to(param.device, param.dtype)
    random_bias = 0.05 * torch.randn(n_experts, generator=generator)
    held = selection_bias_of(router, mods.bias_path)
    saved = held.detach().clone() if held is not None else None
    args: tuple = (x,)
    bias = None
    with torch.no_grad():
        try:
            if held is not None:
                held.copy_(random_bias.reshape(held.shape).to(held.dtype))
                bias = held.detach().clone().reshape(-1)
            elif mods.bias_argument:
                bias = random_bias.to(param.device)
                args = (x, bias)
            try:
                out = router(*args)
            except Exception:  # some routers take [batch, pos, d_model]
                out = router(x.unsqueeze(0), *args[1:])
        except Exception as error:
            raise UnsupportedArchitectureError(
                f"The router {type(router).__name__} cannot be run on hidden states alone ({error!r}); tl_moe "
                "recomputes routing from router logits, which this router (e.g. hash routing on token ids) "
                "does not determine."
            ) from error
        finally:
            if saved is not None:
                held.copy_(saved)
    if not (isinstance(out, tuple) and len(out) >= 3):
        raise UnsupportedArchitectureError(
            f"The router {type(router).__name__} returns {type(out).__name__}, not (logits, weights, indices)."
        )
    logits, weights, indices = out[0], out[1], out[2]
    n = logits.shape[:-1].numel()
    return RouterSample(
        logits.reshape(n, -1), weights.reshape(n, -1), indices.reshape(n, -1), None if bias is None else bias
    )


def check_rule(rule: RoutingRule, sample: RouterSample) -> tuple[str | None, float | None]:
    """``(None, None)`` if ``rule`` reproduces ``sample``; ``(None, scale)`` if it does up to a
    constant scaling factor ``scale``; else ``(what did not match, None)``."""
    k = sample.indices.shape[-1]
    scores = routing_scores(sample.logits, rule)
    chosen = select_experts(sample.logits, scores, rule, k, sample.bias)
    ours, order = chosen.sort(dim=-1)
    theirs, their_order = sample.indices.long().sort(dim=-1)
    wrong = (ours != theirs).any(dim=-1)
    if wrong.any():
        return f"selected experts differ on {int(wrong.sum())} of {len(wrong)} random tokens", None
    mix = mixing_weights(sample.logits, scores, chosen, rule).gather(-1, order)
    want = sample.weights.float().gather(-1, their_order)
    tolerance = 1e-5 if sample.weights.dtype == torch.float32 else 2e-2
    if torch.allclose(mix, want, rtol=tolerance, atol=1e-7):
        return None, None
    ratio = want / mix.clamp(min=1e-30)
    scale = float(ratio.median())
    if torch.allclose(ratio, torch.full_like(ratio, scale), rtol=tolerance, atol=0):
        return None, scale
    worst = float((mix - want).abs().max())
    return f"mixing weights differ (largest difference {worst:.3g})", None


def _candidates(rule: RoutingRule, open_fields: dict) -> list[RoutingRule]:
    names = list(open_fields)
    out = [rule]
    for values in itertools.product(*(open_fields[name] for name in names)):
        candidate = rule.replace(**dict(zip(names, values, strict=True)))
        if "kind" in open_fields:
            candidate = candidate.replace(
                renormalize_eps=1e-20 if candidate.kind == "sigmoid_topk" and candidate.renormalize else 0.0
            )
        if candidate not in out:
            out.append(candidate)
    return out


def routing_rule_of(hf: nn.Module, sparse: list, text_config) -> tuple[RoutingRule, int]:
    """The verified routing rule of a model and its top-k.

    Args:
        hf: The Hugging Face model.
        sparse: :class:`~tl_moe.models.introspect.LayerModules` of its sparse layers.
        text_config: Its (text) config.

    Raises:
        UnsupportedArchitectureError: If no rule reproduces the router's selection and weights.
    """
    model_type = hf.config.model_type
    first = sparse[0]
    has_bias = first.bias_path is not None or first.bias_argument
    generic, open_fields = rule_from_config(text_config, has_bias)
    spec = ARCHITECTURES.get(model_type)
    known = spec.routing(text_config) if spec is not None and spec.routing is not None else None
    candidates = ([known] if known is not None else []) + _candidates(generic, open_fields)
    if any(parameter.is_meta for mods in sparse for parameter in mods.router.parameters()):
        # Shapes only (the planner's meta-device models): nothing to run, so nothing to verify.
        k = int(getattr(first.router, "top_k", None) or getattr(text_config, "num_experts_per_tok", 1))
        return candidates[0], k
    # One sample per distinct router class (a model may mix router kinds across layers).
    samples, seen = [], set()
    for mods in sparse:
        if type(mods.router) not in seen:
            seen.add(type(mods.router))
            samples.append(sample_router(mods))
    k = samples[0].indices.shape[-1]
    first_failure = None
    for candidate in candidates:
        scale = None
        for sample in samples:
            failure, scale = check_rule(candidate, sample)
            if failure is not None:
                first_failure = first_failure or (candidate, failure)
                break
            if scale is not None:
                candidate = candidate.replace(scaling_factor=candidate.scaling_factor * scale)
                failure, _ = check_rule(candidate, sample)
                if failure is not None:
                    break
        else:
            return candidate, k
    rule, failure = first_failure
    raise UnsupportedArchitectureError(
        f"{model_type}: tl_moe recomputes routing from the router logits, but no routing rule it knows reproduces "
        f"{type(first.router).__name__} on random inputs. The rule read from the config ({rule}) fails: {failure}. "
        f"Tried {len(candidates)} rule(s)."
    )
