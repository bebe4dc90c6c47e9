"""Testing utilities shipped with tradens: the physics-invariance contract.

Every representation (anything with ``compute(frames, output="numpy")``
returning :class:`~tradens.representations.features.Features`) should pass
:func:`check_invariance_contract`; the helpers can also be used on their own.
"""

from __future__ import annotations

import ase
import numpy as np

__all__ = [
    "random_rotation",
    "rotated",
    "permuted",
    "check_invariance_contract",
    "assert_rotation_invariant",
    "assert_translation_invariant",
    "assert_permutation_covariant",
    "assert_supercell_consistent",
]


def random_rotation(seed: int = 0, proper: bool = True) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (``det = +1``; ``-1`` if not ``proper``)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q if proper else -q


def rotated(atoms: ase.Atoms, rotation: np.ndarray) -> ase.Atoms:
    """A copy of ``atoms`` with positions and cell rotated (``x -> R x``)."""
    out = atoms.copy()
    out.set_positions(atoms.get_positions() @ rotation.T)
    out.set_cell(np.asarray(atoms.get_cell()) @ rotation.T, scale_atoms=False)
    return out


def permuted(atoms: ase.Atoms, permutation: np.ndarray) -> ase.Atoms:
    """A copy of ``atoms`` with the atoms reordered as ``atoms[permutation]``."""
    return atoms[np.asarray(permutation)]


def _values(representation, frames):
    return np.asarray(representation.compute(frames, output="numpy").values)


def assert_rotation_invariant(representation, atoms, *, seed=0, proper=True, atol=1e-10):
    """Features do not change when the structure (and cell) is rotated."""
    reference = _values(representation, atoms)
    other = _values(representation, rotated(atoms, random_rotation(seed, proper)))
    np.testing.assert_allclose(other, reference, atol=atol, rtol=0)


def assert_translation_invariant(representation, atoms, *, shift=(0.37, -1.21, 2.05), atol=1e-10):
    """Features do not change when every atom is translated (periodic atoms are not re-wrapped)."""
    reference = _values(representation, atoms)
    moved = atoms.copy()
    moved.translate(np.asarray(shift))
    np.testing.assert_allclose(_values(representation, moved), reference, atol=atol, rtol=0)


def assert_permutation_covariant(representation, atoms, *, seed=0, atol=1e-10):
    """``X(P x) = P X(x)`` for a random permutation ``P`` of the atoms."""
    permutation = np.random.default_rng(seed).permutation(len(atoms))
    reference = _values(representation, atoms)
    other = _values(representation, permuted(atoms, permutation))
    np.testing.assert_allclose(other, reference[permutation], atol=atol, rtol=0)


def assert_supercell_consistent(representation, atoms, *, repeat=(2, 2, 2), atol=1e-10):
    """Per-atom features of a supercell equal those of the primitive cell (tiled)."""
    reference = _values(representation, atoms)
    supercell = atoms.repeat(repeat)
    n_copies = int(np.prod(repeat))
    np.testing.assert_allclose(
        _values(representation, supercell), np.tile(reference, (n_copies, 1)), atol=atol, rtol=0
    )


def check_invariance_contract(representation, atoms, *, atol=1e-10, supercell=True):
    """Run the rotation, translation, permutation and (periodic) supercell checks."""
    assert_rotation_invariant(representation, atoms, atol=atol)
    assert_translation_invariant(representation, atoms, atol=atol)
    assert_permutation_covariant(representation, atoms, atol=atol)
    if supercell and atoms.pbc.all():
        assert_supercell_consistent(representation, atoms, atol=atol)
