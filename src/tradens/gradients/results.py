"""Result types of the gradient products; sparse-entry helpers shared by the derivative paths.

Units: Å for lengths; a model's energy unit (eV in practice) for energies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from ..systems.batch import Batch

__all__ = ["DescriptorGradients", "ModelOutput"]

# the array type of a ModelOutput: numpy arrays, or torch tensors (``output="torch"``)
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass
class ModelOutput(Generic[ArrayT]):
    """Energies, forces and stress of a batch of structures.

    Attributes
    ----------
    energy : array ``[structure]``
        Model energies (sum of the per-row energies of each structure).
    forces : array ``[atom, 3]``
        ``-dE/dx`` (eV/Å), atoms of all structures concatenated.
    virial : array ``[structure, 3, 3]``
        ``-dE/d eps`` (eV), defined for every structure.
    stress : array ``[structure, 3, 3]``
        ``(1/V) dE/d eps`` (eV/Å^3, ASE sign); NaN for structures that are not
        periodic in all three directions.
    structure : array ``[atom]``
        Structure index of every atom.
    """

    energy: ArrayT
    forces: ArrayT
    virial: ArrayT
    stress: ArrayT
    structure: ArrayT


@dataclass
class DescriptorGradients:
    """Sparse Jacobians of per-centre features.

    Attributes
    ----------
    values : Tensor ``[row, feature]``
        The features.
    rows : Tensor ``[row]``
        Centre atom of every row (batch index), or the structure for averaged
        features.
    positions : Tensor ``[entry, 3, feature]``
        ``positions[e, a, f] = d values[index[e, 0], f] / d x[index[e, 1], a]``.
        With ``images=True`` the entries are per neighbour image instead:
        ``d values[row] / d r_ij`` (``shifts`` tells the image) plus, first in
        each row, the centre entry ``-sum`` of the row's image entries.
    index : Tensor ``[entry, 2]``
        ``(row, atom)``, sorted by row. Summing the entries of equal
        ``(row, atom)`` gives the total derivative in both layouts.
    shifts : Tensor ``[entry, 3]`` or None
        Integer cell shift of each image entry (``images=True`` only).
    strain : Tensor ``[row, 3, 3, feature]`` or None
        ``d values[row] / d eps`` (see the module docstring).
    """

    values: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    index: torch.Tensor
    shifts: torch.Tensor | None = None
    strain: torch.Tensor | None = None

    def dense(self, n_atoms: int) -> torch.Tensor:
        """Dense ``[row, atom, 3, feature]`` Jacobian (small systems only)."""
        out = torch.zeros(
            self.values.shape[0] * n_atoms,
            3,
            self.values.shape[1],
            dtype=self.positions.dtype,
            device=self.positions.device,
        )
        out.index_add_(
            0,
            self.index[:, 0] * n_atoms + self.index[:, 1].clamp(min=0),
            self.positions * (self.index[:, 1] >= 0).to(self.positions.dtype)[:, None, None],
        )
        return out.reshape(self.values.shape[0], n_atoms, 3, -1)


def _averaged(representation) -> bool:
    hypers = getattr(representation, "hypers", None)
    return bool(getattr(hypers, "average", False))


def _atom_entries(
    batch: Batch, pair_i: torch.Tensor, pair_j: torch.Tensor, row_of_atom: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``(row, atom)`` entries of an atom-resolved Jacobian.

    Every centre atom ``i`` (``row_of_atom[i] >= 0``) gives ``(row, i)`` and
    ``(row, j)`` for its pairs. Returns ``index [entry, 2]`` sorted by row then
    atom, and the entry of each pair's ``(row, j)`` and ``(row, i)``.
    """
    n_atoms = batch.n_atoms
    centres = (row_of_atom >= 0).nonzero().squeeze(1)
    pair_rows = row_of_atom[pair_i]  # [pair]
    keep = pair_rows >= 0
    keys = torch.cat(
        [row_of_atom[centres] * n_atoms + centres, pair_rows[keep] * n_atoms + pair_j[keep]]
    )
    unique = torch.unique(keys)  # sorted
    index = torch.stack([unique // n_atoms, unique % n_atoms], dim=1)  # [entry, 2]
    safe_rows = pair_rows.clamp(min=0)
    entry_j = torch.searchsorted(unique, safe_rows * n_atoms + pair_j)
    entry_i = torch.searchsorted(unique, safe_rows * n_atoms + pair_i)
    return index, entry_j, entry_i
