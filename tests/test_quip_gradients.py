"""``tradens.quip.Descriptor.calc(atoms, grad=True)`` against quippy-ase 0.10.3 (test oracle)."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
from conftest import make_alloy

from tradens.interop.quip_order import quip_pair_order
from tradens.quip import Descriptor
from tradens.systems import as_batch
from tradens.systems.neighbors import neighbor_list

quippy_descriptors = pytest.importorskip("quippy.descriptors")

BASE = "soap cutoff=4.0 l_max=3 n_max=4 atom_sigma=0.5 n_species=3 species_Z={28 29 46}"
MIXED = {
    "standard": "",
    "rz-sym-elementwise": " R_mix=T Z_mix=T K=4 sym_mix=T coupling=F",
    "rz-asym-tensor": " R_mix=T Z_mix=T K=3 sym_mix=F coupling=T mix_shift=5",
    "z-sym-tensor": " Z_mix=T K=2 sym_mix=T coupling=T",
    "z-asym-elementwise": " Z_mix=T K=2 sym_mix=F coupling=F",
    "r-sym-elementwise-raw": " R_mix=T K=2 sym_mix=T coupling=F normalise=F",
    "r-asym-tensor-sigma0": " R_mix=T K=2 sym_mix=F coupling=T covariance_sigma0=0.4",
}


def small_cell() -> ase.Atoms:
    return ase.Atoms(
        numbers=[28, 46],
        positions=[[0.0, 0.0, 0.0], [1.31, 1.08, 0.92]],
        cell=[[2.5, 0.0, 0.0], [0.71, 2.4, 0.0], [0.42, 0.59, 2.63]],
        pbc=True,
    )


def molecule() -> ase.Atoms:
    rng = np.random.default_rng(7)
    return ase.Atoms(
        numbers=[28, 29, 46, 28, 29, 46, 29], positions=rng.normal(scale=1.3, size=(7, 3))
    )


def triclinic_supercell() -> ase.Atoms:
    atoms = ase.build.bulk("Ni", "fcc", a=3.6) * (3, 2, 2)
    atoms.numbers = np.random.default_rng(1).choice([28, 29, 46], len(atoms))
    atoms.rattle(0.05, seed=2)
    return atoms


SYSTEMS = {
    "alloy": make_alloy,
    "small-cell": small_cell,
    "molecule": molecule,
    "triclinic": triclinic_supercell,
}


def compare(args_str: str, atoms: ase.Atoms, tol: float = 1e-11) -> dict:
    reference = quippy_descriptors.Descriptor(args_str).calc(atoms.copy(), grad=True)
    ours = Descriptor(args_str).calc(atoms, grad=True)
    # identical row layout, row by row (quippy's neighbour-image order)
    np.testing.assert_array_equal(ours["grad_index_0based"], reference["grad_index_0based"])
    np.testing.assert_array_equal(ours["ci"], reference["ci"])
    known = (
        reference["grad_index_0based"][:, 1] >= 0
    )  # quippy leaves unknown-species rows uninitialised
    np.testing.assert_allclose(ours["pos"][known], reference["pos"][known], atol=1e-10)
    assert ours["grad_data"].shape == reference["grad_data"].shape
    scale = np.abs(reference["grad_data"][known]).max()
    assert scale > 1e-3
    assert np.abs(ours["grad_data"][known] - reference["grad_data"][known]).max() <= tol
    assert np.abs(ours["data"] - reference["data"]).max() <= 1e-12
    return ours


@pytest.mark.parametrize("variant", sorted(MIXED))
def test_mixed_and_standard_gradients_match_quippy(variant):
    compare(BASE + MIXED[variant], make_alloy(seed=4))


@pytest.mark.parametrize("system", sorted(SYSTEMS))
@pytest.mark.parametrize("variant", ["standard", "rz-asym-tensor"])
def test_periodic_and_molecular_gradients_match_quippy(system, variant):
    ours = compare(BASE + MIXED[variant], SYSTEMS[system]())
    # centre row first in each group, equal to minus the sum of the group's other rows
    index, data = ours["grad_index_0based"], ours["grad_data"]
    first = np.flatnonzero(np.r_[True, index[1:, 0] != index[:-1, 0]])
    assert np.array_equal(index[first, 0], index[first, 1])
    totals = np.add.reduceat(data, first, axis=0)
    assert np.abs(totals).max() < 1e-12
    assert np.abs(data[:, :, -1]).max() == 0.0  # the covariance_sigma0 slot


def test_missing_species_and_centre_selection_match_quippy():
    atoms = make_alloy(seed=5)
    ours = compare(
        "soap cutoff=4.0 l_max=3 n_max=3 atom_sigma=0.5 n_species=2 species_Z={28 29} Z=29 "
        "R_mix=T Z_mix=T K=3",
        atoms,
    )
    # neighbours of an element outside species_Z are listed with j = -1 and a zero gradient
    unknown = ours["grad_index_0based"][:, 1] < 0
    assert unknown.any() and np.abs(ours["grad_data"][unknown]).max() == 0.0
    assert set(atoms.numbers[ours["ci"] - 1]) == {29}


def test_summed_rows_are_the_atom_jacobian():
    """Summing quippy rows per (i, j) gives d X_i / d x_j, compared with finite differences."""
    atoms = small_cell()
    d = Descriptor(BASE + MIXED["z-sym-tensor"])
    out = d.calc(atoms, grad=True)
    jacobian = np.zeros((2, 2, 3, d.dimensions()))
    for (i, j), row in zip(out["grad_index_0based"], out["grad_data"], strict=True):
        jacobian[i, j] += row
    h = 1e-5
    for j in range(2):
        for a in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[j, a] += h
            minus.positions[j, a] -= h
            numeric = (d.calc(plus)["data"] - d.calc(minus)["data"]) / (2 * h)
            assert np.abs(jacobian[:, j, a] - numeric).max() <= 1e-6 * np.abs(jacobian).max()


def test_neighbour_order_of_a_large_cell_matches_quippy():
    """The order emulation alone, on a 256-atom cell with several subcells per direction."""
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * (4, 4, 4)
    atoms.rattle(0.05, seed=3)
    atoms.positions += 5.0  # atoms outside the cell: exercises the mapping shifts
    reference = quippy_descriptors.Descriptor(
        "soap cutoff=4.5 l_max=1 n_max=1 atom_sigma=0.5"
    ).calc(atoms.copy(), grad=True)
    pairs = neighbor_list(as_batch(atoms), 4.5)
    order = quip_pair_order(
        atoms.positions,
        atoms.cell[:],
        atoms.pbc,
        pairs.i.numpy(),
        pairs.j.numpy(),
        pairs.shifts.numpy(),
        4.5,
    )
    not_centre = np.ones(len(reference["grad_index_0based"]), dtype=bool)
    index = reference["grad_index_0based"]
    not_centre[np.flatnonzero(np.r_[True, index[1:, 0] != index[:-1, 0]])] = False
    np.testing.assert_array_equal(index[not_centre, 1], pairs.j.numpy()[order])
    image = atoms.positions[pairs.j.numpy()[order]] + pairs.shifts.numpy()[order] @ atoms.cell[:]
    np.testing.assert_allclose(reference["pos"][not_centre], image, atol=1e-10)


def test_average_with_gradients_is_refused():
    with pytest.raises(NotImplementedError, match="average"):
        Descriptor(BASE + " average=T").calc(make_alloy(), grad=True)
