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
) -> Features:
    """Run ``representation.forward`` over batches of structures and collect :class:`Features`.

    ``forward(batch)`` must return ``(values [row, feature], rows)`` where ``rows``
    are atom indices into the batch, or structure indices when ``averaged``.
    Shared by every representation's ``compute``.
    """
    from tqdm.auto import tqdm

    from ..kernels.determinism import deterministic
    from ..systems.batch import _as_frames, as_batch

    if output not in ("numpy", "torch"):
        raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
    frames = _as_frames(systems)
    parts, structure, center, numbers = [], [], [], []
    with torch.no_grad(), deterministic(device):
        for start in tqdm(
            range(0, len(frames), batch_size), desc=desc, unit="batch", disable=not progress
        ):
            batch = as_batch(frames[start : start + batch_size], dtype=dtype, device=device)
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
