"""Descriptor Jacobians of any representation by Jacobian-vector products.

Used by :func:`tradens.gradients.descriptor_gradients` (``method="jvp"``) for
representations without an analytic per-pair path (ACE, user modules), and as
the autograd reference of the SOAP pair path. It needs only ``forward(batch,
positions, cells) -> (values, rows)`` and assumes that the row of centre ``i``
depends on the atoms within ``cutoff`` of ``i`` (or, for averaged features, on
the atoms of its structure).

Cost: one forward pass with a graph, one vector-Jacobian product kept as a
graph, and ``3 * colours + 9`` further backward passes, where the colours
partition the atoms so that no row depends on two atoms of one colour (a
greedy distance-2 colouring; about the number of atoms in an environment).
"""

from __future__ import annotations

import numpy as np
import torch

from ..systems.batch import Batch
from ..systems.neighbors import neighbor_list
from .results import DescriptorGradients, _atom_entries, _averaged

__all__ = ["jvp_gradients"]


def _representation_cutoff(representation, cutoff: float | None) -> float:
    if cutoff is not None:
        return float(cutoff)
    for owner in (representation, getattr(representation, "hypers", None)):
        value = getattr(owner, "cutoff", None)
        if isinstance(value, (int, float)):
            return float(value)
        radius = getattr(value, "radius", None)
        if isinstance(radius, (int, float)):
            return float(radius)
    raise ValueError(f"cannot find the cutoff of {type(representation).__name__}; pass cutoff=...")


def _colour(index: torch.Tensor, n_atoms: int) -> np.ndarray:
    """Greedy colouring of atoms such that no row depends on two atoms of one colour."""
    rows = index[:, 0].cpu().numpy()
    atoms = index[:, 1].cpu().numpy()
    by_atom = np.argsort(atoms, kind="stable")
    atom_start = np.searchsorted(atoms[by_atom], np.arange(n_atoms + 1))
    row_start = np.searchsorted(rows, np.arange(rows.max() + 2 if rows.size else 1))
    colour = np.full(n_atoms, -1, dtype=np.int64)
    for atom in range(n_atoms):
        its_rows = rows[by_atom[atom_start[atom] : atom_start[atom + 1]]]
        if its_rows.size == 0:
            colour[atom] = 0
            continue
        others = np.concatenate([atoms[row_start[r] : row_start[r + 1]] for r in its_rows])
        used = colour[others]
        taken = np.zeros(used.max() + 2 if used.size else 1, dtype=bool)
        taken[used[used >= 0]] = True
        colour[atom] = int(np.argmin(taken))
    return colour


def jvp_gradients(
    representation, batch: Batch, *, strain: bool, cutoff: float | None
) -> DescriptorGradients:
    """Atom-resolved Jacobians of any representation by Jacobian-vector products.

    One forward pass and one vector-Jacobian product ``u -> J^T u`` (kept as a
    graph, linear in ``u``); differentiating it with respect to ``u`` along a
    tangent ``t`` gives ``J t``. Tangents move all atoms of one colour along one
    axis (no row depends on two atoms of a colour), or strain every structure.
    """
    radius = _representation_cutoff(representation, cutoff)
    positions = batch.positions.detach().clone().requires_grad_(True)  # [atom, 3]
    eps = torch.zeros_like(batch.cells, requires_grad=True)  # [structure, 3, 3]
    with torch.enable_grad():
        # unsymmetrised strain here: d/d eps_ab of r (1 + eps) is r_a e_b
        new_positions = positions + torch.einsum("pa,pab->pb", positions, eps[batch.structure])
        new_cells = batch.cells.detach() + torch.bmm(batch.cells.detach(), eps)
        values, rows = representation(batch, new_positions, new_cells)
        u = torch.zeros_like(values, requires_grad=True)  # [row, F]
        vjp_positions = vjp_strain = None
        if values.requires_grad:  # else nothing depends on the geometry
            vjp_positions, vjp_strain = torch.autograd.grad(
                (values * u).sum(), [positions, eps], create_graph=True, allow_unused=True
            )
    n_rows = values.shape[0]
    averaged = _averaged(representation)
    row_of_atom = torch.full((batch.n_atoms,), -1, dtype=torch.long, device=positions.device)
    if averaged:
        row_of_atom[:] = batch.structure
    else:
        row_of_atom[rows] = torch.arange(n_rows, device=positions.device)
    if averaged:  # every atom of a structure is in the environment of its row
        same = batch.structure[:, None] == batch.structure[None, :]
        pair_i, pair_j = same.nonzero(as_tuple=True)
    else:
        pairs = neighbor_list(batch, radius)
        pair_i, pair_j = pairs.i, pairs.j
    index, _, _ = _atom_entries(batch, pair_i, pair_j, row_of_atom, n_rows)
    colour = torch.as_tensor(_colour(index, batch.n_atoms), device=positions.device)

    def jvp(scalar: torch.Tensor) -> torch.Tensor | None:  # d/du of (J^T u . t)
        if scalar is None or not scalar.requires_grad:
            return None
        (out,) = torch.autograd.grad(scalar, u, retain_graph=True, allow_unused=True)
        return out  # [row, F]

    jacobian = torch.zeros(
        index.shape[0], 3, values.shape[1], dtype=values.dtype, device=values.device
    )
    entry_colour = colour[index[:, 1]]
    n_colours = int(colour.max()) + 1 if colour.numel() else 0
    for c in range(n_colours):
        if vjp_positions is None:  # nothing depends on the positions
            break
        entries = (entry_colour == c).nonzero().squeeze(1)
        if entries.numel() == 0:
            continue
        for a in range(3):
            derivative = jvp(vjp_positions[colour == c, a].sum())
            if derivative is not None:
                jacobian[entries, a] = derivative[index[entries, 0]]
    strain_jacobian = None
    if strain:
        strain_jacobian = torch.zeros(
            n_rows, 3, 3, values.shape[1], dtype=values.dtype, device=values.device
        )
        for a in range(3):
            for b in range(3):
                derivative = None if vjp_strain is None else jvp(vjp_strain[:, a, b].sum())
                if derivative is not None:
                    strain_jacobian[:, a, b] = derivative
    return DescriptorGradients(
        values=values.detach(),
        rows=rows,
        positions=jacobian,
        index=index,
        shifts=None,
        strain=strain_jacobian,
    )
