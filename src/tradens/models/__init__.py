"""Regression and potentials on (tensor-reduced) atomic features.

All estimators follow scikit-learn conventions (``fit`` returns ``self``,
fitted attributes end in ``_``, ``get_params``/``set_params``), fit a
per-element baseline first and keep it, and predict energies (eV), forces
(eV/Å) and stress (eV/Å^3) with ``predict(frames)``. Save and load with
:func:`save` / :func:`load`; run MD through :class:`tradens.calculator.TradensCalculator`,
or write them for MD engines (LAMMPS, i-PI, TorchSim, GAP) with :func:`export`.
"""

from ._cache import DesignCache
from ._report import FitReport, FitWarning, PropertyErrors
from .baseline import ElementBaseline
from .engines import export
from .ensemble import EnsemblePotential
from .io import load, save
from .kernel import SparseKernelPotential
from .learned import LearnedPotential
from .linear import LinearPotential
from .projection import CompressedLeastSquares, RandomProjection

__all__ = [
    "CompressedLeastSquares",
    "DesignCache",
    "ElementBaseline",
    "EnsemblePotential",
    "FitReport",
    "FitWarning",
    "LearnedPotential",
    "LinearPotential",
    "PropertyErrors",
    "RandomProjection",
    "SparseKernelPotential",
    "export",
    "load",
    "save",
]
