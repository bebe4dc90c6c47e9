"""Memory budget: refuse a configuration whose estimated memory exceeds what is available.

Representations estimate the bytes a construction or a ``compute`` call will
allocate (the numbers ``tradens info`` prints) and call :func:`check_memory`
before allocating anything, so that a huge ``K``, ``n_max`` or a full SOAP of
many elements fails at once with the estimate and a suggestion instead of
being killed by the kernel after minutes.

The available memory is read from ``/proc/meminfo`` (``MemAvailable``), else
from ``os.sysconf`` (free physical pages); on a CUDA device from
``torch.cuda.mem_get_info``. Where none of these answers, no check is made.
"""

from __future__ import annotations

import os

import torch

__all__ = ["available_memory", "check_memory", "format_bytes"]


def available_memory(device: torch.device | str | None = None) -> int | None:
    """Bytes that can be allocated now on ``device`` (CPU by default), or None if unknown."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):
            return None
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(nbytes: float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units up to PiB)."""
    if nbytes < 1024:
        return f"{int(nbytes)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        nbytes /= 1024
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.1f} {unit}"
    return ""  # pragma: no cover


def check_memory(
    nbytes: float,
    what: str,
    suggestion: str,
    device: torch.device | str | None = None,
) -> None:
    """Raise a ValueError when ``nbytes`` exceeds the memory available on ``device``.

    Parameters
    ----------
    nbytes : float
        Estimated allocation, bytes.
    what : str
        What would be allocated (named in the message).
    suggestion : str
        How to make it fit (a smaller ``K``, a mixing, float32, smaller batches).
    device : torch.device or str, optional
        Where the memory would be allocated (CPU by default).
    """
    available = available_memory(device)
    if available is None or nbytes <= available:
        return
    raise ValueError(
        f"{what} needs about {format_bytes(nbytes)} but only {format_bytes(available)} is "
        f"available; {suggestion}"
    )
