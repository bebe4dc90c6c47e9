"""The result of a representation's ``compute``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

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
    """

    values: np.ndarray | torch.Tensor
    structure: np.ndarray | torch.Tensor
    center: np.ndarray | torch.Tensor
    numbers: np.ndarray | torch.Tensor
    labels: dict = field(default_factory=dict)
    names: list = field(default_factory=list)

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


def _frame_atoms(frame: object) -> int:
    """Atom count of one input structure without validating it (0 where unknown)."""
    try:
        if isinstance(frame, dict):
            return int(np.shape(frame.get("positions", ()))[0])
        positions = getattr(frame, "positions", None)
        return int(np.shape(positions)[0]) if positions is not None else 0
    except (IndexError, TypeError, ValueError):
        return 0


def _check_compute_memory(
    representation: torch.nn.Module,
    frames: list,
    batch_size: int,
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
    batch_atoms = max(
        (sum(counts[s : s + batch_size]) for s in range(0, len(counts), batch_size)), default=0
    )
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
    """Raise a ValueError unless ``batch_size`` is an integer >= 1 (structures per batch)."""
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
    batch_size: int,
    progress: bool,
    desc: str,
    averaged: bool = False,
    min_distance: float | None = None,
) -> Features:
    """Run ``representation.forward`` over batches of structures and collect :class:`Features`.

    ``forward(batch)`` must return ``(values [row, feature], rows)`` where ``rows``
    are atom indices into the batch, or structure indices when ``averaged``.
    Shared by every representation's ``compute``. ``min_distance`` (Å) goes to
    :func:`~tradens.systems.batch.as_batch` (``None``: its default).
    """
    from tqdm.auto import tqdm

    from ..kernels.determinism import deterministic
    from ..systems.batch import DEFAULT_MIN_DISTANCE, _as_frames, as_batch

    if output not in ("numpy", "torch"):
        raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
    check_batch_size(batch_size)
    frames = _as_frames(systems)
    min_distance = DEFAULT_MIN_DISTANCE if min_distance is None else min_distance
    _check_compute_memory(representation, frames, batch_size, dtype, device, averaged)
    parts, structure, center, numbers = [], [], [], []
    with torch.no_grad(), deterministic(device):
        for start in tqdm(
            range(0, len(frames), batch_size), desc=desc, unit="batch", disable=not progress
        ):
            batch = as_batch(
                frames[start : start + batch_size],
                dtype=dtype,
                device=device,
                min_distance=min_distance,
                first_index=start,
            )
            values, rows = representation.forward(batch)
            parts.append(values)
            if averaged:
                structure.append(rows + start)
                center.append(torch.full_like(rows, -1))
                numbers.append(torch.zeros_like(rows))
            else:
                structure.append(batch.structure[rows] + start)
                offsets = torch.as_tensor(batch.offsets[:-1], device=rows.device)
                center.append(rows - offsets[batch.structure[rows]])
                numbers.append(batch.numbers[rows])
    values = parts[0] if len(parts) == 1 else torch.cat(parts)  # no copy of a large single batch
    result = Features(
        values,
        torch.cat(structure),
        torch.cat(center),
        torch.cat(numbers),
        labels=representation.feature_labels(),
        names=representation.feature_names(),
    )
    return result.numpy() if output == "numpy" else result
