"""Calibration of predicted uncertainties against the errors of held-out structures.

A model's ``predict(frames, return_std=True)`` gives ``energy_std [structure]``
(eV): the posterior standard deviation of the linear and kernel models
(:meth:`tradens.models.LinearPotential.predict_std`) or the members' spread of an
:class:`~tradens.models.EnsemblePotential`. :func:`calibration` compares it with
the errors of labelled structures: the share of errors inside one and two
predicted standard deviations (0.68 and 0.95 for calibrated Gaussian errors) and
the Spearman rank correlation between the predicted standard deviation and the
absolute error, both per atom (so that the structure size does not make the
ranking).
"""

from __future__ import annotations

import numpy as np

__all__ = ["calibration", "spearman"]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks ``1..n`` of ``values [n]``, ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):  # average the ranks of ties
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / np.bincount(inverse))[inverse]
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of ``a [n]`` and ``b [n]`` (ties: mean ranks; NaN if constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of one length, got {a.shape}, {b.shape}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / norm) if norm > 0 else float("nan")


def calibration(errors, std, n_atoms=None) -> dict:
    """How well predicted standard deviations describe the errors.

    Parameters
    ----------
    errors : array_like
        ``[structure]`` prediction minus label (eV; NaN: no label, left out).
    std : array_like
        ``[structure]`` predicted standard deviations (eV, >= 0).
    n_atoms : array_like, optional
        ``[structure]`` atom counts: the rank correlation is taken between
        ``std / n_atoms`` and ``|errors| / n_atoms`` (eV/atom).

    Returns
    -------
    dict
        ``"within_1_sigma"``, ``"within_2_sigma"`` (shares of ``|error| <= k std``),
        ``"spearman"`` (rank correlation of the predicted std and the absolute
        error), ``"mean_std"`` and ``"rmse"`` (eV/atom with ``n_atoms``, else eV)
        and ``"n"`` (structures used).
    """
    errors = np.asarray(errors, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    size = np.ones_like(errors) if n_atoms is None else np.asarray(n_atoms, dtype=np.float64)
    if errors.shape != std.shape or errors.shape != size.shape or errors.ndim != 1:
        raise ValueError(
            f"errors, std and n_atoms must be 1-D of one length, got {errors.shape}, "
            f"{std.shape}, {size.shape}"
        )
    if (std < 0).any():
        raise ValueError("std must be >= 0")
    kept = np.isfinite(errors) & np.isfinite(std)
    errors, std, size = np.abs(errors[kept]), std[kept], size[kept]
    if errors.size == 0:
        raise ValueError("no structure with a finite error and standard deviation")
    return {
        "within_1_sigma": float(np.mean(errors <= std)),
        "within_2_sigma": float(np.mean(errors <= 2.0 * std)),
        "spearman": spearman(std / size, errors / size),
        "mean_std": float(np.mean(std / size)),
        "rmse": float(np.sqrt(np.mean((errors / size) ** 2))),
        "n": int(errors.size),
    }
