"""pytest plugin: every TransformerBridge constructed gets tl_moe attached at the end of ``__init__``.

Used by ``benchmarks/tl_suite_with_tl_moe.py`` to run TransformerLens's own tests with tl_moe
attached. A model tl_moe refuses (UnsupportedArchitectureError) is left as booted.
"""

from __future__ import annotations

import functools

ATTACHED: list[str] = []
REFUSED: list[str] = []


def pytest_configure(config):
    from transformer_lens.model_bridge import TransformerBridge

    import tl_moe
    from tl_moe.models.architectures import UnsupportedArchitectureError

    original = TransformerBridge.__init__

    @functools.wraps(original)
    def init_and_attach(bridge, *args, **kwargs):
        original(bridge, *args, **kwargs)
        model_type = getattr(getattr(bridge.original_model, "config", None), "model_type", "?")
        try:
            tl_moe.attach(bridge)
            ATTACHED.append(model_type)
        except (UnsupportedArchitectureError, TypeError):
            REFUSED.append(model_type)

    TransformerBridge.__init__ = init_and_attach


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"tl_moe auto-attach: attached to {len(ATTACHED)} bridges ({', '.join(sorted(set(ATTACHED)))}); "
        f"refused {len(REFUSED)} ({', '.join(sorted(set(REFUSED)))})"
    )
