"""Reading labels (energies, forces, stress) and compositions from structures.

Labels are looked up, in order, in ``atoms.info`` / ``atoms.arrays`` under the
given key and then in the results of an attached calculator (ASE puts the
``energy``, ``forces`` and ``stress`` of an extxyz file into a
``SinglePointCalculator``). Units: eV, eV/Å and eV/Å^3; stress in ASE's
convention ``sigma = (1/V) dE/d(epsilon)`` and Voigt order
``xx, yy, zz, yz, xz, xy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..systems.batch import _as_frames, _system_arrays

__all__ = ["Targets", "read_targets", "composition", "voigt", "fold_ids", "structure_weights"]


@dataclass
class Targets:
    """Labels of a list of structures; missing labels are NaN.

    Attributes
    ----------
    energy : numpy.ndarray
        ``[structure]`` total energies, eV.
    forces : numpy.ndarray
        ``[atom, 3]`` forces of all atoms concatenated, eV/Å.
    stress : numpy.ndarray
        ``[structure, 6]`` Voigt stress, eV/Å^3.
    n_atoms : numpy.ndarray
        ``[structure]`` atom counts.
    offsets : numpy.ndarray
        ``[structure + 1]`` first atom of every structure, plus the total.
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    n_atoms: np.ndarray
    offsets: np.ndarray

    def has_forces(self, s: int) -> bool:
        """Whether structure ``s`` has (finite) force labels."""
        block = self.forces[self.offsets[s] : self.offsets[s + 1]]
        return block.size > 0 and bool(np.isfinite(block).all())

    def has_stress(self, s: int) -> bool:
        """Whether structure ``s`` has a (finite) stress label."""
        return bool(np.isfinite(self.stress[s]).all())


def voigt(stress) -> np.ndarray:
    """Voigt-6 form ``[xx, yy, zz, yz, xz, xy]`` of a 3x3 or Voigt-6 stress."""
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (6,):
        return stress.copy()
    if stress.shape == (3, 3):
        return stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]].copy()
    if stress.shape == (9,):
        return voigt(stress.reshape(3, 3))
    raise ValueError(f"stress must have shape (6,), (9,) or (3, 3), got {stress.shape}")


def _lookup(frame, key: str, per_atom: bool):
    if key is None:
        return None
    store = getattr(frame, "arrays" if per_atom else "info", None)
    if store is not None and key in store:
        return store[key]
    calc = getattr(frame, "calc", None)
    results = getattr(calc, "results", None)
    if results and key in results:
        return results[key]
    return None


def _numeric(value, structure: int, key: str, what: str, *, array: bool = False):
    """``value`` as a float (or float64 array); a ValueError names the structure and key."""
    try:
        if array:
            return np.asarray(value, dtype=np.float64)
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        return float(np.asarray(value, dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(
            f"structure {structure}: the {what} label {key!r} is not numeric: {shown}"
        ) from None


def read_targets(
    systems,
    *,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
) -> Targets:
    """Collect the labels of ``systems`` (never modified); missing ones are NaN.

    Parameters
    ----------
    systems : ase.Atoms or a list of them
        The labelled structures.
    energy_key, forces_key, stress_key : str or None
        Where to find the labels (``None`` skips that property).

    Raises
    ------
    ValueError
        If a force array has the wrong shape or a label is not finite.
    """
    frames = _as_frames(systems)
    n_atoms = np.array([len(_system_arrays(f, s)[1]) for s, f in enumerate(frames)], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    energy = np.full(len(frames), np.nan)
    forces = np.full((int(offsets[-1]), 3), np.nan)
    stress = np.full((len(frames), 6), np.nan)
    for s, frame in enumerate(frames):
        value = _lookup(frame, energy_key, per_atom=False)
        if value is not None:
            energy[s] = _numeric(value, s, energy_key, "energy")
            if not np.isfinite(energy[s]):
                raise ValueError(f"structure {s}: energy is not finite ({value!r})")
        value = _lookup(frame, forces_key, per_atom=True)
        if value is not None:
            value = _numeric(value, s, forces_key, "forces", array=True)
            if value.shape != (n_atoms[s], 3):
                raise ValueError(
                    f"structure {s}: forces must have shape ({n_atoms[s]}, 3), got {value.shape}"
                )
            forces[offsets[s] : offsets[s + 1]] = value
        value = _lookup(frame, stress_key, per_atom=False)
        if value is not None:
            stress[s] = voigt(_numeric(value, s, stress_key, "stress", array=True))
    return Targets(energy, forces, stress, n_atoms, offsets)


def composition(systems, species) -> np.ndarray:
    """Atom counts per element, ``[structure, element]`` (float64).

    Raises
    ------
    ValueError
        If a structure contains an element that is not in ``species``.
    """
    frames = _as_frames(systems)
    species = [int(z) for z in species]
    column = {z: c for c, z in enumerate(species)}
    out = np.zeros((len(frames), len(species)))
    for s, frame in enumerate(frames):
        numbers = np.asarray(_system_arrays(frame, s)[1]).astype(np.int64)
        for z, count in zip(*np.unique(numbers, return_counts=True), strict=True):
            if int(z) not in column:
                raise ValueError(
                    f"structure {s}: element Z={int(z)} is not in the fitted species {species}"
                )
            out[s, column[int(z)]] = count
    return out


def species_of(systems, representation=None) -> tuple[int, ...]:
    """Sorted atomic numbers present in ``systems`` (and in ``representation.hypers.species``)."""
    frames = _as_frames(systems)
    found = set(getattr(getattr(representation, "hypers", None), "species", None) or ())
    for s, frame in enumerate(frames):
        found.update(int(z) for z in np.asarray(_system_arrays(frame, s)[1]).tolist())
    return tuple(sorted(found))


def fold_ids(n: int, cv, groups, seed: int) -> tuple[np.ndarray, int]:
    """Fold of every structure: seeded shuffled K-fold, or the given groups."""
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(
                f"groups must have one entry per structure ({n}), got shape {groups.shape}"
            )
        _, ids = np.unique(groups, return_inverse=True)
        return ids.astype(np.int64), int(ids.max()) + 1
    if cv is None or cv == 1:
        return np.zeros(n, dtype=np.int64), 1
    if not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv must be None or an integer >= 2, got {cv!r}")
    if cv > n:
        raise ValueError(f"cv={cv} folds need at least {cv} structures, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.arange(n) % cv
    return ids, int(cv)


def structure_weights(frames, sample_weight, config_weights, config_key) -> np.ndarray:
    """Per-structure weights ``c_s`` from ``sample_weight`` and ``config_weights``."""
    n = len(frames)
    weights = (
        np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).copy()
    )
    if weights.shape != (n,) or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"sample_weight must be {n} finite non-negative numbers")
    if config_weights:
        for s, frame in enumerate(frames):
            key = getattr(frame, "info", {}).get(config_key)
            weights[s] *= float(config_weights.get(key, config_weights.get("default", 1.0)))
    return weights
