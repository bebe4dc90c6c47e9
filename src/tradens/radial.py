"""Radial parts of the Gaussian density expansion.

All lengths are in Å. A radial basis maps neighbour distances ``r [pair]`` to
the radial expansion coefficients of one smeared neighbour,
``R[pair, n, l]``; the angular part and the element channel are added by
:mod:`tradens.expansion`.

Two bases are provided:

* :class:`GaussianGridBasis` — GAP's ``EQUISPACED_GAUSS`` basis, reproduced
  exactly (see ``docs/theory.md``): Gaussians on an equispaced grid,
  orthonormalised with the lower Cholesky factor of their overlap matrix.
* :class:`GtoBasis` — Gaussian-type orbitals ``r^n exp(-r^2 / (2 sigma_n^2))``
  (featomic's definition), orthonormalised (Löwdin), evaluated through
  numerical radial integrals tabulated once and interpolated by cubic Hermite
  splines.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "cosine_cutoff",
    "scaled_spherical_in",
    "GaussianGridBasis",
    "GtoBasis",
    "make_radial_basis",
]


def cosine_cutoff(r: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    """GAP's cosine taper.

    ``f(r) = 1`` for ``r <= cutoff - width``, ``0.5 (cos(pi (r - cutoff + width) / width) + 1)``
    up to ``cutoff`` and ``0`` beyond. ``width = 0`` gives a hard step.

    Parameters
    ----------
    r : torch.Tensor
        Distances in Å, any shape.
    cutoff, width : float
        Cutoff radius and taper width in Å.
    """
    if width <= 0.0:
        return (r < cutoff).to(r.dtype)
    t = ((r - cutoff + width) / width).clamp(0.0, 1.0)
    return 0.5 * (torch.cos(math.pi * t) + 1.0) * (r < cutoff).to(r.dtype)


# -------------------------------------------------------------------------------------
# modified spherical Bessel functions, exponentially scaled
# -------------------------------------------------------------------------------------


def _series_threshold(l_max: int) -> float:
    # Below this argument the upward recurrence loses more than ~1e-13 relative
    # accuracy at the highest degrees, so the power series is used instead.
    return max(1.0, 2.0 * l_max)


def scaled_spherical_in(x: torch.Tensor, l_max: int) -> torch.Tensor:
    """``exp(-x) i_l(x)`` for ``l = 0..l_max`` and ``x >= 0``.

    ``i_l`` is the modified spherical Bessel function of the first kind. Large
    arguments use the closed forms of ``i_0, i_1`` and the upward recurrence
    ``i_l = i_{l-2} - (2l-1)/x i_{l-1}``; small arguments use the power series
    (the recurrence cancels catastrophically there). Differentiable.

    Parameters
    ----------
    x : torch.Tensor
        Non-negative arguments, any shape ``[...]``.
    l_max : int
        Largest degree.

    Returns
    -------
    torch.Tensor
        Shape ``[..., l_max+1]``.
    """
    threshold = _series_threshold(l_max)
    small = x < threshold
    # recurrence branch on safe arguments (small ones replaced by the threshold)
    xr = torch.where(small, torch.full_like(x, threshold), x)
    e2 = torch.exp(-2.0 * xr)
    values = [(1.0 - e2) / (2.0 * xr)]
    if l_max >= 1:
        values.append((1.0 + e2) / (2.0 * xr) - (1.0 - e2) / (2.0 * xr * xr))
    for l in range(2, l_max + 1):
        values.append(values[l - 2] - (2 * l - 1) / xr * values[l - 1])
    result = torch.stack(values, dim=-1)  # [..., l_max+1]
    if bool(small.any()):
        idx = small.nonzero(as_tuple=True)
        result = result.index_put(idx, _scaled_in_series(x[idx], l_max, threshold))
    return result


def _scaled_in_series(x: torch.Tensor, l_max: int, x_max: float) -> torch.Tensor:
    # exp(-x) x^l / (2l+1)!! * sum_k (x^2/2)^k / (k! prod_{j=1..k} (2l+2j+1)),  x: [q]
    half_x2 = 0.5 * x * x
    n_terms = int(12 + 1.5 * x_max + 0.05 * x_max * x_max)
    out = []
    x_pow = torch.ones_like(x)
    double_factorial = 1.0
    for l in range(l_max + 1):
        if l > 0:
            x_pow = x_pow * x
            double_factorial *= 2 * l + 1
        term = torch.ones_like(x)
        total = torch.ones_like(x)
        for k in range(1, n_terms):
            term = term * half_x2 / (k * (2 * l + 2 * k + 1))
            total = total + term
        out.append(torch.exp(-x) * x_pow / double_factorial * total)
    return torch.stack(out, dim=-1)  # [q, l_max+1]


# -------------------------------------------------------------------------------------
# GAP EQUISPACED_GAUSS
# -------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _gaussian_grid_transform(
    n_max: int, cutoff: float, sigma: float, error_exponent: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid ``r_a`` [n], transform ``T = C^{-1} L`` [n, n] and first row of ``L`` [n]."""
    alpha = 1.0 / (2.0 * sigma * sigma)
    basis_cutoff = cutoff + sigma * math.sqrt(2.0 * error_exponent * math.log(10.0))
    grid = np.arange(n_max, dtype=np.float64) * basis_cutoff / n_max
    overlap = np.exp(-alpha * (grid[:, None] - grid[None, :]) ** 2)  # C_ab
    inner = _overlap_inner(grid, alpha)  # S_ab = int r^2 g_a g_b dr
    lower = np.linalg.cholesky(inner)
    transform = np.linalg.solve(overlap, lower)
    return grid, transform, lower[0].copy()


class GaussianGridBasis:
    """GAP's ``EQUISPACED_GAUSS`` radial basis (exact reproduction).

    Parameters
    ----------
    n_max : int
        Number of radial functions (a count, as GAP's ``n_max``).
    l_max : int
        Largest angular degree (inclusive).
    cutoff : float
        Cutoff radius in Å.
    sigma : float
        Width of the atomic Gaussians in Å (GAP ``atom_sigma``).
    error_exponent : float
        GAP ``basis_error_exponent`` (default 10); sets the grid extent.
    """

    def __init__(self, n_max: int, l_max: int, cutoff: float, sigma: float, error_exponent: float = 10.0):
        self.n_max, self.l_max, self.cutoff, self.sigma = n_max, l_max, cutoff, sigma
        self.alpha = 1.0 / (2.0 * sigma * sigma)
        grid, transform, center = _gaussian_grid_transform(
            n_max, float(cutoff), float(sigma), float(error_exponent)
        )
        self._grid = torch.from_numpy(grid)
        self._transform = torch.from_numpy(transform)
        # the centre term is L_{0n}, the first row of the lower Cholesky factor
        self._center = torch.from_numpy(center)

    def center_values(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Radial coefficients of an atom at the origin, ``[n]`` (``l = 0`` only)."""
        return self._center.to(dtype=dtype, device=device)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """Radial coefficients ``R[pair, n, l]`` for distances ``r [pair]`` (Å)."""
        grid = self._grid.to(dtype=r.dtype, device=r.device)  # [a]
        transform = self._transform.to(dtype=r.dtype, device=r.device)  # [a, n]
        alpha = self.alpha
        x = 2.0 * alpha * r[:, None] * grid[None, :]  # [pair, a]
        gauss = torch.exp(-alpha * (grid[None, :] - r[:, None]) ** 2)  # [pair, a]
        bessel = scaled_spherical_in(x, self.l_max)  # [pair, a, l]
        rho = gauss[:, :, None] * bessel  # [pair, a, l]
        return torch.einsum("pal,an->pnl", rho, transform)  # [pair, n, l]


def _overlap_inner(grid: np.ndarray, alpha: float) -> np.ndarray:
    """Closed-form ``S_ab = int_0^inf r^2 g_a(r) g_b(r) dr`` of grid Gaussians."""
    ra, rb = grid[:, None], grid[None, :]
    s = ra + rb
    erf = np.vectorize(math.erf)(math.sqrt(alpha / 2.0) * s)
    return (
        math.sqrt(2.0) * alpha**1.5 * s * np.exp(-alpha * (ra**2 + rb**2))
        + alpha * math.sqrt(math.pi) * np.exp(-alpha * (ra - rb) ** 2 / 2.0) * (1.0 + alpha * s**2) * (1.0 + erf)
    ) / math.sqrt(128.0 * alpha**5)


# -------------------------------------------------------------------------------------
# GTO basis through tabulated numerical radial integrals
# -------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _gto_table(
    n_max: int, l_max: int, cutoff: float, sigma: float, n_grid: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tabulate ``I_nl(r)`` and ``dI_nl/dr`` on ``n_grid`` points of ``[0, cutoff]``.

    ``I_nl(r) = int_0^inf s^2 g_n(s) exp(-a (s^2 + r^2)) 4 pi i_l(2 a s r) ds`` with
    ``a = 1/(2 sigma^2)`` is the coefficient of a Gaussian of width ``sigma`` at
    distance ``r`` on ``g_n(s) Y_lm``. ``g_n`` are featomic's GTOs
    ``s^n exp(-s^2 / (2 sigma_n^2))``, ``sigma_n = cutoff max(1, sqrt(n)) / n_max``,
    orthonormalised with weight ``s^2`` (Löwdin).
    """
    alpha = 1.0 / (2.0 * sigma * sigma)
    widths = np.array([cutoff * max(1.0, math.sqrt(n)) / n_max for n in range(n_max)])
    b = 1.0 / (2.0 * widths**2)  # [n]
    # Gauss-Legendre quadrature on [0, s_max]
    s_max = cutoff + 6.0 * sigma + 3.0 * widths.max()
    nodes, weights = np.polynomial.legendre.leggauss(400)
    s = 0.5 * s_max * (nodes + 1.0)
    w = 0.5 * s_max * weights
    r = np.linspace(0.0, cutoff, n_grid)
    x = 2.0 * alpha * s[None, :] * r[:, None]  # [grid, q]
    bessel = scaled_spherical_in(torch.from_numpy(x), l_max + 1).numpy()  # [grid, q, l+1]
    # exp(-a (s^2 + r^2)) i_l(2 a s r) = exp(-a (s - r)^2) [exp(-x) i_l(x)]
    gauss = np.exp(-alpha * (s[None, :] - r[:, None]) ** 2)[:, :, None]  # [grid, q, 1]
    kernel = gauss * bessel[:, :, : l_max + 1]  # [grid, q, l]
    # d/dx [exp(-x) i_l] = exp(-x) (l i_{l-1} + (l+1) i_{l+1}) / (2l+1) - exp(-x) i_l,  i_{-1} -> i_1
    ls = np.arange(l_max + 1)
    lower = np.concatenate([bessel[:, :, 1:2], bessel[:, :, : l_max]], axis=2)  # i_{l-1}
    upper = bessel[:, :, 1 : l_max + 2]  # i_{l+1}
    dbessel = (ls * lower + (ls + 1) * upper) / (2 * ls + 1) - bessel[:, :, : l_max + 1]
    dkernel = (2.0 * alpha * (s[None, :, None] - r[:, None, None]) * kernel
               + gauss * dbessel * 2.0 * alpha * s[None, :, None])  # d kernel / dr
    values = np.zeros((n_grid, n_max, l_max + 1))
    derivs = np.zeros((n_grid, n_max, l_max + 1))
    g = s[None, :] ** np.arange(n_max)[:, None] * np.exp(-b[:, None] * s[None, :] ** 2)  # [n, q]
    overlap = (g * w * s**2) @ g.T  # [n, n]
    evals, evecs = np.linalg.eigh(overlap)
    orth = (evecs @ np.diag(evals**-0.5) @ evecs.T) @ g  # [n, q], orthonormal with weight s^2
    weighted = orth * (w * s**2)[None, :] * 4.0 * math.pi  # [n, q]
    for l in range(l_max + 1):
        values[:, :, l] = kernel[:, :, l] @ weighted.T
        derivs[:, :, l] = dkernel[:, :, l] @ weighted.T
    return r, values, derivs


class GtoBasis:
    """Orthonormalised Gaussian-type orbitals (dscribe/featomic-style).

    The radial integrals of a Gaussian of width ``sigma`` on the orthonormal
    GTOs are computed once by quadrature on a grid of distances and evaluated
    per pair with cubic Hermite splines (value and derivative tabulated), so
    values are smooth and differentiable.

    Parameters
    ----------
    n_max : int
        Number of radial functions (a count).
    l_max : int
        Largest angular degree.
    cutoff, sigma : float
        Cutoff radius and Gaussian width, Å.
    n_grid : int
        Number of spline knots on ``[0, cutoff]``.
    """

    def __init__(self, n_max: int, l_max: int, cutoff: float, sigma: float, n_grid: int = 600):
        self.n_max, self.l_max, self.cutoff, self.sigma = n_max, l_max, cutoff, sigma
        knots, values, derivs = _gto_table(n_max, l_max, float(cutoff), float(sigma), n_grid)
        self._spacing = float(knots[1] - knots[0])
        self._values = torch.from_numpy(values.reshape(n_grid, -1))  # [knot, n*l]
        self._derivs = torch.from_numpy(derivs.reshape(n_grid, -1))  # [knot, n*l]
        self._center = torch.from_numpy(values[0, :, 0].copy())  # r = 0, l = 0

    def center_values(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Radial coefficients of an atom at the origin, ``[n]`` (``l = 0`` only)."""
        return self._center.to(dtype=dtype, device=device)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """Radial coefficients ``R[pair, n, l]`` for distances ``r [pair]`` (Å)."""
        values = self._values.to(dtype=r.dtype, device=r.device)
        derivs = self._derivs.to(dtype=r.dtype, device=r.device)
        h = self._spacing
        position = (r / h).clamp(0.0, values.shape[0] - 1.000001)
        index = position.detach().floor().long().clamp(max=values.shape[0] - 2)  # [pair]
        t = (position - index.to(r.dtype))[:, None]  # [pair, 1]
        y0, y1 = values[index], values[index + 1]  # [pair, n*l]
        d0, d1 = derivs[index] * h, derivs[index + 1] * h
        t2, t3 = t * t, t * t * t
        out = (
            (2 * t3 - 3 * t2 + 1) * y0
            + (t3 - 2 * t2 + t) * d0
            + (-2 * t3 + 3 * t2) * y1
            + (t3 - t2) * d1
        )  # [pair, n*l]
        return out.reshape(-1, self.n_max, self.l_max + 1)


def make_radial_basis(kind: str, *, n_max: int, l_max: int, cutoff: float, sigma: float,
                      error_exponent: float = 10.0):
    """Build a radial basis by name: ``"gaussian_grid"`` (GAP) or ``"gto"``."""
    if kind == "gaussian_grid":
        return GaussianGridBasis(n_max, l_max, cutoff, sigma, error_exponent)
    if kind == "gto":
        return GtoBasis(n_max, l_max, cutoff, sigma)
    raise ValueError(f"unknown radial basis {kind!r}; expected 'gaussian_grid' or 'gto'")
