"""Per-element reference energies, fitted by least squares on composition.

.. math:: E_s \\approx \\sum_Z n_{sZ}\\, e_Z

is fitted on energies per atom, ``min_e sum_s c_s (E_s/N_s - sum_Z f_{sZ} e_Z)^2``
with the composition fractions ``f_{sZ} = n_{sZ}/N_s`` and optional structure
weights ``c_s``. Every potential in :mod:`tradens.models` fits this first and
keeps it; it also serves as the trivial model that others must beat.
"""

from __future__ import annotations

import numpy as np
import torch

from ..systems.batch import _as_frames
from ._base import PotentialBase
from ._data import composition, read_targets, species_of
from .registry import register_model

__all__ = ["ElementBaseline", "solve_reference_energies"]


def solve_reference_energies(
    fractions: np.ndarray,
    energy_per_atom: np.ndarray,
    weights: np.ndarray | None = None,
    rcond: float = 1e-12,
) -> np.ndarray:
    """Minimum-norm weighted least squares ``fractions @ e ~ energy_per_atom``.

    Parameters
    ----------
    fractions : numpy.ndarray
        ``[structure, element]`` composition fractions.
    energy_per_atom : numpy.ndarray
        ``[structure]`` eV/atom.
    weights : numpy.ndarray, optional
        ``[structure]`` non-negative weights.

    Returns
    -------
    numpy.ndarray
        ``[element]`` reference energies in eV; elements without data get the
        mean of the others.
    """
    from ._solve import fill_unseen

    w = np.ones(len(energy_per_atom)) if weights is None else np.asarray(weights, dtype=np.float64)
    root = np.sqrt(w)[:, None]
    solution, *_ = np.linalg.lstsq(fractions * root, energy_per_atom * root[:, 0], rcond=rcond)
    seen = np.asarray(((fractions > 0) & (w[:, None] > 0)).any(axis=0))  # [element]
    return fill_unseen(solution, seen)


@register_model
class ElementBaseline(PotentialBase):
    """Energy as a sum of per-element reference energies.

    Parameters
    ----------
    species : sequence of int, optional
        Elements to fit (default: those in the training data). Elements
        without training data get the mean reference energy of the others.
    energy_key : str
        Where the energies are (``atoms.info`` or the attached calculator).

    Attributes
    ----------
    species_ : tuple of int
        Fitted elements.
    reference_energies_ : numpy.ndarray
        ``[element]`` reference energy of each element of ``species_``, eV.

    Examples
    --------
    >>> import ase
    >>> from tradens.models import ElementBaseline
    >>> frames = [ase.Atoms("Cu2"), ase.Atoms("CuNi")]
    >>> for atoms, energy in zip(frames, [-7.0, -8.0]):
    ...     atoms.info["energy"] = energy
    >>> ElementBaseline().fit(frames).energies_by_element()
    {28: -4.5, 29: -3.5}
    """

    def __init__(self, species=None, energy_key: str = "energy"):
        self.species = species
        self.energy_key = energy_key

    def fit(self, frames, sample_weight=None):
        """Fit the reference energies to the energies of ``frames``; returns ``self``."""
        frames = _as_frames(frames)
        targets = read_targets(frames, energy_key=self.energy_key, forces_key=None, stress_key=None)
        if not np.isfinite(targets.energy).any():
            raise ValueError(f"no energies found under key {self.energy_key!r}")
        species = (
            species_of(frames) if self.species is None else tuple(int(z) for z in self.species)
        )
        counts = composition(frames, species)  # [structure, element]
        keep = np.isfinite(targets.energy)
        weights = (
            None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)[keep]
        )
        fractions = counts[keep] / targets.n_atoms[keep, None]
        self.species_ = species
        self.reference_energies_ = solve_reference_energies(
            fractions, targets.energy[keep] / targets.n_atoms[keep], weights
        )
        self.baseline_ = self
        return self

    def set_reference(self, species, reference_energies):
        """Set fitted values directly (used by the potentials and by loading)."""
        self.species_ = tuple(int(z) for z in species)
        self.reference_energies_ = np.asarray(reference_energies, dtype=np.float64).copy()
        self.baseline_ = self
        return self

    def energies_by_element(self) -> dict[int, float]:
        """``{Z: e_Z}`` in eV."""
        self._check_fitted()
        return {
            z: round(float(e), 12)
            for z, e in zip(self.species_, self.reference_energies_, strict=True)
        }

    def predict_energy(self, frames) -> np.ndarray:
        """Baseline energies ``[structure]`` (eV)."""
        self._check_fitted()
        return composition(frames, self.species_) @ self.reference_energies_

    def atom_energies(self, numbers: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
        """Reference energy of every atom ``[atom]`` (eV), for torch energy functions."""
        self._check_fitted()
        table = torch.zeros(max(self.species_) + 1, dtype=dtype)
        known = torch.zeros(max(self.species_) + 1, dtype=torch.bool)
        for z, e in zip(self.species_, self.reference_energies_, strict=True):
            table[z], known[z] = float(e), True
        numbers_cpu = numbers.cpu()
        if bool((numbers_cpu > table.shape[0] - 1).any()) or not bool(
            known[numbers_cpu.clamp(max=table.shape[0] - 1)].all()
        ):
            missing = sorted(set(numbers_cpu.tolist()) - set(self.species_))
            raise ValueError(
                f"element(s) {missing} have no reference energy; fitted species: "
                f"{list(self.species_)}"
            )
        return table.to(numbers.device)[numbers]

    def _get_state(self):
        return (
            {"params": self._json_params(), "fitted": {"species": list(self.species_)}},
            {"reference_energies": np.asarray(self.reference_energies_)},
        )

    @classmethod
    def _from_state(cls, meta, arrays):
        params = dict(meta["params"])
        if params.get("species") is not None:
            params["species"] = tuple(params["species"])
        return cls(**params).set_reference(meta["fitted"]["species"], arrays["reference_energies"])

    def _atom_energy(self, values: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        return self.atom_energies(numbers, values.dtype).to(values.device) + 0.0 * values.sum(1)

    def _representation_for_prediction(self):
        return _NoFeatures()


class _NoFeatures(torch.nn.Module):
    """A representation with one constant feature per atom (for the baseline's predictions)."""

    def forward(self, batch, positions=None, cells=None):
        positions = batch.positions if positions is None else positions
        return 0.0 * positions[:, :1], torch.arange(batch.n_atoms, device=positions.device)
