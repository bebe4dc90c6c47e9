"""ASE calculator for fitted :mod:`tradens.models` potentials.

>>> from tradens.calculator import TradensCalculator        # doctest: +SKIP
>>> atoms.calc = TradensCalculator("model.zip")              # doctest: +SKIP
>>> atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()   # doctest: +SKIP

Energies in eV, forces in eV/Å, stress in eV/Å^3 (ASE sign and Voigt order).
``free_energy`` equals ``energy`` (no electronic entropy). Stress is only
defined for cells periodic in all three directions. With ``uncertainty=True``
the calculator also puts the predicted standard deviation of the energy (eV) in
``calc.results["energy_std"]`` (``calc.get_property("energy_std", atoms)``):
the posterior standard deviation of a linear or kernel model, the members'
spread of an ensemble.
"""

from __future__ import annotations

import os

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

__all__ = ["TradensCalculator"]


class TradensCalculator(Calculator):
    """Energy, forces and stress from a fitted tradens potential.

    Parameters
    ----------
    model : fitted potential or path
        A fitted model from :mod:`tradens.models`, or the path of a file
        written by :func:`tradens.models.save`.
    uncertainty : bool
        Also compute ``results["energy_std"]`` (eV); the model must have an
        uncertainty estimate (``model.has_std()``), else ValueError.
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model, *, uncertainty: bool = False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, (str, os.PathLike)):
            from .io import load

            model = load(model)
        if not hasattr(model, "predict") or not hasattr(model, "baseline_"):
            raise ValueError(
                "TradensCalculator needs a fitted tradens potential or the path of a saved one"
            )
        self.model = model
        self.uncertainty = bool(uncertainty)
        if self.uncertainty:
            if not model.has_std():
                raise ValueError(
                    f"uncertainty=True but this {type(model).__name__} has no uncertainty "
                    "estimate (a linear/kernel model fitted with the primal solver, or an "
                    "ensemble, has one)"
                )
            self.implemented_properties = [*type(self).implemented_properties, "energy_std"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute the requested properties (all of them in one backward pass)."""
        super().calculate(atoms, properties, system_changes)
        if self.atoms is None:
            raise ValueError("TradensCalculator.calculate: no atoms given and none attached")
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                "stress needs a cell periodic in all three directions"
            )
        if "energies" in properties:
            self.results["energies"] = self.model.predict_atom_energies([atoms])
        if self.uncertainty:
            prediction = self.model.predict([atoms], forces=True, stress=periodic, return_std=True)
            self.results["energy_std"] = float(prediction["energy_std"][0])
        else:
            prediction = self.model.predict([atoms], forces=True, stress=periodic)
        energy = float(prediction["energy"][0])
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = np.asarray(prediction["forces"], dtype=np.float64)
        if periodic:
            self.results["stress"] = np.asarray(prediction["stress"][0], dtype=np.float64)
