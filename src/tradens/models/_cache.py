"""Descriptor caches: the part of a linear fit that does not depend on the regularisation.

:meth:`LinearPotential.precompute <tradens.models.LinearPotential.precompute>`
reduces the design rows of a training set to a :class:`DesignCache` (the
per-fold sufficient statistics of :mod:`tradens.models._solve`, or the energy
rows of the dual solver), and
:meth:`LinearPotential.fit_features <tradens.models.LinearPotential.fit_features>`
fits from it. Changing ``alphas``, the property weights, ``baseline``,
``standardize`` or ``cv_metric`` between fits needs no new descriptors;
changing the representation, the basis, the folds, the structure weights or
the label keys does (a mismatch is refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ._design import Basis
    from ._dual import EnergyRows
    from ._solve import FoldStatistics

__all__ = ["DesignCache", "CACHE_PARAMS"]

#: Estimator parameters a cache depends on (kernel models add their sparse-point options).
CACHE_PARAMS = (
    "per_element",
    "config_weights",
    "config_key",
    "energy_key",
    "forces_key",
    "stress_key",
    "label_share",
    "cv",
    "seed",
)


@dataclass(eq=False)
class DesignCache:
    """Descriptor-derived statistics of one training set, reusable across fits.

    Attributes
    ----------
    solver : str
        ``"primal"`` (``statistics`` is a ``FoldStatistics``: ``D x D`` normal
        matrices per fold and property) or ``"dual"`` (``statistics`` holds the
        per-atom energy rows ``[structure, D]``).
    statistics : FoldStatistics or EnergyRows
        The reduced design.
    species : tuple of int
        Elements of the baseline.
    basis : Basis
        The local basis ``phi`` the rows were built with.
    folds : numpy.ndarray
        ``[structure]`` fold of every structure.
    n_folds : int
        Number of folds (1: no cross-validation).
    labels : dict
        ``{property: labelled structures}`` of the properties in the cache.
    skipped : dict
        ``{property: reason}`` of the properties left out.
    n_structures : int
        Training structures.
    params : dict
        The estimator parameters the cache was built with (see ``CACHE_PARAMS``).
    fitted : dict
        Fitted attributes of the basis (projection, sparse points) to restore.
    """

    solver: str
    statistics: FoldStatistics | EnergyRows
    species: tuple[int, ...]
    basis: Basis
    folds: np.ndarray
    n_folds: int
    labels: dict[str, int]
    skipped: dict[str, str]
    n_structures: int
    params: dict
    representation: object = None
    fitted: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        """Columns ``D`` of the design."""
        return int(self.basis.n_outputs)

    def check(self, model) -> None:
        """Raise a ValueError when ``model``'s parameters do not match the cache's."""
        if model.representation is not self.representation:
            raise ValueError(
                "this DesignCache was computed with another representation object; "
                "call precompute(frames) again"
            )
        for name, value in self.params.items():
            current = getattr(model, name, None)
            same = current is value
            if not same:
                try:
                    same = bool(current == value)
                except Exception:  # arrays and modules compare by identity
                    same = False
            if not same:
                raise ValueError(
                    f"{name}={current!r} differs from the value the DesignCache was computed "
                    f"with ({value!r}); call precompute(frames) again"
                )
        if model.solver not in ("auto", self.solver):
            raise ValueError(
                f"solver={model.solver!r} but the DesignCache holds {self.solver} statistics; "
                "call precompute(frames) again"
            )
        for prop in ("energy", "forces", "stress"):
            weight = getattr(model, f"{prop}_weight")
            if prop not in self.labels and prop not in self.skipped and weight != 0:
                raise ValueError(
                    f"{prop}_weight={weight!r} but the DesignCache has no {prop} rows "
                    f"(computed with {prop}_weight=0); call precompute(frames) again"
                )
