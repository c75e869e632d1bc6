"""The errors of the input checks: each an :class:`~tl_moe.errors.InputError` whose ``.input`` names the
input (``"--seq-len"``), so that a caller can tell them apart without parsing the message."""

from __future__ import annotations

from tl_moe.errors import InputError

__all__ = [
    "BudgetError",
    "CorpusSplitError",
    "DeviceError",
    "LayersError",
    "ModelSourceError",
    "OutputDirError",
    "ProbeSizeError",
    "SeqLenError",
]


class SeqLenError(InputError):
    """A sequence length the model or the memory cannot take."""


class DeviceError(InputError):
    """A device string that is not a device, or a device this machine does not have."""


class ModelSourceError(InputError):
    """A model name or path that cannot be loaded."""


class OutputDirError(InputError):
    """An output folder that is a file or cannot be written."""


class CorpusSplitError(InputError):
    """A corpus split that is missing or has no documents."""


class LayersError(InputError):
    """Layers that are not (sparse) layers of the model."""


class ProbeSizeError(InputError):
    """Probe sizes (k neurons) that a probed unit does not have."""


class BudgetError(InputError):
    """A token budget (or driver count) an analysis cannot run with on this corpus and model."""
