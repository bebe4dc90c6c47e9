"""Streaming ridge regression with per-fold sufficient statistics.

The design rows of every fold and property (``"energy"``, ``"forces"``,
``"stress"``) are reduced on the fly to ``A = R^T C R``, ``b = R^T C y`` and
``y^T C y`` (``C``: structure weights), so no design matrix is kept. Energy
rows are per atom (``sum_i phi(X_i) / N``) and also keep the composition
fractions ``f``, so the per-element baseline can be refitted inside every
cross-validation fold without touching the rows again
(``y = E/N - f . e0``). The training objective is

.. math::

    \\sum_p \\frac{w_p^2}{n_p} \\| C^{1/2}(R_p \\theta - y_p) \\|^2
    + \\alpha\\, \\tau\\, \\theta^T \\Gamma \\theta ,
    \\qquad \\tau = \\mathrm{tr}(A_\\Gamma) / D

with ``n_p`` the weighted number of rows of property ``p`` (so the weights
trade mean squared errors), ``Gamma`` the identity (ridge) or a kernel matrix
(projected process), and ``alpha`` relative to the mean eigenvalue ``tau`` of
the whitened normal matrix.

Solution: normal equations by a symmetric eigendecomposition of the
(whitened) normal matrix ``A = V diag(lambda) V^T``, so every ``alpha`` of the
grid costs one matrix-vector product. Conditioning check: the condition number
``(lambda_max + alpha tau) / (lambda_min + alpha tau)`` is reported as
``condition_number`` and a ``RuntimeWarning`` is raised above ``1e13`` (the
float64 solution would then lose more than three digits).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["FoldStatistics", "solve_path", "trivial_errors", "PROPERTIES"]

PROPERTIES = ("energy", "forces", "stress")


class FoldStatistics:
    """Sufficient statistics of every fold and property.

    Parameters
    ----------
    n_folds : int
        Number of folds (1 without cross-validation).
    n_features : int
        ``D``, columns of the design.
    n_elements : int
        Number of baseline elements.
    """

    def __init__(self, n_folds: int, n_features: int, n_elements: int):
        self.n_folds, self.n_features, self.n_elements = n_folds, n_features, n_elements
        # allocated on first use: a property without rows costs no memory
        self.gram: dict[str, list[torch.Tensor | None]] = {p: [None] * n_folds for p in PROPERTIES}
        self.rhs: dict[str, list[torch.Tensor | None]] = {p: [None] * n_folds for p in PROPERTIES}
        self.yy = {p: np.zeros(n_folds) for p in PROPERTIES}
        self.count = {p: np.zeros(n_folds) for p in PROPERTIES}
        self.rows = {p: np.zeros(n_folds) for p in PROPERTIES}  # unweighted, weight > 0
        # energy extras for the in-fold baseline
        self.xc = [torch.zeros(n_features, n_elements, dtype=torch.float64) for _ in range(n_folds)]
        self.cc = [np.zeros((n_elements, n_elements)) for _ in range(n_folds)]
        self.ce = [np.zeros(n_elements) for _ in range(n_folds)]

    def add(
        self, prop: str, fold: int, rows: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> None:
        """Add rows ``[r, D]`` with targets ``[r]`` and weights ``[r]`` to a fold."""
        if rows.shape[0] == 0:
            return
        rows = rows.to(torch.float64).cpu()
        targets, weights = targets.to(torch.float64).cpu(), weights.to(torch.float64).cpu()
        weighted = rows * weights[:, None]  # [r, D]
        gram, rhs = self.gram[prop][fold], self.rhs[prop][fold]  # allocated together
        if gram is None or rhs is None:
            gram = torch.zeros(self.n_features, self.n_features, dtype=torch.float64)
            rhs = torch.zeros(self.n_features, dtype=torch.float64)
            self.gram[prop][fold], self.rhs[prop][fold] = gram, rhs
        gram.addmm_(weighted.T, rows)
        rhs.add_(weighted.T @ targets)
        self.yy[prop][fold] += float((weights * targets * targets).sum())
        self.count[prop][fold] += float(weights.sum())
        self.rows[prop][fold] += float((weights > 0).sum())

    def add_energy(
        self,
        fold: int,
        rows: torch.Tensor,
        energy: torch.Tensor,
        fractions: torch.Tensor,
        weights: torch.Tensor,
    ) -> None:
        """Energy rows per atom ``[s, D]``, energy per atom ``[s]``, fractions ``[s, element]``."""
        if rows.shape[0] == 0:
            return
        self.add("energy", fold, rows, energy, weights)
        rows, fractions = rows.to(torch.float64).cpu(), fractions.to(torch.float64).cpu()
        weighted = fractions * weights.to(torch.float64).cpu()[:, None]
        self.xc[fold].addmm_(rows.T, weighted)
        self.cc[fold] += (weighted.T @ fractions).numpy()
        self.ce[fold] += (weighted.T @ energy.to(torch.float64).cpu()).numpy()

    def absorb(self, other: FoldStatistics) -> None:
        """Add the statistics of ``other`` (other structures, same folds and columns) in place.

        The normal equations are sums over structures, so statistics of disjoint
        partitions of a training set (e.g. computed on the workers of a cluster) add up
        to those of the whole set.
        """
        shape = (other.n_folds, other.n_features, other.n_elements)
        if shape != (self.n_folds, self.n_features, self.n_elements):
            raise ValueError(
                f"cannot add statistics of shape {shape} (folds, features, elements) to "
                f"{(self.n_folds, self.n_features, self.n_elements)}"
            )
        for p in PROPERTIES:
            for k in range(self.n_folds):
                gram, rhs = other.gram[p][k], other.rhs[p][k]
                if gram is None or rhs is None:
                    continue
                if self.gram[p][k] is None:
                    self.gram[p][k], self.rhs[p][k] = gram.clone(), rhs.clone()
                else:
                    self.gram[p][k].add_(gram)  # type: ignore[union-attr]
                    self.rhs[p][k].add_(rhs)  # type: ignore[union-attr]
            self.yy[p] += other.yy[p]
            self.count[p] += other.count[p]
            self.rows[p] += other.rows[p]
        for k in range(self.n_folds):
            self.xc[k].add_(other.xc[k])
            self.cc[k] += other.cc[k]
            self.ce[k] += other.ce[k]

    # ------------------------------------------------------------------ combining
    def merged(self, folds: Iterable[int]) -> dict[str, Any]:
        """Statistics summed over ``folds`` (energy still without baseline).

        ``gram``, ``rhs``, ``yy`` and ``count`` are dicts by property (``gram``/``rhs`` None
        for a property without rows); ``xc``, ``cc`` and ``ce`` are the energy extras.
        """
        folds = list(folds)
        gram: dict[str, torch.Tensor | None] = {}
        rhs: dict[str, torch.Tensor | None] = {}
        yy: dict[str, float] = {}
        count: dict[str, float] = {}
        rows: dict[str, float] = {}
        n = self.n_features
        for p in PROPERTIES:
            present = [k for k in folds if self.gram[p][k] is not None]
            gram[p] = _total([self.gram[p][k] for k in present])  # None when absent
            rhs[p] = _total([self.rhs[p][k] for k in present])
            yy[p] = float(sum(self.yy[p][k] for k in folds))
            count[p] = float(sum(self.count[p][k] for k in folds))
            rows[p] = float(sum(self.rows[p][k] for k in folds))
        return {
            "rows": rows,
            "gram": gram,
            "rhs": rhs,
            "yy": yy,
            "count": count,
            "xc": sum(
                (self.xc[k] for k in folds), torch.zeros(n, self.n_elements, dtype=torch.float64)
            ),
            "cc": sum((self.cc[k] for k in folds), np.zeros((self.n_elements, self.n_elements))),
            "ce": sum((self.ce[k] for k in folds), np.zeros(self.n_elements)),
        }


def _total(tensors: list) -> torch.Tensor | None:
    """Sum of a list of tensors (a new tensor), None for an empty list."""
    if not tensors:
        return None
    out = tensors[0].clone()
    for t in tensors[1:]:
        out += t
    return out


def baseline_from(stats: dict, rcond: float = 1e-10) -> np.ndarray:
    """Reference energies ``[element]`` minimising the weighted per-atom energy error."""
    cc, ce = stats["cc"], stats["ce"]
    if cc.size == 0:
        return np.zeros(0)
    return fill_unseen(np.linalg.pinv(cc, rcond=rcond, hermitian=True) @ ce, np.diagonal(cc) > 0)


def fill_unseen(e0: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Give elements without training data the mean reference energy of the others."""
    e0 = np.array(e0, dtype=np.float64)
    if seen.any() and not seen.all():
        e0[~seen] = e0[seen].mean(axis=0)
    return e0


def _objective(stats: dict, e0: np.ndarray | None, weights: dict):
    """Normal matrix and right-hand side of the weighted training objective.

    ``e0`` fixed (baseline fitted first) or ``None``: the per-element energies
    are fitted jointly and unregularised, i.e. eliminated by the Schur
    complement of the composition block.
    """
    n = stats["xc"].shape[0]
    a = torch.zeros(n, n, dtype=torch.float64)
    b = torch.zeros(n, dtype=torch.float64)
    for p in PROPERTIES:
        count = stats["count"][p]
        if count <= 0 or weights[p] == 0:
            continue
        scale = weights[p] ** 2 / count
        gram, rhs = stats["gram"][p], stats["rhs"][p]
        if p == "energy":
            xc = stats["xc"]
            if e0 is None:
                inverse = torch.as_tensor(np.linalg.pinv(stats["cc"], rcond=1e-10, hermitian=True))
                gram = gram - xc @ inverse @ xc.T
                rhs = rhs - xc @ (inverse @ torch.as_tensor(stats["ce"]))
            else:
                rhs = rhs - xc @ torch.as_tensor(e0, dtype=torch.float64)
        a += scale * gram
        b += scale * rhs
    return a, b


def joint_reference(stats: dict, theta: torch.Tensor) -> np.ndarray:
    """Per-element energies ``[element, alpha]`` best fitting the energies, given ``theta``."""
    inverse = np.linalg.pinv(stats["cc"], rcond=1e-10, hermitian=True)
    e0 = inverse @ (stats["ce"][:, None] - (stats["xc"].T @ theta).numpy())
    return fill_unseen(e0, np.diagonal(stats["cc"]) > 0)


def _errors(theta: torch.Tensor, stats: dict, e0: np.ndarray) -> dict:
    """Weighted sums of squared errors and counts of each property.

    ``theta [D, alpha]``; ``e0 [element]`` or ``[element, alpha]``.
    """
    out = {}
    e0 = np.asarray(e0, dtype=np.float64)
    e0 = np.repeat(e0[:, None], theta.shape[1], axis=1) if e0.ndim == 1 else e0  # [element, alpha]
    for p in PROPERTIES:
        count = stats["count"][p]
        if count <= 0:
            out[p] = (np.zeros(theta.shape[1]), 0.0)
            continue
        quad = (
            (theta * (stats["gram"][p] @ theta)).sum(0) - 2.0 * (stats["rhs"][p] @ theta)
        ).numpy()
        yy = stats["yy"][p]
        if p == "energy":
            e0_t = torch.as_tensor(e0)
            quad = quad + 2.0 * (theta * (stats["xc"] @ e0_t)).sum(0).numpy()
            yy = yy - 2.0 * (stats["ce"] @ e0) + np.einsum("ea,ef,fa->a", e0, stats["cc"], e0)
        out[p] = (np.maximum(quad + yy, 0.0), count)
    return out


def solve_path(
    stats: dict,
    e0: np.ndarray | None,
    weights: dict,
    alphas,
    regularizer: torch.Tensor | None = None,
    jitter: float = 1e-10,
    factors: dict | None = None,
):
    """Solutions ``theta [D, alpha]`` for every ``alpha`` and the condition numbers.

    Parameters
    ----------
    stats : dict
        :meth:`FoldStatistics.merged` of the training folds.
    e0 : numpy.ndarray or None
        Baseline reference energies of these folds, or ``None`` to fit them
        jointly (see :func:`joint_reference`).
    weights : dict
        Property weights ``w_p``.
    alphas : sequence of float
        Relative regularisation strengths (> 0).
    regularizer : torch.Tensor or "diagonal", optional
        ``Gamma [D, D]`` (symmetric positive semi-definite); identity if None;
        ``"diagonal"``: the diagonal of the normal matrix (ridge on
        standardised columns).
    factors : dict, optional
        Filled with the decomposition for :func:`posterior_state`: ``eigenvalues [D]``
        and ``vectors [D, D]`` of the whitened (Schur-complement) normal matrix,
        ``whiten`` (the Cholesky factor ``L`` of ``Gamma`` or None) and ``tau``.
    """
    a, b = _objective(stats, e0, weights)
    # the regularisation scale (tau, and the diagonal of "diagonal") comes from the normal matrix
    # before the joint baseline is eliminated, so alpha means the same for both baselines and
    # stays meaningful when the composition explains almost everything (round-off Schur
    # complement)
    full = a if e0 is not None else _objective(stats, np.zeros(stats["cc"].shape[0]), weights)[0]
    whiten = None
    if isinstance(regularizer, str):
        regularizer = torch.diag(torch.diagonal(full).clamp(min=0.0))
    if regularizer is not None:
        gamma = regularizer.to(torch.float64)
        scale = float(torch.diagonal(gamma).mean())
        chol = torch.linalg.cholesky(
            gamma + jitter * scale * torch.eye(gamma.shape[0], dtype=torch.float64)
        )
        whiten = chol  # theta = L^{-T} u

        def whitened(matrix):
            return torch.linalg.solve_triangular(
                chol, torch.linalg.solve_triangular(chol, matrix, upper=False).T, upper=False
            ).T

        a = whitened(a)
        full = a if e0 is not None else whitened(full)
        b = torch.linalg.solve_triangular(chol, b[:, None], upper=False)[:, 0]
    a = 0.5 * (a + a.T)
    n = a.shape[0]
    tau = float(torch.diagonal(full).sum()) / max(n, 1)
    if tau <= 0:
        if e0 is None and any(stats["count"][p] > 0 for p in PROPERTIES):
            # joint baseline that explains every label (e.g. energies only, fewer structures
            # than elements): nothing is left for the weights
            n_alpha = len(np.atleast_1d(alphas))
            return torch.zeros(n, n_alpha, dtype=torch.float64), np.ones(n_alpha)
        raise ValueError("the design is all zeros: no labels, or features that do not vary")
    eigenvalues, vectors = torch.linalg.eigh(a)
    eigenvalues = eigenvalues.clamp(min=0.0)
    if factors is not None:
        factors.update(eigenvalues=eigenvalues, vectors=vectors, whiten=whiten, tau=tau)
    projected = vectors.T @ b  # [D]
    alphas_t = torch.as_tensor(np.asarray(alphas, dtype=np.float64))
    shifted = eigenvalues[:, None] + alphas_t[None, :] * tau  # [D, alpha]
    theta = vectors @ (projected[:, None] / shifted)  # [D, alpha]
    if whiten is not None:
        theta = torch.linalg.solve_triangular(whiten.T, theta, upper=True)
    condition = (shifted.max(0).values / shifted.min(0).values).numpy()
    return theta, condition


def _references(stats: dict, theta: torch.Tensor, joint: bool, e0) -> np.ndarray:
    return joint_reference(stats, theta) if joint else e0


def cross_validate(
    fold_stats: FoldStatistics, weights: dict, alphas, regularizer=None, joint: bool = False
) -> dict:
    """K-fold validation errors of every ``alpha``.

    Returns
    -------
    dict
        ``"alphas"``; ``"<property>_rmse" [alpha]`` (weighted, pooled over
        folds); ``"loss" [alpha]`` (``sum_p w_p^2 MSE_p``).
    """
    n_alpha = len(alphas)
    sse = {p: np.zeros(n_alpha) for p in PROPERTIES}
    counts = {p: 0.0 for p in PROPERTIES}
    folds = range(fold_stats.n_folds)
    for k in folds:
        validation = fold_stats.merged([k])
        if sum(validation["count"].values()) == 0:
            continue
        training = fold_stats.merged([j for j in folds if j != k])
        e0 = None if joint else baseline_from(training)
        theta, _ = solve_path(training, e0, weights, alphas, regularizer)
        for p, (errors, count) in _errors(
            theta, validation, _references(training, theta, joint, e0)
        ).items():
            sse[p] += errors
            counts[p] += count
    out = {"alphas": np.asarray(alphas, dtype=np.float64)}
    loss = np.zeros(n_alpha)
    for p in PROPERTIES:
        if counts[p] > 0:
            mse = sse[p] / counts[p]
            out[f"{p}_rmse"] = np.sqrt(mse)
            loss += weights[p] ** 2 * mse
        else:
            out[f"{p}_rmse"] = np.full(n_alpha, np.nan)
    out["loss"] = loss
    return out


def final_fit(
    fold_stats: FoldStatistics,
    weights: dict,
    alpha: float,
    regularizer=None,
    joint: bool = False,
    posterior: dict | None = None,
):
    """Reference energies, ``theta [D]``, training RMSEs and condition number (all folds).

    ``posterior``: a dict filled with :func:`posterior_state` of the fit.
    """
    stats = fold_stats.merged(range(fold_stats.n_folds))
    e0 = None if joint else baseline_from(stats)
    factors: dict = {}
    theta, condition = solve_path(stats, e0, weights, [alpha], regularizer, factors=factors)
    e0 = _references(stats, theta, joint, e0)
    e0 = e0[:, 0] if e0.ndim == 2 else e0
    if condition[0] > 1e13:
        warnings.warn(
            f"ill-conditioned normal equations (condition number {condition[0]:.2e}); "
            "increase alpha",
            RuntimeWarning,
            stacklevel=3,
        )
    training = {}
    for p, (errors, count) in _errors(theta, stats, e0).items():
        training[p] = float(np.sqrt(errors[0] / count)) if count > 0 else float("nan")
    if posterior is not None:
        posterior.update(posterior_state(stats, weights, alpha, factors, training, joint))
    return e0, theta[:, 0], training, float(condition[0])


def posterior_state(
    stats: dict, weights: dict, alpha: float, factors: dict, training: dict, joint: bool
) -> dict:
    """What the posterior (Bayesian ridge / projected-process) variance of a fit needs.

    The objective of :func:`solve_path` is, up to a factor ``1 / (2 sigma^2)``, the
    negative log posterior of ``theta`` under Gaussian noise of variance
    ``sigma^2 n_p / (w_p^2 c_s)`` on every row of property ``p`` (structure weight
    ``c_s``) and the prior ``theta ~ N(0, sigma^2 / (alpha tau) Gamma^-1)``; the jointly
    fitted reference energies ``e0`` (``joint``) have a flat prior. The posterior
    covariance of ``(theta, e0)`` is ``sigma^2 P^-1`` with ``P`` the regularised
    normal matrix, and the variance of a linear prediction
    ``E = Phi . theta + m . e0`` (``Phi [D]`` summed basis row, ``m [element]`` the
    element counts) is

    .. math::

        \\mathrm{Var}(E) = \\sigma^2 \\big[ (\\Phi - M m)^T S^{-1} (\\Phi - M m)
            + m^T C^{+} m \\big]

    with ``S = A_Schur + alpha tau Gamma = L (V (Lambda + alpha tau) V^T) L^T`` the
    regularised Schur complement the solver decomposed, ``M = X_c C_c^+`` and
    ``C^+ = C_c^+ n_E / w_E^2`` (``X_c``, ``C_c`` the feature-composition and
    composition blocks of the energy rows; both terms absent without a joint baseline,
    whose reference energies are then treated as exact). ``sigma^2`` is estimated from
    the training residuals: ``sigma^2 = sum_p w_p^2 MSE_p / (N - gamma - n_ref)`` with
    ``N`` the number of labelled rows, ``gamma = sum_i lambda_i / (lambda_i + alpha tau)``
    the effective number of weights (eigenvalues below ``D eps lambda_max`` count as
    zero) and ``n_ref`` the number of fitted reference energies.

    Returns
    -------
    dict
        ``factor [D, D]`` (``S^-1 = factor factor^T``), ``noise_variance``
        (``sigma^2``, dimensionless; NaN without residual degrees of freedom),
        ``dof`` (``N - gamma - n_ref``), ``composition_map [D, element]`` and
        ``composition_covariance [element, element]`` (``C^+``; both None without
        a joint baseline).
    """
    n = stats["xc"].shape[0]
    if factors:
        eigenvalues, vectors, whiten, tau = (
            factors["eigenvalues"],
            factors["vectors"],
            factors["whiten"],
            factors["tau"],
        )
        shifted = eigenvalues + alpha * tau  # [D]
        factor = vectors / torch.sqrt(shifted)[None, :]  # [D, D]
        if whiten is not None:
            factor = torch.linalg.solve_triangular(whiten.T, factor, upper=True)
        tolerance = float(eigenvalues.max()) * n * float(np.finfo(np.float64).eps)
        kept = eigenvalues > tolerance
        gamma = float((eigenvalues[kept] / shifted[kept]).sum())
    else:  # nothing left for the weights (see solve_path)
        factor, gamma = torch.zeros(n, 0, dtype=torch.float64), 0.0
    fitted = [p for p in PROPERTIES if stats["count"][p] > 0 and weights[p] > 0]
    loss = sum(weights[p] ** 2 * training[p] ** 2 for p in fitted)
    rows = sum(stats["rows"][p] for p in fitted)
    energy = "energy" in fitted
    n_ref = int((np.diagonal(stats["cc"]) > 0).sum()) if energy else 0
    dof = rows - gamma - n_ref
    composition_map = composition_covariance = None
    if joint and energy:
        inverse = np.linalg.pinv(stats["cc"], rcond=1e-10, hermitian=True)  # [element, element]
        composition_map = (stats["xc"] @ torch.as_tensor(inverse)).numpy()  # [D, element]
        scale = weights["energy"] ** 2 / stats["count"]["energy"]
        composition_covariance = inverse / scale
    return {
        "factor": factor.numpy(),
        "noise_variance": float(loss / dof) if dof > 0 else float("nan"),
        "dof": float(dof),
        "composition_map": composition_map,
        "composition_covariance": composition_covariance,
    }


def _trivial_sse(stats: dict, e0: np.ndarray) -> dict:
    """Weighted squared errors and counts of the trivial predictor (``theta = 0``)."""
    zero = torch.zeros(stats["xc"].shape[0], 1, dtype=torch.float64)
    return {p: (float(errors[0]), count) for p, (errors, count) in _errors(zero, stats, e0).items()}


def trivial_errors(fold_stats: FoldStatistics) -> dict:
    """RMSEs of the trivial predictor: per-element baseline energies, zero forces and stress.

    Returns
    -------
    dict
        ``{property: (train_rmse, validation_rmse)}``: on all folds, and pooled over the
        validation folds with the baseline refitted on the other folds (NaN without
        cross-validation or labels).
    """
    everything = fold_stats.merged(range(fold_stats.n_folds))
    train = _trivial_sse(everything, baseline_from(everything))
    sse = {p: 0.0 for p in PROPERTIES}
    counts = {p: 0.0 for p in PROPERTIES}
    if fold_stats.n_folds > 1:
        folds = range(fold_stats.n_folds)
        for k in folds:
            validation = fold_stats.merged([k])
            if sum(validation["count"].values()) == 0:
                continue
            training = fold_stats.merged([j for j in folds if j != k])
            for p, (error, count) in _trivial_sse(validation, baseline_from(training)).items():
                sse[p] += error
                counts[p] += count
    out = {}
    for p in PROPERTIES:
        error, count = train[p]
        out[p] = (
            float(np.sqrt(error / count)) if count > 0 else float("nan"),
            float(np.sqrt(sse[p] / counts[p])) if counts[p] > 0 else float("nan"),
        )
    return out
