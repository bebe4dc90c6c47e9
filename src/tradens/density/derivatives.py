"""Single-neighbour density terms and their derivatives with respect to the pair vector.

For a pair vector ``r`` the density contribution is ``f_c(r) R_nl(r) Y_lm(r_hat)``;
:func:`radial_and_angular` returns the radial part and its ``r``-derivative and the
harmonics and their gradient, in closed form for GAP's grid of Gaussians and for
the real harmonics (autograd, by double reverse mode, for other radial bases).
These are the inputs of the analytic SOAP Jacobians in
:mod:`tradens.gradients.soap_pairs`; tests compare them with autograd.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..kernels.compiled import gauss_grid_radial, use_compiled
from .radial import (
    GaussianGridBasis,
    _series_coefficients,
    _series_threshold,
    cosine_cutoff,
    scaled_spherical_in,
)

__all__ = [
    "harmonics_and_gradient",
    "harmonics_with_gradient",
    "radial_and_angular",
    "radial_primitive_with_derivative",
    "radial_terms",
    "radial_with_derivative",
    "rowwise_jacobian",
]


def rowwise_jacobian(function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(x)`` and ``J [p, d, ...] = df/dx`` for ``f: [p, d] -> [p, ...]`` acting row by row.

    Forward mode by double reverse mode (``u -> J^T u`` is linear in ``u``;
    differentiating it again gives ``J v``). This works for every op with a
    double backward and avoids the slow first use of forward-mode AD
    decompositions (several seconds to import ``torch._dynamo``).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = function(x)  # [p, ...]
        u = torch.zeros_like(y, requires_grad=True)
        # (y * u).sum() rather than grad_outputs=u: the latter imports sympy on first use
        (vjp,) = torch.autograd.grad((y * u).sum(), x, create_graph=True)  # [p, d]
        columns = []
        for a in range(x.shape[1]):
            (column,) = torch.autograd.grad(vjp[:, a].sum(), u, retain_graph=a + 1 < x.shape[1])
            columns.append(column)  # [p, ...]
    return y.detach(), torch.stack(columns, dim=1)


def radial_with_derivative(soap, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tapered radial basis ``f_c R [pair, N, l]`` and its derivative in ``r``.

    For GAP's grid of Gaussians, ``R_nl = sum_a e^{-alpha (r - r_a)^2} s_l(x_a) T_an``
    with ``s_l(x) = e^{-x} i_l(x)``, ``x_a = 2 alpha r r_a``, and
    ``s_l' = s_{l+1} + (l/x) s_l - s_l`` gives the closed form
    ``d/dr [e^{-alpha (r-r_a)^2} s_l] = e^{-alpha (r-r_a)^2} [(-2 alpha (r - r_a) - 2 alpha r_a + l/r) s_l
    + 2 alpha r_a s_{l+1}]`` (written out because differentiating the series
    branch of ``s_l`` twice by autograd is ~10x slower). Other bases use
    autograd.
    """
    h = soap.hypers
    taper = cosine_cutoff(r, h.cutoff.radius, h.cutoff.width)  # [p]
    width = h.cutoff.width
    if width > 0:
        t = ((r - h.cutoff.radius + width) / width).clamp(0.0, 1.0)
        d_taper = (
            -0.5 * math.pi / width * torch.sin(math.pi * t) * (r < h.cutoff.radius).to(r.dtype)
        )
    else:
        d_taper = torch.zeros_like(r)
    basis = soap.radial_basis
    if (
        isinstance(basis, GaussianGridBasis)
        and hasattr(basis, "_grid")
        and hasattr(basis, "_transform")
    ):
        grid = basis._grid.to(dtype=r.dtype, device=r.device)  # [a]
        transform = basis._transform.to(dtype=r.dtype, device=r.device)  # [a, n]
        alpha, l_max = basis.alpha, basis.l_max
        x = 2.0 * alpha * r[:, None] * grid[None, :]  # [p, a]
        gauss = torch.exp(-alpha * (grid[None, :] - r[:, None]) ** 2)  # [p, a]
        bessel = scaled_spherical_in(x, l_max + 1)  # [p, a, l+2]
        degrees = torch.arange(l_max + 1, dtype=r.dtype, device=r.device)
        slope = (-2.0 * alpha * r[:, None])[:, :, None] + degrees / r[:, None, None]  # [p, 1, l]
        d_rho = gauss[:, :, None] * (
            slope * bessel[:, :, :-1] + 2.0 * alpha * grid[None, :, None] * bessel[:, :, 1:]
        )  # [p, a, l]
        radial = torch.einsum(
            "pal,an->pnl", gauss[:, :, None] * bessel[:, :, :-1], transform
        )  # [p, n, l]
        d_radial = torch.einsum("pal,an->pnl", d_rho, transform)
    else:
        radial, d_radial = rowwise_jacobian(lambda q: basis(q[:, 0]), r[:, None])
        d_radial = d_radial[:, 0]
    return radial * taper[:, None, None], d_radial * taper[:, None, None] + radial * d_taper[
        :, None, None
    ]


def harmonics_with_gradient(vectors: torch.Tensor, l_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real spherical harmonics ``[pair, lm]`` (as :func:`tradens.density.angular.spherical_harmonics`)
    and their gradients with respect to the vectors ``[pair, 3, lm]``.

    With ``u = v/|v|``, ``Y = N_lm Q_l^|m|(u_z) {C_m, S_m}(u_x, u_y)`` where
    ``Q_l^m = d^m P_l / dz^m`` (so ``dQ_l^m/dz = Q_l^{m+1}``) and ``C_m + i S_m =
    (u_x + i u_y)^m`` (so ``d/du_x = m (C_{m-1}, S_{m-1})``,
    ``d/du_y = m (-S_{m-1}, C_{m-1})``); then ``dY/dv = (1 - u u^T) dY/du / |v|``.
    Written out because autograd needs ~40x the time of the values here.
    """
    norm = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)  # [p, 1]
    unit = vectors / norm
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
    cos_m, sin_m = [torch.ones_like(x)], [torch.zeros_like(x)]
    for m in range(1, l_max + 1):
        cos_m.append(x * cos_m[-1] - y * sin_m[-1])
        sin_m.append(x * sin_m[-1] + y * cos_m[-2])
    q = [[None] * (l + 2) for l in range(l_max + 1)]  # q[l][m], with q[l][l+1] = 0
    double_factorial = 1.0
    for m in range(l_max + 1):
        if m > 0:
            double_factorial *= 2 * m - 1
        q[m][m] = torch.full_like(z, double_factorial)
        if m + 1 <= l_max:
            q[m + 1][m] = (2 * m + 1) * z * q[m][m]
        for l in range(m + 2, l_max + 1):
            q[l][m] = ((2 * l - 1) * z * q[l - 1][m] - (l + m - 1) * q[l - 2][m]) / (l - m)
    zero = torch.zeros_like(z)
    for l in range(l_max + 1):
        q[l][l + 1] = zero
    values, grads = [], []
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            k = abs(m)
            scale = math.sqrt(
                (2 * l + 1) / (4 * math.pi) * math.factorial(l - k) / math.factorial(l + k)
            )
            if k > 0:
                scale *= math.sqrt(2.0)
            if m == 0:
                values.append(scale * q[l][0])
                grads.append((zero, zero, scale * q[l][1]))
                continue
            azimuth = sin_m[k] if m < 0 else cos_m[k]
            # d(azimuth)/du_x, d(azimuth)/du_y
            if m < 0:
                d_x, d_y = k * sin_m[k - 1], k * cos_m[k - 1]
            else:
                d_x, d_y = k * cos_m[k - 1], -k * sin_m[k - 1]
            values.append(scale * q[l][k] * azimuth)
            grads.append(
                (scale * q[l][k] * d_x, scale * q[l][k] * d_y, scale * q[l][k + 1] * azimuth)
            )
    harmonics = torch.stack(values, dim=-1)  # [p, lm]
    d_unit = torch.stack([torch.stack(g, dim=-1) for g in grads], dim=-1)  # [p, 3, lm]
    radial_part = torch.einsum("pa,pal->pl", unit, d_unit)  # [p, lm]
    return harmonics, (d_unit - unit[:, :, None] * radial_part[:, None, :]) / norm[:, :, None]


def radial_and_angular(soap, vectors: torch.Tensor):
    """``R, R' [pair, N, l_max+1]`` (taper included) and ``Y [pair, lm]``, ``dY/dr [pair, 3, lm]``."""
    r = torch.linalg.vector_norm(vectors, dim=1)  # [p]
    radial, d_radial = radial_with_derivative(soap, r)
    harmonics, d_harmonics = harmonics_with_gradient(vectors, soap.hypers.l_max)
    return radial, d_radial, harmonics, d_harmonics


# ----------------------------------------------------------------------------- fast kernels


@lru_cache(maxsize=8)
def _solid_gradient_matrices(l_max: int) -> tuple[torch.Tensor, ...]:
    """``C_l [2l-1, 3, 2l+1]`` (float64, CPU) with ``d S_lm / d r_a = sum_m' C_l[m', a, m] S_{l-1,m'}``.

    ``S_lm(r) = |r|^l Y_lm(r_hat)`` is a homogeneous harmonic polynomial of
    degree ``l``; its gradient is one of degree ``l - 1``, hence a linear
    combination of the ``S_{l-1,m'}``. The coefficients are fitted (least
    squares, exact up to rounding) on random unit vectors from
    :func:`harmonics_with_gradient`, using ``grad S = grad Y + l Y r_hat`` on
    the unit sphere.
    """
    generator = torch.Generator().manual_seed(12345)
    points = torch.randn(8 * (2 * l_max + 1) + 64, 3, dtype=torch.float64, generator=generator)
    points = points / torch.linalg.vector_norm(points, dim=1, keepdim=True)  # [q, 3]
    values, gradients = harmonics_with_gradient(points, l_max)  # [q, lm], [q, 3, lm]
    out = [torch.zeros(0, 3, 1, dtype=torch.float64)]
    for l in range(1, l_max + 1):
        block = slice(l * l, (l + 1) * (l + 1))
        solid = (
            gradients[:, :, block] + l * points[:, :, None] * values[:, None, block]
        )  # [q, 3, 2l+1]
        lower = values[:, (l - 1) * (l - 1) : l * l]  # [q, 2l-1]
        target = solid.reshape(points.shape[0], -1)  # [q, 3 (2l+1)]
        fit = torch.linalg.lstsq(lower, target).solution  # [2l-1, 3 (2l+1)]
        fit[fit.abs() < 1e-12] = 0.0
        out.append(fit.reshape(2 * l - 1, 3, 2 * l + 1))
    return tuple(out)


def harmonics_and_gradient(vectors: torch.Tensor, l_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as :func:`harmonics_with_gradient` (``Y [pair, lm]``, ``dY/dr [pair, 3, lm]``), faster.

    Uses ``dY_lm/dr_a = (sum_m' C_l[m', a, m] Y_{l-1,m'} - l rhat_a Y_lm) / |r|``
    (:func:`_solid_gradient_matrices`): one matrix product on top of the values
    of :func:`tradens.density.angular.spherical_harmonics`.
    """
    from .angular import spherical_harmonics

    n_pairs, n_lm = vectors.shape[0], (l_max + 1) ** 2
    norm = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)  # [p, 1]
    unit = vectors / norm  # [p, 3]
    harmonics = spherical_harmonics(vectors, l_max)  # [p, lm]
    if l_max == 0:
        return harmonics, vectors.new_zeros(n_pairs, 3, 1)
    matrix, degree = _gradient_operator(
        l_max, vectors.dtype, vectors.device
    )  # [l_max^2, 3 lm], [lm]
    gradient = torch.mm(harmonics[:, : l_max * l_max], matrix).view(n_pairs, 3, n_lm)  # [p, 3, lm]
    gradient.addcmul_(unit[:, :, None], (harmonics * degree)[:, None, :], value=-1.0)
    return harmonics, gradient.div_(norm[:, :, None])


_OPERATORS: dict = {}


def _gradient_operator(l_max: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``[l_max^2, 3 (l_max+1)^2]`` block matrix of the ``C_l`` and the degree of every ``lm`` (cached)."""
    key = (l_max, dtype, str(device))
    if key not in _OPERATORS:
        n_lm = (l_max + 1) ** 2
        matrix = torch.zeros(l_max * l_max, 3, n_lm, dtype=torch.float64)
        for l, c in enumerate(_solid_gradient_matrices(l_max)):
            if l > 0:
                matrix[(l - 1) * (l - 1) : l * l, :, l * l : (l + 1) * (l + 1)] = c
        degree = torch.tensor(
            [l for l in range(l_max + 1) for _ in range(2 * l + 1)], dtype=torch.float64
        )
        _OPERATORS[key] = (
            matrix.reshape(l_max * l_max, 3 * n_lm).to(dtype=dtype, device=device),
            degree.to(dtype=dtype, device=device),
        )
    return _OPERATORS[key]


def _taper_with_derivative(soap, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GAP's cosine taper of the pair distances and its ``r``-derivative (1/Å), ``[p]`` each."""
    h = soap.hypers
    taper = cosine_cutoff(r, h.cutoff.radius, h.cutoff.width)  # [p]
    width = h.cutoff.width
    if width > 0:
        t = ((r - h.cutoff.radius + width) / width).clamp(0.0, 1.0)
        d_taper = (
            -0.5 * math.pi / width * torch.sin(math.pi * t) * (r < h.cutoff.radius).to(r.dtype)
        )
    else:
        d_taper = torch.zeros_like(r)
    return taper, d_taper


def mixed_radial_primitive(
    soap,
    r: torch.Tensor,
    species: torch.Tensor,
    blocks: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``[p, 2L, K]``: the Gaussian-grid primitive and its derivative mixed per species in one compiled pass.

    ``out[p] = rho[p] @ blocks[species[p]]`` with ``rho`` of
    :func:`radial_primitive_with_derivative` and ``blocks [S, a, K]`` (grid
    transform and mixing folded together). None where the compiled kernel
    does not apply (another radial basis, autograd, not the CPU).
    """
    basis = soap.radial_basis
    if not (
        isinstance(basis, GaussianGridBasis) and hasattr(basis, "_grid") and use_compiled(r, blocks)
    ):
        return None
    taper, d_taper = _taper_with_derivative(soap, r)
    n_l = basis.l_max + 1
    if out is None:
        out = r.new_empty(r.shape[0], 2 * n_l, blocks.shape[2])
    threshold = _series_threshold(n_l)
    gauss_grid_radial(
        r,
        basis._grid.to(dtype=r.dtype),
        basis.alpha,
        threshold,
        _series_coefficients(n_l, threshold),
        out,
        taper=taper,
        d_taper=d_taper,
        species=species,
        blocks=blocks,
    )
    return out


def radial_primitive_with_derivative(soap, r: torch.Tensor):
    """Tapered radial primitive of GAP's Gaussian grid and its ``r``-derivative, pair-major.

    Returns ``rho [pair, 2L, a]`` (``L = l_max + 1``; the values, then the
    ``r``-derivatives) and ``T [a, n]`` with ``f_c R_nl = sum_a rho[p, l, a]
    T[a, n]`` and ``d(f_c R_nl)/dr = sum_a rho[p, L + l, a] T[a, n]`` (see
    :func:`radial_with_derivative`), or ``None`` when the radial basis is not a
    :class:`~tradens.density.radial.GaussianGridBasis`. A linear map after ``T``
    (mixing) can be folded into it.
    """
    basis = soap.radial_basis
    if not (
        isinstance(basis, GaussianGridBasis)
        and hasattr(basis, "_grid")
        and hasattr(basis, "_transform")
    ):
        return None
    taper, d_taper = _taper_with_derivative(soap, r)  # [p], [p]
    grid = basis._grid.to(dtype=r.dtype, device=r.device)  # [a]
    transform = basis._transform.to(dtype=r.dtype, device=r.device)  # [a, n]
    alpha, l_max = basis.alpha, basis.l_max
    n_l = l_max + 1
    if use_compiled(r):
        out = r.new_empty(r.shape[0], 2 * n_l, grid.shape[0])  # [p, 2L, a]
        threshold = _series_threshold(n_l)  # as scaled_spherical_in(x, n_l) below
        gauss_grid_radial(
            r,
            grid,
            alpha,
            threshold,
            _series_coefficients(n_l, threshold),
            out,
            taper=taper,
            d_taper=d_taper,
        )
        return out, transform
    gauss = torch.exp(-alpha * (grid[None, :] - r[:, None]) ** 2)  # [p, a]
    origin = bool(basis._grid[0] == 0.0)  # x = 0 at the first grid point: s_l(0) = delta_l0
    rest = grid[1:] if origin else grid
    x = (2.0 * alpha * r)[:, None] * rest[None, :]  # [p, a']
    bessel = scaled_spherical_in(x, n_l).transpose(1, 2)  # [p, l+2, a']
    if origin:
        first = r.new_zeros(r.shape[0], n_l + 1, 1)
        first[:, 0] = 1.0
        bessel = torch.cat([first, bessel], dim=2)  # [p, l+2, a]
    degrees = torch.arange(n_l, dtype=r.dtype, device=r.device)
    slope = degrees[None, :] / r[:, None] - (2.0 * alpha) * r[:, None]  # [p, l]
    out = r.new_empty(r.shape[0], 2 * n_l, grid.shape[0])  # [p, 2L, a]
    rho, d_rho = out[:, :n_l], out[:, n_l:]
    torch.mul(bessel[:, 1:], (2.0 * alpha) * grid, out=d_rho)
    d_rho.addcmul_(bessel[:, :-1], slope[:, :, None])
    d_rho.mul_((gauss * taper[:, None])[:, None, :])
    torch.mul(bessel[:, :-1], gauss[:, None, :], out=rho)
    d_rho.addcmul_(rho, d_taper[:, None, None])
    rho.mul_(taper[:, None, None])
    return out, transform


def _scaled_bessel_degree_major(x: torch.Tensor, n: int, scale: torch.Tensor) -> torch.Tensor:
    """``scale * exp(-x) i_l(x)`` for ``l = 0..n``, degree first: ``[n+1, *x.shape]``.

    The upward recurrence of :func:`tradens.density.radial.scaled_spherical_in` written
    into one buffer, with ``scale`` folded into ``i_0`` and ``i_1`` (the
    recurrence is linear); arguments below its series threshold are
    overwritten by :func:`~tradens.density.radial.scaled_spherical_in` itself.
    """
    threshold = max(1.0, 1.5 * n)  # the series threshold of tradens.density.radial
    small = x < threshold
    any_small = bool(small.any())
    xr = torch.where(small, torch.full_like(x, threshold), x) if any_small else x
    out = x.new_empty((n + 1,) + tuple(x.shape))
    e2 = torch.exp(-2.0 * xr).mul_(scale)
    inverse = 0.5 / xr  # 1 / (2x)
    torch.mul(scale - e2, inverse, out=out[0])
    if n >= 1:
        torch.sub((scale + e2).mul_(inverse), out[0] / xr, out=out[1])
    two_inverse = inverse.mul_(2.0)  # 1 / x
    for l in range(2, n + 1):
        torch.addcmul(out[l - 2], two_inverse, out[l - 1], value=-(2 * l - 1), out=out[l])
    if any_small:
        where = small.nonzero(as_tuple=True)
        series = scaled_spherical_in(x[where], n) * scale[where][:, None]  # [q, n+1]
        out.movedim(0, -1).index_put_(where, series)
    return out


def radial_terms(soap, r: torch.Tensor, *, pair_major: bool = False):
    """Tapered radial terms and their ``r``-derivatives: ``[L, pair, 2, c]`` (``[pair, L, 2, c]``).

    ``[l, p, 0, :]`` holds the values and ``[l, p, 1, :]`` the derivatives in
    ``r`` (1/Å) of ``rho`` (GAP's Gaussian grid: ``c`` grid points, ``f_c R =
    rho T`` with the returned ``T [a, n]``) or of ``f_c R`` itself (``c = N``,
    ``T`` None; closed form for the GTO splines, autograd otherwise). Same
    numbers as :func:`radial_primitive_with_derivative`. Degree-major by
    default; ``pair_major=True`` returns the contiguous ``[pair, L, 2, c]``
    (one matrix product per neighbour species).
    """
    h = soap.hypers
    n_l = h.l_max + 1
    taper = cosine_cutoff(r, h.cutoff.radius, h.cutoff.width)  # [p]
    width = h.cutoff.width
    if width > 0:
        t = ((r - h.cutoff.radius + width) / width).clamp(0.0, 1.0)
        d_taper = (
            -0.5 * math.pi / width * torch.sin(math.pi * t) * (r < h.cutoff.radius).to(r.dtype)
        )
    else:
        d_taper = torch.zeros_like(r)
    basis = soap.radial_basis
    if (
        isinstance(basis, GaussianGridBasis)
        and hasattr(basis, "_grid")
        and hasattr(basis, "_transform")
    ):
        grid = basis._grid.to(dtype=r.dtype, device=r.device)  # [a]
        transform = basis._transform.to(dtype=r.dtype, device=r.device)  # [a, n]
        alpha = basis.alpha
        gauss = torch.exp(-alpha * (grid[None, :] - r[:, None]) ** 2)  # [p, a]
        origin = bool(basis._grid[0] == 0.0)  # x = 0 at the first grid point: s_l(0) = delta_l0
        rest = slice(1, None) if origin else slice(None)
        x = (2.0 * alpha * r)[:, None] * grid[None, rest]  # [p, a']
        bessel = r.new_empty(n_l + 1, r.shape[0], grid.shape[0])  # [l+1, p, a]: gauss s_l
        bessel[:, :, rest] = _scaled_bessel_degree_major(x, n_l, gauss[:, rest])
        if origin:
            bessel[:, :, 0] = 0.0
            bessel[0, :, 0] = gauss[:, 0]
        if pair_major:
            buffer = r.new_empty(r.shape[0], n_l, 2, grid.shape[0])  # [p, L, 2, a]
            out = buffer.permute(1, 0, 2, 3)  # [L, p, 2, a] view
        else:
            buffer = out = r.new_empty(n_l, r.shape[0], 2, grid.shape[0])  # [L, p, 2, a]
        degrees = torch.arange(n_l, dtype=r.dtype, device=r.device)
        slope = degrees[:, None] / r[None, :] - (2.0 * alpha) * r[None, :]  # [L, p]
        d_rho = out[:, :, 1]
        torch.mul(bessel[1:], (2.0 * alpha) * grid, out=d_rho)
        d_rho.addcmul_(bessel[:-1], slope[:, :, None])
        d_rho.mul_(taper[None, :, None]).addcmul_(bessel[:-1], d_taper[None, :, None])
        torch.mul(bessel[:-1], taper[None, :, None], out=out[:, :, 0])
        return buffer, transform
    if hasattr(basis, "values_and_derivatives"):  # GTO splines: closed-form derivative
        radial, d_radial = basis.values_and_derivatives(r)  # [p, N, L]
        d_radial = d_radial * taper[:, None, None] + radial * d_taper[:, None, None]
        radial = radial * taper[:, None, None]
    else:
        radial, d_radial = radial_with_derivative(soap, r)  # [p, N, L]
    both = torch.stack([radial, d_radial], dim=0)  # [2, p, N, L]
    if pair_major:
        return both.permute(1, 3, 0, 2).contiguous(), None  # [p, L, 2, N]
    return both.permute(3, 1, 0, 2).contiguous(), None  # [L, p, 2, N]
