"""Patched TransformerLens vs tl_moe vs Hugging Face on tiny random MoE models.

For each architecture: build a tiny random model (``AutoConfig.for_model`` +
``AutoModelForCausalLM.from_config``), save it with a word-level tokenizer, then check

1. the patched bridge's ``hook_expert_pre/post/out`` equal tl_moe's own hooks bit for bit (fp32),
   and so do the two bridges' logits;
2. the patched bridge's logits equal Hugging Face's (fp32, eager attention), with the expert hooks
   turned on (``set_use_expert_hooks(True)``), idle and with every hook cached;
3. ``tl_moe.attach`` on the patched bridge uses the upstream hook points.

Prints one line per architecture; exits 1 if anything fails.
"""

from __future__ import annotations

import sys
import tempfile

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 96
FP32_TOL = 1e-4
TOKENS = torch.tensor([[5, 17, 29, 3, 11, 42, 7, 23], [1, 2, 3, 4, 5, 6, 7, 8]])
EXPERT_HOOKS = ("hook_expert_pre", "hook_expert_post", "hook_expert_out")
SHARED_HOOKS = {  # TransformerLens's own shared-expert hook -> tl_moe's (same values; tl_moe's are [batch, pos, ...])
    "shared_expert.out.hook_in": "hook_shared_post",
    "shared_experts.out.hook_in": "hook_shared_post",
    "shared_expert.hook_out": "hook_shared_out",
    "shared_experts.hook_out": "hook_shared_out",
    "shared_expert_gate.hook_out": "hook_shared_gate",
}
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
)
ARCHITECTURES = {
    "olmoe": dict(num_experts=8, num_experts_per_tok=2, intermediate_size=16),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=16),
    "qwen3_moe": dict(
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        head_dim=8,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    ),
    "qwen2_moe": dict(
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=24,
        intermediate_size=48,
        decoder_sparse_step=1,
        mlp_only_layers=[0],
    ),
    "deepseek_v3": dict(
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        intermediate_size=48,
        n_shared_experts=1,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
    ),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=16, head_dim=8),
}


def tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")


def save_tiny(architecture: str, directory: str) -> None:
    torch.manual_seed(0)
    config = AutoConfig.for_model(architecture, **{**COMMON, **ARCHITECTURES[architecture]})
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random (selection) biases, so a dropped bias shows
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("_bias") or name.endswith("e_score_correction_bias"):
                tensor.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    tokenizer().save_pretrained(directory)


def boot(directory: str):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(directory, device="cpu", dtype=torch.float32)


def tl_moe_own(directory: str):
    """A bridge whose expert hooks are tl_moe's: the upstream hook points are hidden before attach."""
    import tl_moe

    bridge = boot(directory)
    for block in bridge.blocks:
        mlp = getattr(block, "mlp", None)
        for name in EXPERT_HOOKS:
            if mlp is not None:
                mlp._modules.pop(name, None)
    tl_moe.attach(bridge)
    assert not bridge._tl_moe_attachment.upstream_experts
    return bridge


def check(architecture: str) -> tuple[bool, str]:
    import tl_moe

    with tempfile.TemporaryDirectory(prefix=f"tiny_{architecture}_") as directory:
        save_tiny(architecture, directory)
        hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            hf_logits = hf.eval()(TOKENS).logits
        patched = boot(directory)
        patched.set_use_expert_hooks(True)  # opt-in in TransformerLens
        names = [name for name in patched.hook_dict if name.rsplit(".", 1)[-1] in EXPERT_HOOKS]
        shared = {
            f"blocks.{layer}.mlp.{theirs}": f"blocks.{layer}.mlp.{ours}"
            for layer in range(COMMON["num_hidden_layers"])
            for theirs, ours in SHARED_HOOKS.items()
            if f"blocks.{layer}.mlp.{theirs}" in patched.hook_dict
        }
        with torch.no_grad():
            idle = patched(TOKENS)
            logits, cache = patched.run_with_cache(TOKENS)
        own = tl_moe_own(directory)
        with torch.no_grad():
            own_logits, own_cache = own.run_with_cache(TOKENS, names_filter=names + list(shared.values()))
        uses_upstream = tl_moe.attach(patched)._tl_moe_attachment.upstream_experts
    failures = []
    if not names:
        failures.append("no expert hooks")
    unequal = [name for name in names if not torch.equal(cache[name], own_cache[name])]
    if unequal:
        failures.append(f"hooks differ from tl_moe: {unequal}")
    unequal = [
        name
        for name, theirs in shared.items()
        if not torch.equal(cache[name].flatten(), own_cache[theirs].flatten())
    ]
    if unequal:
        failures.append(f"shared-expert hooks differ from tl_moe: {unequal}")
    if not torch.equal(logits, own_logits):
        failures.append("logits differ from tl_moe's")
    gap = max(float((idle - hf_logits).abs().max()), float((logits - hf_logits).abs().max()))
    if gap > FP32_TOL:
        failures.append(f"logits differ from HF by {gap:.2e}")
    if not uses_upstream:
        failures.append("tl_moe did not use the upstream hooks")
    detail = (
        f"{len(names)} expert + {len(shared)} shared-expert hooks bit-identical to tl_moe, "
        f"max |logits - HF| {gap:.1e}"
    )
    return not failures, "; ".join(failures) or detail


def main() -> int:
    failed = 0
    for architecture in ARCHITECTURES:
        try:
            ok, detail = check(architecture)
        except Exception as error:  # report and go on to the next architecture
            ok, detail = False, f"{type(error).__name__}: {error}"
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {architecture}: {detail}", flush=True)
    print(f"compare: {len(ARCHITECTURES) - failed}/{len(ARCHITECTURES)} architectures agree")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
