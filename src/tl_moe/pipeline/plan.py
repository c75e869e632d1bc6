"""The planner: what a run will cost, from the models' configs alone (no weights loaded).

``tl-moe plan [MODEL] [analyze flags]`` instantiates each model of the run on PyTorch's ``meta``
device (shapes, no memory), counts its parameters, and estimates the memory of its weights, of one
batch's activations and of every accumulator the chosen analyses fill, and the compute of each pass.
:func:`check_fits` refuses, in one line, a run whose estimate exceeds the memory available. The wall-time
estimate, which does load the models, is :mod:`tl_moe.pipeline.calibration`'s (after these checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from tl_moe.errors import InputError
from tl_moe.models.config import MoEConfig
from tl_moe.pipeline.context import UNTRAINED, RunContext, untrained_base
from tl_moe.pipeline.memory import activation_bytes, available_memory
from tl_moe.pipeline.options import RunOptions

__all__ = ["ModelPlan", "RunPlan", "available_memory", "check_fits", "meta_model", "plan_run"]

_GIB = 1 << 30


def meta_model(config: Any) -> torch.nn.Module:
    """The Hugging Face causal LM of ``config`` (a ``PretrainedConfig``) on the meta device: shapes only."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _hf_config(name: str, input_name: str = "--model") -> Any:
    """The Hugging Face config of a toy-zoo name, a local directory or a (cached) hub id, offline."""
    from transformers import AutoConfig

    from tl_moe.pipeline.validation import check_model_path

    check_model_path(name, input_name=input_name)  # a file, or a folder without config.json: as analyze says
    path = name
    if name.startswith("toy/"):
        from tl_moe.zoo.registry import checkpoint_path

        path = str(checkpoint_path(name))
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the config of model {name!r}: {str(error).splitlines()[0]}") from None


@dataclass(frozen=True)
class ModelPlan:
    """The estimated cost of one model's pass."""

    name: str
    config: MoEConfig
    n_parameters: int
    n_active_parameters: int
    weight_bytes: int
    activation_bytes: int
    accumulator_bytes: dict[str, int]
    tokens: int

    @property
    def flops(self) -> float:
        """Forward compute of the pass: 2 × active parameters × tokens (attention scores excluded)."""
        return 2.0 * self.n_active_parameters * self.tokens

    @property
    def peak_bytes(self) -> int:
        """Weights + one batch's activations + every accumulator of this pass."""
        return self.weight_bytes + self.activation_bytes + sum(self.accumulator_bytes.values())


@dataclass(frozen=True)
class RunPlan:
    """The estimated cost of a whole run: one :class:`ModelPlan` per pass, in pass order."""

    options: RunOptions
    analyses: tuple[str, ...]
    models: list[ModelPlan] = field(default_factory=list)
    #: analysis name -> why it runs forwards of its own after the passes (not in the estimates above).
    own_forwards: dict[str, str] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        """The largest pass's memory, plus what the finished passes' accumulators keep."""
        kept, peak = 0, 0
        for model in self.models:
            peak = max(peak, kept + model.peak_bytes)
            kept += sum(model.accumulator_bytes.values())
        return peak

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for model in self.models:
            rows.append(
                {
                    "model": model.name,
                    "architecture": model.config.architecture,
                    "parameters": model.n_parameters,
                    "active parameters": model.n_active_parameters,
                    "weights (GiB)": model.weight_bytes / _GIB,
                    "batch activations (GiB)": model.activation_bytes / _GIB,
                    "accumulators (GiB)": sum(model.accumulator_bytes.values()) / _GIB,
                    "tokens": model.tokens,
                    "forward TFLOP": model.flops / 1e12,
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready values: one record per pass (its accumulators' bytes by spec), the peak."""
        passes = self.to_frame().to_dict(orient="records")
        for record, model in zip(passes, self.models, strict=True):
            record["accumulator bytes"] = dict(model.accumulator_bytes)
        return {
            "analyses": list(self.analyses),
            "passes": passes,
            "peak bytes": self.peak_bytes,
            "own forwards": dict(self.own_forwards),
        }

    def summary(self) -> str:
        lines = [f"Plan for {', '.join(self.analyses)} on {self.options.model}:"]
        lines.append(self.to_frame().to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        for model in self.models:
            for spec, size in model.accumulator_bytes.items():
                lines.append(f"  {model.name}: {spec}: {size / _GIB:.3g} GiB")
        lines.append(f"Estimated peak memory: {self.peak_bytes / _GIB:.3g} GiB")
        for name, reason in self.own_forwards.items():
            lines.append(f"{name} runs forwards of its own after the passes (not estimated above): {reason}.")
        return "\n".join(lines)


def _parameter_counts(model: torch.nn.Module, cfg: MoEConfig) -> tuple[int, int]:
    """(total parameters, parameters a token uses: all but the experts it is not routed to)."""
    total = sum(p.numel() for p in model.parameters())
    if not cfg.is_moe:
        return total, total
    from tl_moe.models.architectures import get_spec
    from tl_moe.models.introspect import decoder_layers, layer_modules

    spec = get_spec(cfg.architecture)
    unused = 0
    for layer in decoder_layers(model):
        modules = layer_modules(layer, spec)
        if modules.is_sparse:
            expert_params = sum(p.numel() for p in modules.experts.parameters())
            unused += expert_params * (cfg.num_experts - cfg.experts_per_token) // cfg.num_experts
    return total, total - unused


def plan_run(
    options: RunOptions | None = None,
    *,
    configs: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> RunPlan:
    """The cost of ``run(options)``, from configs alone.

    Args:
        options: the run's settings (default: the defaults of ``tl-moe analyze``).
        configs: Hugging Face configs by model name, to plan models that are not on disk (e.g. the
            published shapes of large MoEs); other names are read with ``AutoConfig`` offline.
        dtype: the dtype the weights will be loaded in (default: ``options.dtype``, i.e. ``--dtype``).
    """
    from tl_moe.models.introspect import moe_config
    from tl_moe.pipeline.runner import (
        _chosen_analyses,
        _needs_by_model,
        check_inputs_before_loading,
        fitted_options,
    )
    from tl_moe.pipeline.validation import check_seq_len_positions

    options = options or RunOptions()
    options.check()
    dtype = getattr(torch, options.dtype) if dtype is None else dtype
    chosen = _chosen_analyses(options, None)
    hf_configs = dict(configs or {})
    # as analyze checks them; models given as configs need not be on disk
    check_inputs_before_loading(options, hf_configs)
    metas: dict[str, torch.nn.Module] = {}
    moe_configs: dict[str, MoEConfig] = {}

    def describe(name: str) -> MoEConfig:
        if name not in moe_configs:
            base = untrained_base(name)[0] if name.startswith(UNTRAINED) else name  # its model's config
            input_name = "--dense-baseline" if base == options.dense_baseline else "--model"
            metas[name] = meta_model(hf_configs.get(base) or _hf_config(base, input_name))
            moe_configs[name] = moe_config(metas[name])
        return moe_configs[name]

    if not describe(options.model).is_moe:  # a model given by its config: analyze's refusal
        raise InputError(
            f"{options.model} is a dense model; the analyses need an MoE (pass the dense one as --dense-baseline)."
        )
    check_seq_len_positions(options.seq_len, metas[options.model])  # as analyze checks its loaded model
    if options.dense_baseline:
        describe(options.dense_baseline)
    run_context = RunContext(options, configs=moe_configs, analyses=[a.name for a in chosen])
    run_context.options = fitted_options(run_context, chosen)[0]  # as analyze fits them before its checks
    for analysis in chosen:  # analyze's checks that need no weights
        analysis.check_config(run_context)
    for analysis in chosen:  # needs of other models (e.g. the toy family) are described on demand
        for need in analysis.needs(run_context):
            describe(need.model)
    needs = _needs_by_model(run_context, chosen)
    dtype_bytes = torch.finfo(dtype).bits // 8
    plans = []
    for name, specs in needs.items():
        cfg = describe(name)
        total, active = _parameter_counts(metas[name], cfg)
        plans.append(
            ModelPlan(
                name=name,
                config=cfg,
                n_parameters=total,
                n_active_parameters=active,
                weight_bytes=total * dtype_bytes,
                activation_bytes=activation_bytes(cfg, options, dtype_bytes),
                accumulator_bytes={repr(spec): spec.estimate_bytes(cfg, run_context) for spec in specs},
                tokens=options.max_tokens,
            )
        )
    own = {a.name: a.own_forwards for a in chosen if a.own_forwards}
    return RunPlan(options, tuple(a.name for a in chosen), plans, own)


def _memory_advice(model: ModelPlan) -> str:
    """What to lower for the pass that needs the most: the batch's shape when its activations are the
    largest part, else the accumulators' sizes."""
    if model.activation_bytes >= max(model.weight_bytes, sum(model.accumulator_bytes.values())):
        return "lower --batch-size or --seq-len"
    return "lower --max-tokens or --probe-rows-per-class, choose --probe-layers"


def check_fits(plan: RunPlan, available: int | None = None) -> None:
    """Refuse, in one line, a run whose estimated peak memory exceeds ``available`` bytes."""
    available = available_memory(plan.options.device) if available is None else available
    if plan.peak_bytes > available:
        largest = max(plan.models, key=lambda model: model.peak_bytes)
        raise InputError(
            f"this run needs about {plan.peak_bytes / _GIB:.1f} GiB ({largest.name}: weights "
            f"{largest.weight_bytes / _GIB:.1f} GiB, batch activations {largest.activation_bytes / _GIB:.1f} GiB, "
            f"accumulators {sum(largest.accumulator_bytes.values()) / _GIB:.1f} GiB) but "
            f"{available / _GIB:.1f} GiB are available; {_memory_advice(largest)}, or use a larger machine "
            "(`tl-moe plan` shows the breakdown)."
        )
