"""Sparse kernel regression in the style of GAP.

.. math::

    E = \\sum_i \\Big( \\sum_m c_m\\, k(X_i, X_m) + e_{Z_i} \\Big), \\qquad
    k(X, X') = (X \\cdot X')^{\\zeta}

on normalised features, with ``M`` sparse (representative) environments
``X_m`` chosen by CUR or farthest point sampling from the training atoms
(optionally per element, with ``k = 0`` between different centre elements).
The weights are the projected-process (subset-of-regressors) solution

.. math::

    c = \\big(K_{MN} \\Lambda^{-1} K_{NM} + \\alpha \\tau K_{MM}\\big)^{-1}
        K_{MN} \\Lambda^{-1} y ,

where ``K_NM`` stacks energy, force and stress rows (``Lambda^{-1}`` are the
per-property weights of :mod:`tradens.models._solve`: ``w_p = 1/sigma_p`` as
GAP's ``default_sigma``; by default ``sigma_p`` is the trivial predictor's RMSE)
and ``alpha`` is chosen by cross-validation. The
normal matrix is whitened by the Cholesky factor of ``K_MM`` (plus jitter)
before the eigen-solution.
"""

from __future__ import annotations

import numpy as np
import torch

from ..representations.base import Representation
from ..representations.stream import is_lazy, iter_structures
from ..systems.batch import _as_frames
from ._design import KernelBasis
from .linear import DEFAULT_ALPHAS, LinearPotential
from .registry import register_model, representation_from_state
from .selection import cur_selection, farthest_point_sampling

__all__ = ["SparseKernelPotential"]


@register_model
class SparseKernelPotential(LinearPotential):
    """GAP-style sparse polynomial-kernel potential on energies, forces and stress.

    Parameters
    ----------
    representation : torch.nn.Module
        Per-atom features (normalised, e.g. :class:`tradens.SOAP` with
        ``normalize=True``).
    n_sparse : int
        Sparse points ``M`` (per element when ``per_element``).
    zeta : float
        Kernel exponent (GAP ``zeta``); integer values allow negative dot products.
    selection : {"cur", "fps", "random"}
        How sparse points are chosen from the training atoms.
    max_candidates : int
        Atoms sampled (seeded) as candidates before CUR/FPS (bounds the cost).
    per_element : bool
        Separate sparse points and kernels per centre element.
    alphas, cv, energy_weight, forces_weight, stress_weight, config_weights, config_key, energy_key,
    forces_key, stress_key, label_share, baseline, cv_metric, batch_size, seed, progress,
    uncertainty
        As :class:`~tradens.models.LinearPotential` (default property weights from the
        data; ``fit_report_``, ``precompute`` and ``fit_features`` as there).

    Attributes
    ----------
    sparse_points_ : numpy.ndarray
        ``[M, F]`` sparse environments.
    sparse_numbers_ : numpy.ndarray or None
        ``[M]`` their elements (``per_element`` only).
    weights_ : numpy.ndarray
        ``c [M]``.
    posterior_ : dict or None
        As :class:`~tradens.models.LinearPotential`: with ``phi_m = k(X, X_m)`` and the
        prior covariance ``K_MM^-1`` (scaled) of ``c``, ``predict(..., return_std=True)``
        gives the projected-process (subset-of-regressors) posterior standard deviation
        ``sigma^2 Phi^T (K_MN Lambda^-1 K_NM + alpha tau K_MM)^-1 Phi`` of the energy.
    """

    def __init__(
        self,
        representation: Representation,
        *,
        n_sparse: int = 200,
        zeta: float = 2.0,
        selection: str = "cur",
        max_candidates: int = 5000,
        per_element: bool = False,
        alphas=DEFAULT_ALPHAS,
        cv=5,
        energy_weight: float | None = None,
        forces_weight: float | None = None,
        stress_weight: float | None = None,
        config_weights=None,
        config_key: str = "config_type",
        energy_key: str = "energy",
        forces_key: str = "forces",
        stress_key: str = "stress",
        label_share: float = 1.0,
        baseline: str = "first",
        cv_metric: str = "loss",
        batch_size: int = 8,
        seed: int = 0,
        progress: bool = False,
        uncertainty: bool = True,
    ):
        super().__init__(
            representation,
            alphas=alphas,
            cv=cv,
            energy_weight=energy_weight,
            forces_weight=forces_weight,
            stress_weight=stress_weight,
            per_element=False,
            projection=None,
            config_weights=config_weights,
            config_key=config_key,
            energy_key=energy_key,
            forces_key=forces_key,
            stress_key=stress_key,
            label_share=label_share,
            baseline=baseline,
            cv_metric=cv_metric,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            uncertainty=uncertainty,
        )
        self.n_sparse = n_sparse
        self.zeta = zeta
        self.selection = selection
        self.max_candidates = max_candidates
        self.per_element = per_element

    def _select(self, x: np.ndarray, count: int, rng) -> np.ndarray:
        count = min(count, x.shape[0])
        if self.selection == "random":
            return np.sort(rng.choice(x.shape[0], count, replace=False))
        candidates = np.arange(x.shape[0])
        if x.shape[0] > self.max_candidates:
            candidates = np.sort(rng.choice(x.shape[0], self.max_candidates, replace=False))
        if self.selection == "fps":
            return candidates[farthest_point_sampling(x[candidates], count)]
        rank = int(np.linalg.matrix_rank(x[candidates]))
        return candidates[cur_selection(x[candidates], min(count, rank))]

    def _make_basis(self, n_features: int, species):
        if self.selection not in ("cur", "fps", "random"):
            raise ValueError(f"selection must be 'cur', 'fps' or 'random', got {self.selection!r}")
        if not isinstance(self.n_sparse, (int, np.integer)) or self.n_sparse < 1:
            raise ValueError(f"n_sparse must be a positive integer, got {self.n_sparse!r}")
        if not np.isfinite(self.zeta) or self.zeta < 1:
            raise ValueError(f"zeta must be >= 1, got {self.zeta!r}")
        features = self.representation.compute(self._frames, output="numpy")
        values = np.asarray(features.values)  # [row, F] (numpy output: no copy)
        centre_numbers = np.asarray(features.numbers)  # [row]
        rng = np.random.default_rng(self.seed)
        if self.per_element:
            per_element = []
            for z in species:
                rows = np.nonzero(centre_numbers == z)[0]
                per_element.append(rows[self._select(values[rows], self.n_sparse, rng)])
            chosen = np.concatenate(per_element)
            numbers = centre_numbers[chosen].astype(np.int64)
        else:
            chosen = self._select(values, self.n_sparse, rng)
            numbers = None
        self.sparse_points_ = values[chosen].copy()
        self.sparse_numbers_ = numbers
        return self._basis()

    def _basis(self) -> KernelBasis:
        numbers = None if self.sparse_numbers_ is None else torch.as_tensor(self.sparse_numbers_)
        return KernelBasis(torch.as_tensor(self.sparse_points_), self.zeta, numbers)

    def _regularizer(self, basis):
        return basis.regularizer()

    def precompute(self, frames, sample_weight=None, groups=None):
        """Select sparse points and reduce the kernel design (see ``LinearPotential``)."""
        self._frames = _as_frames(list(iter_structures(frames)) if is_lazy(frames) else frames)
        try:
            return super().precompute(self._frames, sample_weight=sample_weight, groups=groups)
        finally:
            del self._frames

    def _cache_params(self) -> tuple[str, ...]:
        return (*super()._cache_params(), "n_sparse", "zeta", "selection", "max_candidates")

    # ------------------------------------------------------------------ io
    def _fitted_state(self):
        meta, arrays = super()._fitted_state()
        meta["basis"] = "kernel"
        arrays["sparse_points"] = np.asarray(self.sparse_points_)
        if self.sparse_numbers_ is not None:
            arrays["sparse_numbers"] = np.asarray(self.sparse_numbers_)
        return meta, arrays

    def _set_fitted(self, meta, arrays, representation):
        self.sparse_points_ = np.asarray(arrays["sparse_points"], dtype=np.float64)
        self.sparse_numbers_ = arrays.get("sparse_numbers")
        meta = dict(meta, basis="linear")
        super()._set_fitted(meta, arrays, representation)
        self.basis_ = self._basis()

    def _get_state(self):
        meta, arrays = super()._get_state()
        meta.pop("projection", None)
        return meta, arrays

    @classmethod
    def _from_state(cls, meta, arrays):

        representation = representation_from_state(meta["representation"], arrays)
        params = dict(meta["params"])
        params["alphas"] = (
            tuple(params["alphas"]) if isinstance(params["alphas"], list) else params["alphas"]
        )
        for unused in ("projection",):
            params.pop(unused, None)
        model = cls(representation, **params)
        model._set_fitted(meta["fitted"], arrays, representation)
        return model
