"""Hook functions that only stash activations, and the forward pass that fills them.

Each requested hook gets a function that stores the (detached) tensor under the name
the accumulators asked for — aliases included — moved to one collection device.
Moving there inside the hook is what makes models split over several devices (e.g.
loaded with accelerate's ``device_map``) work unchanged: every tensor an accumulator
sees lives on the collection device, whichever device computed it.

With ``stop_early`` the forward is abandoned as soon as every requested hook has
fired, so layers after the last needed one (and the unembedding) are not computed.
This assumes each hook point fires once per forward, which holds for TransformerLens
hook points; a hook that fires twice raises rather than silently overwriting.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Int

from tl_moe.errors import InputError


class _AllHooksCaptured(Exception):
    """Raised from inside the forward once nothing more is needed from it."""


class UnknownHookError(InputError, KeyError):
    """An accumulator asked for a hook point the model does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


def check_hook_names(model: Any, names: Sequence[str]) -> None:
    """Raise ``UnknownHookError`` (a ``KeyError``) for requested hooks the model lacks, with close matches."""
    available = set(getattr(model, "hook_dict", {}) or {})
    get_hook_point = getattr(model, "get_hook_point", None)
    missing = [
        name
        for name in names
        if name not in available and (get_hook_point is None or get_hook_point(name) is None)
    ]
    if not missing:
        return
    lines = []
    for name in missing:
        close = difflib.get_close_matches(name, sorted(available), n=5, cutoff=0.6)
        hint = f" — did you mean {', '.join(close)}?" if close else ""
        lines.append(f"  {name!r}{hint}")
    raise UnknownHookError(
        "the model has no hook point named:\n" + "\n".join(lines) + f"\n({len(available)} hook points exist; "
        "see model.hook_dict for all of them)."
    )


class ActivationCapture:
    """Runs forwards and returns, per forward, the tensors seen at the requested hooks.

    Args:
        names: hook names to capture (duplicates are captured once).
        device: where captured tensors are moved.
        stop_early: abandon the forward once every hook has fired.
    """

    def __init__(self, names: Sequence[str], device: torch.device, *, stop_early: bool = True) -> None:
        self.names = tuple(dict.fromkeys(names))
        self.device = device
        self.stop_early = stop_early
        self.paused = False
        self._captured: dict[str, torch.Tensor] = {}

    def fwd_hooks(self) -> list[tuple[str, Callable[..., None]]]:
        """``(name, hook_fn)`` pairs for ``model.hooks(fwd_hooks=...)``."""
        return [(name, self._stash_as(name)) for name in self.names]

    def _stash_as(self, name: str) -> Callable[..., None]:
        def stash(activation: torch.Tensor, hook: Any = None) -> None:
            if self.paused:  # an extra (interventional) forward of the same batch
                return
            if name in self._captured:
                raise RuntimeError(
                    f"hook {name!r} fired twice in one forward; the collection pass needs "
                    "hook points that fire once per forward."
                )
            if not isinstance(activation, torch.Tensor):
                raise TypeError(f"hook {name!r} produced a {type(activation).__name__}, not a tensor.")
            self._captured[name] = activation.detach().to(self.device, non_blocking=True)
            if self.stop_early and len(self._captured) == len(self.names):
                raise _AllHooksCaptured

        return stash

    def run(
        self,
        model: Any,
        input_ids: Int[torch.Tensor, "batch pos"],
        attention_mask: Bool[torch.Tensor, "batch pos"],
    ) -> dict[str, torch.Tensor]:
        """One forward of ``model`` (its hooks already registered); the captured tensors by name.

        When no hook is requested (accumulators that only read ``BatchMeta``) the
        forward is skipped altogether.
        """
        if not self.names:
            return {}
        self._captured = {}
        try:
            model(input_ids, attention_mask=attention_mask.to(input_ids.dtype), return_type=None)
        except _AllHooksCaptured:
            pass
        captured, self._captured = self._captured, {}
        missing = [name for name in self.names if name not in captured]
        if missing:
            raise RuntimeError(
                f"these hooks exist but did not fire during the forward: {missing}. Hooks on "
                "optional paths (e.g. attention internals under some implementations) may never run."
            )
        return captured
