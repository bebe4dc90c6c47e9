"""The order in which quippy-ase lists the neighbour images of each atom.

GAP writes one gradient row per neighbour image, in the order of libAtoms'
connectivity (``calc_connect`` with cutoff ``r_c + 1`` Å, as quippy-ase's
``Descriptor.calc`` sets it). That order is observable behaviour; this module
reproduces it from a description of the algorithm (no libAtoms/GAP code):

1. Cells: the (effective) lattice is divided into ``n_a x n_b x n_c`` subcells,
   ``n_a = max(1, int(V / (r_conn |b x c|)))`` (and cyclically). Along
   non-periodic directions the lattice vector is first replaced by its unit
   vector times ``1.1 (f_max - f_min)`` (spread of the fractional coordinates)
   with origin offset ``f_min - 0.05``; a singular cell (no cell) is one subcell.
2. Atoms are mapped into the cell (periodic directions only, ``map_shift =
   -floor(f + 1/2)``) and pushed onto per-subcell stacks in index order, so each
   subcell lists its atoms in *decreasing* index.
3. Bonds ``(a1 <= a2, shift)`` are appended to ``a1``'s own list in the order
   of the loops: subcell of ``a1`` (``c`` outer, ``a`` inner), ``a1`` in its
   subcell's order, neighbour-subcell offset ``(k2, j2, i2)`` (``k2`` outer),
   ``a2`` in that subcell's order. A bond with ``a1 < a2`` is also referenced
   from ``a2``'s second list, in the same global order.
4. The neighbours of atom ``i`` are its second list (atoms ``j < i``) followed
   by its own list (atoms ``j >= i``, including its periodic self-images).

Verified against quippy-ase 0.10.3 on rattled fcc cells (4 to 256 atoms, cubic
and triclinic), a cell smaller than the cutoff, a slab, and molecules with and
without a box: identical row order in every case. Positions exactly on a
subcell boundary could in principle round differently from the Fortran code.
"""

from __future__ import annotations

import numpy as np

__all__ = ["quip_pair_order"]


def _subcells(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, connect_cutoff: float):
    """Subcell counts ``[3]``, each atom's subcell ``[atom, 3]`` and ``map_shift [atom, 3]``."""
    n_atoms = positions.shape[0]
    if abs(np.linalg.det(cell)) < 1e-12:
        zeros = np.zeros((n_atoms, 3), dtype=np.int64)
        return np.ones(3, dtype=np.int64), zeros, zeros.copy()
    lattice = cell.T.copy()  # columns are lattice vectors
    effective = lattice.copy()
    offset = np.zeros(3)
    if not pbc.all():
        fractional = positions @ np.linalg.inv(lattice).T  # [atom, 3]
        for d in range(3):
            if not pbc[d]:
                extent = (fractional[:, d].max() - fractional[:, d].min()) * 1.1
                effective[:, d] = lattice[:, d] / np.linalg.norm(lattice[:, d]) * extent
                offset[d] = fractional[:, d].min() - 0.05
    a, b, c = effective[:, 0], effective[:, 1], effective[:, 2]
    volume = abs(np.dot(a, np.cross(b, c)))
    counts = np.array(
        [
            max(1, int(volume / (connect_cutoff * np.linalg.norm(np.cross(u, v)))))
            for u, v in ((b, c), (c, a), (a, b))
        ],
        dtype=np.int64,
    )
    reduced = positions @ np.linalg.inv(effective).T - offset  # [atom, 3]
    map_shift = -np.floor(reduced + 0.5).astype(np.int64)
    map_shift[:, ~pbc] = 0
    reduced = reduced + map_shift
    subcell = np.clip(np.floor(counts * (reduced + 0.5)).astype(np.int64), 0, counts - 1)
    return counts, subcell, map_shift


def quip_pair_order(positions, cell, pbc, i, j, shifts, cutoff: float) -> np.ndarray:
    """Permutation putting pairs in quippy's per-centre neighbour order.

    Parameters
    ----------
    positions : array ``[atom, 3]``
        Cartesian positions (Å) of one structure.
    cell : array ``[3, 3]``
        Lattice vectors as rows (zeros for none).
    pbc : array ``[3]`` of bool
        Periodicity.
    i, j : array ``[pair]``
        Centre and neighbour of each pair (``r = x_j - x_i + shifts @ cell``).
    shifts : array ``[pair, 3]``
        Integer cell shifts.
    cutoff : float
        The descriptor cutoff (Å); quippy connects with ``cutoff + 1``.

    Returns
    -------
    numpy.ndarray
        ``order [pair]``: pairs sorted by centre, then in quippy's order.
    """
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    i, j, shifts = np.asarray(i), np.asarray(j), np.asarray(shifts)
    counts, subcell, map_shift = _subcells(positions, cell, pbc, cutoff + 1.0)
    linear = (subcell[:, 2] * counts[1] + subcell[:, 1]) * counts[0] + subcell[:, 0]  # [atom]
    lower = j < i  # listed through the neighbour's own list
    first = np.where(lower, j, i)
    second = np.where(lower, i, j)
    bond_shift = np.where(lower[:, None], -shifts, shifts)  # shift as stored with the bond
    image = bond_shift + map_shift[first] - map_shift[second]  # subcell-image shift
    step = (
        subcell[second] + image * counts - subcell[first]
    )  # neighbour-subcell offset (i2, j2, k2)
    # second list: (subcell of j, -j, k2, j2, i2); own list: (k2, j2, i2, -j)
    keys = (
        np.where(lower, step[:, 0], 0),
        np.where(lower, step[:, 1], -second),
        np.where(lower, step[:, 2], step[:, 0]),
        np.where(lower, -first, step[:, 1]),
        np.where(lower, linear[first], step[:, 2]),
        (~lower).astype(np.int64),
        i,
    )
    return np.lexsort(keys)
