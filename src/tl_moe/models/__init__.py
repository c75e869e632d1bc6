"""Loading MoE models as TransformerBridges with router and per-expert hook points."""

from tl_moe.models.architectures import ARCHITECTURES, UnsupportedArchitectureError
from tl_moe.models.attach import attach, detach, is_attached, load
from tl_moe.models.build import build_model, hf_config_from, save_model
from tl_moe.models.config import MoEConfig, RoutingRule
from tl_moe.models.hook_names import HOOK_KINDS, HookNameError, get_act_name
from tl_moe.models.introspect import moe_config

__all__ = [
    "ARCHITECTURES",
    "HOOK_KINDS",
    "HookNameError",
    "MoEConfig",
    "RoutingRule",
    "UnsupportedArchitectureError",
    "attach",
    "build_model",
    "detach",
    "get_act_name",
    "hf_config_from",
    "is_attached",
    "load",
    "moe_config",
    "save_model",
]
