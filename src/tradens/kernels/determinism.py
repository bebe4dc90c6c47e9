"""Bitwise-repeatable results on CUDA devices.

On the CPU every reduction of this library runs in a fixed order, so a result
depends only on the inputs and the seed. On CUDA, ``index_add_`` and the
backward passes of indexing accumulate with atomic additions, whose order (and
so the last bits of a float sum) changes from run to run. :func:`deterministic`
switches torch to its deterministic algorithms (sorted, segmented sums) for the
duration of a public call that works on a CUDA device, and back afterwards.

It changes global torch state while active (``torch.use_deterministic_algorithms``
and ``torch.utils.deterministic.fill_uninitialized_memory``, which is turned off:
every buffer of this library is written before it is read) and sets
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` if unset, which cuBLAS needs for repeatable
matrix products. Calls from several threads at once on CUDA should not be mixed
with user code that changes the same switches.
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["deterministic"]


def _is_cuda(device) -> bool:
    if device is None:
        return False
    return torch.device(device).type == "cuda"


@contextlib.contextmanager
def deterministic(device):
    """Use torch's deterministic algorithms while the block runs on a CUDA ``device``.

    A no-op for CPU devices (or ``None``) and when deterministic algorithms are
    already enabled by the caller.
    """
    if not _is_cuda(device) or torch.are_deterministic_algorithms_enabled():
        yield
        return
    import torch.utils.deterministic as settings

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # fill_uninitialized_memory is a property of torch's module subclass, which the stubs
    # do not see (hence the ignores)
    fill = settings.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(True)
    settings.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)
        settings.fill_uninitialized_memory = fill  # type: ignore[attr-defined]
