"""Energy-only ridge in the dual (row) space, for designs wider than they are tall.

When ``D`` (features) is far larger than the number of structures (the full
SOAP has ``~10^5`` columns), the ``D x D`` normal matrix of
:mod:`tradens.models._solve` does not fit in memory. The energy rows
``R [s, D]`` (per atom) do, and by the push-through identity the same ridge
solution is

.. math::

    \\theta = (A + \\alpha\\tau)^{-1} b = R^T C^{1/2}
              \\big(C^{1/2} R R^T C^{1/2} + \\alpha \\tau n / w^2\\big)^{-1} C^{1/2} y ,
    \\qquad A = \\frac{w^2}{n} R^T C R, \\quad \\tau = \\mathrm{tr}(A) / D ,

so one eigendecomposition of the ``s x s`` row Gram matrix per fold serves
every ``alpha``. The baseline is refitted inside every fold as in the primal
solver; the objective and ``alpha`` mean the same in both.
"""

from __future__ import annotations

import numpy as np
import torch

from ._data import composition
from ._design import design_batches
from ._solve import fill_unseen

__all__ = [
    "EnergyRows",
    "dual_cross_validate",
    "dual_final_fit",
    "dual_rows",
    "dual_trivial_errors",
    "fit_dual",
]


class EnergyRows:
    """Per-atom energy rows of every structure, kept in memory (float64)."""

    def __init__(self, n_structures: int):
        self.rows: list = [None] * n_structures
        self.energy = np.full(n_structures, np.nan)
        self.fractions: list = [None] * n_structures
        self.weights = np.zeros(n_structures)

    def add(
        self, index: int, row: torch.Tensor, energy: float, fractions: np.ndarray, weight: float
    ) -> None:
        self.rows[index] = row.detach().to(torch.float64).cpu()
        self.energy[index], self.fractions[index], self.weights[index] = energy, fractions, weight

    def subset(self, chosen: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        """The ``chosen`` structures that have rows and a finite energy.

        Returns ``rows [s, D]``, ``energy [s]`` (eV/atom), ``fractions [s, element]`` and
        ``weights [s]``.
        """
        kept = [i for i in chosen if self.rows[i] is not None and np.isfinite(self.energy[i])]
        rows = (
            torch.stack([self.rows[i] for i in kept])
            if kept
            else torch.zeros(0, 0, dtype=torch.float64)
        )
        fractions = np.array([self.fractions[i] for i in kept])
        return rows, self.energy[kept], fractions, self.weights[kept]


def _baseline(fractions, energy, weights) -> np.ndarray:
    w = weights[:, None]
    cc, ce = fractions.T @ (w * fractions), fractions.T @ (weights * energy)
    return fill_unseen(np.linalg.pinv(cc, rcond=1e-10, hermitian=True) @ ce, np.diagonal(cc) > 0)


def _solutions(
    rows: torch.Tensor,
    energy: np.ndarray,
    fractions: np.ndarray,
    weights: np.ndarray,
    alphas,
    standardize: bool = False,
    joint: bool = False,
):
    """``theta [D, alpha]``, the baseline ``[element]`` (``[element, alpha]`` when ``joint``)
    and the condition numbers of one training set.

    ``joint``: the reference energies are fitted with the weights, unregularised; with
    ``Q`` the projector off the weighted composition columns ``C^{1/2} f``,
    ``theta = R^T C^{1/2} Q (Q K Q + alpha tau n)^{-1} Q C^{1/2} y`` (the row-space form of
    the primal Schur complement) and ``e0 = (C^{1/2} f)^+ C^{1/2} (y - R theta)``.
    """
    root = torch.as_tensor(np.sqrt(weights))
    scaled = rows * root[:, None]  # C^{1/2} R
    column = torch.ones(rows.shape[1], dtype=rows.dtype)
    if joint:
        f_scaled = torch.as_tensor(fractions * np.sqrt(weights)[:, None])  # [s, element]
        pinv = torch.linalg.pinv(f_scaled, rtol=1e-10)  # [element, s]
        projector = torch.eye(rows.shape[0], dtype=rows.dtype) - f_scaled @ pinv  # Q [s, s]
    if standardize:  # ridge on columns of unit weighted second moment
        second = (scaled * scaled).sum(0)
        column = 1.0 / torch.sqrt(second + 1e-10 * float(second.mean()))
        scaled = scaled * column
    gram = scaled @ scaled.T  # [s, s]
    n, d = float(weights.sum()), rows.shape[1]
    # tr(A)/D with w^2 cancelled below; before eliminating a joint baseline (as the primal)
    tau = float(torch.diagonal(gram).sum()) / (n * d)
    if joint:
        gram = projector @ gram @ projector
        y = projector @ torch.as_tensor(energy * np.sqrt(weights))
    else:
        e0 = _baseline(fractions, energy, weights)
        y = torch.as_tensor((energy - fractions @ e0) * np.sqrt(weights))  # [s]
    eigenvalues, vectors = torch.linalg.eigh(0.5 * (gram + gram.T))
    projected = vectors.T @ y
    alphas_t = torch.as_tensor(np.asarray(alphas, dtype=np.float64))
    shifted = eigenvalues.clamp(min=0.0)[:, None] + alphas_t[None, :] * tau * n  # [s, alpha]
    dual = vectors @ (projected[:, None] / shifted)  # [s, alpha]
    if joint:
        dual = projector @ dual
    condition = (shifted.max(0).values / shifted.min(0).values).numpy()
    theta = (scaled.T @ dual) * column[:, None]  # [D, alpha]
    if joint:
        residual = torch.as_tensor(energy)[:, None] - rows @ theta  # [s, alpha]
        e0 = (pinv @ (root[:, None] * residual)).numpy()  # [element, alpha]
        e0 = fill_unseen(e0, np.abs(fractions * weights[:, None]).sum(0) > 0)
    return theta, e0, condition


def _baseline_energy(fractions, e0) -> np.ndarray:
    """``[s, alpha]`` or ``[s, 1]`` per-atom baseline energies."""
    out = fractions @ e0
    return out if out.ndim == 2 else out[:, None]


def dual_cross_validate(
    store: EnergyRows,
    folds: np.ndarray,
    n_folds: int,
    alphas,
    standardize: bool = False,
    joint: bool = False,
) -> dict:
    """K-fold energy RMSE (eV/atom, weighted, pooled) of every ``alpha``."""
    sse, count = np.zeros(len(alphas)), 0.0
    for k in range(n_folds):
        val = store.subset(np.nonzero(folds == k)[0])
        if val[0].shape[0] == 0:
            continue
        theta, e0, _ = _solutions(
            *store.subset(np.nonzero(folds != k)[0]), alphas, standardize, joint
        )
        rows, energy, fractions, weights = val
        errors = (rows @ theta).numpy() + _baseline_energy(fractions, e0) - energy[:, None]
        sse += (weights[:, None] * errors**2).sum(0)
        count += weights.sum()
    rmse = np.sqrt(sse / count)
    nan = np.full(len(alphas), np.nan)
    return {
        "alphas": np.asarray(alphas, dtype=np.float64),
        "energy_rmse": rmse,
        "forces_rmse": nan,
        "stress_rmse": nan.copy(),
        "loss": rmse**2,
    }


def dual_final_fit(store: EnergyRows, alpha: float, standardize: bool = False, joint: bool = False):
    """Baseline, ``theta [D]``, training RMSEs and condition number on all structures."""
    rows, energy, fractions, weights = store.subset(np.arange(len(store.rows)))
    theta, e0, condition = _solutions(rows, energy, fractions, weights, [alpha], standardize, joint)
    e0 = e0[:, 0] if e0.ndim == 2 else e0
    errors = (rows @ theta[:, 0]).numpy() + fractions @ e0 - energy
    training = {
        "energy": float(np.sqrt((weights * errors**2).sum() / weights.sum())),
        "forces": float("nan"),
        "stress": float("nan"),
    }
    return e0, theta[:, 0], training, float(condition[0])


def dual_trivial_errors(store: EnergyRows, folds: np.ndarray, n_folds: int) -> dict:
    """``{"energy": (train, validation)}`` RMSEs (eV/atom) of the per-element baseline alone."""

    def rmse(train_idx, test_idx) -> tuple[float, float]:
        _, energy, fractions, weights = store.subset(train_idx)
        e0 = _baseline(fractions, energy, weights)
        _, energy, fractions, weights = store.subset(test_idx)
        return float((weights * (fractions @ e0 - energy) ** 2).sum()), float(weights.sum())

    everything = np.arange(len(store.rows))
    sse, count = rmse(everything, everything)
    train = float(np.sqrt(sse / count)) if count > 0 else float("nan")
    validation = float("nan")
    if n_folds > 1:
        total = [0.0, 0.0]
        for k in range(n_folds):
            test = np.nonzero(folds == k)[0]
            if store.subset(test)[0].shape[0] == 0:
                continue
            sse, count = rmse(np.nonzero(folds != k)[0], test)
            total[0] += sse
            total[1] += count
        validation = float(np.sqrt(total[0] / total[1])) if total[1] > 0 else float("nan")
    return {"energy": (train, validation)}


def dual_rows(model, frames, targets, basis, species, weights) -> EnergyRows:
    """Per-atom energy rows of every structure for an energy-only dual fit."""
    store = EnergyRows(len(frames))
    fractions = composition(frames, species) / targets.n_atoms[:, None]
    batches = design_batches(
        model.representation,
        basis,
        frames,
        forces=False,
        stress=False,
        batch_size=model.batch_size,
    )
    for start, batch, design in model._progress(batches, len(frames)):
        for local in range(batch.n_structures):
            s = start + local
            store.add(
                s,
                design.energy[local] / float(targets.n_atoms[s]),
                targets.energy[s] / targets.n_atoms[s],
                fractions[s],
                weights[s],
            )
    return store


def fit_dual(model, store: EnergyRows, folds: np.ndarray, n_folds: int, alphas) -> tuple:
    """Energy-only ridge of a :class:`~tradens.models.LinearPotential` in the row space.

    Sets ``cv_results_`` and ``alpha_`` on ``model`` and returns
    ``(e0, theta, training, condition)`` of the final fit.
    """
    if not isinstance(model._regularizer(model.basis_), (str, type(None))):
        raise ValueError("solver='dual' supports ridge models only")
    joint = model.baseline == "joint"
    standardize = model._regularizer(model.basis_) == "diagonal"
    if n_folds > 1:
        model.cv_results_ = dual_cross_validate(store, folds, n_folds, alphas, standardize, joint)
        model.alpha_ = float(alphas[int(np.nanargmin(model.cv_results_["energy_rmse"]))])
    else:
        model.cv_results_ = None
        model.alpha_ = float(alphas[0])
    return dual_final_fit(store, model.alpha_, standardize, joint)
