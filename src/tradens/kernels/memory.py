"""Large output buffers backed by transparent huge pages.

A freshly allocated CPU tensor is mapped 4 KiB page by page as it is first
written. For the large outputs of this library (the full SOAP of many
elements, descriptor Jacobians: hundreds of MB to GB) the page faults alone
can cost as much as computing the values: on the 2-core development VM a
259 MB Jacobian took about 10 µs of kernel time per 4 KiB page, 0.8 s in all.
:func:`empty` maps such buffers anonymously and asks the kernel for 2 MiB
pages (``madvise(MADV_HUGEPAGE)``; honoured where transparent huge pages are
``always`` or ``madvise``), which needs 512 times fewer faults. The memory
comes from the kernel zeroed, so :func:`zeros` costs no extra pass.

Everything else (small tensors, other devices, platforms without
``MADV_HUGEPAGE``) uses the ordinary ``torch.empty`` / ``torch.zeros``. The
mapping lives as long as the tensor (and anything viewing its memory, e.g.
``tensor.numpy()``) and is unmapped when the last reference goes.
"""

from __future__ import annotations

import math
import mmap

import torch

__all__ = ["empty", "zeros", "HUGE_PAGE_THRESHOLD"]

HUGE_PAGE_THRESHOLD = 4 * 2**20  # bytes; smaller buffers use the ordinary allocator
_HUGE_PAGE = 2 * 2**20
_CAN_ADVISE = hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap.mmap, "madvise")


def _mapped(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """A zeroed tensor on an anonymous huge-page mapping, or None where that is unavailable."""
    count = math.prod(shape)
    n_bytes = count * torch.empty((), dtype=dtype).element_size()
    if not _CAN_ADVISE or n_bytes < HUGE_PAGE_THRESHOLD:
        return None
    try:
        # one extra huge page so that the tensor can start on a 2 MiB boundary
        region = mmap.mmap(-1, n_bytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return None
    flat = torch.frombuffer(region, dtype=torch.uint8)  # keeps ``region`` alive
    offset = (-flat.data_ptr()) % _HUGE_PAGE
    return flat[offset : offset + n_bytes].view(dtype).view(shape)


def _allocate(shape: tuple[int, ...], dtype: torch.dtype, device, fallback) -> torch.Tensor:
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cpu":
        out = _mapped(tuple(int(s) for s in shape), dtype)
        if out is not None:
            return out
    return fallback(shape, dtype=dtype, device=device)


def empty(
    *shape: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """Uninitialised tensor ``shape``; large CPU buffers on huge pages (then zero-filled)."""
    return _allocate(shape, dtype, device, torch.empty)


def zeros(
    *shape: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """Zero tensor ``shape``; large CPU buffers on huge pages (kernel-zeroed, no fill pass)."""
    return _allocate(shape, dtype, device, torch.zeros)
