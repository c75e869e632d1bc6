"""Build a random-init Hugging Face model (and save it with a tokenizer) from a :class:`MoEConfig`."""

from __future__ import annotations

from pathlib import Path

import torch

from tl_moe.models.architectures import require_spec
from tl_moe.models.config import MoEConfig


def hf_config_from(cfg: MoEConfig):
    """The Hugging Face config of ``cfg``'s architecture with ``cfg``'s sizes."""
    from transformers import AutoConfig

    spec = require_spec(cfg.architecture)
    head_dim = cfg.d_model // cfg.n_heads
    kwargs = dict(
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads or cfg.n_heads,
        head_dim=head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        hidden_act=cfg.activation,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    kwargs.update(spec.to_hf(cfg))
    kwargs.update(cfg.extra_hf_config)
    return AutoConfig.for_model(cfg.architecture, **kwargs)


def build_model(cfg: MoEConfig, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised Hugging Face causal LM with the architecture and sizes of ``cfg``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config_from(cfg), dtype=dtype)
    return model.eval()


def build_model_from_config(hf_config, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised copy of a Hugging Face causal LM's architecture, from its own config
    (a deep copy, so the model it came from is untouched)."""
    import copy

    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(hf_config), dtype=dtype)
    return model.eval()


def save_model(model, tokenizer, directory: str | Path, include_tokenizer: bool = True) -> Path:
    """Save ``model`` and ``tokenizer`` where ``tl_moe.load(directory)`` can boot them offline.

    With ``include_tokenizer=False`` only the tokenizer's special-token ids are written into the
    model config (the toy zoo shares one tokenizer file instead of a copy per checkpoint).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                setattr(model.config, name, value)
                if getattr(model, "generation_config", None) is not None:
                    setattr(model.generation_config, name, value)
        if include_tokenizer:
            tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory
