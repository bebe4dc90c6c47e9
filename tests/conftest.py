"""Shared fixtures: small structures that cover the cases of the contract."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
import torch

import tradens.kernels.compiled

SPECIES = (28, 29, 46)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def make_alloy(seed: int = 0, repeat=(2, 2, 2), species=SPECIES, rattle: float = 0.1) -> ase.Atoms:
    """Rattled random fcc alloy (32 atoms for the default repeat)."""
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * repeat
    rng = np.random.default_rng(seed)
    atoms.numbers = rng.choice(species, len(atoms))
    atoms.rattle(rattle, seed=seed + 1)
    return atoms


@pytest.fixture
def alloy() -> ase.Atoms:
    return make_alloy()


@pytest.fixture
def small_cell() -> ase.Atoms:
    """A 2-atom triclinic cell much smaller than the cutoff (many self-images)."""
    atoms = ase.Atoms(
        numbers=[28, 46],
        positions=[[0.0, 0.0, 0.0], [1.3, 1.1, 0.9]],
        cell=[[2.5, 0.0, 0.0], [0.7, 2.4, 0.0], [0.4, 0.6, 2.6]],
        pbc=True,
    )
    return atoms


@pytest.fixture
def triclinic() -> ase.Atoms:
    atoms = make_alloy(seed=3, repeat=(1, 1, 1))
    cell = np.asarray(atoms.get_cell()) + np.array(
        [[0.0, 0.3, 0.2], [0.4, 0.0, -0.3], [0.2, 0.5, 0.0]]
    )
    atoms.set_cell(cell, scale_atoms=True)
    return atoms


@pytest.fixture
def molecule() -> ase.Atoms:
    """A non-periodic cluster with an isolated atom (no neighbours)."""
    rng = np.random.default_rng(5)
    positions = rng.normal(scale=1.2, size=(7, 3))
    positions = np.vstack([positions, [[30.0, 30.0, 30.0]]])
    return ase.Atoms(numbers=[28, 29, 46, 28, 29, 46, 29, 28], positions=positions)


@pytest.fixture(params=["compiled", "torch"])
def implementation(request):
    """Run a test with the compiled kernels and again with the pure-torch code."""
    if request.param == "compiled" and not tradens.kernels.compiled.compiled_available():
        pytest.skip("numba is not installed")
    previous = tradens.kernels.compiled.set_compiled(request.param == "compiled")
    yield request.param
    tradens.kernels.compiled.set_compiled(previous)
