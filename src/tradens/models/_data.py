"""Reading labels (energies, forces, stress) and compositions from structures.

Labels are looked up, in order, in ``atoms.info`` / ``atoms.arrays`` under the
given key and then in the results of an attached calculator (ASE puts the
``energy``, ``forces`` and ``stress`` of an extxyz file into a
``SinglePointCalculator``). Units: eV, eV/Å and eV/Å^3; stress in ASE's
convention ``sigma = (1/V) dE/d(epsilon)`` and Voigt order
``xx, yy, zz, yz, xz, xy``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..systems.batch import _as_frames, _system_arrays

__all__ = [
    "Targets",
    "read_targets",
    "check_labels",
    "label_keys",
    "composition",
    "voigt",
    "fold_ids",
    "structure_weights",
]

#: The label keys used when none are given (ASE's calculator names).
DEFAULT_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}


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


def _lookup(frame, key: str | None, per_atom: bool):
    """The label ``key`` of ``frame`` (info/arrays, then calculator results); None if absent."""
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


def _numeric(value, structure: int, key: str | None, what: str, *, array: bool = False):
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
        If a label is not a number (naming the structure and the key), a force
        array has the wrong shape or an energy is not finite.
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
                raise ValueError(f"structure {s}: energy {energy_key!r} is not finite ({value!r})")
        value = _lookup(frame, forces_key, per_atom=True)
        if value is not None:
            value = _numeric(value, s, forces_key, "forces", array=True)
            if value.shape != (n_atoms[s], 3):
                raise ValueError(
                    f"structure {s}: forces {forces_key!r} must have shape ({n_atoms[s]}, 3), "
                    f"got {value.shape}"
                )
            forces[offsets[s] : offsets[s + 1]] = value
        value = _lookup(frame, stress_key, per_atom=False)
        if value is not None:
            stress[s] = voigt(_numeric(value, s, stress_key, "stress", array=True))
    return Targets(energy, forces, stress, n_atoms, offsets)


def label_keys(systems) -> dict[str, int]:
    """Every label-like key of ``systems`` and the number of structures that have it.

    Keys of ``atoms.info``, of ``atoms.arrays`` (without ``numbers`` and
    ``positions``) and of an attached calculator's ``results``.
    """
    counts: dict[str, int] = {}
    for frame in _as_frames(systems):
        keys = set(getattr(frame, "info", None) or ())
        keys.update(k for k in (getattr(frame, "arrays", None) or ()) if k not in _NOT_LABELS)
        keys.update(getattr(getattr(frame, "calc", None), "results", None) or ())
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


_NOT_LABELS = {"numbers", "positions"}


def _available(counts: dict[str, int], n: int) -> str:
    if not counts:
        return "the structures have no labels at all (no info, arrays or calculator results)"
    shown = [k if c == n else f"{k} ({c} of {n})" for k, c in counts.items()]
    return "keys present: " + ", ".join(shown)


def _suggestion(key: str, counts: dict[str, int]) -> str:
    close = difflib.get_close_matches(key, list(counts), n=1, cutoff=0.5)
    if not close:  # case-insensitive containment ("forces" in "REF_forces")
        close = [k for k in counts if key.lower() in k.lower() or k.lower() in key.lower()][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


def _labelled(targets: Targets, prop: str) -> np.ndarray:
    """``[structure]`` whether each structure has a finite label of ``prop``."""
    n = len(targets.n_atoms)
    if prop == "energy":
        return np.isfinite(targets.energy)
    if prop == "forces":
        return np.array([targets.has_forces(s) for s in range(n)], dtype=bool)
    return np.array([targets.has_stress(s) for s in range(n)], dtype=bool)


def check_labels(
    systems,
    targets: Targets,
    keys: Mapping[str, str | None],
    wanted: Mapping[str, bool],
    *,
    share: float = 1.0,
    periodic: np.ndarray | None = None,
    optional: tuple[str, ...] = ("forces", "stress"),
) -> dict[str, int]:
    """Check that every label a fit uses exists; return the properties to fit and their counts.

    A property is *wanted* when its weight is not zero and its key is not
    ``None``. A wanted property must be found in at least ``share`` of the
    structures (stress: of the structures periodic in 3D); a key that was named
    (not the default ``"energy"``, ``"forces"``, ``"stress"``) and is found in no
    structure, or a missing energy, is an error that lists the keys present and
    suggests the closest one. A default forces or stress key found nowhere is
    skipped (data without forces or stress).

    Parameters
    ----------
    systems : list of ase.Atoms
        The structures the targets came from (for the list of keys).
    targets : Targets
        Their labels, from :func:`read_targets`.
    keys : dict
        ``{"energy": key, "forces": key, "stress": key}``.
    wanted : dict
        ``{property: bool}``: whether the fit uses the property.
    share : float
        Smallest share of structures (0 < share <= 1) that must carry each
        wanted label.
    periodic : numpy.ndarray, optional
        ``[structure]`` whether a structure is periodic in 3D (stress can only
        exist there); default: all.
    optional : tuple of str
        Properties whose *default* key may be found nowhere (they are then
        left out instead of raising).

    Returns
    -------
    dict
        ``{property: number of labelled structures}`` of the properties to fit.

    Raises
    ------
    ValueError
        Naming the property, the key looked for, how many structures have
        it, the keys present and the closest key.
    """
    if not isinstance(share, (int, float)) or not 0.0 < share <= 1.0:
        raise ValueError(f"label_share must be a number in (0, 1], got {share!r}")
    n = len(targets.n_atoms)
    periodic = np.ones(n, dtype=bool) if periodic is None else np.asarray(periodic, dtype=bool)
    out: dict[str, int] = {}
    counts = None
    for prop in ("energy", "forces", "stress"):
        key = keys.get(prop)
        if key is None or not wanted.get(prop, False):
            continue
        have = _labelled(targets, prop)
        eligible = periodic if prop == "stress" else np.ones(n, dtype=bool)
        found, total = int(have.sum()), int(eligible.sum())
        if found == 0:
            if key == DEFAULT_KEYS[prop] and prop in optional:
                continue  # data without forces / stress: fit without them
            if total == 0:  # stress asked for, but no structure is periodic in 3D
                raise ValueError(f"stress key {key!r} given, but no structure is periodic in 3D")
            counts = label_keys(systems) if counts is None else counts
            raise ValueError(
                f"no structure has a {prop} label under the key {key!r} "
                f"({n} structures searched in atoms.info, atoms.arrays and calculator "
                f"results); {_available(counts, n)}{_suggestion(key, counts)}"
            )
        if found < share * total - 1e-9:
            missing = np.nonzero(eligible & ~have)[0]
            shown = ", ".join(str(s) for s in missing[:5]) + (", ..." if missing.size > 5 else "")
            raise ValueError(
                f"{prop} label {key!r} found in {found} of {total} structures "
                f"({100.0 * found / total:.1f}%; missing in structures {shown}); "
                f"label_share={share:g} requires {int(np.ceil(share * total - 1e-9))}. "
                f"Fit with the partial labels by passing label_share={found / total:.2f} "
                f"(CLI: --label-share), or leave the property out with a weight of 0"
            )
        out[prop] = found
    return out


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


def periodic_3d(systems) -> np.ndarray:
    """``[structure]`` whether each structure is periodic along all three cell vectors."""
    frames = _as_frames(systems)
    out = np.zeros(len(frames), dtype=bool)
    for s, frame in enumerate(frames):
        _, _, cell, pbc = _system_arrays(frame, s)
        pbc = np.broadcast_to(np.asarray(False if pbc is None else pbc, dtype=bool), (3,))
        if cell is not None and bool(pbc.all()):
            out[s] = abs(float(np.linalg.det(np.asarray(cell, dtype=np.float64)))) > 0
    return out
