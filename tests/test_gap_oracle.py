"""tradens.quip against quippy-ase (GAP), the reference implementation.

quippy-ase is only a test-time oracle (academic licence); the tests skip when
it is not installed.
"""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest

from tradens.quip import Descriptor

quippy_descriptors = pytest.importorskip("quippy.descriptors")

BASE = "soap cutoff=5.0 l_max=4 n_max=6 atom_sigma=0.5 n_species=3 species_Z={28 29 46}"

STANDARD = [
    "",
    "diagonal_radial=T",
    "normalise=F",
    "normalize=F",
    "average=T",
    "covariance_sigma0=0.5",
    "central_weight=0.3",
    "central_reference_all_species=T",
    "cutoff_transition_width=1.0",
    "atom_gaussian_width=0.4",
    "Z=29",
    "n_Z=2 Z={28 46}",
    "nu_R=0 nu_S=2",
    "nu_R=1 nu_S=2",
    "nu_R=2 nu_S=1",
    "nu_R=2 nu_S=0",
    "nu_R=1 nu_S=1",
    "nu_R=0 nu_S=1",
    "Z_map={28 29, 46}",
    "Z_map={28, 29, 46: 28 29 46}",
]
MIXING = [
    f"{mode} sym_mix={sym} coupling={coupling} K={k} mix_shift={shift}"
    for mode in ("R_mix=T Z_mix=T", "Z_mix=T", "R_mix=T")
    for sym in "TF"
    for coupling in "TF"
    for k, shift in ((5, 0), (3, 7))
]


def _compare(args: str, atoms: ase.Atoms, tol: float = 1e-10) -> None:
    reference = quippy_descriptors.Descriptor(args)
    ours = Descriptor(args)
    assert ours.dimensions() == reference.dimensions()
    expected = reference.calc(atoms)
    result = ours.calc(atoms)
    assert result["data"].shape == expected["data"].shape
    np.testing.assert_allclose(result["data"], expected["data"], atol=tol, rtol=0)
    np.testing.assert_array_equal(result["ci"], expected["ci"])


@pytest.mark.parametrize("suffix", STANDARD + MIXING)
def test_periodic_alloy(alloy, suffix):
    _compare(f"{BASE} {suffix}", alloy)


@pytest.mark.parametrize(
    "suffix",
    [
        "",
        "R_mix=T Z_mix=T sym_mix=T coupling=F K=4",
        "Z_mix=T sym_mix=F coupling=T K=2 mix_shift=3",
    ],
)
def test_small_triclinic_cell(small_cell, suffix):
    _compare(f"{BASE} {suffix}", small_cell)


@pytest.mark.parametrize("suffix", ["", "average=T", "R_mix=T sym_mix=T coupling=F K=3"])
def test_molecule_with_isolated_atom(molecule, suffix):
    _compare(f"{BASE} {suffix}", molecule)


def test_triclinic(triclinic):
    _compare(f"{BASE} R_mix=T Z_mix=T sym_mix=F coupling=T K=4", triclinic)


def test_element_outside_species(alloy):
    atoms = alloy.copy()
    atoms.numbers[:5] = 26  # Fe is not in species_Z: GAP skips it as a neighbour
    _compare(BASE, atoms)
    _compare(f"{BASE} R_mix=T Z_mix=T K=4", atoms)


def test_wildcard_single_species(alloy):
    _compare("soap cutoff=4.5 l_max=5 n_max=5 atom_sigma=0.6", alloy)
    _compare("soap cutoff=4.5 l_max=3 n_max=4 atom_sigma=0.6 R_mix=T K=3 coupling=F", alloy)


def test_many_elements_and_higher_degree():
    rng = np.random.default_rng(11)
    species = [21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 39, 40, 41, 42, 44]
    atoms = ase.build.bulk("Fe", "bcc", a=3.2, cubic=True) * (2, 2, 2)
    atoms.numbers = rng.choice(species, len(atoms))
    atoms.rattle(0.05, seed=2)
    species_str = " ".join(map(str, species))
    base = (
        "soap cutoff=5.0 l_max=8 n_max=8 atom_sigma=0.5 "
        f"n_species={len(species)} species_Z={{{species_str}}}"
    )
    _compare(base, atoms)
    _compare(f"{base} R_mix=T Z_mix=T sym_mix=T coupling=F K=16", atoms)
