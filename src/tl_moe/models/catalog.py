"""Every MoE architecture the installed transformers and TransformerLens can give tl_moe.

:func:`registry_architectures` enumerates, from the installed packages (no hand list), the
model types whose experts transformers dispatches through its experts-implementation registry
and whose causal LM the installed TransformerLens bridge boots. :func:`tiny_hf_config` makes a
tiny random config of any of them (generic size keys, plus small declarative per-architecture
facts), and :func:`architecture_table_markdown` attaches tl_moe to each and tabulates the result
(the README's architecture table).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

# Generic size keys, set wherever an architecture's config has them.
TINY_SIZES: dict = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=48,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
    shared_intermediate_size=16,
    moe_shared_expert_intermediate_size=16,
    vocab_size=96,
    num_experts=8,
    num_local_experts=8,
    n_routed_experts=8,
    moe_num_experts=8,
    num_experts_per_tok=2,
    moe_k=2,
    top_k_experts=2,
    max_position_embeddings=64,
    first_k_dense_replace=1,
    n_group=2,
    topk_group=1,
    n_shared_experts=1,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=8,
    qk_head_dim=16,
    mamba_n_heads=8,
    mamba_d_head=8,
    mamba_num_heads=8,
    mamba_head_dim=8,
    mamba_d_state=8,
    mamba_chunk_size=16,
    mamba_dt_rank=8,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    use_mamba_kernels=False,
    hidden_size_per_layer_input=8,
    vocab_size_per_layer_input=96,
    num_dense_layers=1,
    index_head_dim=8,
    index_n_heads=2,
    index_topk=4,
    sliding_window=16,
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
)

# Per-architecture facts for a tiny config (layer layouts with one attention and one MoE layer,
# MLA head counts), declarative.
TINY_OVERRIDES: dict[str, dict] = {
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"]),
    "nemotron_h": dict(layers_block_type=["full_attention", "moe"]),
    "granitemoehybrid": dict(layer_types=["mamba", "attention"], position_embedding_type="rope"),
    "gemma4_text": dict(
        enable_moe_block=True, layer_types=["sliding_attention", "full_attention"], global_head_dim=16
    ),
    "qwen3_next": dict(layer_types=["linear_attention", "full_attention"]),
    "qwen3_5_moe_text": dict(layer_types=["linear_attention", "full_attention"]),
    "glm4_moe_lite": dict(mlp_layer_types=["dense", "sparse"], num_key_value_heads=4),
    "glm_moe_dsa": dict(mlp_layer_types=["dense", "sparse"], num_key_value_heads=4),
    "deepseek_v2": dict(num_key_value_heads=4, topk_method="group_limited_greedy", n_group=4, topk_group=2),
    "deepseek_v3": dict(num_key_value_heads=4),
    "ernie4_5_moe": dict(moe_layer_start_index=1),
    "qwen2_moe": dict(mlp_only_layers=[0]),
}


def _experts_dispatching_model_types() -> list[str]:
    """Model types whose modeling code decorates an experts class with ``@use_experts_implementation``."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES, model_type_to_module_name

    root = Path(transformers.__file__).parent / "models"
    found = []
    for model_type in CONFIG_MAPPING_NAMES:
        files = (root / model_type_to_module_name(model_type)).glob("modeling_*.py")
        if any("@use_experts_implementation" in file.read_text() for file in files):
            found.append(model_type)
    return found


@dataclass(frozen=True)
class RegistryArchitecture:
    """One MoE architecture: transformers dispatches its experts; TransformerLens boots it.

    Attributes:
        model_type: HF ``config.model_type``.
        hf_class: The causal LM class tl_moe builds and the bridge boots.
    """

    model_type: str
    hf_class: str


def _is_multimodal(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    sub_configs = getattr(CONFIG_MAPPING[model_type], "sub_configs", None) or {}
    return any(word in name for name in sub_configs for word in ("vision", "audio", "image", "video"))


@functools.cache
def registry_architectures() -> tuple[RegistryArchitecture, ...]:
    """Every model type whose experts go through transformers' registry and whose causal LM
    (text-only class) the installed TransformerLens bridge boots."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out = []
    seen_classes = set()
    for model_type in _experts_dispatching_model_types():
        hf_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
        if _is_multimodal(model_type):
            continue  # its text tower has its own (``*_text``) model type
        if hf_class in SUPPORTED_ARCHITECTURES and hf_class not in seen_classes:
            seen_classes.add(hf_class)
            out.append(RegistryArchitecture(model_type, hf_class))
    return tuple(out)


def not_booted_architectures() -> dict[str, str]:
    """Registry-dispatched model types tl_moe cannot offer, with the reason (no bridge adapter, or
    no causal LM class: multimodal-only or encoder configs)."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    booted = {arch.model_type for arch in registry_architectures()}
    reasons = {}
    for model_type in _experts_dispatching_model_types():
        if model_type in booted:
            continue
        hf_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
        if _is_multimodal(model_type):
            reasons[model_type] = (
                "multimodal wrapper (its text tower, where booted, is swept as its own model type)"
            )
        elif hf_class is None:
            reasons[model_type] = "no causal LM class (a sub-model config)"
        elif hf_class in SUPPORTED_ARCHITECTURES:
            reasons[model_type] = f"{hf_class} is already covered by another model type"
        else:
            reasons[model_type] = f"TransformerLens has no bridge adapter for {hf_class}"
    return reasons


def tiny_hf_config(model_type: str, **changes):
    """A tiny random-init config of ``model_type``: 2 layers, d_model 32, 8 experts, top-2."""
    from transformers import AutoConfig

    keys = AutoConfig.for_model(model_type).to_dict()
    kwargs = {key: value for key, value in TINY_SIZES.items() if key in keys}
    layer_types = keys.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        kwargs["layer_types"] = list(layer_types)[-2:]
    kwargs.update(TINY_OVERRIDES.get(model_type, {}))
    kwargs.update(changes)
    return AutoConfig.for_model(model_type, **kwargs)


def build_tiny(model_type: str, seed: int = 0, **changes):
    """A tiny random HF causal LM of ``model_type`` (eager attention, eval mode), with random
    selection biases so that they matter."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(model_type, **changes))
    model.set_attn_implementation("eager")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.split(".")[-1] in ("e_score_correction_bias", "expert_bias"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def word_tokenizer(vocab_size: int = 96):
    """A whitespace word-level tokenizer over ``w0 .. w{V-1}`` (for tiny models)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", pad_token="w1", bos_token="w2", eos_token="w2"
    )


@dataclass(frozen=True)
class ArchitectureStatus:
    """What attaching tl_moe to a tiny model of one architecture gave."""

    model_type: str
    hf_class: str
    supported: bool
    detail: str


def architecture_status(arch: RegistryArchitecture) -> ArchitectureStatus:
    """Attach tl_moe to a tiny random model of ``arch``; the supported facts or the refusal."""
    from tl_moe.models.architectures import UnsupportedArchitectureError
    from tl_moe.models.attach import load

    try:
        bridge = load(build_tiny(arch.model_type), tokenizer=word_tokenizer(), device="cpu")
    except UnsupportedArchitectureError as error:
        return ArchitectureStatus(arch.model_type, arch.hf_class, False, str(error))
    cfg = bridge.moe_cfg
    rule = cfg.routing
    parts = [rule.kind.replace("_", "-")]
    if rule.renormalize:
        parts.append("renormalized")
    if rule.selection_bias:
        parts.append("selection bias")
    if rule.n_groups > 1:
        parts.append(f"group-limited ({rule.group_score})")
    if rule.scaling_factor != 1.0:
        parts.append(f"scaled ×{rule.scaling_factor:g}")
    shared = "gated shared" if cfg.shared_gated else ("shared" if cfg.n_shared_experts else "—")
    return ArchitectureStatus(arch.model_type, arch.hf_class, True, f"{', '.join(parts)} | {shared}")


def architecture_table_markdown() -> str:
    """The README's architecture table: every registry architecture the bridge boots, with
    tl_moe's routing rule and shared experts for it, or why it is refused (runs the sweep)."""
    lines = ["| model type | HF class | routing (verified) | shared experts |", "|---|---|---|---|"]
    refused = []
    for arch in registry_architectures():
        status = architecture_status(arch)
        if status.supported:
            lines.append(f"| `{status.model_type}` | `{status.hf_class}` | {status.detail} |")
        else:
            refused.append(status)
    if refused:
        lines += ["", "| refused model type | why |", "|---|---|"]
        lines += [f"| `{s.model_type}` | {s.detail.replace('|', '/')} |" for s in refused]
    return "\n".join(lines)


if __name__ == "__main__":
    print(architecture_table_markdown())
