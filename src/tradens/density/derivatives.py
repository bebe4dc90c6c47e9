"""Per-pair density terms and their ``r``-derivatives: written once, used by every derivative path.

For a pair vector ``r`` (length ``r``, unit vector ``rhat``) the density term is
``f_c(r) R_nl(r) Y_lm(rhat)``, mixed over the neighbour's species by
``W[s_j]`` where a representation mixes channels. The derivative paths of
:mod:`tradens.gradients` need exactly these pieces, and take them from here:

* :func:`radial_terms` — the tapered radial values and their ``r``-derivatives,
  ``[pair, 2, L, c]`` (or degree-major ``[L, pair, 2, c]``): closed form for
  GAP's Gaussian grid (``c`` grid points, with the transform ``T [a, n]``) and
  for the GTO splines, double-reverse autograd for any other basis. This is
  the one torch implementation; :func:`radial_with_derivative` applies ``T``.
  :func:`radial_primitive` is the Gaussian-grid primitive with its one
  compiled backend (:func:`tradens.kernels.compiled.gauss_grid_radial`).
* :func:`mix_by_species` and :class:`MixedRadial` — ``Q = W[s_p]^T (f_c R)``
  and ``Q'`` per pair, one matrix product per neighbour species (or, compiled,
  mixed inside the radial kernel).
* :func:`harmonics_with_gradient` (explicit recurrences, the reference) and
  :func:`harmonics_and_gradient` (one matrix product on the values through the
  solid-harmonic gradient matrices of :func:`solid_gradient_matrices`);
  :func:`contract_harmonic_gradients` contracts ``dY/dr`` with per-pair
  coefficients without forming it (the forces path).

The cosine taper and its derivative live in :mod:`tradens.density.radial`
(:func:`~tradens.density.radial.taper_with_derivative`). Tests compare every
piece with autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch

from ..kernels.compiled import gauss_grid_radial, use_compiled
from .angular import spherical_harmonics
from .radial import (
    GaussianGridBasis,
    _scaled_in,
    _series_coefficients,
    _series_threshold,
    taper_with_derivative,
)

__all__ = [
    "MixedRadial",
    "contract_harmonic_gradients",
    "harmonics_and_gradient",
    "harmonics_with_gradient",
    "mix_by_species",
    "radial_primitive",
    "radial_terms",
    "radial_with_derivative",
    "rowwise_jacobian",
    "solid_gradient_matrices",
]


def rowwise_jacobian(
    function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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


# ----------------------------------------------------------------------------- radial terms


def _is_grid(basis: object) -> bool:
    return (
        isinstance(basis, GaussianGridBasis)
        and hasattr(basis, "_grid")
        and hasattr(basis, "_transform")
    )


def radial_terms(
    basis, r: torch.Tensor, cutoff: float, width: float, *, layout: str = "pair"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tapered radial terms and their ``r``-derivatives, with the grid transform.

    Parameters
    ----------
    basis : radial basis
        :class:`~tradens.density.radial.GaussianGridBasis`, ``GtoBasis`` or any
        callable ``r [p] -> R [p, N, L]``.
    r : torch.Tensor
        Pair distances ``[p]`` (Å), positive.
    cutoff, width : float
        Cutoff radius and taper width (Å).
    layout : {"pair", "degree"}
        ``"pair"``: ``[p, 2, L, c]``; ``"degree"``: ``[L, p, 2, c]`` (one
        contiguous matrix per degree).

    Returns
    -------
    terms : torch.Tensor
        Index ``0`` of the ``2`` axis holds the values, ``1`` the derivatives in
        ``r`` (1/Å), of ``rho`` (Gaussian grid: ``c`` grid points, ``f_c R = rho
        T``) or of ``f_c R`` itself (``c = N``).
    transform : torch.Tensor or None
        ``T [a, N]`` for the Gaussian grid, else None.

    Notes
    -----
    For GAP's grid, ``rho_l = e^{-alpha (r - r_a)^2} s_l(x_a)`` with ``s_l(x) =
    e^{-x} i_l(x)``, ``x_a = 2 alpha r r_a``; ``s_l' = s_{l+1} + (l/x) s_l - s_l``
    gives ``rho_l' = e^{-alpha (r-r_a)^2} [(l/r - 2 alpha r) s_l + 2 alpha r_a
    s_{l+1}]`` (differentiating the series branch of ``s_l`` twice by autograd
    is ~10x slower). The GTO splines have their own derivative; other bases
    use :func:`rowwise_jacobian`.
    """
    if layout not in ("pair", "degree"):
        raise ValueError(f"layout must be 'pair' or 'degree', got {layout!r}")
    taper, d_taper = taper_with_derivative(r, cutoff, width)  # [p], [p]
    if _is_grid(basis):
        return _grid_terms(basis, r, taper, d_taper, layout)
    if hasattr(basis, "values_and_derivatives"):  # GTO splines: closed-form derivative
        radial, d_radial = basis.values_and_derivatives(r)  # [p, N, L]
    else:
        radial, d_radial = rowwise_jacobian(lambda q: basis(q[:, 0]), r[:, None])
        d_radial = d_radial[:, 0]  # [p, N, L]
    d_radial = d_radial * taper[:, None, None] + radial * d_taper[:, None, None]
    radial = radial * taper[:, None, None]
    if layout == "pair":
        return torch.stack([radial, d_radial], dim=1).transpose(2, 3).contiguous(), None
    return torch.stack([radial, d_radial], dim=0).permute(3, 1, 0, 2).contiguous(), None


def _grid_terms(
    basis, r: torch.Tensor, taper: torch.Tensor, d_taper: torch.Tensor, layout: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`radial_terms` of a Gaussian grid: tapered ``rho`` with its derivative, and ``T``.

    ``taper [p]`` and ``d_taper [p]`` are the cutoff function and its derivative (1/Å).
    """
    n_l = basis.l_max + 1
    grid = basis._grid.to(dtype=r.dtype, device=r.device)  # [a]
    transform = basis._transform.to(dtype=r.dtype, device=r.device)  # [a, n]
    alpha = basis.alpha
    gauss = torch.exp(-alpha * (grid[None, :] - r[:, None]) ** 2)  # [p, a]
    origin = bool(basis._grid[0] == 0.0)  # x = 0 at the first grid point: s_l(0) = delta_l0
    rest = slice(1, None) if origin else slice(None)
    x = (2.0 * alpha * r)[:, None] * grid[None, rest]  # [p, a']
    bessel = r.new_empty(n_l + 1, r.shape[0], grid.shape[0])  # [l+1, p, a]: gauss s_l
    _scaled_in(x, n_l, dim=0, out=bessel[:, :, rest], scale=gauss[:, rest].contiguous())
    if origin:
        bessel[:, :, 0] = 0.0
        bessel[0, :, 0] = gauss[:, 0]
    if layout == "pair":
        buffer = r.new_empty(r.shape[0], 2, n_l, grid.shape[0])  # [p, 2, L, a]
        out = buffer.permute(2, 0, 1, 3)  # [L, p, 2, a] view
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


def radial_with_derivative(
    basis, r: torch.Tensor, cutoff: float, width: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tapered radial basis ``f_c R [pair, N, L]`` and its ``r``-derivative (1/Å).

    :func:`radial_terms` with the grid transform applied.
    """
    terms, transform = radial_terms(basis, r, cutoff, width)  # [p, 2, L, c]
    if transform is not None:
        terms = torch.matmul(terms, transform)  # [p, 2, L, N]
    return terms[:, 0].transpose(1, 2), terms[:, 1].transpose(1, 2)


def radial_primitive(
    basis, r: torch.Tensor, cutoff: float, width: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Tapered Gaussian-grid primitive ``rho [pair, 2L, a]`` with its derivative, ``T [a, n]``.

    Rows ``0..L-1`` hold ``rho`` and rows ``L..2L-1`` its derivative (as
    :func:`radial_terms`, ``layout="pair"``), by the compiled kernel where it
    serves (CPU, no autograd) and by :func:`radial_terms` otherwise. None
    when the basis is not a :class:`~tradens.density.radial.GaussianGridBasis`.
    A linear map after ``T`` (mixing) can be folded into it.
    """
    if not _is_grid(basis):
        return None
    n_l = basis.l_max + 1
    taper, d_taper = taper_with_derivative(r, cutoff, width)  # [p], [p]
    if use_compiled(r):
        grid = basis._grid.to(dtype=r.dtype)  # [a]
        out = r.new_empty(r.shape[0], 2 * n_l, grid.shape[0])  # [p, 2L, a]
        threshold = _series_threshold(n_l)  # as the recurrence of radial_terms
        gauss_grid_radial(
            r,
            grid,
            basis.alpha,
            threshold,
            _series_coefficients(n_l, threshold),
            out,
            taper=taper,
            d_taper=d_taper,
        )
        return out, basis._transform.to(dtype=r.dtype)
    terms, transform = _grid_terms(basis, r, taper, d_taper, "pair")  # [p, 2, L, a], [a, n]
    return terms.view(r.shape[0], 2 * n_l, -1), transform


def mix_by_species(
    terms: torch.Tensor,
    species: torch.Tensor,
    blocks: torch.Tensor,
    *,
    presorted: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out[p] = terms[p] @ blocks[species[p]]``: mixing by neighbour species, ``[p, m, K]``.

    Parameters
    ----------
    terms : torch.Tensor
        ``[p, m, c]`` per-pair terms (any ``m`` rows per pair).
    species : torch.Tensor
        Neighbour species ``[p]`` (``0 <= s < S``).
    blocks : torch.Tensor
        ``[S, c, K]`` mixing matrix of each species.
    presorted : bool
        ``species`` is non-decreasing (no reordering; ``out`` may be given).
    out : torch.Tensor, optional
        Contiguous ``[p, m, K]`` written in place (``presorted`` only).

    Pairs are grouped by species so that each species is one matrix product
    (a batch of tiny per-pair products is far slower). No autograd.
    """
    if out is not None and not presorted:
        raise ValueError("out= needs presorted=True")
    n_pairs, n_m, n_c = terms.shape
    n_k = blocks.shape[2]
    counts = torch.bincount(species, minlength=blocks.shape[0]).tolist()
    if presorted:
        by_species = terms.reshape(n_pairs * n_m, n_c)
    else:
        order = torch.argsort(species, stable=True)
        by_species = terms.index_select(0, order).reshape(n_pairs * n_m, n_c)
    if out is not None:
        product = out.view(n_pairs * n_m, n_k)
    else:
        product = terms.new_empty(n_pairs * n_m, n_k)  # [p m, K]
    start = 0
    for s, count in enumerate(counts):
        if count:
            rows = slice(start * n_m, (start + count) * n_m)
            torch.mm(by_species[rows], blocks[s], out=product[rows])
            start += count
    if presorted:
        return product.view(n_pairs, n_m, n_k)
    result = torch.empty_like(product).view(n_pairs, n_m, n_k)
    result.index_copy_(0, order, product.view(n_pairs, n_m, n_k))  # (index_put is ~5x slower)
    return result  # [p, m, K]


class MixedRadial:
    """Mixed radial terms ``[pair, 2L, K]``: ``Q = W[s]^T f_c R`` (rows ``0..L-1``), then ``Q'``.

    Parameters
    ----------
    basis : radial basis
        As for :func:`radial_terms`.
    cutoff, width : float
        Cutoff radius and taper width (Å).
    weights : torch.Tensor
        Mixing matrix ``[S*N, K]`` (rows species-major).
    n_species : int
        ``S``.

    The grid transform is folded into the mixing (``[S, a, K]``); on the CPU
    the compiled radial kernel mixes each pair in the same pass.
    """

    def __init__(self, basis, cutoff: float, width: float, weights: torch.Tensor, n_species: int):
        self.basis, self.cutoff, self.width = basis, cutoff, width
        self.n_species, self.n_l = n_species, basis.l_max + 1
        n_max = weights.shape[0] // n_species
        blocks = weights.reshape(n_species, n_max, -1)  # [S, N, K]
        self.grid = _is_grid(basis)
        if self.grid:  # fold the grid transform into the mixing: [S, a, K]
            transform = basis._transform.to(dtype=weights.dtype, device=weights.device)
            blocks = torch.matmul(transform, blocks)
        self.blocks = blocks.contiguous()

    def __call__(
        self,
        r: torch.Tensor,
        species: torch.Tensor,
        presorted: bool = False,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[p, 2L, K]`` for pair distances ``r [p]`` (Å) of neighbour species ``species [p]``.

        ``presorted=True`` promises non-decreasing ``species`` (no reordering);
        then ``out`` (contiguous, ``p * 2L * K`` elements) receives the result.
        """
        n_l, n_k = self.n_l, self.blocks.shape[2]
        if out is not None and not presorted:
            raise ValueError("out= needs presorted=True")
        target = None if out is None else out.view(r.shape[0], 2 * n_l, n_k)
        if self.grid and use_compiled(r, self.blocks):  # mixed per pair in the radial kernel
            taper, d_taper = taper_with_derivative(r, self.cutoff, self.width)
            if target is None:
                target = r.new_empty(r.shape[0], 2 * n_l, n_k)
            threshold = _series_threshold(n_l)
            gauss_grid_radial(
                r,
                self.basis._grid.to(dtype=r.dtype),
                self.basis.alpha,
                threshold,
                _series_coefficients(n_l, threshold),
                target,
                taper=taper,
                d_taper=d_taper,
                species=species,
                blocks=self.blocks,
            )
            return target
        terms, _ = radial_terms(self.basis, r, self.cutoff, self.width)  # [p, 2, L, c]
        terms = terms.view(r.shape[0], 2 * n_l, -1)  # [p, 2L, c]
        return mix_by_species(terms, species, self.blocks, presorted=presorted, out=target)


# ----------------------------------------------------------------------------- harmonics


def harmonics_with_gradient(vectors: torch.Tensor, l_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real spherical harmonics ``[pair, lm]`` and their gradients ``[pair, 3, lm]`` (1/Å).

    With ``u = v/|v|``, ``Y = N_lm Q_l^|m|(u_z) {C_m, S_m}(u_x, u_y)`` where
    ``Q_l^m = d^m P_l / dz^m`` (so ``dQ_l^m/dz = Q_l^{m+1}``) and ``C_m + i S_m =
    (u_x + i u_y)^m`` (so ``d/du_x = m (C_{m-1}, S_{m-1})``,
    ``d/du_y = m (-S_{m-1}, C_{m-1})``); then ``dY/dv = (1 - u u^T) dY/du / |v|``.
    The reference of :func:`harmonics_and_gradient` and the source of
    :func:`solid_gradient_matrices` (autograd needs ~40x the time of the values).
    """
    norm = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)  # [p, 1]
    unit = vectors / norm
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
    cos_m, sin_m = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(1, l_max + 1):
        cos_m.append(x * cos_m[-1] - y * sin_m[-1])
        sin_m.append(x * sin_m[-1] + y * cos_m[-2])
    q: list[list] = [[None] * (l + 2) for l in range(l_max + 1)]  # q[l][m], q[l][l+1] = 0
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


@lru_cache(maxsize=8)
def solid_gradient_matrices(l_max: int) -> tuple[torch.Tensor, ...]:
    """Solid-harmonic gradient matrices ``C_l [2l-1, 3, 2l+1]`` (float64, CPU).

    ``d S_lm / d r_a = sum_m' C_l[m', a, m] S_{l-1,m'}``.

    ``S_lm(r) = |r|^l Y_lm(r_hat)`` is a homogeneous harmonic polynomial of
    degree ``l``; its gradient is one of degree ``l - 1``, hence a linear
    combination of the ``S_{l-1,m'}``. The coefficients are fitted (least
    squares, exact up to rounding) on random unit vectors from
    :func:`harmonics_with_gradient`, using ``grad S = grad Y + l Y r_hat`` on
    the unit sphere. Entry ``0`` is an empty ``[0, 3, 1]`` placeholder.
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


_OPERATORS: dict = {}


def _gradient_operator(
    l_max: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block matrix ``[l_max^2, 3 (l_max+1)^2]`` of the ``C_l``, degree of every ``lm`` (cached)."""
    key = (l_max, dtype, str(device))
    if key not in _OPERATORS:
        n_lm = (l_max + 1) ** 2
        matrix = torch.zeros(l_max * l_max, 3, n_lm, dtype=torch.float64)
        for l, c in enumerate(solid_gradient_matrices(l_max)):
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


def harmonics_and_gradient(vectors: torch.Tensor, l_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``Y [pair, lm]`` and ``dY/dr [pair, 3, lm]`` (1/Å): :func:`harmonics_with_gradient`, faster.

    Uses ``dY_lm/dr_a = (sum_m' C_l[m', a, m] Y_{l-1,m'} - l rhat_a Y_lm) / |r|``
    (:func:`solid_gradient_matrices`): one matrix product on top of the values
    of :func:`tradens.density.angular.spherical_harmonics`.
    """
    n_pairs, n_lm = vectors.shape[0], (l_max + 1) ** 2
    norm = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)  # [p, 1]
    unit = vectors / norm  # [p, 3]
    harmonics = spherical_harmonics(vectors, l_max)  # [p, lm]
    if l_max == 0:
        return harmonics, vectors.new_zeros(n_pairs, 3, 1)
    matrix, degree = _gradient_operator(l_max, vectors.dtype, vectors.device)
    gradient = torch.mm(harmonics[:, : l_max * l_max], matrix).view(n_pairs, 3, n_lm)  # [p, 3, lm]
    gradient.addcmul_(unit[:, :, None], (harmonics * degree)[:, None, :], value=-1.0)
    return harmonics, gradient.div_(norm[:, :, None])


class _Contraction:
    """Per-degree ``C_l`` as ``[2l+1, 3 (2l-1)]``, the degree of every ``lm`` (cached per dtype)."""

    _cache: dict = {}

    @classmethod
    def of(cls, l_max: int, dtype: torch.dtype, device: torch.device) -> _Contraction:
        key = (l_max, dtype, str(device))
        if key not in cls._cache:
            cls._cache[key] = cls(l_max, dtype, device)
        return cls._cache[key]

    def __init__(self, l_max: int, dtype: torch.dtype, device: torch.device):
        # (Z_l @ C_l)[p, a, m'] = sum_m C_l[m', a, m] Z_lm
        self.matrices = [
            c.permute(2, 1, 0).reshape(2 * l + 1, -1).to(dtype=dtype, device=device)
            for l, c in enumerate(solid_gradient_matrices(l_max))
            if l > 0
        ]
        self.degree = torch.tensor(
            [l for l in range(l_max + 1) for _ in range(2 * l + 1)], dtype=dtype, device=device
        )  # [lm]


def contract_harmonic_gradients(vectors: torch.Tensor, z: torch.Tensor, l_max: int) -> torch.Tensor:
    """``sum_lm (Z'_lm rhat Y_lm + Z_lm dY_lm/dr)`` per pair, ``[p, 3]``, without forming ``dY/dr``.

    Parameters
    ----------
    vectors : torch.Tensor
        Pair vectors ``[p, 3]`` (Å).
    z : torch.Tensor
        ``[p, 2, lm]``: coefficients ``Z`` of ``dY/dr`` then ``Z'`` of ``rhat Y``.
    l_max : int
        Largest degree.

    With the solid-harmonic gradients this is ``rhat sum_lm (Z'_lm - l Z_lm /
    r) Y_lm + (1/r) sum_lm Z_lm sum_m' C_l[m', a, m] Y_{l-1,m'}`` (only the
    values ``Y`` are needed; the compiled forces kernel does the same).
    """
    terms = _Contraction.of(l_max, vectors.dtype, vectors.device)
    n_pairs = vectors.shape[0]
    r = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)  # [p, 1]
    inverse = 1.0 / r
    harmonics = spherical_harmonics(vectors, l_max)  # [p, lm]
    zz, dz = z[:, 0], z[:, 1]  # [p, lm]
    # along rhat: sum_lm (Z' - l Z / r) Y_lm
    along = (
        torch.addcmul(dz, zz, terms.degree * inverse, value=-1.0)
        .mul_(harmonics)
        .sum(1, keepdim=True)
    )
    tangential = vectors.new_zeros(n_pairs, 3)
    for l in range(1, l_max + 1):  # sum_m Z_lm sum_m' C_l[m', a, m] Y_{l-1,m'}
        lowered = torch.mm(zz[:, l * l : (l + 1) * (l + 1)], terms.matrices[l - 1]).view(
            n_pairs, 3, 2 * l - 1
        )
        tangential.add_((lowered * harmonics[:, None, (l - 1) * (l - 1) : l * l]).sum(2))
    return (vectors * along + tangential).mul_(inverse)  # rhat along + tangential / r
