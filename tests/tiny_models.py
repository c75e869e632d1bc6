"""Tiny random-init models of every supported architecture, saved with a tokenizer, for tests."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tl_moe.models.build import build_model, save_model
from tl_moe.models.config import MoEConfig, RoutingRule

VOCAB = 96
_COMMON = dict(n_layers=2, d_model=32, d_vocab=VOCAB, n_heads=4, max_position_embeddings=64)
_MLA = dict(kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)

# A dense first layer, then a sparse layer with one shared expert (DeepSeek / GLM layout).
_DENSE_THEN_SHARED = dict(
    num_experts=8,
    experts_per_token=2,
    d_expert=16,
    sparse_layers=(1,),
    d_mlp=48,
    n_shared_experts=1,
    d_shared=16,
)
_SIGMOID_ROUTING = RoutingRule(
    kind="sigmoid_topk",
    renormalize=True,
    renormalize_eps=1e-20,
    selection_bias=True,
    n_groups=1,
    topk_groups=1,
    group_score="top2_sum",
)

TINY_CONFIGS: dict[str, MoEConfig] = {
    "olmoe": MoEConfig(
        "olmoe",
        **_COMMON,
        n_kv_heads=2,
        num_experts=8,
        experts_per_token=2,
        d_expert=16,
        sparse_layers=(0, 1),
    ),
    "mixtral": MoEConfig(
        "mixtral",
        **_COMMON,
        num_experts=4,
        experts_per_token=2,
        d_expert=16,
        sparse_layers=(0, 1),
        routing=RoutingRule(renormalize=True),
    ),
    "qwen2_moe": MoEConfig(
        "qwen2_moe",
        **_COMMON,
        num_experts=8,
        experts_per_token=2,
        d_expert=16,
        sparse_layers=(1,),
        d_mlp=48,
        n_shared_experts=1,
        d_shared=24,
        shared_gated=True,
        routing=RoutingRule(renormalize=True),
    ),
    "qwen3_moe": MoEConfig(
        "qwen3_moe",
        **_COMMON,
        num_experts=8,
        experts_per_token=2,
        d_expert=16,
        sparse_layers=(0, 1),
    ),
    "ernie4_5_moe": MoEConfig(
        "ernie4_5_moe",
        **_COMMON,
        num_experts=8,
        experts_per_token=3,
        d_expert=16,
        sparse_layers=(1,),
        d_mlp=48,
        n_shared_experts=2,
        d_shared=32,
        routing=RoutingRule(
            renormalize=True, renormalize_eps=1e-12, renormalize_clamp=True, selection_bias=True
        ),
    ),
    "deepseek_v2": MoEConfig(
        "deepseek_v2",
        **_COMMON,
        **_DENSE_THEN_SHARED,
        routing=RoutingRule(n_groups=4, topk_groups=2, group_score="max", scaling_factor=1.5),
        n_kv_heads=4,
        extra_hf_config=_MLA,
    ),
    "deepseek_v3": MoEConfig(
        "deepseek_v3",
        **_COMMON,
        **_DENSE_THEN_SHARED,
        routing=_SIGMOID_ROUTING.replace(n_groups=2, scaling_factor=2.0),
        n_kv_heads=4,
        extra_hf_config=_MLA,
    ),
    "glm4_moe": MoEConfig("glm4_moe", **_COMMON, **_DENSE_THEN_SHARED, routing=_SIGMOID_ROUTING),
    "gpt_oss": MoEConfig(
        "gpt_oss",
        **_COMMON,
        num_experts=4,
        experts_per_token=2,
        d_expert=16,
        sparse_layers=(0, 1),
        routing=RoutingRule(kind="topk_softmax"),
    ),
    "granitemoe": MoEConfig(
        "granitemoe",
        **_COMMON,
        num_experts=4,
        experts_per_token=2,
        d_expert=16,
        sparse_layers=(0, 1),
        routing=RoutingRule(kind="topk_softmax"),
    ),
    "olmo": MoEConfig("olmo", **_COMMON, d_mlp=64),
    "qwen3": MoEConfig("qwen3", **_COMMON, d_mlp=64),
    "llama": MoEConfig("llama", **_COMMON, d_mlp=64),
    "olmo2": MoEConfig("olmo2", **_COMMON, d_mlp=64),
}


def tiny_tokenizer(vocab_size: int = VOCAB) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer whose words are ``w0 .. w{V-1}``."""
    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", pad_token="w1", bos_token="w2", eos_token="w2"
    )


def save_tiny_model(architecture: str, directory: Path, seed: int = 0) -> Path:
    """Build the tiny model of ``architecture`` with random weights and save it to ``directory``."""
    model = build_model(TINY_CONFIGS[architecture], seed=seed)
    _randomize_router_biases(model, seed)
    return save_model(model, tiny_tokenizer(), directory)


def _randomize_router_biases(model, seed: int) -> None:
    """Give selection biases non-zero values so tests exercise them (HF initialises them to 0)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("e_score_correction_bias") or (name.endswith("router.bias")):
            with torch.no_grad():
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
