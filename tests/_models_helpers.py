"""Shared helpers for the model tests: small labelled systems and a planted model."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from tradens import SOAP
from tradens.gradients import energy_forces_stress

SPECIES = (28, 29, 46)


def alloy(seed: int, repeat=(2, 2, 2), rattle: float = 0.12, strain: float = 0.0) -> ase.Atoms:
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * repeat
    rng = np.random.default_rng(seed)
    atoms.numbers = rng.choice(SPECIES, len(atoms))
    atoms.numbers[:3] = SPECIES  # every element present
    deformation = np.eye(3) + strain * rng.uniform(-1, 1, (3, 3))
    atoms.set_cell(atoms.cell[:] @ deformation, scale_atoms=True)
    atoms.rattle(rattle, seed=seed + 100)
    return atoms


def small_soap(**kwargs) -> SOAP:
    options = dict(
        cutoff=4.0,
        l_max=3,
        radial={"n_max": 4},
        species=list(SPECIES),
        mixing={"channels": 4, "seed": 1},
    )
    options.update(kwargs)
    return SOAP(**options)


def label(frames, representation, model_fn):
    """Copies of ``frames`` labelled with energy, forces and stress of ``model_fn``."""
    out = energy_forces_stress(representation, model_fn, frames)
    labelled, offset = [], 0
    for s, frame in enumerate(frames):
        atoms = frame.copy()
        n = len(atoms)
        stress = out.stress[s][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=float(out.energy[s]),
            forces=out.forces[offset : offset + n].copy(),
            stress=stress,
        )
        labelled.append(atoms)
        offset += n
    return labelled


def planted(representation, seed: int = 0):
    """A random linear model ``(theta, e0, model_fn)`` on ``representation``'s features."""
    rng = np.random.default_rng(seed)
    theta = torch.as_tensor(rng.normal(size=representation.n_features))
    e0 = {28: -4.4, 29: -3.5, 46: -3.9}

    def model_fn(values, numbers):
        reference = torch.tensor([e0[int(z)] for z in numbers.tolist()], dtype=values.dtype)
        return values @ theta.to(values.dtype) + reference

    return theta.numpy(), e0, model_fn
