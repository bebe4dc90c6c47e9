"""Estimator plumbing shared by the potentials (scikit-learn conventions).

``__init__`` only stores its arguments; :meth:`get_params` /
:meth:`set_params` read and write them by name (so ``sklearn.base.clone``
works without scikit-learn being a dependency); fitted attributes end in ``_``.
Every potential is a sum of atomic energies: it defines
``_atom_energy(values [row, F], numbers [row]) -> [row]`` (eV, differentiable)
on the features of its ``representation_``, and :meth:`PotentialBase.predict`
gets forces and stress from :func:`tradens.gradients.energy_forces_stress`
(one backward pass per batch).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from ..kernels.determinism import deterministic
from ..systems.batch import _as_frames
from ._data import check_labels, label_keys, periodic_3d, read_targets

__all__ = ["PotentialBase", "rmse_report"]


class PotentialBase:
    """Base class: parameters, predictions, scores."""

    # fitted (set by ``fit``): the module whose features the model reads, a Representation
    # (SOAP, ACE) or, in LearnedPotential, one with pair densities appended (Augmented)
    representation_: Any

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [
            p.name
            for p in signature.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self, deep: bool = True) -> dict:
        """Constructor arguments by name (scikit-learn protocol)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set constructor arguments by name; returns ``self``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; valid: {valid}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        shown = []
        for name, value in self.get_params().items():
            default = defaults.get(name, inspect.Parameter.empty)
            try:
                same = value is default or bool(value == default)
            except Exception:  # arrays, modules
                same = False
            if not same:
                shown.append(
                    f"{name}={value!r}"
                    if not isinstance(value, torch.nn.Module)
                    else f"{name}={type(value).__name__}(...)"
                )
        return f"{type(self).__name__}({', '.join(shown)})"

    def _json_params(self, exclude=()) -> dict:
        """Constructor arguments as JSON data (tuples become lists)."""
        out = {}
        for name, value in self.get_params().items():
            if name in exclude:
                continue
            if isinstance(value, tuple):
                value = [float(v) if isinstance(v, (float, np.floating)) else v for v in value]
            elif isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            out[name] = value
        return out

    # --------------------------------------------------------------- predictions
    def _check_fitted(self) -> None:
        if not hasattr(self, "baseline_"):
            raise ValueError(
                f"this {type(self).__name__} is not fitted yet; call fit(frames) first"
            )

    def _atom_energy(
        self, values: torch.Tensor, numbers: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _representation_for_prediction(self):
        return self.representation_

    def has_std(self) -> bool:
        """Whether ``predict(..., return_std=True)`` gives an uncertainty (here: no)."""
        return False

    def predict(
        self,
        frames,
        *,
        forces: bool = True,
        stress: bool = True,
        batch_size: int = 16,
        return_std: bool = False,
    ) -> dict:
        """Energies, and optionally forces and stress, of ``frames``.

        Parameters
        ----------
        frames : ase.Atoms or a list of them
            Structures (never modified).
        forces, stress : bool
            Also return ``-dE/dr`` and ``(1/V) dE/d(epsilon)``.
        batch_size : int
            Structures per autograd batch.
        return_std : bool
            Also return ``"energy_std"`` (eV); only models with an uncertainty
            estimate (:meth:`has_std`) have one, the others raise ValueError.

        Returns
        -------
        dict
            ``"energy" [structure]`` (eV), ``"forces" [atom, 3]`` (eV/Å, all
            atoms concatenated) and ``"stress" [structure, 6]`` (eV/Å^3, Voigt,
            NaN for structures that are not periodic in 3D).
        """
        self._check_fitted()
        if return_std:
            raise ValueError(f"{type(self).__name__} has no uncertainty estimate (return_std)")
        from ..gradients.api import energy_forces_stress

        frames = _as_frames(frames)
        representation = self._representation_for_prediction()
        if not (forces or stress):
            energies = []
            with torch.no_grad(), deterministic(self._device()):
                from ..systems.batch import as_batch

                for start in range(0, len(frames), batch_size):
                    batch = as_batch(
                        frames[start : start + batch_size],
                        dtype=self._dtype(),
                        device=self._device(),
                        first_index=start,
                    )
                    values, rows = representation(batch)
                    per_row = self._atom_energy(values, batch.numbers[rows])
                    energy = torch.zeros(
                        batch.n_structures, dtype=per_row.dtype, device=per_row.device
                    )
                    energies.append(
                        energy.index_add(0, batch.structure[rows], per_row).cpu().numpy()
                    )
            return {"energy": np.concatenate(energies)}
        result = energy_forces_stress(
            representation,
            self._atom_energy,
            frames,
            batch_size=batch_size,
            dtype=self._dtype(),
            device=self._device(),
        )
        out = {"energy": result.energy}
        if forces:
            out["forces"] = result.forces
        if stress:
            out["stress"] = result.stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        return out

    def predict_atom_energies(self, frames) -> np.ndarray:
        """Per-atom energies (eV) of all atoms of ``frames``, concatenated ``[atom]``."""
        self._check_fitted()
        from ..systems.batch import as_batch

        out = []
        with torch.no_grad():
            for frame in _as_frames(frames):
                batch = as_batch([frame], dtype=self._dtype(), device=self._device())
                values, rows = self._representation_for_prediction()(batch)
                energies = torch.zeros(batch.n_atoms, dtype=values.dtype, device=values.device)
                energies[rows] = self._atom_energy(values, batch.numbers[rows])
                out.append(energies.cpu().numpy())
        return np.concatenate(out)

    def _dtype(self) -> torch.dtype:
        return torch.float64

    def _device(self) -> torch.device:
        return torch.device("cpu")

    def score(
        self,
        frames,
        *,
        energy_key: str = "energy",
        forces_key: str = "forces",
        stress_key: str = "stress",
    ) -> dict:
        """Root-mean-square errors against the labels of ``frames``.

        Returns
        -------
        dict
            ``"energy"`` (eV/atom), ``"forces"`` (eV/Å, per Cartesian
            component) and ``"stress"`` (eV/Å^3, per Voigt component); NaN
            where no labels exist.

        Raises
        ------
        ValueError
            When no label is found, or a key other than the default matches
            no structure (naming the keys present and the closest one).
        """
        frames = _as_frames(frames)
        targets = read_targets(
            frames, energy_key=energy_key, forces_key=forces_key, stress_key=stress_key
        )
        keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key}
        found = check_labels(
            frames,
            targets,
            keys,
            {p: True for p in keys},
            share=1e-12,  # any labelled structure counts; a named key must match something
            periodic=periodic_3d(frames),
            optional=("energy", "forces", "stress"),
        )
        if not found:
            present = ", ".join(label_keys(frames)) or "none"
            raise ValueError(
                f"no labels to score against: no structure has energy {energy_key!r}, forces "
                f"{forces_key!r} or stress {stress_key!r}; keys present: {present}"
            )
        want_forces = "forces" in found
        want_stress = "stress" in found
        predicted = self.predict(frames, forces=want_forces, stress=want_stress)
        return rmse_report(predicted, targets)


def rmse_report(predicted: dict, targets) -> dict:
    """RMSEs of a prediction dict against :class:`~tradens.models._data.Targets`."""
    out = {"energy": np.nan, "forces": np.nan, "stress": np.nan}
    per_atom = (predicted["energy"] - targets.energy) / targets.n_atoms
    if np.isfinite(per_atom).any():
        out["energy"] = float(np.sqrt(np.nanmean(per_atom**2)))
    if "forces" in predicted and np.isfinite(targets.forces).any():
        out["forces"] = float(np.sqrt(np.nanmean((predicted["forces"] - targets.forces) ** 2)))
    if "stress" in predicted:
        diff = predicted["stress"] - targets.stress
        if np.isfinite(diff).any():
            out["stress"] = float(np.sqrt(np.nanmean(diff**2)))
    return out
