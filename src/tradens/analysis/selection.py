"""Sample selection: farthest point sampling (FPS) and CUR, as functions and selectors.

The algorithms (:func:`farthest_point_sampling`, :func:`cur_selection`) are defined in
:mod:`tradens.models.selection`, below this stage, because the sparse kernel potential uses
them; :class:`FPS` and :class:`CUR` wrap them as scikit-learn-style selectors.
"""

from __future__ import annotations

import numpy as np

from ..models.selection import _matrix, cur_selection, farthest_point_sampling

__all__ = ["FPS", "CUR", "farthest_point_sampling", "cur_selection"]


class FPS:
    """Farthest point sampling as a scikit-learn-style selector.

    Parameters
    ----------
    n_to_select : int
        Number of rows to pick.
    initial : int or {"random", "farthest"}
        First point (see :func:`farthest_point_sampling`).
    seed : int
        Seed for ``initial="random"``.

    Attributes
    ----------
    selected_idx_ : numpy.ndarray
        ``[n_to_select]`` picked rows, in order.
    hausdorff_ : numpy.ndarray
        ``[n_to_select]`` distance of each pick to the earlier picks.
    """

    def __init__(self, n_to_select: int, *, initial: int | str = 0, seed: int = 0):
        self.n_to_select = n_to_select
        self.initial = initial
        self.seed = seed

    def fit(self, X, y=None) -> FPS:
        """Select rows of ``X [point, feature]``; returns ``self``."""
        self.selected_idx_, self.hausdorff_ = farthest_point_sampling(
            X, self.n_to_select, initial=self.initial, seed=self.seed, return_distances=True
        )
        return self

    def transform(self, X) -> np.ndarray:
        """The selected rows of ``X``, ``[n_to_select, feature]``."""
        return _matrix(X)[self.selected_idx_]


class CUR:
    """CUR row selection as a scikit-learn-style selector.

    Parameters
    ----------
    n_to_select : int
        Number of rows to pick.
    n_vectors : int
        Singular vectors in the leverage score.

    Attributes
    ----------
    selected_idx_ : numpy.ndarray
        ``[n_to_select]`` picked rows, in order.
    scores_ : numpy.ndarray
        ``[n_to_select]`` leverage score at pick time.
    """

    def __init__(self, n_to_select: int, *, n_vectors: int = 1):
        self.n_to_select = n_to_select
        self.n_vectors = n_vectors

    def fit(self, X, y=None) -> CUR:
        """Select rows of ``X [point, feature]``; returns ``self``."""
        self.selected_idx_, self.scores_ = cur_selection(
            X, self.n_to_select, n_vectors=self.n_vectors, return_scores=True
        )
        return self

    def transform(self, X) -> np.ndarray:
        """The selected rows of ``X``, ``[n_to_select, feature]``."""
        return _matrix(X)[self.selected_idx_]
