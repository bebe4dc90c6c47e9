"""Linear fits on a dask.distributed cluster: per-partition sufficient statistics, summed.

The normal equations of :mod:`tradens.models._solve` are sums over structures. The
client splits the training structures into contiguous partitions, every worker reduces
its partition to a :class:`~tradens.models._solve.FoldStatistics` (``D x D`` per fold
and property, whatever the number of structures), and the client adds them up in
partition order. Folds, structure weights and labels are decided on the client before
the split, so the model equals the serial fit up to the rounding of the sums (1e-10).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..parallel import map_bounded, n_workers
from ._data import Targets
from ._solve import FoldStatistics

__all__ = ["accumulate_on_cluster", "slice_targets"]


def slice_targets(targets: Targets, start: int, stop: int) -> Targets:
    """The labels of structures ``start .. stop - 1``."""
    first, last = int(targets.offsets[start]), int(targets.offsets[stop])
    return Targets(
        energy=targets.energy[start:stop].copy(),
        forces=targets.forces[first:last].copy(),
        stress=targets.stress[start:stop].copy(),
        n_atoms=targets.n_atoms[start:stop].copy(),
        offsets=targets.offsets[start : stop + 1] - first,
    )


def _partition_statistics(shared: tuple, part: tuple) -> FoldStatistics:
    """Statistics of one partition (runs on a worker)."""
    model, basis, species, n_folds, use_forces, use_stress = shared
    frames, targets, weights, folds = part
    return model._accumulate(
        frames, targets, basis, species, weights, folds, n_folds, use_forces, use_stress
    )


def accumulate_on_cluster(
    model: Any,
    cluster: tuple[Any, int | None],
    frames: list,
    targets: Targets,
    basis: Any,
    species: tuple,
    weights: np.ndarray,
    folds: np.ndarray,
    n_folds: int,
    derivatives: tuple[bool, bool],
) -> FoldStatistics:
    """``model._accumulate`` of ``frames``, partitioned over the workers of ``client``.

    Parameters
    ----------
    cluster : (distributed.Client, int or None)
        The client and ``chunk_size``.
    chunk_size : int, optional
        Structures per partition (one task); default: a quarter of an even share per
        worker, at least ``model.batch_size``.
    derivatives : (bool, bool)
        Whether force and stress rows are fitted.
    """
    use_forces, use_stress = derivatives
    client, chunk_size = cluster
    n = len(frames)
    if chunk_size is None:
        chunk_size = max(int(model.batch_size), -(-n // (4 * n_workers(client))))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be an integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    worker_model = copy.copy(model)
    worker_model.progress = False
    for name in ("_cluster", "_frames"):  # nothing the workers need, and maybe large
        worker_model.__dict__.pop(name, None)
    shared = (worker_model, basis, species, n_folds, use_forces, use_stress)

    def parts():
        for c, start in enumerate(range(0, n, chunk_size)):
            stop = min(start + chunk_size, n)
            yield (
                c,
                (
                    frames[start:stop],
                    slice_targets(targets, start, stop),
                    weights[start:stop],
                    folds[start:stop],
                ),
            )

    total = FoldStatistics(n_folds, basis.n_outputs, len(species))
    waiting: dict[int, FoldStatistics] = {}
    expected = 0
    for c, stats in map_bounded(client, _partition_statistics, parts(), shared=shared):
        waiting[c] = stats
        while expected in waiting:  # add in partition order: the same sums on every run
            total.absorb(waiting.pop(expected))
            expected += 1
    return total
