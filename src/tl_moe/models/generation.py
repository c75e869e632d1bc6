"""A contained, reversible workaround for cached generation through the bridge.

TransformerLens 4.3's attention bridge looks for the KV cache under ``kwargs["past_key_values"]``
(or ``layer_past``); transformers 5.24's decoder layers pass it as ``cache=``. The bridge then
never updates the cache, and ``bridge.generate(use_past_kv_cache=True)`` attends each new token
to itself only — cached and uncached generation disagree, on dense models too.

:func:`install` gives each attention component of one bridge an instance-level
``_update_kv_cache`` that also accepts ``cache=``; :func:`uninstall` removes it. Nothing is
patched at class level, and nothing is installed when the installed TransformerLens already
reads ``cache``. :func:`tl_moe.models.attach.attach` installs it, ``detach`` removes it.
"""

from __future__ import annotations

import functools
import inspect
import types

from torch import nn

_MARK = "_tl_moe_cache_kwarg_compat"


@functools.cache
def needed() -> bool:
    """Whether the installed TransformerLens's attention bridge ignores a ``cache=`` kwarg."""
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

        source = inspect.getsource(AttentionBridge._update_kv_cache)
    except (ImportError, AttributeError, OSError, TypeError):
        return False
    return '"past_key_values"' in source and '"cache"' not in source


def _update_kv_cache(self, k, v, **kwargs):
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs["past_key_values"] = kwargs["cache"]
    return type(self)._update_kv_cache(self, k, v, **kwargs)


def install(bridge: nn.Module) -> list[nn.Module]:
    """Let every attention component of ``bridge`` find the KV cache under ``cache=``; returns them."""
    if not needed():
        return []
    patched = []
    for module in bridge.modules():
        if hasattr(type(module), "_update_kv_cache") and _MARK not in module.__dict__:
            object.__setattr__(module, "_update_kv_cache", types.MethodType(_update_kv_cache, module))
            object.__setattr__(module, _MARK, True)
            patched.append(module)
    return patched


def uninstall(modules: list[nn.Module]) -> None:
    """Undo :func:`install` on ``modules``."""
    for module in modules:
        module.__dict__.pop("_update_kv_cache", None)
        module.__dict__.pop(_MARK, None)
