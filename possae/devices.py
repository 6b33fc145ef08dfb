"""The one place that picks the device to compute on, and checks that a named one exists on this machine."""

from __future__ import annotations

import torch


class DeviceUnavailableError(ValueError):
    """A named device cannot be used on this machine; the message lists the devices that can."""


def available_devices() -> list[str]:
    """Return the devices this machine can compute on: 'cpu', then 'cuda', 'cuda:0', ... and 'mps' where present."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | torch.device | None) -> None:
    """Raise DeviceUnavailableError unless `device` is None or names a device of this machine."""
    if device is None:
        return
    choices = ", ".join(available_devices()) + ", or None (CUDA when present, else the CPU)"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceUnavailableError(f"device {device!r} is not a torch device name ({e}); "
                                     f"valid choices on this machine: {choices}.") from None
    name = str(dev)
    if name in available_devices() or (dev.type == "cpu" and dev.index in (None, 0)):
        return
    why = {"cuda": "torch finds no usable CUDA GPU here" if not torch.cuda.is_available()
           else f"this machine has {torch.cuda.device_count()} CUDA device(s)",
           "mps": "torch finds no Apple MPS device here"}.get(dev.type, "torch cannot compute on it here")
    raise DeviceUnavailableError(f"device {name!r} is unavailable on this machine: {why}. "
                                 f"Valid choices here: {choices}; e.g. -p device cpu.")


def default_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on: the one given (checked to exist here), else CUDA when present, else CPU."""
    if device is not None:
        check_device(device)
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
