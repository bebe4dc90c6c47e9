"""Seeded random projections of feature vectors (Johnson-Lindenstrauss maps).

:class:`RandomProjection` maps ``X -> P X`` with ``P [D, F]`` Gaussian
(``N(0, 1/D)``) or very sparse (Achlioptas/Li: entries ``+-sqrt(s/D)`` with
probability ``1/(2s)``, ``s = sqrt(F)``). It lives apart from
:mod:`tradens.models.projection` so that :class:`~tradens.models.LinearPotential`
can take one without importing the estimators built on it.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["RandomProjection"]


class RandomProjection:
    """Seeded random projection of feature vectors.

    Parameters
    ----------
    n_components : int
        Output dimension ``D``.
    kind : {"gaussian", "sparse"}
        Dense Gaussian or very sparse random matrix.
    seed : int
        Seed of the matrix.

    Attributes
    ----------
    components_ : numpy.ndarray
        ``P [D, F]``.
    """

    def __init__(self, n_components: int, *, kind: str = "gaussian", seed: int = 0):
        self.n_components = n_components
        self.kind = kind
        self.seed = seed

    def get_params(self, deep: bool = True) -> dict:
        """Constructor arguments (scikit-learn protocol)."""
        return {"n_components": self.n_components, "kind": self.kind, "seed": self.seed}

    def set_params(self, **params):
        """Set constructor arguments; returns ``self``."""
        for key, value in params.items():
            if key not in self.get_params():
                raise ValueError(f"invalid parameter {key!r} for RandomProjection")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        return f"RandomProjection({self.n_components}, kind={self.kind!r}, seed={self.seed})"

    def fit(self, n_features):
        """Draw ``P`` for ``n_features`` columns (or those of an array); returns ``self``."""
        if not isinstance(n_features, (int, np.integer)):
            n_features = np.asarray(n_features).shape[1]
        d = self.n_components
        if not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"n_components must be a positive integer, got {d!r}")
        if self.kind not in ("gaussian", "sparse"):
            raise ValueError(f"kind must be 'gaussian' or 'sparse', got {self.kind!r}")
        rng = np.random.default_rng(self.seed)
        if self.kind == "gaussian":
            matrix = rng.standard_normal((d, n_features)) / np.sqrt(d)
        else:
            s = np.sqrt(n_features)
            draw = rng.random((d, n_features))
            matrix = np.where(
                draw < 0.5 / s, 1.0, np.where(draw > 1.0 - 0.5 / s, -1.0, 0.0)
            ) * np.sqrt(s / d)
        self.components_ = matrix
        self.n_features_in_ = int(n_features)
        return self

    def transform(self, x):
        """``X P^T``: ``[row, F] -> [row, D]`` (numpy or torch)."""
        if isinstance(x, torch.Tensor):
            return x @ torch.as_tensor(self.components_, dtype=x.dtype, device=x.device).T
        return np.asarray(x) @ self.components_.T
