"""Radial parts of the Gaussian density expansion.

All lengths are in Å. A radial basis maps neighbour distances ``r [pair]`` to
the radial expansion coefficients of one smeared neighbour,
``R[pair, n, l]``; the angular part and the element channel are added by
:mod:`tradens.density.expansion`.

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
    "taper_with_derivative",
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


def taper_with_derivative(
    r: torch.Tensor, cutoff: float, width: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cosine_cutoff` and its ``r``-derivative (1/Å), both shaped like ``r``.

    ``f'(r) = -pi/(2 width) sin(pi (r - cutoff + width) / width)`` inside the
    taper, zero elsewhere (and everywhere for ``width = 0``). The one
    implementation of the taper derivative: every derivative path uses it.
    """
    taper = cosine_cutoff(r, cutoff, width)
    if width <= 0.0:
        return taper, torch.zeros_like(r)
    t = ((r - cutoff + width) / width).clamp(0.0, 1.0)
    d_taper = -0.5 * math.pi / width * torch.sin(math.pi * t) * (r < cutoff).to(r.dtype)
    return taper, d_taper


# -------------------------------------------------------------------------------------
# modified spherical Bessel functions, exponentially scaled
# -------------------------------------------------------------------------------------


def _series_threshold(l_max: int) -> float:
    # Below this argument the upward recurrence loses accuracy at the highest
    # degrees, so the power series is used instead. At 1.5 l_max the recurrence's
    # error (against 40-digit mpmath) stays below 2e-14 of i_0 and 4e-12 relative
    # for every l <= l_max <= 16 (7.7e-15 relative at l_max = 6), and typical
    # neighbour distances never reach the series.
    return max(1.0, 1.5 * l_max)


def scaled_spherical_in(x: torch.Tensor, l_max: int) -> torch.Tensor:
    """``exp(-x) i_l(x)`` for ``l = 0..l_max`` and ``x >= 0``.

    ``i_l`` is the modified spherical Bessel function of the first kind. Large
    arguments use the closed forms of ``i_0, i_1`` and the upward recurrence
    ``i_l = i_{l-2} - (2l-1)/x i_{l-1}``; small arguments use the power series
    (the recurrence cancels catastrophically there). Differentiable (twice).

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
    return _scaled_in(x, l_max, dim=-1)


def _scaled_in(
    x: torch.Tensor,
    l_max: int,
    dim: int,
    out: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`scaled_spherical_in` with the degree at ``dim`` of the result.

    Without ``out`` this is :func:`scaled_in_stack` (differentiable). With
    ``out`` (no autograd) the values are written into it, degree by degree,
    instead of being stacked into a new tensor; ``scale`` (shaped like ``x``,
    only with ``out``) then multiplies every degree (the recurrence is linear,
    so it is applied once, to ``i_0`` and ``i_1``).
    """
    threshold = _series_threshold(l_max)
    if out is None:  # the differentiable form, shared with TorchScript exports
        table = _series_coefficients(l_max, threshold).to(dtype=x.dtype, device=x.device)
        return scaled_in_stack(x, l_max, threshold, table, dim)
    small = x < threshold
    any_small = bool(small.any())
    # recurrence branch on safe arguments (small ones replaced by the threshold)
    xr = torch.where(small, torch.full_like(x, threshold), x) if any_small else x
    e2 = torch.exp(-2.0 * xr)
    inverse = 0.5 / xr  # 1 / (2x)
    result = out
    values = [out.select(dim, l) for l in range(l_max + 1)]
    if scale is None:
        torch.mul(torch.rsub(e2, 1.0), inverse, out=values[0])
        if l_max >= 1:
            torch.sub(torch.mul(e2.add_(1.0), inverse), values[0] / xr, out=values[1])
    else:
        e2.mul_(scale)  # scale exp(-2x)
        torch.mul(torch.sub(scale, e2), inverse, out=values[0])
        if l_max >= 1:
            torch.sub(torch.mul(e2.add_(scale), inverse), values[0] / xr, out=values[1])
    two_inverse = inverse.mul_(2.0)  # 1 / x
    for l in range(2, l_max + 1):
        torch.addcmul(values[l - 2], two_inverse, values[l - 1], value=-(2 * l - 1), out=values[l])
    if any_small:
        where = small.nonzero(as_tuple=True)
        series = _scaled_in_series(x[where], l_max, threshold).to(result.dtype)  # [q, l]
        if scale is not None:
            series = series * scale[where][:, None]
        # result is a fresh stack or the caller's buffer: in place is safe
        result.movedim(dim, -1).index_put_(where, series)
    return result


@lru_cache(maxsize=16)
def _series_table(l_max: int, n_terms: int, y_max: float) -> torch.Tensor:
    """``C[k, l] = y_max^k / (k! (2l+2k+1)!!)`` in float64 (each entry a product of k factors)."""
    table = torch.empty(n_terms, l_max + 1, dtype=torch.float64)
    for l in range(l_max + 1):
        value = 1.0 / math.prod(range(1, 2 * l + 2, 2))  # 1 / (2l+1)!!
        for k in range(n_terms):
            if k > 0:
                value *= y_max / (k * (2 * l + 2 * k + 1))
            table[k, l] = value
    return table


def _series_coefficients(l_max: int, x_max: float) -> torch.Tensor:
    """Power-series table ``[k, l_max+1]`` of :func:`_scaled_in_series` for ``x < x_max``."""
    n_terms = int(12 + 1.5 * x_max + 0.05 * x_max * x_max)
    return _series_table(l_max, n_terms, 0.5 * x_max * x_max)


def _scaled_in_series(x: torch.Tensor, l_max: int, x_max: float) -> torch.Tensor:
    """Power series of ``exp(-x) i_l(x)`` for ``0 <= x < x_max``, ``x [q] -> [q, l_max+1]``.

    ``i_l(x) = x^l sum_k (x^2/2)^k / (k! (2l+2k+1)!!)``, evaluated as one
    matrix product of the powers of ``y = x^2 / x_max^2`` (in ``[0, 1)``, so
    nothing overflows in single precision) with a table of coefficients.
    """
    y_max = 0.5 * x_max * x_max
    table = _series_coefficients(l_max, x_max).to(dtype=x.dtype, device=x.device)  # [k, l]
    n_terms = table.shape[0]
    y = (x * x) * (0.5 / y_max)  # [q]
    ones = torch.ones_like(x)[:, None]
    powers = torch.cat([ones, y[:, None].expand(-1, n_terms - 1)], dim=1).cumprod(dim=1)  # [q, k]
    sums = powers @ table  # [q, l]
    if l_max >= 1:
        x_powers = torch.cat([ones, x[:, None].expand(-1, l_max)], dim=1).cumprod(dim=1)  # [q, l]
        sums = sums * x_powers
    return torch.exp(-x)[:, None] * sums


def scaled_in_stack(
    x: torch.Tensor, l_max: int, threshold: float, series_table: torch.Tensor, dim: int = -1
) -> torch.Tensor:
    """Differentiable ``exp(-x) i_l(x)``, ``l = 0..l_max``, degree at ``dim`` of the result.

    The one differentiable implementation (TorchScript-compatible: exported
    potentials run exactly this code). Arguments ``x >= threshold`` use the
    closed forms of ``i_0, i_1`` and the upward recurrence
    ``i_l = i_{l-2} - (2l-1)/x i_{l-1}``; smaller ones the power series with
    coefficients ``series_table [k, l_max+1]`` (:func:`_series_coefficients`).

    Parameters
    ----------
    x : torch.Tensor
        Non-negative arguments ``[...]``.
    l_max : int
        Largest degree.
    threshold : float
        Series/recurrence switch (:func:`_series_threshold`).
    series_table : torch.Tensor
        ``[k, l_max+1]`` power-series coefficients for arguments below ``threshold``.
    dim : int
        Where the degree goes in the result.
    """
    small = x < threshold
    any_small = bool(small.any())
    # recurrence branch on safe arguments (small ones replaced by the threshold)
    xr = torch.where(small, torch.full_like(x, threshold), x) if any_small else x
    e2 = torch.exp(-2.0 * xr)
    inverse = 0.5 / xr  # 1 / (2x)
    i0 = (1.0 - e2) * inverse
    values = [i0]
    if l_max >= 1:
        values.append((1.0 + e2) * inverse - i0 / xr)
    two_inverse = 2.0 * inverse  # 1 / x
    for l in range(2, l_max + 1):
        # i_l = i_{l-2} - (2l-1)/x i_{l-1}
        values.append(torch.addcmul(values[l - 2], two_inverse, values[l - 1], value=-(2 * l - 1)))
    result = torch.stack(values, dim=-1)  # [..., l]
    if any_small:
        y_max = 0.5 * threshold * threshold
        q = x[small]  # [q]
        n_terms = series_table.shape[0]
        y = (q * q) * (0.5 / y_max)  # [q] in [0, 1)
        # Horner in y and x^l by repeated products: both cheaper to differentiate than
        # cumulative products of powers
        y_column = y[:, None]  # [q, 1]
        sums = series_table[n_terms - 1].expand(q.shape[0], l_max + 1)  # [q, l]
        for k in range(n_terms - 2, -1, -1):
            sums = torch.addcmul(series_table[k], sums, y_column)  # [q, l]
        if l_max >= 1:
            x_powers = [torch.ones_like(q)]
            for _ in range(l_max):
                x_powers.append(x_powers[-1] * q)
            sums = sums * torch.stack(x_powers, dim=1)  # [q, l]
        series = torch.exp(-q)[:, None] * sums  # [q, l]
        result = result.masked_scatter(small[..., None].expand_as(result), series)
    return result.movedim(-1, dim)


def gaussian_grid_radial(
    r: torch.Tensor,
    grid: torch.Tensor,
    transform: torch.Tensor,
    alpha: float,
    l_max: int,
    threshold: float,
    series_table: torch.Tensor,
) -> torch.Tensor:
    """GAP's ``EQUISPACED_GAUSS`` radial coefficients ``R [pair, n, l]`` (differentiable).

    ``R[p, n, l] = sum_a exp(-alpha (r_p - r_a)^2) exp(-x) i_l(x) T[a, n]`` with
    ``x = 2 alpha r_p r_a`` (see :class:`GaussianGridBasis`). TorchScript-compatible:
    the one differentiable implementation, shared by the library and exported potentials.

    Parameters
    ----------
    r : torch.Tensor
        Distances ``[pair]`` (Å).
    grid, transform : torch.Tensor
        Grid points ``r_a [a]`` (Å) and ``T [a, n]``.
    alpha : float
        ``1 / (2 sigma^2)`` (1/Å^2).
    l_max, threshold, series_table
        As :func:`scaled_in_stack`.
    """
    gauss = torch.exp(-alpha * (r[:, None] - grid[None, :]) ** 2)  # [pair, a]
    x = (2.0 * alpha * r)[:, None] * grid[None, :]  # [pair, a]
    bessel = scaled_in_stack(x, l_max, threshold, series_table, 0)  # [l, pair, a]
    rho = gauss[None, :, :] * bessel  # [l, pair, a]
    return torch.matmul(rho, transform).permute(1, 2, 0)  # [pair, n, l]


def hermite_spline(
    r: torch.Tensor, values: torch.Tensor, slopes: torch.Tensor, spacing: float
) -> torch.Tensor:
    """Cubic Hermite interpolation of a table on knots ``k * spacing`` (differentiable).

    Parameters
    ----------
    r : torch.Tensor
        Distances ``[pair]`` (Å).
    values, slopes : torch.Tensor
        ``[knot, m]`` tabulated values and ``d/dr`` (per Å).
    spacing : float
        Knot spacing (Å).

    Returns
    -------
    torch.Tensor
        ``[pair, m]``.
    """
    position = (r / spacing).clamp(0.0, values.shape[0] - 1.000001)
    index = position.detach().floor().long().clamp(max=values.shape[0] - 2)  # [pair]
    t = (position - index.to(r.dtype))[:, None]  # [pair, 1]
    y0, y1 = values[index], values[index + 1]  # [pair, m]
    d0, d1 = slopes[index] * spacing, slopes[index + 1] * spacing
    t2, t3 = t * t, t * t * t
    return (
        (2 * t3 - 3 * t2 + 1) * y0
        + (t3 - 2 * t2 + t) * d0
        + (-2 * t3 + 3 * t2) * y1
        + (t3 - t2) * d1
    )  # [pair, m]


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

    def __init__(
        self, n_max: int, l_max: int, cutoff: float, sigma: float, error_exponent: float = 10.0
    ):
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
        if torch.is_grad_enabled() and r.requires_grad or _has_tangent(r):
            return gaussian_grid_radial(r, *self.script_constants(r.dtype, r.device))
        rho, transform = self.primitive(r)
        return torch.matmul(rho, transform).permute(1, 2, 0).contiguous()  # [pair, n, l]

    def script_constants(
        self, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, float, int, float, torch.Tensor]:
        """Arguments of :func:`gaussian_grid_radial` after ``r``: grid, T, alpha, l_max, ..."""
        threshold = _series_threshold(self.l_max)
        table = _series_coefficients(self.l_max, threshold).to(dtype=dtype, device=device)
        grid = self._grid.to(dtype=dtype, device=device)
        transform = self._transform.to(dtype=dtype, device=device)
        return grid, transform, self.alpha, self.l_max, threshold, table

    def primitive(
        self, r: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rho [l, pair, a]`` and ``T [a, n]``: ``R[pair, n, l] = sum_a rho[l, pair, a] T[a, n]``.

        ``rho[l, p, a] = w_p exp(-alpha (r_p - r_a)^2) exp(-x) i_l(x)``,
        ``x = 2 alpha r_p r_a``, for the grid points ``r_a``: the overlap of a
        Gaussian at distance ``r_p`` with the grid Gaussian ``a`` times ``Y_lm``,
        times an optional per-pair ``weight`` ``w_p`` (e.g. a cutoff taper). A
        linear map after ``rho`` (element mixing) can be folded into ``T``.
        Degree-major, so that every degree is one contiguous matrix.
        """
        grid = self._grid.to(dtype=r.dtype, device=r.device)  # [a]
        transform = self._transform.to(dtype=r.dtype, device=r.device)  # [a, n]
        alpha, n_l = self.alpha, self.l_max + 1
        gauss = torch.exp(-alpha * (r[:, None] - grid[None, :]) ** 2)  # [pair, a]
        if weight is not None:
            gauss = gauss * weight[:, None]
        origin = bool(self._grid[0] == 0.0)  # x = 0 on the first grid point: i_l(0) = delta_l0
        rest = grid[1:] if origin else grid
        x = (2.0 * alpha * r)[:, None] * rest[None, :]  # [pair, a']
        inputs = [r] if weight is None else [r, weight]
        graph = (
            torch.is_grad_enabled()
            and any(t.requires_grad for t in inputs)
            or any(_has_tangent(t) for t in inputs)
        )
        if graph:
            bessel = _scaled_in(x, self.l_max, dim=0)  # [l, pair, a']
            if origin:
                first = torch.zeros(n_l, r.shape[0], 1, dtype=r.dtype, device=r.device)
                first[0] = 1.0
                bessel = torch.cat([first, bessel], dim=2)  # [l, pair, a]
            return gauss[None, :, :] * bessel, transform
        # no autograd: write into one buffer, the Gaussian factor folded into the recurrence
        rho = r.new_empty(n_l, r.shape[0], grid.shape[0])  # [l, pair, a]
        if origin:
            rho[0, :, 0] = gauss[:, 0]
            rho[1:, :, 0] = 0.0
            _scaled_in(x, self.l_max, dim=0, out=rho[:, :, 1:], scale=gauss[:, 1:])
        else:
            _scaled_in(x, self.l_max, dim=0, out=rho, scale=gauss)
        return rho, transform


def _has_tangent(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` carries a forward-mode tangent."""
    import torch.autograd.forward_ad as fwAD

    return fwAD.unpack_dual(tensor).tangent is not None


def _overlap_inner(grid: np.ndarray, alpha: float) -> np.ndarray:
    """Closed-form ``S_ab = int_0^inf r^2 g_a(r) g_b(r) dr`` of grid Gaussians."""
    ra, rb = grid[:, None], grid[None, :]
    s = ra + rb
    erf = np.vectorize(math.erf)(math.sqrt(alpha / 2.0) * s)
    return (
        math.sqrt(2.0) * alpha**1.5 * s * np.exp(-alpha * (ra**2 + rb**2))
        + alpha
        * math.sqrt(math.pi)
        * np.exp(-alpha * (ra - rb) ** 2 / 2.0)
        * (1.0 + alpha * s**2)
        * (1.0 + erf)
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
    # d/dx [exp(-x) i_l] = exp(-x) (l i_{l-1} + (l+1) i_{l+1}) / (2l+1) - exp(-x) i_l,
    # with i_{-1} -> i_1
    ls = np.arange(l_max + 1)
    lower = np.concatenate([bessel[:, :, 1:2], bessel[:, :, :l_max]], axis=2)  # i_{l-1}
    upper = bessel[:, :, 1 : l_max + 2]  # i_{l+1}
    dbessel = (ls * lower + (ls + 1) * upper) / (2 * ls + 1) - bessel[:, :, : l_max + 1]
    dkernel = (
        2.0 * alpha * (s[None, :, None] - r[:, None, None]) * kernel
        + gauss * dbessel * 2.0 * alpha * s[None, :, None]
    )  # d kernel / dr
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
        return self.values_and_derivatives(r, derivatives=False)[0]

    def values_and_derivatives(self, r: torch.Tensor, derivatives: bool = True):
        """Spline values ``R[pair, n, l]`` and, if asked, ``dR/dr`` (same shape, 1/Å)."""
        values = self._values.to(dtype=r.dtype, device=r.device)
        derivs = self._derivs.to(dtype=r.dtype, device=r.device)
        h = self._spacing
        out = hermite_spline(r, values, derivs, h)  # [pair, n*l]
        shape = (-1, self.n_max, self.l_max + 1)
        if not derivatives:
            return out.reshape(shape), None
        position = (r / h).clamp(0.0, values.shape[0] - 1.000001)
        index = position.detach().floor().long().clamp(max=values.shape[0] - 2)  # [pair]
        t = (position - index.to(r.dtype))[:, None]  # [pair, 1]
        y0, y1 = values[index], values[index + 1]  # [pair, n*l]
        d0, d1 = derivs[index] * h, derivs[index + 1] * h
        t2 = t * t
        dout = (
            (6 * t2 - 6 * t) * y0
            + (3 * t2 - 4 * t + 1) * d0
            + (-6 * t2 + 6 * t) * y1
            + (3 * t2 - 2 * t) * d1
        ) / h  # [pair, n*l]
        return out.reshape(shape), dout.reshape(shape)


def make_radial_basis(
    kind: str, *, n_max: int, l_max: int, cutoff: float, sigma: float, error_exponent: float = 10.0
):
    """Build a radial basis by name: ``"gaussian_grid"`` (GAP) or ``"gto"``."""
    if kind == "gaussian_grid":
        return GaussianGridBasis(n_max, l_max, cutoff, sigma, error_exponent)
    if kind == "gto":
        return GtoBasis(n_max, l_max, cutoff, sigma)
    raise ValueError(f"unknown radial basis {kind!r}; expected 'gaussian_grid' or 'gto'")
