"""Planted models with known answers for the probing protocols (built offline with the toy tokenizer).

- :func:`dense_copy_pair`: a dense llama and a mixtral that computes exactly its function: same
  embeddings, attention and norms; every expert a copy of the dense FFN; a renormalizing top-k router
  (mixing weights sum to 1), so each expert's neurons on its routed tokens ARE the dense neurons there.
- :func:`untrained_pair`: an untrained MoE and an untrained dense model of matching sizes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tl_moe.models import MoEConfig, RoutingRule, build_model, save_model
from tl_moe.zoo.tokenizer import load_tokenizer

SIZES = dict(n_layers=2, d_model=64, n_heads=4, max_position_embeddings=256)


def _vocab() -> int:
    return len(load_tokenizer())


def dense_copy_pair(directory: Path, seed: int = 0, num_experts: int = 4) -> tuple[Path, Path]:
    """Save (mixtral_dir, llama_dir): the MoE (``num_experts``, top-2) computes the dense model's function
    exactly."""
    vocab = _vocab()
    # The two architectures' defaults differ in RoPE base and norm epsilon: pin them to the same values.
    same = {"rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}
    dense_cfg = MoEConfig("llama", d_vocab=vocab, d_mlp=64, extra_hf_config=same, **SIZES)
    moe_cfg = MoEConfig(
        "mixtral",
        d_vocab=vocab,
        num_experts=num_experts,
        experts_per_token=2,
        d_expert=64,
        sparse_layers=(0, 1),
        routing=RoutingRule(renormalize=True),
        extra_hf_config=same,
        **SIZES,
    )
    dense = build_model(dense_cfg, seed=seed)
    moe = build_model(moe_cfg, seed=seed + 1)
    dense_state = dense.state_dict()
    with torch.no_grad():
        for name, tensor in moe.state_dict().items():
            if ".mlp.gate.weight" in name:
                tensor.normal_(0.0, 1.0)  # a sharp, varied router: the experts get different tokens
            elif name.endswith("mlp.experts.gate_up_proj"):
                prefix = name.removesuffix("experts.gate_up_proj")
                fused = torch.cat(
                    [dense_state[prefix + "gate_proj.weight"], dense_state[prefix + "up_proj.weight"]]
                )
                tensor.copy_(fused[None].expand_as(tensor))
            elif name.endswith("mlp.experts.down_proj"):
                prefix = name.removesuffix("experts.down_proj")
                tensor.copy_(dense_state[prefix + "down_proj.weight"][None].expand_as(tensor))
            else:
                tensor.copy_(dense_state[name])
    tokenizer = load_tokenizer()
    return save_model(moe, tokenizer, directory / "moe"), save_model(dense, tokenizer, directory / "dense")


def untrained_pair(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """Save (olmoe_dir, olmo_dir): untrained, same sizes, the MoE with 8 experts top-2 of half width."""
    vocab = _vocab()
    moe_cfg = MoEConfig(
        "olmoe", d_vocab=vocab, num_experts=8, experts_per_token=2, d_expert=32, sparse_layers=(0, 1), **SIZES
    )
    dense_cfg = MoEConfig("olmo", d_vocab=vocab, d_mlp=64, **SIZES)
    tokenizer = load_tokenizer()
    return (
        save_model(build_model(moe_cfg, seed=seed), tokenizer, directory / "moe"),
        save_model(build_model(dense_cfg, seed=seed), tokenizer, directory / "dense"),
    )
