"""The result of a representation's ``compute``."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..systems.batch import frame_atoms as _frame_atoms

__all__ = ["Features"]


@dataclass
class Features:
    """Per-centre (or per-structure) feature vectors with their bookkeeping.

    Attributes
    ----------
    values : numpy.ndarray or torch.Tensor
        ``[row, feature]``; one row per centre atom, or per structure when
        averaged.
    structure : numpy.ndarray or torch.Tensor
        Structure index of every row, ``[row]``.
    center : numpy.ndarray or torch.Tensor
        Index of the centre atom inside its structure, ``[row]`` (``-1`` for
        averaged rows).
    numbers : numpy.ndarray or torch.Tensor
        Atomic number of the centre, ``[row]`` (``0`` for averaged rows).
    labels : dict of numpy.ndarray
        What each column is: arrays of length ``feature`` (for example
        ``"l"``, ``"channel_1"``, ``"channel_2"`` for a power spectrum).
    names : list of str
        Human-readable name of every column.
    skipped : list of (int, str)
        Structures left out by ``compute(..., skip_bad=True)``: index in the
        input and the reason (empty otherwise).
    """

    values: np.ndarray | torch.Tensor
    structure: np.ndarray | torch.Tensor
    center: np.ndarray | torch.Tensor
    numbers: np.ndarray | torch.Tensor
    labels: dict = field(default_factory=dict)
    names: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    @property
    def n_features(self) -> int:
        """Number of columns."""
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def numpy(self) -> Features:
        """A copy with numpy arrays (detached, on the CPU)."""

        def conv(x):
            return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

        return Features(
            conv(self.values),
            conv(self.structure),
            conv(self.center),
            conv(self.numbers),
            dict(self.labels),
            list(self.names),
            list(self.skipped),
        )

    def pooled(self, how: str = "mean") -> np.ndarray | torch.Tensor:
        """Per-structure features ``[structure, feature]`` by ``"mean"`` or ``"sum"`` over rows."""
        if how not in ("mean", "sum"):
            raise ValueError(f"pooling must be 'mean' or 'sum', got {how!r}")
        values = torch.as_tensor(self.values)
        structure = torch.as_tensor(self.structure, device=values.device).long()
        n = int(structure.max()) + 1 if structure.numel() else 0
        out = torch.zeros(n, values.shape[1], dtype=values.dtype, device=values.device)
        out.index_add_(0, structure, values)
        if how == "mean":
            counts = torch.bincount(structure, minlength=n).clamp(min=1).to(values.dtype)
            out = out / counts[:, None]
        return out.numpy() if isinstance(self.values, np.ndarray) else out


def _check_compute_memory(
    representation: torch.nn.Module,
    frames: list,
    ranges: list[tuple[int, int]],
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    averaged: bool,
) -> None:
    """Refuse a ``compute`` whose estimated memory exceeds the available memory."""
    estimate = getattr(representation, "memory_estimate", None)
    if estimate is None:
        return
    from ..kernels.budget import check_memory

    counts = [_frame_atoms(frame) for frame in frames]
    n_rows = len(frames) if averaged else sum(counts)
    batch_atoms = max((sum(counts[start:stop]) for start, stop in ranges), default=0)
    dtype = torch.float64 if dtype is None else dtype
    n_features = representation.n_features
    check_memory(
        estimate(n_rows, batch_atoms, dtype),
        f"{type(representation).__name__} features of {len(frames)} structures "
        f"({n_rows} rows x {n_features} features, {str(dtype).replace('torch.', '')})",
        "compute fewer structures per call, use dtype=torch.float32 (command line: "
        "--dtype float32), fewer mixed channels K, or a mixing instead of the full SOAP",
        device,
    )


def check_batch_size(batch_size: object) -> None:
    """Raise unless ``batch_size`` is None or an integer >= 1 (structures per batch)."""
    if batch_size is None:
        return
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool):
        raise TypeError(f"batch_size must be an integer (structures per batch), got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (structures per batch), got {batch_size}")


def compute_in_batches(
    representation,
    systems,
    *,
    output: str,
    dtype,
    device,
    batch_size: int | None,
    progress: bool,
    desc: str,
    averaged: bool = False,
    min_distance: float | None = None,
    skip_bad: bool = False,
) -> Features:
    """Run ``representation.forward`` over batches of structures and collect :class:`Features`.

    ``forward(batch)`` must return ``(values [row, feature], rows)`` where ``rows``
    are atom indices into the batch, or structure indices when ``averaged``.
    Shared by every representation's ``compute``. ``min_distance`` (Å) goes to
    :func:`~tradens.systems.batch.as_batch` (``None``: its default). ``batch_size``
    structures make a batch; ``None`` packs them by size
    (:func:`~tradens.systems.batch.batch_ranges`). A structure that fails
    (``ValueError``: bad cell, NaN, overlapping atoms, unknown element) is named
    by its index in ``systems``; with ``skip_bad`` it is left out instead, and
    listed in ``Features.skipped`` (and in a warning). The progress bar counts
    structures and shows atoms per second.
    """
    from tqdm.auto import tqdm

    from ..kernels.determinism import deterministic
    from ..systems.batch import DEFAULT_MIN_DISTANCE, _as_frames, batch_ranges

    if output not in ("numpy", "torch"):
        raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
    check_batch_size(batch_size)
    frames = _as_frames(systems)
    min_distance = DEFAULT_MIN_DISTANCE if min_distance is None else min_distance
    counts = [_frame_atoms(frame) for frame in frames]
    ranges = batch_ranges(counts, batch_size)
    _check_compute_memory(representation, frames, ranges, dtype, device, averaged)
    pieces: list[tuple[torch.Tensor, ...]] = []
    skipped: list[tuple[int, str]] = []
    options = dict(dtype=dtype, device=device, min_distance=min_distance, averaged=averaged)
    bar = tqdm(total=len(frames), desc=desc, unit="structure", disable=not progress)
    started, atoms = time.perf_counter(), 0
    with bar, torch.no_grad(), deterministic(device):
        for start, stop in ranges:
            try:
                pieces.append(_compute_batch(representation, frames, start, stop, **options))
            except ValueError:
                if not skip_bad:
                    raise
                for index in range(start, stop):  # one at a time: keep the good ones
                    try:
                        pieces.append(
                            _compute_batch(representation, frames, index, index + 1, **options)
                        )
                    except ValueError as error:
                        skipped.append((index, str(error)))
            atoms += sum(counts[start:stop])
            bar.update(stop - start)
            elapsed = time.perf_counter() - started
            if progress and elapsed > 0:
                bar.set_postfix_str(f"{atoms / elapsed:.3g} atoms/s", refresh=False)
    if skipped:
        listed = "; ".join(f"structure {index}: {reason}" for index, reason in skipped[:10])
        more = f" (and {len(skipped) - 10} more)" if len(skipped) > 10 else ""
        warnings.warn(f"skipped {len(skipped)} bad structure(s): {listed}{more}", stacklevel=3)
    if not pieces:
        raise ValueError(f"all {len(frames)} structures were bad and skipped: nothing computed")
    values, structure, center, numbers = (
        parts[0] if len(parts) == 1 else torch.cat(parts)  # no copy of a large single batch
        for parts in zip(*pieces, strict=True)
    )
    result = Features(
        values,
        structure,
        center,
        numbers,
        labels=representation.feature_labels(),
        names=representation.feature_names(),
        skipped=skipped,
    )
    return result.numpy() if output == "numpy" else result


def _compute_batch(
    representation,
    frames: list,
    start: int,
    stop: int,
    *,
    dtype,
    device,
    min_distance: float,
    averaged: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values, structure, center, numbers)`` of the rows of ``frames[start:stop]``.

    A ValueError names the failing structure by its index in ``frames``.
    """
    from ..density.expansion import UnknownSpeciesError
    from ..systems.batch import as_batch

    batch = as_batch(
        frames[start:stop], dtype=dtype, device=device, min_distance=min_distance, first_index=start
    )
    try:
        values, rows = representation.forward(batch)
    except UnknownSpeciesError as error:
        raise error.in_structure(batch) from None
    if averaged:
        return values, rows + start, torch.full_like(rows, -1), torch.zeros_like(rows)
    offsets = torch.as_tensor(batch.offsets[:-1], device=rows.device)
    return (
        values,
        batch.structure[rows] + start,
        rows - offsets[batch.structure[rows]],
        batch.numbers[rows],
    )
