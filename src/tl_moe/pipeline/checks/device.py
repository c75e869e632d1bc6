"""The device a run uses: ``auto`` resolved, anything else checked to exist on this machine."""

from __future__ import annotations

import torch

from tl_moe.pipeline.checks.errors import DeviceError

__all__ = ["resolve_device"]

_DEVICES_ACCEPTED = "accepted: auto, cpu, cuda, cuda:N, mps"


def resolve_device(spec: str | torch.device | None = None, *, input_name: str = "--device") -> torch.device:
    """The ``torch.device`` for ``spec``, checked to exist on this machine.

    ``None`` or ``"auto"``: the first CUDA GPU if there is one, else Apple's MPS if available,
    else the CPU. Anything else must parse as a torch device and be present.

    Raises:
        DeviceError: ``spec`` is not a device (``"banana"``), or names one this machine lacks
            (``"cuda"`` without CUDA, ``"cuda:3"`` with one GPU, ``"mps"`` off a Mac).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "auto")):
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec.strip().lower() if isinstance(spec, str) else spec)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(
            f"{input_name} {str(spec)!r} is not a device; {_DEVICES_ACCEPTED}.", input_name=input_name
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "with" if torch.version.cuda else "without"
            raise DeviceError(
                f"{input_name} {str(spec)!r}: CUDA is not available here (torch {torch.__version__} built "
                f"{built} CUDA, no GPU visible); accepted: cpu or auto.",
                input_name=input_name,
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"{input_name} {str(spec)!r}: this machine has {count} CUDA device(s); accepted: "
                f"cuda:0..cuda:{count - 1}, cpu or auto.",
                input_name=input_name,
            )
        return device if device.index is not None else torch.device("cuda", 0)
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(
                f"{input_name} 'mps' is not available here; accepted: cpu, cuda or auto.",
                input_name=input_name,
            )
        return device
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and is_available():
        return device
    raise DeviceError(
        f"{input_name} {str(spec)!r} is not a device this machine has; {_DEVICES_ACCEPTED}.",
        input_name=input_name,
    )


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
