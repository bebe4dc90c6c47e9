"""Neighbour lists.

Pairs are found by `vesin <https://github.com/Luthaf/vesin>`_ on the CPU (any
triclinic cell, mixed periodicity, cells smaller than the cutoff, every periodic
image). The interatomic vectors are then built in torch,

.. math:: \\mathbf r_{ij} = \\mathbf x_j - \\mathbf x_i + \\mathbf S_{ij} \\cdot \\mathbf h ,

from the batch's positions and cells, so autograd reaches both (forces and
stress).

Two atoms closer than ``batch.min_distance`` (including an atom and a periodic
image of itself or of another atom) are an error: the list would otherwise
silently drop a pair at distance zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .batch import Batch

__all__ = ["Pairs", "neighbor_list", "pair_vectors"]


@dataclass
class Pairs:
    """Directed neighbour pairs of a batch (full list: both ``i->j`` and ``j->i``).

    Attributes
    ----------
    i, j : torch.Tensor
        Centre and neighbour atom indices into the batch, ``[pair]``, sorted by ``i``.
    shifts : torch.Tensor
        Integer cell shifts ``S_ij [pair, 3]``.
    """

    i: torch.Tensor
    j: torch.Tensor
    shifts: torch.Tensor

    def __len__(self) -> int:
        return int(self.i.shape[0])


def neighbor_list(batch: Batch, cutoff: float) -> Pairs:
    """All pairs with ``0 < |r_ij| < cutoff``, including periodic self-images.

    Parameters
    ----------
    batch : Batch
        The structures.
    cutoff : float
        Cutoff radius in Å (strict: pairs at exactly the cutoff are dropped).
    """
    import vesin

    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    positions = batch.positions.detach().to("cpu", torch.float64).numpy()
    cells = batch.cells.detach().to("cpu", torch.float64).numpy()
    pbc = batch.pbc.cpu().numpy()
    all_i, all_j, all_s = [], [], []
    for s in range(batch.n_structures):
        start, stop = batch.offsets[s], batch.offsets[s + 1]
        if stop == start:
            continue
        periodic = pbc[s]
        box = _complete_box(cells[s], periodic) if periodic.any() else np.zeros((3, 3))
        if periodic.any():
            _check_pair_count(s + batch.first_index, stop - start, box, periodic, cutoff)
        i, j, shifts, distances = calculator.compute(
            points=positions[start:stop], box=box, periodic=periodic.tolist(), quantities="ijSd"
        )
        if batch.min_distance > 0.0:
            _check_min_distance(s + batch.first_index, i, j, shifts, distances, batch.min_distance)
        keep = (distances < cutoff) & (distances > 0.0)
        all_i.append(i[keep].astype(np.int64) + start)
        all_j.append(j[keep].astype(np.int64) + start)
        all_s.append(shifts[keep].astype(np.int64))
    device = batch.positions.device
    if not all_i:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Pairs(empty, empty.clone(), torch.zeros(0, 3, dtype=torch.long, device=device))
    i = np.concatenate(all_i)
    j = np.concatenate(all_j)
    shifts = np.concatenate(all_s)
    if i.shape[0] > 1 and not bool(np.all(i[1:] >= i[:-1])):
        # grouped by centre, in vesin's (deterministic) order within a centre; a stable sort of
        # 16-bit keys is a radix sort in numpy (4x faster than on int64)
        keys = i.astype(np.uint16) if batch.n_atoms <= np.iinfo(np.uint16).max else i
        order = np.argsort(keys, kind="stable")
        i, j, shifts = i[order], j[order], shifts[order]
    return Pairs(
        i=torch.from_numpy(i).to(device),
        j=torch.from_numpy(j).to(device),
        shifts=torch.from_numpy(shifts).to(device),
    )


def _complete_box(cell: np.ndarray, periodic: np.ndarray) -> np.ndarray:
    """``cell [3, 3]`` with degenerate non-periodic vectors replaced (for vesin only).

    A 2D or 1D cell as ASE builds it has zero vectors along its non-periodic
    directions; vesin needs an invertible box. The replacements span the
    orthogonal complement of the periodic vectors; along a non-periodic
    direction their length does not change any pair.
    """
    norms = np.linalg.norm(cell, axis=1)  # [3]
    if norms.min() > 0:
        unit = cell / norms[:, None]
        if abs(np.linalg.det(unit)) > 1e-6:  # well conditioned: vesin gets the cell as it is
            return cell
        return cell
    box = cell.copy()
    lattice = cell[periodic]  # [n_periodic, 3]
    scale = float(np.linalg.norm(lattice, axis=1).max())
    # right singular vectors beyond the rank of the periodic vectors span their complement
    _, _, vt = np.linalg.svd(lattice, full_matrices=True)  # vt [3, 3]
    complement = vt[lattice.shape[0] :] * scale  # [3 - n_periodic, 3]
    for row, d in enumerate(np.flatnonzero(~periodic)):
        box[d] = complement[row]
    return box


PAIR_BYTES = 256  # working memory per neighbour pair (list, vectors, radial and angular terms)
MAX_DENSITY = 0.25  # atoms per Å^3 that non-overlapping atoms never exceed


def _check_pair_count(
    structure: int, n_atoms: int, box: np.ndarray, periodic: np.ndarray, cutoff: float
) -> None:
    """Refuse a periodic structure whose neighbour list would not fit in memory.

    The neighbours of one atom are bounded by ``n_atoms`` times the periodic
    images within the cutoff, ``prod_d (2 ceil(cutoff / h_d) + 1)`` over
    periodic directions ``d`` with lattice-plane spacings ``h_d``, and by the
    atoms a sphere of the cutoff can hold at the larger of the cell's density
    ``n / V`` and :data:`MAX_DENSITY` (a cell far too small for its atoms, e.g.
    positions in Bohr with a cell in Å, or a cutoff far beyond the cell, has
    very many).
    """
    lattice = box[periodic]  # [k, 3]: only periodic vectors make images

    def measure(vectors: np.ndarray) -> float:  # length, area or volume they span
        return (
            math.sqrt(max(float(np.linalg.det(vectors @ vectors.T)), 0.0)) if len(vectors) else 1.0
        )

    total = measure(lattice)
    images = 1.0
    for d in range(len(lattice)):
        rest = measure(np.delete(lattice, d, axis=0))
        spacing = total / rest if rest > 0 else 0.0  # distance between lattice planes (lines)
        images *= 2.0 * math.ceil(cutoff / spacing) + 1.0 if spacing > 0 else math.inf
    # Every image of every atom is a neighbour at most: n * images per atom. Atoms that do not
    # overlap are never denser than MAX_DENSITY (diamond has 0.18 per Å^3), and in a 3D periodic
    # cell the images of the n atoms fill space with density n / V, so a sphere of the cutoff
    # holds about max(n / V, MAX_DENSITY) * 4/3 pi cutoff^3 neighbours (twice that for safety).
    sphere = 4.0 / 3.0 * math.pi * cutoff**3
    density = MAX_DENSITY
    if len(lattice) == 3 and total > 0:
        density = max(density, n_atoms / total)
    per_atom = min(n_atoms * images, 2.0 * density * sphere + 27.0)
    expected = n_atoms * per_atom
    from ..kernels.budget import check_memory

    check_memory(
        expected * PAIR_BYTES,
        f"structure {structure}: about {expected:.3g} neighbour pairs within the cutoff of "
        f"{cutoff:g} Å (cell {np.round(box, 4).tolist()}, pbc={periodic.tolist()})",
        "use a smaller cutoff or check the cell (a lattice-plane spacing far below the cutoff "
        "means very many periodic images)",
    )


def _check_min_distance(
    structure: int,
    i: np.ndarray,
    j: np.ndarray,
    shifts: np.ndarray,
    distances: np.ndarray,
    min_distance: float,
) -> None:
    """Raise a ValueError naming the first pair closer than ``min_distance`` (Å)."""
    close = distances < min_distance  # [pair]
    if not close.any():
        return
    self_pair = (i == j) & ~shifts.any(axis=1)
    close &= ~self_pair
    if not close.any():
        return
    candidates = np.flatnonzero(close)
    p = int(candidates[np.argmin(distances[candidates])])  # the closest pair
    a, b = sorted((int(i[p]), int(j[p])))
    image = "" if not shifts[p].any() else f" (periodic image {shifts[p].tolist()})"
    count = int(close.sum()) // 2
    more = f"; {count - 1} more such pair(s)" if count > 1 else ""
    raise ValueError(
        f"structure {structure}: atoms {a} and {b}{image} are {float(distances[p]):.3g} Å apart, "
        f"closer than min_distance={min_distance:g} Å (overlapping atoms){more}"
    )


def pair_vectors(
    batch: Batch,
    pairs: Pairs,
    positions: torch.Tensor | None = None,
    cells: torch.Tensor | None = None,
) -> torch.Tensor:
    """Interatomic vectors ``r_ij [pair, 3]`` in Å, differentiable in positions and cells.

    ``positions`` and ``cells`` default to the batch's; pass strained copies to
    differentiate with respect to a strain.
    """
    positions = batch.positions if positions is None else positions
    cells = batch.cells if cells is None else cells
    shifts = pairs.shifts.to(positions.dtype)  # [pair, 3]
    if cells.shape[0] == 1:
        offset = shifts @ cells[0]  # [pair, 3]
    else:
        cell_of_pair = cells[batch.structure[pairs.i]]  # [pair, 3, 3]
        offset = torch.einsum("pa,pab->pb", shifts, cell_of_pair)  # [pair, 3]
    return positions.index_select(0, pairs.j) - positions.index_select(0, pairs.i) + offset
