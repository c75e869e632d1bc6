"""Loading MoE models as TransformerBridges with router and per-expert hook points."""

from tl_moe.models.architectures import ARCHITECTURES, UnsupportedArchitectureError
from tl_moe.models.attach import (
    attach,
    detach,
    is_attached,
    load,
    moe_component_name,
    register_name_resolver,
)
from tl_moe.models.build import build_model, hf_config_from, save_model
from tl_moe.models.catalog import architecture_table_markdown, registry_architectures
from tl_moe.models.config import MoEConfig, RoutingRule
from tl_moe.models.hook_names import HOOK_KINDS, HookNameError, get_act_name
from tl_moe.models.introspect import config_of, moe_config

__all__ = [
    "ARCHITECTURES",
    "HOOK_KINDS",
    "HookNameError",
    "MoEConfig",
    "RoutingRule",
    "UnsupportedArchitectureError",
    "architecture_table_markdown",
    "attach",
    "config_of",
    "build_model",
    "detach",
    "get_act_name",
    "hf_config_from",
    "is_attached",
    "load",
    "moe_component_name",
    "moe_config",
    "register_name_resolver",
    "registry_architectures",
    "save_model",
]
