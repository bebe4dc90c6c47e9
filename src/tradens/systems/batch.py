"""Atomic systems: validation and batching.

Everything the representations consume is a :class:`Batch`, one big
disconnected graph of all structures (positions in Å):

* ``positions [atom, 3]``, ``numbers [atom]``, ``structure [atom]``
  (index of the structure of each atom),
* ``cells [structure, 3, 3]`` (rows are lattice vectors), ``pbc [structure, 3]``.

:func:`as_batch` accepts an ``ase.Atoms``, a :class:`System`, a list of either,
or a dict of arrays, validates them and never modifies its inputs (arrays are
copied).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["System", "Batch", "as_batch"]


@dataclass(frozen=True)
class System:
    """One structure given as plain arrays.

    Parameters
    ----------
    positions : array-like or torch.Tensor
        Cartesian positions, shape ``[atom, 3]``, Å.
    numbers : array-like
        Atomic numbers, shape ``[atom]``.
    cell : array-like, optional
        Lattice vectors as rows, shape ``[3, 3]``, Å. Zeros (default) for a
        non-periodic system.
    pbc : bool or sequence of 3 bool, optional
        Periodicity along each lattice vector (default: all False).
    """

    positions: object
    numbers: object
    cell: object = None
    pbc: object = False


@dataclass
class Batch:
    """Validated structures concatenated into one graph (see module docstring)."""

    positions: torch.Tensor  # [atom, 3]
    numbers: torch.Tensor  # [atom] long
    structure: torch.Tensor  # [atom] long
    cells: torch.Tensor  # [structure, 3, 3]
    pbc: torch.Tensor  # [structure, 3] bool
    offsets: list[int]  # first atom of each structure, plus the total at the end

    @property
    def n_structures(self) -> int:
        """Number of structures."""
        return int(self.cells.shape[0])

    @property
    def n_atoms(self) -> int:
        """Total number of atoms."""
        return int(self.positions.shape[0])


def _system_arrays(frame, index: int):
    try:
        import ase
    except ImportError:  # pragma: no cover - ase is a dependency
        ase = None
    if ase is not None and isinstance(frame, ase.Atoms):
        return (
            frame.get_positions(),
            frame.get_atomic_numbers(),
            np.asarray(frame.get_cell()[:]),
            np.asarray(frame.get_pbc()),
        )
    if isinstance(frame, System):
        return frame.positions, frame.numbers, frame.cell, frame.pbc
    if isinstance(frame, dict):
        unknown = set(frame) - {"positions", "numbers", "cell", "pbc"}
        if unknown:
            raise ValueError(
                f"structure {index}: unknown keys {sorted(unknown)} (expected positions, numbers, cell, pbc)"
            )
        return frame["positions"], frame["numbers"], frame.get("cell"), frame.get("pbc", False)
    raise TypeError(
        f"structure {index}: expected ase.Atoms, tradens.System or a dict of arrays, got {type(frame).__name__}"
    )


def _as_frames(systems) -> list:
    try:
        import ase

        if isinstance(systems, ase.Atoms):
            return [systems]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(systems, (System, dict)):
        return [systems]
    if isinstance(systems, Sequence) or hasattr(systems, "__iter__"):
        frames = list(systems)
        if not frames:
            raise ValueError("empty list of structures: nothing to compute")
        return frames
    raise TypeError(f"expected a structure or a list of structures, got {type(systems).__name__}")


def as_batch(
    systems, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Batch:
    """Validate and concatenate structures into a :class:`Batch`.

    Parameters
    ----------
    systems : ase.Atoms, System, dict or a list of them
        The structures.
    dtype : torch.dtype, optional
        Floating dtype of positions and cells. Defaults to the dtype of torch
        position tensors, else float64.
    device : torch.device or str, optional
        Device. Defaults to that of torch position tensors, else CPU.

    Raises
    ------
    ValueError
        On wrong shapes, non-finite positions or cells, a singular cell along
        a periodic direction, or an empty list.
    """
    frames = _as_frames(systems)
    positions, numbers, cells, pbcs, structure, offsets = [], [], [], [], [], [0]
    for index, frame in enumerate(frames):
        pos, num, cell, pbc = _system_arrays(frame, index)
        if isinstance(pos, torch.Tensor):
            if dtype is None:
                dtype = pos.dtype if pos.is_floating_point() else torch.float64
            if device is None:
                device = pos.device
        pos_t = (
            pos
            if isinstance(pos, torch.Tensor)
            else torch.as_tensor(np.asarray(pos, dtype=np.float64))
        )
        if pos_t.ndim != 2 or pos_t.shape[1] != 3:
            raise ValueError(
                f"structure {index}: positions must have shape [n_atoms, 3], got {tuple(pos_t.shape)}"
            )
        num_np = np.asarray(num.detach().cpu() if isinstance(num, torch.Tensor) else num)
        if num_np.ndim != 1 or num_np.shape[0] != pos_t.shape[0]:
            raise ValueError(
                f"structure {index}: numbers must have shape [{pos_t.shape[0]}], got {tuple(num_np.shape)}"
            )
        if num_np.size and (not np.issubdtype(num_np.dtype, np.integer) or num_np.min() < 0):
            raise ValueError(f"structure {index}: atomic numbers must be non-negative integers")
        if not bool(torch.isfinite(pos_t).all()):
            raise ValueError(f"structure {index}: positions contain NaN or inf")
        if cell is None:
            cell_t = torch.zeros(3, 3, dtype=torch.float64)
        else:
            cell_t = (
                cell
                if isinstance(cell, torch.Tensor)
                else torch.as_tensor(np.asarray(cell, dtype=np.float64))
            )
        if cell_t.shape != (3, 3):
            raise ValueError(
                f"structure {index}: cell must have shape [3, 3], got {tuple(cell_t.shape)}"
            )
        if not bool(torch.isfinite(cell_t).all()):
            raise ValueError(f"structure {index}: cell contains NaN or inf")
        pbc_np = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        if pbc_np.any():
            cell64 = cell_t.detach().to("cpu", torch.float64)
            if (
                abs(float(torch.linalg.det(cell64)))
                < 1e-10 * max(float(cell64.abs().max()), 1.0) ** 3
            ):
                raise ValueError(
                    f"structure {index}: the cell is singular (zero volume) but pbc={pbc_np.tolist()}"
                )
        positions.append(pos_t)
        numbers.append(torch.as_tensor(num_np.astype(np.int64)))
        cells.append(cell_t)
        pbcs.append(torch.as_tensor(pbc_np))
        structure.append(torch.full((pos_t.shape[0],), index, dtype=torch.long))
        offsets.append(offsets[-1] + pos_t.shape[0])
    dtype = dtype or torch.float64
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    return Batch(
        positions=torch.cat([p.to(device=device, dtype=dtype) for p in positions]),
        numbers=torch.cat(numbers).to(device),
        structure=torch.cat(structure).to(device),
        cells=torch.stack([c.to(device=device, dtype=dtype) for c in cells]),
        pbc=torch.stack(pbcs).to(device),
        offsets=offsets,
    )
