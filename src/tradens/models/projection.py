"""Random-projection baselines for tensor-reduced features.

* :class:`RandomProjection`: a Johnson-Lindenstrauss map ``X -> P X`` with
  ``P [D, F]`` Gaussian (``N(0, 1/D)``) or very sparse (Achlioptas/Li:
  entries ``+-sqrt(s/D)`` with probability ``1/(2s)``, ``s = sqrt(F)``).
  Used as ``LinearPotential(full_soap, projection=RandomProjection(D))`` it
  compresses the full SOAP to as many columns as a tensor-reduced SOAP, the
  baseline that tensor reduction must beat at equal size.
* :class:`CompressedLeastSquares`: ordinary least squares on randomly
  projected features (Maillard & Munos, NeurIPS 2009), optionally averaged
  over several independent projections (Slawski 2018; Kabán 2014); ``alpha``
  is only a tiny ridge for round-off. Fitted the same way as the ridge
  potentials (baseline first, same weights and labels).
"""

from __future__ import annotations

import numpy as np
import torch

from ..representations.base import Representation
from ..systems.batch import _as_frames
from ._base import PotentialBase
from .linear import LinearPotential
from .random_projection import RandomProjection
from .registry import register_model, representation_from_state, representation_state

__all__ = ["RandomProjection", "CompressedLeastSquares"]


@register_model
class CompressedLeastSquares(PotentialBase):
    """Least squares on random projections of the features, averaged over projections.

    Parameters
    ----------
    representation : torch.nn.Module
        Per-atom features (typically the full SOAP).
    n_components : int
        Columns after projection.
    n_projections : int
        Independent projections whose predictions are averaged.
    kind : {"gaussian", "sparse"}
        Projection matrix type.
    alpha : float
        Relative ridge for round-off only (ordinary least squares in the limit).
    energy_weight, forces_weight, stress_weight : float or None
        As :class:`~tradens.models.LinearPotential` (``None``: from the data).
    energy_key, forces_key, stress_key : str
        Label keys.
    batch_size : int
        Structures per design batch.
    seed : int
        Seed of the first projection (``seed + k`` for the ``k``-th).

    Attributes
    ----------
    members_ : list of LinearPotential
        One fitted potential per projection.
    baseline_ : ElementBaseline
        Per-element reference energies (shared by all members).
    """

    def __init__(
        self,
        representation: Representation,
        n_components: int,
        *,
        n_projections: int = 1,
        kind: str = "gaussian",
        alpha: float = 1e-10,
        energy_weight: float | None = None,
        forces_weight: float | None = None,
        stress_weight: float | None = None,
        energy_key: str = "energy",
        forces_key: str = "forces",
        stress_key: str = "stress",
        batch_size: int = 8,
        seed: int = 0,
    ):
        self.representation = representation
        self.n_components = n_components
        self.n_projections = n_projections
        self.kind = kind
        self.alpha = alpha
        self.energy_weight = energy_weight
        self.forces_weight = forces_weight
        self.stress_weight = stress_weight
        self.energy_key = energy_key
        self.forces_key = forces_key
        self.stress_key = stress_key
        self.batch_size = batch_size
        self.seed = seed

    def _member(self, k: int) -> LinearPotential:
        return LinearPotential(
            self.representation,
            alphas=(self.alpha,),
            cv=None,
            energy_weight=self.energy_weight,
            forces_weight=self.forces_weight,
            stress_weight=self.stress_weight,
            projection=RandomProjection(self.n_components, kind=self.kind, seed=self.seed + k),
            energy_key=self.energy_key,
            forces_key=self.forces_key,
            stress_key=self.stress_key,
            batch_size=self.batch_size,
        )

    def fit(self, frames, sample_weight=None):
        """Fit every member; returns ``self``."""
        if not isinstance(self.n_projections, (int, np.integer)) or self.n_projections < 1:
            raise ValueError(
                f"n_projections must be a positive integer, got {self.n_projections!r}"
            )
        frames = _as_frames(frames)
        self.members_ = [
            self._member(k).fit(frames, sample_weight=sample_weight)
            for k in range(self.n_projections)
        ]
        self.baseline_ = self.members_[0].baseline_
        self.species_ = self.members_[0].species_
        self.representation_ = self.representation
        self.fit_report_ = self.members_[0].fit_report_  # of the first projection
        return self

    def _atom_energy(self, values: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        total = sum(member._atom_energy(values, numbers) for member in self.members_)
        return total / len(self.members_)

    # ------------------------------------------------------------------ io
    def _get_state(self):

        rep_meta, arrays = representation_state(self.representation_)
        members = []
        for k, member in enumerate(self.members_):
            meta, member_arrays = member._fitted_state()
            members.append(meta)
            arrays.update({f"member{k}/{key}": value for key, value in member_arrays.items()})
        params = self._json_params(exclude=("representation",))
        return {
            "representation": rep_meta,
            "params": params,
            "fitted": {"members": members},
        }, arrays

    @classmethod
    def _from_state(cls, meta, arrays):

        representation = representation_from_state(meta["representation"], arrays)
        model = cls(representation, **meta["params"])
        model.members_ = []
        for k, member_meta in enumerate(meta["fitted"]["members"]):
            prefix = f"member{k}/"
            member = model._member(k)
            member._set_fitted(
                member_meta,
                {key[len(prefix) :]: v for key, v in arrays.items() if key.startswith(prefix)},
                representation,
            )
            model.members_.append(member)
        model.baseline_ = model.members_[0].baseline_
        model.species_ = model.members_[0].species_
        model.representation_ = representation
        return model
