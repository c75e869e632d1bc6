"""tl_moe: expert-level interpretability for Mixture-of-Experts models on TransformerLens.

Quick start::

    import tl_moe
    model = tl_moe.load("toy/moe-8x2")            # a TransformerBridge with expert hook points
    name = tl_moe.get_act_name("expert_post", 2)   # "blocks.2.mlp.hook_expert_post"
    logits, cache = model.run_with_cache(tokens, names_filter=name)
"""

from tl_moe.models.hook_names import hook_names  # noqa: I001 (the function, not the module)
from tl_moe.models import (
    HOOK_KINDS,
    HookNameError,
    MoEConfig,
    RoutingRule,
    UnsupportedArchitectureError,
    attach,
    build_model,
    detach,
    get_act_name,
    interventions,
    load,
    moe_config,
    save_model,
)
from tl_moe.models.attach import register_name_resolver


def _resolve_toy_name(name: str) -> tuple[str, dict]:
    """``"toy/..."`` -> the shipped checkpoint's directory and the zoo's tokenizer.

    Registered here, above ``models/``, so that ``models/`` never imports the zoo.
    """
    from tl_moe.zoo.registry import checkpoint_path
    from tl_moe.zoo.tokenizer import load_tokenizer

    return str(checkpoint_path(name)), {"tokenizer": load_tokenizer()}


register_name_resolver("toy/", _resolve_toy_name)

__version__ = "0.1.0"

__all__ = [
    "HOOK_KINDS",
    "HookNameError",
    "MoEConfig",
    "RoutingRule",
    "UnsupportedArchitectureError",
    "attach",
    "build_model",
    "detach",
    "get_act_name",
    "hook_names",
    "interventions",
    "load",
    "moe_config",
    "save_model",
]
