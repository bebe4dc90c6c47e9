"""Atomic systems: validation and batching.

Everything the representations consume is a :class:`Batch`, one big
disconnected graph of all structures (positions in Å):

* ``positions [atom, 3]``, ``numbers [atom]``, ``structure [atom]``
  (index of the structure of each atom),
* ``cells [structure, 3, 3]`` (rows are lattice vectors), ``pbc [structure, 3]``.

:func:`as_batch` accepts an ``ase.Atoms``, a :class:`System`, a list of either,
or a dict of arrays, validates them and never modifies its inputs (arrays are
copied).

Positions are stored relative to the first atom of their structure (a rigid
translation, invisible to every representation), computed in float64 before
any cast: float32 features are then the same wherever the structure sits (at
1e8 Å a float32 coordinate has a resolution of 8 Å).

Cells: a periodic direction needs a lattice vector, and the periodic vectors
must be linearly independent. A non-periodic direction may have a zero vector
(as ASE builds 2D and 1D systems, e.g. ``ase.build.graphene(vacuum=None)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["System", "Batch", "as_batch", "batch_ranges", "ATOMS_PER_BATCH", "DEFAULT_MIN_DISTANCE"]


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
    # pairs closer than this (Å) are an error in :func:`~tradens.systems.neighbors.neighbor_list`
    min_distance: float = 1e-6
    first_index: int = 0  # index of structure 0 of this batch in the caller's list (messages)

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

        is_atoms = isinstance(frame, ase.Atoms)
    except ImportError:  # pragma: no cover - ase is a dependency
        is_atoms = False
    if is_atoms:
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
                f"structure {index}: unknown keys {sorted(unknown)} "
                "(expected positions, numbers, cell, pbc)"
            )
        return frame["positions"], frame["numbers"], frame.get("cell"), frame.get("pbc", False)
    raise TypeError(
        f"structure {index}: expected ase.Atoms, tradens.System or a dict of arrays, "
        f"got {type(frame).__name__}"
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


DEFAULT_MIN_DISTANCE = 1e-6  # Å; far below any physical interatomic distance (H2: 0.74 Å)

#: Atoms per batch when structures are packed by size (``batch_size=None``): large enough that
#: the per-batch work (one neighbour pass, one expansion) dwarfs the Python overhead, small
#: enough that the per-pair intermediates of a batch stay in the CPU caches' reach
ATOMS_PER_BATCH = 2048


def frame_atoms(frame: object) -> int:
    """Atom count of one input structure without validating it (0 where unknown)."""
    try:
        if isinstance(frame, dict):
            return int(np.shape(frame.get("positions", ()))[0])
        positions = getattr(frame, "positions", None)
        return int(np.shape(positions)[0]) if positions is not None else 0
    except (IndexError, TypeError, ValueError):
        return 0


def batch_ranges(
    counts: Sequence[int], batch_size: int | None, atoms_per_batch: int = ATOMS_PER_BATCH
) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` ranges of structures, one per batch.

    Parameters
    ----------
    counts : sequence of int
        Atoms of every structure.
    batch_size : int or None
        Structures per batch; ``None`` packs structures by size: a batch
        closes before the structure that would take it over ``atoms_per_batch``
        atoms (a larger structure is a batch of its own).
    atoms_per_batch : int
        Atom budget of a batch when ``batch_size`` is None.
    """
    n = len(counts)
    if batch_size is not None:
        return [(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]
    ranges, start, atoms = [], 0, 0
    for index, count in enumerate(counts):
        if index > start and atoms + count > atoms_per_batch:
            ranges.append((start, index))
            start, atoms = index, 0
        atoms += count
    if n > start:
        ranges.append((start, n))
    return ranges


def _check_cell(index: int, cell: torch.Tensor | np.ndarray, pbc: np.ndarray) -> None:
    """Raise unless the periodic lattice vectors of ``cell [3, 3]`` are independent."""
    if not pbc.any():
        return
    cell64 = (
        cell.detach().to("cpu", torch.float64).numpy()
        if isinstance(cell, torch.Tensor)
        else np.asarray(cell, dtype=np.float64)
    )
    periodic = cell64[pbc]  # [n_periodic, 3]
    norms = np.sqrt((periodic * periodic).sum(axis=1))  # [n_periodic]
    if (norms == 0).any():
        zero = [d for d in range(3) if pbc[d] and not cell64[d].any()]
        raise ValueError(
            f"structure {index}: the cell is singular: cell vector(s) {zero} are zero along "
            "periodic direction(s) "
            f"(pbc={pbc.tolist()}); give the lattice vector or make the direction non-periodic"
        )
    unit = periodic / norms[:, None]  # [n_periodic, 3]
    # volume (3D), area (2D) of the normalised periodic vectors; 1 for orthogonal ones
    measure = float(np.linalg.det(unit @ unit.T)) if unit.shape[0] > 1 else 1.0
    if measure < 1e-20:
        raise ValueError(
            f"structure {index}: the cell is singular: its periodic vectors are linearly "
            f"dependent (pbc={pbc.tolist()}, cell={cell64.tolist()})"
        )


def as_batch(
    systems,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    first_index: int = 0,
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
    min_distance : float
        Smallest allowed distance between two atoms (or an atom and a periodic
        image), Å. Closer pairs (two atoms at the same place, which no
        potential can describe) make the neighbour list raise a ``ValueError``
        naming them. Default 1e-6 Å; 0 turns the check off.
    first_index : int
        Index of the first structure in the caller's list, added to the
        structure indices in error messages (for callers that batch a list).

    Raises
    ------
    ValueError
        On wrong shapes, non-finite positions or cells, a structure without
        atoms, periodic cell vectors that are zero or linearly dependent, or
        an empty list.
    """
    if (
        not isinstance(min_distance, (int, float))
        or isinstance(min_distance, bool)
        or not math.isfinite(min_distance)
        or min_distance < 0
    ):
        raise ValueError(f"min_distance must be a finite number >= 0 (Å), got {min_distance!r}")
    frames = _as_frames(systems)
    _check_index("first_index", first_index)
    positions: list = []  # [n, 3] per structure: numpy float64, or torch where given as torch
    cells: list = []  # [3, 3] per structure, numpy or torch like positions
    numbers, pbcs, counts = [], [], []
    deferred: list[tuple] = []  # numpy structures whose value checks run in bulk at the end
    for index, frame in enumerate(frames, start=first_index):
        try:
            pos, num, cell, pbc = _system_arrays(frame, index)
        except (TypeError, ValueError):
            _deferred_checks(deferred)  # an earlier structure's error comes first
            raise
        if isinstance(pos, torch.Tensor):
            if dtype is None:
                dtype = pos.dtype if pos.is_floating_point() else torch.float64
            if device is None:
                device = pos.device
        if isinstance(pos, torch.Tensor) or isinstance(cell, torch.Tensor):
            pos_t, num_np, cell_t, pbc_np = _checked_arrays(index, pos, num, cell, pbc)
            positions.append(_relative(pos_t))
            cells.append(cell_t)
        else:  # plain arrays: shapes here, values in bulk below (numpy)
            try:
                checked = _checked_numpy(index, pos, num, cell, pbc, values=False)
            except ValueError:
                _deferred_checks(deferred)  # an earlier structure's error comes first
                raise
            deferred.append((index, *checked))
            pos_np, num_np, cell_np, pbc_np = checked
            with np.errstate(invalid="ignore"):  # inf - inf: the error comes from the checks
                positions.append(pos_np - pos_np[:1])
            cells.append(cell_np)
        numbers.append(num_np)
        pbcs.append(pbc_np)
        counts.append(len(num_np))
    _deferred_checks(deferred)
    dtype = dtype or torch.float64
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    return Batch(
        positions=_concatenate(positions, dtype, device),
        numbers=torch.from_numpy(np.concatenate(numbers).astype(np.int64)).to(device),
        structure=torch.repeat_interleave(
            torch.arange(len(counts)), torch.as_tensor(counts, dtype=torch.long)
        ).to(device),
        cells=_concatenate(cells, dtype, device).reshape(-1, 3, 3),
        pbc=torch.from_numpy(np.stack(pbcs)).to(device),
        offsets=offsets,
        min_distance=float(min_distance),
        first_index=first_index,
    )


def _concatenate(parts: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``parts`` (numpy float64 arrays or torch tensors, ``[n, 3]``) as one tensor ``[sum n, 3]``.

    Numpy parts are joined in numpy and converted once; torch parts keep their
    autograd history.
    """
    if all(isinstance(part, np.ndarray) for part in parts):
        joined = torch.from_numpy(np.concatenate(parts))  # [sum n, 3] float64
        return joined.to(device=device, dtype=dtype)
    return torch.cat(
        [
            (torch.from_numpy(part) if isinstance(part, np.ndarray) else part).to(
                device=device, dtype=dtype
            )
            for part in parts
        ]
    )


def _deferred_checks(deferred: list[tuple]) -> None:
    """The value checks of :func:`_checked_numpy` on many structures at once.

    ``deferred`` holds ``(index, positions, numbers, cell, pbc)`` checked for
    shapes only. Negative atomic numbers, non-finite positions or cells and
    singular cells are found by array operations over all of them; the first
    structure so found is checked again on its own, which raises its error.
    """
    if not deferred:
        return
    counts = [len(record[2]) for record in deferred]
    owner = np.repeat(np.arange(len(deferred)), counts)  # [atom]
    numbers = np.concatenate([record[2] for record in deferred])  # [atom]
    positions = np.concatenate([record[1] for record in deferred])  # [atom, 3]
    atom_bad = ~np.isfinite(positions).all(axis=1)  # [atom]
    if numbers.size and np.issubdtype(numbers.dtype, np.integer):
        atom_bad |= numbers < 0
    suspects = set(owner[atom_bad].tolist())
    cells = np.stack([record[3] for record in deferred])  # [structure, 3, 3]
    pbc = np.stack([record[4] for record in deferred])  # [structure, 3]
    finite = np.isfinite(cells).all(axis=(1, 2))  # [structure]
    suspects.update(np.flatnonzero(~finite).tolist())
    full = pbc.all(axis=1) & finite  # [structure]
    if full.any():
        lattice = cells[full]  # [m, 3, 3]
        norms = np.sqrt((lattice * lattice).sum(axis=2))  # [m, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            unit = lattice / norms[:, :, None]  # [m, 3, 3]
            measure = np.linalg.det(unit @ unit.transpose(0, 2, 1))  # [m]
        singular = (norms == 0).any(axis=1) | ~(measure >= 1e-20)
        suspects.update(np.flatnonzero(full)[singular].tolist())
    suspects.update(np.flatnonzero(pbc.any(axis=1) & ~pbc.all(axis=1) & finite).tolist())
    for k in sorted(suspects):  # partial periodicity: checked one by one (rare)
        _checked_numpy(*deferred[k])


def _checked_numpy(
    index: int, pos, num, cell, pbc, *, values: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_checked_arrays` for plain (non-torch) arrays, in numpy.

    Returns ``positions [n, 3]`` (float64, Å), ``numbers [n]``, ``cell [3, 3]``
    (float64, Å) and ``pbc [3]``; the same checks and messages. With
    ``values=False`` only shapes and types are checked (the values in bulk by
    :func:`_deferred_checks`).
    """
    try:
        pos_np = np.asarray(pos, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"structure {index}: positions must be numbers, got {pos!r:.80}") from None
    if pos_np.ndim != 2 or pos_np.shape[1] != 3:
        raise ValueError(
            f"structure {index}: positions must have shape [n_atoms, 3], got {pos_np.shape}"
        )
    if pos_np.shape[0] == 0:
        raise ValueError(
            f"structure {index} has no atoms: there is no environment to describe "
            "(remove empty structures from the input)"
        )
    num_np = np.asarray(num.detach().cpu() if isinstance(num, torch.Tensor) else num)
    if num_np.ndim != 1 or num_np.shape[0] != pos_np.shape[0]:
        raise ValueError(
            f"structure {index}: numbers must have shape [{pos_np.shape[0]}], "
            f"got {tuple(num_np.shape)}"
        )
    if num_np.size and (
        not np.issubdtype(num_np.dtype, np.integer) or (values and num_np.min() < 0)
    ):
        raise ValueError(f"structure {index}: atomic numbers must be non-negative integers")
    if values and not np.isfinite(pos_np).all():
        raise ValueError(f"structure {index}: positions contain NaN or inf")
    cell_np = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    if cell_np.shape != (3, 3):
        raise ValueError(f"structure {index}: cell must have shape [3, 3], got {cell_np.shape}")
    if values and not np.isfinite(cell_np).all():
        raise ValueError(f"structure {index}: cell contains NaN or inf")
    try:
        pbc_np = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    except ValueError:
        raise ValueError(f"structure {index}: pbc must be a bool or 3 bools, got {pbc!r}") from None
    if values:
        _check_cell(index, cell_np, pbc_np)
    return pos_np, num_np, cell_np, pbc_np


def _checked_arrays(
    index: int, pos, num, cell, pbc
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    """One structure's arrays, validated; a ValueError names structure ``index`` and the problem.

    Returns ``positions [n, 3]`` (floating, Å), ``numbers [n]``, ``cell [3, 3]`` (Å) and
    ``pbc [3]``.
    """
    pos_t = (
        pos if isinstance(pos, torch.Tensor) else torch.as_tensor(np.asarray(pos, dtype=np.float64))
    )
    if pos_t.ndim != 2 or pos_t.shape[1] != 3:
        raise ValueError(
            f"structure {index}: positions must have shape [n_atoms, 3], got {tuple(pos_t.shape)}"
        )
    if pos_t.shape[0] == 0:
        raise ValueError(
            f"structure {index} has no atoms: there is no environment to describe "
            "(remove empty structures from the input)"
        )
    if not pos_t.is_floating_point():
        pos_t = pos_t.to(torch.float64)
    num_np = np.asarray(num.detach().cpu() if isinstance(num, torch.Tensor) else num)
    if num_np.ndim != 1 or num_np.shape[0] != pos_t.shape[0]:
        raise ValueError(
            f"structure {index}: numbers must have shape [{pos_t.shape[0]}], "
            f"got {tuple(num_np.shape)}"
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
    try:
        pbc_np = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    except ValueError:
        raise ValueError(f"structure {index}: pbc must be a bool or 3 bools, got {pbc!r}") from None
    _check_cell(index, cell_t, pbc_np)
    return pos_t, num_np, cell_t, pbc_np


def _check_index(name: str, value: object) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _relative(positions: torch.Tensor) -> torch.Tensor:
    """``positions [atom, 3]`` minus the first atom's, in float64 (differentiable)."""
    wide = positions.to(torch.float64)  # [atom, 3]
    return wide - wide[:1].detach()  # [atom, 3]
