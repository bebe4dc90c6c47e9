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

    Small structures (molecules, and periodic cells of a few atoms: at most
    :data:`BRUTE_FORCE_CANDIDATES` candidate pairs) are listed together, in
    one vectorised pass over every atom pair and periodic image
    (:func:`_small_structure_pairs`); the others by one `vesin` call each.

    Parameters
    ----------
    batch : Batch
        The structures.
    cutoff : float
        Cutoff radius in Å (strict: pairs at exactly the cutoff are dropped).
    """
    positions = batch.positions.detach().to("cpu", torch.float64).numpy()
    cells = batch.cells.detach().to("cpu", torch.float64).numpy()
    pbc = batch.pbc.cpu().numpy()
    offsets = np.asarray(batch.offsets, dtype=np.int64)
    ranges = _image_ranges(positions, offsets, cells, pbc, cutoff)  # [structure, 3], -1: vesin
    small = ranges[:, 0] >= 0  # [structure]
    all_i, all_j, all_s = [], [], []
    pending = None  # (structure, error) of the first small structure with overlapping atoms
    if small.any():
        i, j, shifts, pending = _small_structure_pairs(
            positions,
            offsets,
            cells,
            ranges,
            np.flatnonzero(small),
            cutoff,
            batch.min_distance,
            batch.first_index,
        )
        all_i.append(i)
        all_j.append(j)
        all_s.append(shifts)
    large = np.flatnonzero(~small & (offsets[1:] > offsets[:-1]))  # [structure]
    if large.size:
        _vesin_pairs(batch, positions, cells, pbc, large, cutoff, pending, all_i, all_j, all_s)
    if pending is not None:
        raise pending[1]
    device = batch.positions.device
    if not all_i:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Pairs(empty, empty.clone(), torch.zeros(0, 3, dtype=torch.long, device=device))
    i = np.concatenate(all_i)
    j = np.concatenate(all_j)
    shifts = np.concatenate(all_s)
    if i.shape[0] > 1 and not bool(np.all(i[1:] >= i[:-1])):
        # grouped by centre, in each structure's (deterministic) order within a centre; a stable
        # sort of 16-bit keys is a radix sort in numpy (4x faster than on int64)
        keys = i.astype(np.uint16) if batch.n_atoms <= np.iinfo(np.uint16).max else i
        order = np.argsort(keys, kind="stable")
        i, j, shifts = i[order], j[order], shifts[order]
    return Pairs(
        i=torch.from_numpy(i).to(device),
        j=torch.from_numpy(j).to(device),
        shifts=torch.from_numpy(shifts).to(device),
    )


#: Largest ``atoms^2 x periodic images`` of a structure listed by the vectorised pass
BRUTE_FORCE_CANDIDATES = 4096
_CANDIDATES_PER_PASS = 2**18  # candidate pairs per vectorised pass (bounds its memory)


def _image_ranges(
    positions: np.ndarray,
    offsets: np.ndarray,
    cells: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
) -> np.ndarray:
    """Periodic images ``|S_d| <= R_d`` that hold every pair within ``cutoff``, ``[structure, 3]``.

    ``R = 0`` along non-periodic directions; ``-1`` in every column for a
    structure left to vesin (mixed periodicity, or more than
    :data:`BRUTE_FORCE_CANDIDATES` candidates). A pair within the cutoff has
    ``|f_j - f_i + S_d| <= cutoff |b_d|`` (fractional coordinates ``f``,
    reciprocal vector ``b_d``), so ``R_d = floor(cutoff |b_d| + span_d)``
    with ``span_d`` the extent of the structure's ``f_d``.
    """
    n_structures = cells.shape[0]
    counts = offsets[1:] - offsets[:-1]  # [structure]
    ranges = np.full((n_structures, 3), -1, dtype=np.int64)
    molecule = ~pbc.any(axis=1) & (counts * counts <= BRUTE_FORCE_CANDIDATES)
    ranges[molecule] = 0
    bulk = np.flatnonzero(pbc.all(axis=1) & (counts * counts <= BRUTE_FORCE_CANDIDATES))
    if bulk.size == 0:
        return ranges
    inverse = np.linalg.inv(cells[bulk])  # [bulk, 3, 3]; columns: reciprocal vectors b_d
    structure = np.repeat(np.arange(bulk.size), counts[bulk])  # [atom of bulk]
    atoms = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in bulk])
    fractional = np.einsum("ax,axd->ad", positions[atoms], inverse[structure])  # [atom, 3]
    first = np.concatenate([[0], np.cumsum(counts[bulk])[:-1]])  # [bulk]
    span = np.maximum.reduceat(fractional, first) - np.minimum.reduceat(fractional, first)
    reach = cutoff * np.linalg.norm(inverse, axis=1) + span  # [bulk, 3]
    with np.errstate(over="ignore", invalid="ignore"):
        bound = np.floor(reach)  # [bulk, 3]
        images = np.prod(2.0 * bound + 1.0, axis=1)  # [bulk]
    fits = np.isfinite(images) & (counts[bulk] ** 2 * images <= BRUTE_FORCE_CANDIDATES)
    ranges[bulk[fits]] = bound[fits].astype(np.int64)
    return ranges


def _small_structure_pairs(
    positions: np.ndarray,
    offsets: np.ndarray,
    cells: np.ndarray,
    ranges: np.ndarray,
    structures: np.ndarray,
    cutoff: float,
    min_distance: float,
    first_index: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ValueError] | None]:
    """Pairs of the small ``structures`` by one vectorised pass per (atoms, images) group.

    Every atom pair and image ``S`` with ``|S_d| <= ranges[s, d]`` is a
    candidate; the pairs within the cutoff come out by centre, then image
    (lexicographic), then neighbour. Returns ``i, j [pair]``, ``shifts [pair, 3]``
    (batch indices, ordered by structure) and the first structure with atoms
    closer than ``min_distance`` with its error (or None).
    """
    counts = offsets[1:] - offsets[:-1]  # [structure]
    keys = np.concatenate([counts[structures, None], ranges[structures]], axis=1)  # [small, 4]
    groups, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    pending: tuple[int, ValueError] | None = None
    for g, (n, *bound) in enumerate(groups.tolist()):
        members = structures[inverse == g]  # [G]
        grid = np.stack(
            np.meshgrid(*[np.arange(-b, b + 1) for b in bound], indexing="ij"), axis=-1
        ).reshape(-1, 3)  # [image, 3], lexicographic
        per_structure = n * n * grid.shape[0]
        step = max(1, _CANDIDATES_PER_PASS // per_structure)
        for chunk_start in range(0, members.size, step):
            chunk = members[chunk_start : chunk_start + step]  # [G]
            atoms = offsets[chunk][:, None] + np.arange(n)  # [G, n]
            x = positions[atoms]  # [G, n, 3]
            image = grid.astype(np.float64) @ cells[chunk]  # [G, image, 3]
            # r[g, i, m, j] = x_j - x_i + S_m h
            r = (
                x[:, None, None, :, :] - x[:, :, None, None, :] + image[:, None, :, None, :]
            )  # [G, n, image, n, 3]
            d = np.sqrt(np.einsum("...x,...x->...", r, r))  # [G, n, image, n]
            g_, a, m, b = np.nonzero((d < cutoff) & (d > 0.0))  # [pair] each
            pieces.append((chunk[g_], atoms[g_, a], atoms[g_, b], grid[m]))
            if min_distance > 0.0 and pending is None:
                pending = _first_overlap(chunk, grid, d, min_distance, first_index)
    structure = np.concatenate([p[0] for p in pieces])
    order = np.argsort(structure, kind="stable")  # by structure, then as listed
    i = np.concatenate([p[1] for p in pieces])[order]
    j = np.concatenate([p[2] for p in pieces])[order]
    shifts = np.concatenate([p[3] for p in pieces])[order]
    return i, j, shifts, pending


def _first_overlap(
    chunk: np.ndarray, grid: np.ndarray, d: np.ndarray, min_distance: float, first_index: int
) -> tuple[int, ValueError] | None:
    """The first structure of ``chunk`` with two atoms closer than ``min_distance`` and its error.

    ``d [G, n, image, n]`` are the candidate distances of :func:`_small_structure_pairs`;
    the error names the structure as ``first_index`` plus its index in the batch.
    """
    close = d < min_distance  # [G, n, image, n]
    zero = int(np.flatnonzero(~grid.any(axis=1))[0])  # the image S = 0
    n = d.shape[1]
    close[:, np.arange(n), zero, np.arange(n)] = False  # an atom and itself
    bad = np.flatnonzero(close.any(axis=(1, 2, 3)))
    if bad.size == 0:
        return None
    g = int(bad[0])
    a, m, b = np.unravel_index(np.arange(d[g].size), d[g].shape)  # every candidate
    structure = int(chunk[g])
    try:
        _check_min_distance(structure + first_index, a, b, grid[m], d[g].reshape(-1), min_distance)
    except ValueError as error:
        return structure, error
    return None  # pragma: no cover - close.any() above means _check_min_distance raises


def _vesin_pairs(
    batch: Batch,
    positions: np.ndarray,
    cells: np.ndarray,
    pbc: np.ndarray,
    structures: np.ndarray,
    cutoff: float,
    pending: tuple[int, ValueError] | None,
    all_i: list,
    all_j: list,
    all_s: list,
) -> None:
    """Append the pairs of ``structures`` (one vesin call each) to ``all_i, all_j, all_s``.

    Raises the ``pending`` error of an earlier small structure before listing a later one,
    so that the first structure with overlapping atoms is the one named.
    """
    import vesin

    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    boxes = {}
    for s in structures.tolist():
        if pbc[s].any():
            boxes[s] = _complete_box(cells[s], pbc[s])
    _check_pair_counts(batch, boxes, pbc, cutoff)
    for s in structures.tolist():
        if pending is not None and s > pending[0]:
            raise pending[1]
        start, stop = batch.offsets[s], batch.offsets[s + 1]
        periodic = pbc[s]
        box = boxes.get(s, np.zeros((3, 3)))
        i, j, shifts, distances = calculator.compute(
            points=positions[start:stop], box=box, periodic=periodic.tolist(), quantities="ijSd"
        )
        if batch.min_distance > 0.0:
            _check_min_distance(s + batch.first_index, i, j, shifts, distances, batch.min_distance)
        keep = (distances < cutoff) & (distances > 0.0)
        all_i.append(i[keep].astype(np.int64) + start)
        all_j.append(j[keep].astype(np.int64) + start)
        all_s.append(shifts[keep].astype(np.int64))


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


def _expected_pairs(n_atoms: int, box: np.ndarray, periodic: np.ndarray, cutoff: float) -> float:
    """Upper estimate of the neighbour pairs of a periodic structure within ``cutoff``.

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
    return n_atoms * per_atom


def _check_pair_counts(
    batch: Batch, boxes: dict[int, np.ndarray], pbc: np.ndarray, cutoff: float
) -> None:
    """Refuse periodic structures whose neighbour list would not fit in memory.

    ``boxes`` maps the batch index of each periodic structure to its (completed)
    box; the structure with the most expected pairs (:func:`_expected_pairs`) is
    checked against the available memory and named in the error.
    """
    if not boxes:
        return
    worst, expected = -1, -1.0
    for s, box in boxes.items():
        count = _expected_pairs(batch.offsets[s + 1] - batch.offsets[s], box, pbc[s], cutoff)
        if count > expected:
            worst, expected = s, count
    _check_pair_count(
        worst + batch.first_index,
        batch.offsets[worst + 1] - batch.offsets[worst],
        boxes[worst],
        pbc[worst],
        cutoff,
    )


def _check_pair_count(
    structure: int, n_atoms: int, box: np.ndarray, periodic: np.ndarray, cutoff: float
) -> None:
    """Refuse a periodic structure whose neighbour list (:func:`_expected_pairs`) would not fit."""
    from ..kernels.budget import check_memory

    expected = _expected_pairs(n_atoms, box, periodic, cutoff)
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
