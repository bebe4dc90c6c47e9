"""Sample selection algorithms: farthest point sampling (FPS) and CUR.

They live with the models (the sparse kernel potential picks its sparse points with them);
:mod:`tradens.analysis.selection` re-exports them beside the scikit-learn-style selectors
:class:`~tradens.analysis.selection.FPS` and :class:`~tradens.analysis.selection.CUR`.

Both pick rows (atoms or structures) of a feature matrix ``X [point,
feature]``; neither depends on how many elements the features describe.

* **FPS** starts from one point and repeatedly adds the point farthest
  (Euclidean) from everything selected so far; the distance at which each
  point was added (its *Hausdorff distance*) decreases monotonically.
* **CUR** (Mahoney & Drineas, PNAS 106, 697 (2009)), in the deterministic,
  orthogonalising form of scikit-matter: pick the row with the largest
  leverage score ``pi_i = sum_{j < n_vectors} U_ij^2`` on the top left
  singular vectors of ``X``, remove the chosen row's direction from every
  row, repeat.

The implementations are numpy only and deterministic (ties go to the lowest
index). They follow scikit-matter's ``FPS`` and ``CUR`` sample selectors,
which the tests use as a cross-check when that package is installed.
"""

from __future__ import annotations

import numpy as np
import torch

from ..representations.features import Features

__all__ = ["farthest_point_sampling", "cur_selection"]


def _matrix(x, name: str = "X") -> np.ndarray:
    """``x`` (array, tensor or :class:`Features`) as a float64 copy ``[point, feature]``."""
    if isinstance(x, Features):
        x = x.numpy().values
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.array(x, dtype=np.float64)  # a copy: callers' arrays are never modified
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [point, feature], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _check_count(n_select, n_points: int) -> int:
    if not isinstance(n_select, (int, np.integer)) or isinstance(n_select, bool) or n_select < 1:
        raise ValueError(f"number of points to select must be an integer >= 1, got {n_select!r}")
    if n_select > n_points:
        raise ValueError(f"cannot select {n_select} points out of {n_points}")
    return int(n_select)


def farthest_point_sampling(
    points, n_select: int, *, initial: int | str = 0, seed: int = 0, return_distances: bool = False
):
    """Farthest point sampling of rows.

    Parameters
    ----------
    points : array-like, torch.Tensor or tradens.Features
        ``[point, feature]``; not modified.
    n_select : int
        Number of points to pick, ``1 <= n_select <= point``.
    initial : int or {"random", "farthest"}
        First point: an index, a random one (``seed``), or the point farthest
        from the mean.
    seed : int
        Seed for ``initial="random"``.
    return_distances : bool
        Also return the Hausdorff distance of every pick.

    Returns
    -------
    indices : numpy.ndarray
        ``[n_select]`` int64, in selection order.
    distances : numpy.ndarray
        ``[n_select]``, the distance of each pick to the points picked
        before it (``inf`` for the first); only if ``return_distances``.

    Examples
    --------
    >>> import numpy as np
    >>> farthest_point_sampling(np.array([[0.0], [1.0], [4.0], [10.0]]), 3).tolist()
    [0, 3, 2]
    """
    x = _matrix(points, "points")
    n = x.shape[0]
    n_select = _check_count(n_select, n)
    if isinstance(initial, str):
        if initial == "random":
            first = int(np.random.default_rng(seed).integers(n))
        elif initial == "farthest":
            first = int(np.argmax(((x - x.mean(axis=0)) ** 2).sum(axis=1)))
        else:
            raise ValueError(f"initial must be an index, 'random' or 'farthest', got {initial!r}")
    elif isinstance(initial, (int, np.integer)) and -n <= initial < n:
        first = int(initial) % n
    else:
        raise ValueError(f"initial index {initial!r} is out of range for {n} points")
    norms = (x * x).sum(axis=1)  # [point]
    selected = np.empty(n_select, dtype=np.int64)
    hausdorff = np.empty(n_select)
    selected[0], hausdorff[0] = first, np.inf
    nearest = np.full(n, np.inf)  # [point] squared distance to the selection
    for step in range(1, n_select):
        last = selected[step - 1]
        d = np.maximum(norms + norms[last] - 2.0 * (x @ x[last]), 0.0)  # [point]
        np.minimum(nearest, d, out=nearest)
        nearest[selected[:step]] = -1.0  # never re-pick (distance 0 anyway)
        selected[step] = int(np.argmax(nearest))
        hausdorff[step] = np.sqrt(nearest[selected[step]])
    return (selected, hausdorff) if return_distances else selected


def _top_left_singular(x: np.ndarray, n_vectors: int, seed: int = 0) -> np.ndarray:
    """Top ``n_vectors`` left singular vectors ``[point, n_vectors]`` (randomised when large)."""
    if min(x.shape) <= 500 or n_vectors * 4 >= min(x.shape):
        u, _, _ = np.linalg.svd(x, full_matrices=False)
        return u[:, :n_vectors]
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(x @ rng.normal(size=(x.shape[1], n_vectors + 10)))  # [point, q]
    for _ in range(4):  # power iterations, re-orthonormalised
        q, _ = np.linalg.qr(x.T @ q)
        q, _ = np.linalg.qr(x @ q)
    u_small, _, _ = np.linalg.svd(q.T @ x, full_matrices=False)
    return (q @ u_small)[:, :n_vectors]


def cur_selection(
    points,
    n_select: int,
    *,
    n_vectors: int = 1,
    tolerance: float = 1e-12,
    return_scores: bool = False,
):
    """Deterministic CUR selection of rows, orthogonalising after every pick.

    Parameters
    ----------
    points : array-like, torch.Tensor or tradens.Features
        ``[point, feature]``; not modified.
    n_select : int
        Number of rows to pick; at most the rank of ``points``.
    n_vectors : int
        Singular vectors in the leverage score (scikit-matter's ``k``).
    tolerance : float
        Rows whose remaining squared norm is below ``tolerance`` times the
        largest initial one are spent; running out of rows is an error.
    return_scores : bool
        Also return the leverage score of every pick.

    Returns
    -------
    indices : numpy.ndarray
        ``[n_select]`` int64, in selection order.
    scores : numpy.ndarray
        ``[n_select]`` leverage scores at pick time (if ``return_scores``).
    """
    x = _matrix(points, "points")
    n_select = _check_count(n_select, x.shape[0])
    if not isinstance(n_vectors, (int, np.integer)) or n_vectors < 1:
        raise ValueError(f"n_vectors must be an integer >= 1, got {n_vectors!r}")
    scale = float((x * x).sum(axis=1).max()) or 1.0
    selected = np.empty(n_select, dtype=np.int64)
    scores = np.empty(n_select)
    for step in range(n_select):
        alive = (x * x).sum(axis=1) > tolerance * scale  # [point]
        if not alive.any():
            raise ValueError(f"CUR: the features have rank {step}; cannot select {n_select} points")
        u = _top_left_singular(x, min(n_vectors, int(alive.sum()), x.shape[1]))  # [point, vector]
        pi = (u * u).sum(axis=1)  # [point]
        pi[~alive] = -1.0
        pick = int(np.argmax(pi))
        selected[step], scores[step] = pick, pi[pick]
        v = x[pick] / np.linalg.norm(x[pick])  # [feature]
        x -= np.outer(x @ v, v)  # remove the picked direction from every row
        x[pick] = 0.0
    return (selected, scores) if return_scores else selected
