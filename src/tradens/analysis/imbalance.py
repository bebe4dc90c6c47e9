"""Information imbalance between two representations of the same points.

The information imbalance (Glielmo, Zeni, Cheng, Csányi, Laio, *PNAS Nexus* 1,
pgac039 (2022)) measures how well distances in a space ``A`` predict
neighbourhoods in a space ``B``:

.. math::

    \\Delta(A \\to B) = \\frac{2}{N} \\left\\langle r^B_{ij} \\right\\rangle_{
        j \\in \\mathrm{kNN}_A(i)}
    = \\frac{2}{N^2 k} \\sum_i \\sum_{j \\in \\mathrm{kNN}_A(i)} r^B_{ij} ,

where ``r^B_ij`` is the rank of ``j`` among the neighbours of ``i`` in ``B``
(1 = nearest, ``i`` itself excluded) and ``kNN_A(i)`` are the ``k`` nearest
neighbours of ``i`` in ``A`` (Euclidean distances). Limits:

* ``B`` carries all the information of ``A`` (e.g. ``A = B``):
  ``Delta = (k+1)/N``, which goes to 0;
* ``A`` and ``B`` independent: the expectation is exactly 1.

``Delta(A -> B)`` small and ``Delta(B -> A)`` large means ``A`` is the more
informative space.

Ties (equal distances, common for symmetry-equivalent atoms in crystals) are
resolved by their expectation under random tie-breaking: tied ranks in ``B``
get the mid-rank, and neighbours tied at the ``k``-th distance in ``A`` share
the remaining weight. Distances closer than ``tie_tolerance`` times the largest
squared norm count as equal.

Up to ``max_points`` points (default 20 000) the computation is exact, in
row chunks whose size follows a memory budget; beyond that it is repeated on
random subsets of ``max_points`` points and the mean and its standard error
are reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

__all__ = ["Imbalance", "information_imbalance", "random_projection"]


@dataclass(frozen=True)
class Imbalance:
    """Result of :func:`information_imbalance`.

    Attributes
    ----------
    a_to_b, b_to_a : float
        ``Delta(A -> B)`` and ``Delta(B -> A)`` (dimensionless, 0..~1).
    a_to_b_error, b_to_a_error : float
        Standard errors: over points (exact mode: std of the per-point terms
        / sqrt(N)), or over the random subsets (subsampled mode: std of the
        subset estimates / sqrt(n_repeats)).
    n_points : int
        Number of points given.
    n_used : int
        Points per computation (``n_points`` when exact).
    n_repeats : int
        Number of subsets (1 when exact).
    k : int
        Number of nearest neighbours.
    exact : bool
        Whether all points were used at once.
    per_point_a_to_b, per_point_b_to_a : numpy.ndarray or None
        Per-point terms ``[point]`` whose mean is the imbalance (exact mode
        only).
    """

    a_to_b: float
    b_to_a: float
    a_to_b_error: float
    b_to_a_error: float
    n_points: int
    n_used: int
    n_repeats: int
    k: int
    exact: bool
    per_point_a_to_b: np.ndarray | None = field(default=None, repr=False)
    per_point_b_to_a: np.ndarray | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        """Scalars only (JSON-safe)."""
        data = asdict(self)
        data.pop("per_point_a_to_b")
        data.pop("per_point_b_to_a")
        return data


def _as_points(x, pool: str | None, name: str):
    """``[point, feature]`` float64 tensor and the row identity (structure, center)."""
    from ..representations.features import Features

    if isinstance(x, Features):
        x = x.numpy()
        if pool is not None:
            values = np.asarray(x.pooled(pool))
            ident = (np.arange(values.shape[0]), np.full(values.shape[0], -1))
        else:
            values = np.asarray(x.values)
            ident = (np.asarray(x.structure), np.asarray(x.center))
    else:
        if pool is not None:
            raise ValueError(f"pool={pool!r} needs tradens.Features for {name}, got a plain array")
        values = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        ident = None
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D [point, feature], got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {values.dtype}")
    tensor = torch.as_tensor(values, dtype=torch.float64)  # [point, feature]; copies if needed
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return tensor, ident


def information_imbalance(
    a,
    b,
    *,
    k: int = 1,
    pool: str | None = None,
    max_points: int = 20000,
    n_repeats: int = 5,
    seed: int = 0,
    tie_tolerance: float = 1e-10,
    memory: int = 256 * 2**20,
    progress: bool = False,
) -> Imbalance:
    """Information imbalance ``Delta(A -> B)`` and ``Delta(B -> A)``.

    Parameters
    ----------
    a, b : array-like, torch.Tensor or tradens.Features
        The same ``N`` points in two spaces, ``[point, feature_a]`` and
        ``[point, feature_b]`` (any feature sizes). With
        :class:`~tradens.Features`, the rows (structure, centre) must match.
        Never modified.
    k : int
        Number of nearest neighbours in the conditioning space, ``1 <= k < N``.
    pool : {None, "mean", "sum"}
        With ``Features``: per-structure points pooled over atoms; ``None``
        keeps one point per row (atom).
    max_points : int
        Largest ``N`` computed exactly; above it, ``n_repeats`` random
        subsets of ``max_points`` points are used.
    n_repeats : int
        Subsets in subsampled mode (>= 2 to get an error bar).
    seed : int
        Seed of the subsets.
    tie_tolerance : float
        Squared distances closer than ``tie_tolerance * max |x|^2`` are ties.
    memory : int
        Bytes of working memory per chunk of rows (bounds memory use: about
        ``10 * 8 * N`` bytes per row).
    progress : bool
        Show a progress bar over chunks.

    Returns
    -------
    Imbalance
        Both directions with standard errors.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(200, 3))
    >>> result = information_imbalance(x, x[:, :1])
    >>> round(result.b_to_a, 3) > round(result.a_to_b, 3)
    True
    """
    xa, xb = _checked_points(a, b, k, pool, max_points, n_repeats, tie_tolerance)
    n = xa.shape[0]
    used = min(n, max_points)
    if k >= used:
        raise ValueError(f"k={k} must be smaller than the number of points used ({used})")
    if n <= max_points:
        ab, ba = _exact(xa, xb, k, tie_tolerance, memory, progress)
        return Imbalance(
            float(ab.mean()),
            float(ba.mean()),
            _stderr(ab),
            _stderr(ba),
            n,
            n,
            1,
            k,
            True,
            ab.numpy(),
            ba.numpy(),
        )
    est = _subsampled(xa, xb, k, max_points, n_repeats, seed, tie_tolerance, memory, progress)
    error = est.std(axis=0, ddof=1) / math.sqrt(n_repeats) if n_repeats > 1 else np.full(2, np.nan)
    return Imbalance(
        float(est[:, 0].mean()),
        float(est[:, 1].mean()),
        float(error[0]),
        float(error[1]),
        n,
        max_points,
        n_repeats,
        k,
        False,
    )


def _checked_points(
    a, b, k, pool, max_points, n_repeats, tie_tolerance
) -> tuple[torch.Tensor, torch.Tensor]:
    """The options checked and the two point sets ``[N, F_a]``, ``[N, F_b]`` (same rows)."""
    for name, value, low in (
        ("k", k, 1),
        ("max_points", max_points, 2),
        ("n_repeats", n_repeats, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if pool not in (None, "mean", "sum"):
        raise ValueError(f"pool must be None, 'mean' or 'sum', got {pool!r}")
    if not (isinstance(tie_tolerance, (int, float)) and tie_tolerance >= 0):
        raise ValueError(f"tie_tolerance must be a number >= 0, got {tie_tolerance!r}")
    xa, ident_a = _as_points(a, pool, "a")
    xb, ident_b = _as_points(b, pool, "b")
    n = xa.shape[0]
    if xb.shape[0] != n:
        raise ValueError(f"a and b must hold the same points: {n} rows versus {xb.shape[0]}")
    if ident_a is not None and ident_b is not None:
        if not (np.array_equal(ident_a[0], ident_b[0]) and np.array_equal(ident_a[1], ident_b[1])):
            raise ValueError("a and b are features of different rows (structure/center differ)")
    return xa, xb


def _subsampled(
    xa: torch.Tensor,
    xb: torch.Tensor,
    k: int,
    max_points: int,
    n_repeats: int,
    seed: int,
    tie_tolerance: float,
    memory: int,
    progress: bool,
) -> np.ndarray:
    """``[repeat, 2]`` mean imbalances (A -> B, B -> A) of random subsets of ``max_points``."""
    n = xa.shape[0]
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(n_repeats):
        subset = torch.as_tensor(np.sort(rng.choice(n, size=max_points, replace=False)))
        ab, ba = _exact(xa[subset], xb[subset], k, tie_tolerance, memory, progress)
        estimates.append((float(ab.mean()), float(ba.mean())))
    return np.array(estimates)  # [repeat, 2]


def _stderr(values: torch.Tensor) -> float:
    if values.numel() < 2:
        return float("nan")
    return float(values.std() / math.sqrt(values.numel()))


def _exact(
    xa: torch.Tensor, xb: torch.Tensor, k: int, tie_tolerance: float, memory: int, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point terms ``2 <r>/N`` of both directions, ``([point], [point])``."""
    n = xa.shape[0]
    na = (xa * xa).sum(1)  # [point]
    nb = (xb * xb).sum(1)  # [point]
    tol_a = tie_tolerance * max(float(na.max()), 1e-300)
    tol_b = tie_tolerance * max(float(nb.max()), 1e-300)
    chunk = max(1, int(memory // (10 * 8 * n)))
    ab = torch.empty(n, dtype=torch.float64)
    ba = torch.empty(n, dtype=torch.float64)
    starts = range(0, n, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="imbalance", unit="chunk")
    for start in starts:
        rows = torch.arange(start, min(start + chunk, n))
        da = _squared_distances(xa, na, rows)  # [chunk, point]
        db = _squared_distances(xb, nb, rows)  # [chunk, point]
        ab[rows] = _mean_rank(da, db, k, tol_a, tol_b) * (2.0 / n)
        ba[rows] = _mean_rank(db, da, k, tol_b, tol_a) * (2.0 / n)
    return ab, ba


def _squared_distances(x: torch.Tensor, norms: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``|x_i - x_j|^2`` for ``i`` in rows, self-distance set to +inf, ``[chunk, point]``."""
    d = norms[rows, None] + norms[None, :] - 2.0 * (x[rows] @ x.T)  # [chunk, point]
    d.clamp_(min=0.0)
    d[torch.arange(rows.numel()), rows] = math.inf
    return d


def _mean_rank(
    d_cond: torch.Tensor, d_target: torch.Tensor, k: int, tol_cond: float, tol_target: float
) -> torch.Tensor:
    """Mean target-space rank of the k nearest neighbours in the conditioning space, ``[chunk]``."""
    kth = torch.kthvalue(d_cond, k, dim=1).values[:, None]  # [chunk, 1]
    less = d_cond < kth - tol_cond  # [chunk, point]
    equal = (d_cond - kth).abs() <= tol_cond  # [chunk, point]
    n_less = less.sum(1, keepdim=True).double()  # [chunk, 1]
    share = (k - n_less) / equal.sum(1, keepdim=True).double()  # [chunk, 1], float64
    weights = less.double() + equal.double() * share  # [chunk, point]; each row sums to k
    width = int((weights > 0).sum(1).max())
    if width > 16:  # many ties: rank every column at once, O(N log N) per row
        ordered = torch.sort(d_target, dim=1).values  # [chunk, point]
        below = torch.searchsorted(ordered, d_target - tol_target)  # [chunk, point]
        upto = torch.searchsorted(ordered, d_target + tol_target, right=True)  # [chunk, point]
        rank = 1.0 + below.double() + 0.5 * (upto - below - 1).double()  # [chunk, point]
        return (weights * torch.where(weights > 0, rank, 0.0)).sum(1) / k
    top_weights, top_index = torch.topk(weights, width, dim=1)  # [chunk, width]
    values = d_target.gather(1, top_index)  # [chunk, width]
    total = torch.zeros(d_cond.shape[0], dtype=torch.float64)
    for q in range(width):  # few neighbours: count directly, O(N) per neighbour
        v = values[:, q : q + 1]  # [chunk, 1]
        below = (d_target < v - tol_target).sum(1)  # [chunk]
        tied = ((d_target - v).abs() <= tol_target).sum(1) - 1  # [chunk], others tied with j
        rank = 1.0 + below.double() + 0.5 * tied.double()  # [chunk]
        total += top_weights[:, q] * rank
    return total / k


def random_projection(values, n_components: int, *, seed: int = 0) -> np.ndarray:
    """Gaussian random projection ``X R`` with ``R [feature, n_components] ~ N(0, 1/n_components)``.

    The Johnson–Lindenstrauss baseline for a compressed representation of the
    same size: distances are preserved on average.

    Parameters
    ----------
    values : array-like or tradens.Features
        ``[point, feature]``; not modified.
    n_components : int
        Output size.
    seed : int
        Seed of ``R`` (``numpy.random.default_rng``).

    Returns
    -------
    numpy.ndarray
        ``[point, n_components]``, float64.
    """
    from ..representations.features import Features

    if isinstance(values, Features):
        values = values.numpy().values
    x = np.asarray(
        values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64
    )
    if x.ndim != 2:
        raise ValueError(f"values must be 2-D [point, feature], got shape {x.shape}")
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}")
    rng = np.random.default_rng(seed)
    matrix = rng.normal(scale=1.0 / math.sqrt(n_components), size=(x.shape[1], n_components))
    return x @ matrix  # [point, n_components]
