"""Per-pair derivatives of SOAP features: the pieces behind the force and stress design rows.

A linear (or kernel) potential ``E = sum_i theta . phi(X_i)`` needs, per
structure, the Jacobian ``d(sum_i phi(X_i))/dr`` of ``[3 N_atom, D]``: one row
per force component. Reverse-mode autograd would need ``D`` backward passes
and forward mode ``3 N`` forward passes, so both are slow. This module uses the
locality of the representation instead. Every feature vector ``X_i`` depends on
the pair vectors ``r_p`` of its neighbour pairs ``p = (i, j)`` only through the
density coefficients, so for every pair

.. math::

    \\frac{\\partial X_i}{\\partial r_p} = \\frac{\\partial X_i}{\\partial y_i}
        W^T_{s_j} \\frac{\\partial \\phi(r_p)}{\\partial r_p}, \\qquad
    \\phi_{nlm}(r) = R_{nl}(r) f_c(r) Y_{lm}(\\hat r)

(``[pair, 3, F]``), which the callers contract and scatter onto atoms
(``+`` on ``j``, ``-`` on ``i``) and onto the virial (``sum_p r_p (x) dE/dr_p``).

Why not autograd for ``d phi/dr``: forward-mode AD through the radial basis is
6-10x slower than its evaluation and dominates a force fit. The derivatives
used here are analytic: ``dR/dr`` from the Bessel identity
``i_l' = (l i_{l-1} + (l+1) i_{l+1})/(2l+1)`` (GAP grid basis) or the spline
derivative (GTO basis), and ``grad Y_lm`` from the linear map between the
gradients of solid harmonics of degree ``l`` and those of degree ``l - 1``
(built once by autograd and least squares, exact to round-off). Every piece is
checked against autograd of :class:`tradens.SOAP` in ``tests/test_models_jacobian.py``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..density.angular import l_of_lm, spherical_harmonics
from ..density.expansion import expand_density
from ..density.radial import GaussianGridBasis, GtoBasis, cosine_cutoff, scaled_spherical_in
from ..systems.neighbors import neighbor_list, pair_vectors

__all__ = ["soap_local_features", "check_soap_for_potentials"]


def check_soap_for_potentials(soap) -> None:
    """Raise ``ValueError`` if a SOAP cannot define an extensive potential."""
    h = soap.hypers
    if h.average:
        raise ValueError("a potential needs per-atom features; got SOAP with average=True")
    if h.center_species is not None:
        raise ValueError(
            "a potential needs every atom as a centre; got SOAP with center_species set"
        )


# ------------------------------------------------------------------ radial part
def _radial_with_derivative(radial, r: torch.Tensor):
    """``R [pair, n, l]`` and ``dR/dr [pair, n, l]`` (1/Å)."""
    if isinstance(radial, GaussianGridBasis):
        alpha = radial.alpha
        grid = radial._grid.to(dtype=r.dtype, device=r.device)  # [a]
        transform = radial._transform.to(dtype=r.dtype, device=r.device)  # [a, n]
        l_max = radial.l_max
        x = 2.0 * alpha * r[:, None] * grid[None, :]  # [pair, a]
        gauss = torch.exp(-alpha * (grid[None, :] - r[:, None]) ** 2)  # [pair, a]
        s = scaled_spherical_in(x, l_max + 1)  # [pair, a, l+2], exp(-x) i_l(x)
        ls = torch.arange(l_max + 1, dtype=r.dtype, device=r.device)  # [l]
        lower = torch.cat(
            [torch.zeros_like(s[..., :1]), s[..., :l_max]], dim=-1
        )  # s_{l-1}, [pair, a, l]
        upper = s[..., 1 : l_max + 2]  # s_{l+1}
        d_bessel = (ls * lower + (ls + 1) * upper) / (2 * ls + 1)  # exp(-x) i_l'(x)
        value = gauss[:, :, None] * s[..., : l_max + 1]  # [pair, a, l]
        deriv = (
            2.0
            * alpha
            * gauss[:, :, None]
            * (grid[None, :, None] * d_bessel - r[:, None, None] * s[..., : l_max + 1])
        )
        return (
            torch.einsum("pal,an->pnl", value, transform),
            torch.einsum("pal,an->pnl", deriv, transform),
        )
    if isinstance(radial, GtoBasis):
        return radial.values_and_derivatives(r)
    # any other basis: forward-mode autograd (slower, always correct)
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        dual = fwad.make_dual(r, torch.ones_like(r))
        value, tangent = fwad.unpack_dual(radial(dual))
    return value, tangent


def _cutoff_with_derivative(r: torch.Tensor, cutoff: float, width: float):
    value = cosine_cutoff(r, cutoff, width)
    if width <= 0.0:
        return value, torch.zeros_like(r)
    t = (r - cutoff + width) / width
    inside = (t > 0.0) & (t < 1.0)
    deriv = torch.where(
        inside, -0.5 * math.pi / width * torch.sin(math.pi * t.clamp(0.0, 1.0)), torch.zeros_like(r)
    )
    return value, deriv


# ------------------------------------------------------------------ angular part
@lru_cache(maxsize=16)
def _solid_gradient_map(l_max: int) -> torch.Tensor:
    """``G [3, lm, lm]`` with ``grad S_lm = sum_m' G[:, lm, (l-1)m'] S_(l-1)m'``.

    ``S_lm(x) = |x|^l Y_lm(x/|x|)`` are the solid harmonics (homogeneous
    polynomials), so the gradient of degree ``l`` is a linear combination of
    degree ``l - 1``. The map is fitted by least squares on autograd gradients
    at random points and checked to round-off.
    """
    n_lm = (l_max + 1) ** 2
    out = torch.zeros(3, n_lm, n_lm, dtype=torch.float64)
    generator = torch.Generator().manual_seed(12345)
    points = torch.randn(8 * (2 * l_max + 1) + 16, 3, generator=generator, dtype=torch.float64)
    points.requires_grad_(True)
    with torch.enable_grad():
        radius = torch.linalg.vector_norm(points, dim=1, keepdim=True)  # [q, 1]
        ls = l_of_lm(l_max).to(torch.float64)  # [lm]
        solid = spherical_harmonics(points, l_max) * radius**ls  # [q, lm]
        _fill_gradient_map(out, points, solid, l_max)
    return out


def _fill_gradient_map(
    out: torch.Tensor, points: torch.Tensor, solid: torch.Tensor, l_max: int
) -> None:
    for l in range(1, l_max + 1):
        lower = solid[:, (l - 1) ** 2 : l * l].detach()  # [q, 2l-1]
        for m in range(2 * l + 1):
            lm = l * l + m
            (grad,) = torch.autograd.grad(solid[:, lm].sum(), points, retain_graph=True)  # [q, 3]
            coefficients, *_ = torch.linalg.lstsq(lower, grad.detach())  # [2l-1, 3]
            residual = (lower @ coefficients - grad).abs().max().item()
            if residual > 1e-9 * max(1.0, grad.abs().max().item()):
                raise RuntimeError(
                    f"solid-harmonic gradient map failed at l={l} (residual {residual:.2e})"
                )
            out[:, lm, (l - 1) ** 2 : l * l] = coefficients.T


def _harmonics_with_gradient(vectors: torch.Tensor, l_max: int):
    """``Y [pair, lm]`` and ``dY/dr [pair, 3, lm]`` (1/Å)."""
    r = torch.linalg.vector_norm(vectors, dim=1)  # [pair]
    unit = vectors / r[:, None]  # [pair, 3]
    harmonics = spherical_harmonics(vectors, l_max)  # [pair, lm]
    gmap = _solid_gradient_map(l_max).to(dtype=vectors.dtype, device=vectors.device)  # [3, lm, lm]
    ls = l_of_lm(l_max, vectors.device).to(vectors.dtype)  # [lm]
    grad = torch.einsum("dab,pb->pda", gmap, harmonics)  # [pair, 3, lm]
    grad = grad - ls[None, None, :] * unit[:, :, None] * harmonics[:, None, :]
    return harmonics, grad / r[:, None, None]


# ------------------------------------------------------------------ features and pair derivatives
def _ps_derivative(dy1, y1c, dy2, y2c, plan, l_max: int, symmetric: bool) -> torch.Tensor:
    """``dP [q, dirs, F']`` from ``dy [q, dirs, K, lm]`` and centre densities ``yc [q, K, lm]``."""
    q, dirs, k1 = dy1.shape[0], dy1.shape[1], dy1.shape[2]
    k2 = dy2.shape[2]
    first = torch.as_tensor(plan.first, device=dy1.device)
    second = torch.as_tensor(plan.second, device=dy1.device)
    factor = torch.as_tensor(plan.factor, dtype=dy1.dtype, device=dy1.device)  # [pairs]
    flat, flat_t = first * k2 + second, second * k2 + first
    columns = []
    for l in range(l_max + 1):
        block = slice(l * l, (l + 1) * (l + 1))
        scale = factor / math.sqrt(2 * l + 1)
        if plan.dense:
            d1 = dy1[..., block].reshape(q, dirs * k1, 2 * l + 1)
            m1 = torch.bmm(d1, y2c[:, :, block].transpose(1, 2)).reshape(
                q, dirs, k1 * k2
            )  # [q, dirs, K1*K2]
            if symmetric:
                values = m1.index_select(2, flat) + m1.index_select(2, flat_t)  # [q, dirs, pairs]
            else:
                d2 = dy2[..., block].reshape(q, dirs * k2, 2 * l + 1)
                m2 = torch.bmm(d2, y1c[:, :, block].transpose(1, 2)).reshape(q, dirs, k2, k1)
                values = m1.index_select(2, flat) + m2.reshape(q, dirs, k2 * k1).index_select(
                    2, second * k1 + first
                )
        else:
            d1, c1 = (
                dy1[..., block],
                y1c[:, None, :, block],
            )  # [q, dirs, K1, 2l+1], [q, 1, K1, 2l+1]
            d2, c2 = dy2[..., block], y2c[:, None, :, block]
            values = (d1[:, :, first] * c2[:, :, second]).sum(-1) + (
                c1[:, :, first] * d2[:, :, second]
            ).sum(-1)
        columns.append(values * scale)
    return torch.stack(columns, dim=-1).reshape(q, dirs, -1)  # [q, dirs, pairs*(l_max+1)]


class _Context:
    """Everything about a batch that the derivative code shares."""

    def __init__(self, soap, batch):
        check_soap_for_potentials(soap)
        h = self.hypers = soap.hypers
        self.soap = soap
        dtype, device = batch.positions.dtype, batch.positions.device
        with torch.no_grad():
            self.pairs = pairs = neighbor_list(batch, h.cutoff.radius)
            self.vectors = pair_vectors(batch, pairs)  # [pair, 3]
            self.species_index = soap.species_map(batch.numbers)  # [atom]
            c = expand_density(
                batch,
                pairs,
                self.vectors,
                self.species_index,
                n_species=h.n_species,
                radial=soap.radial_basis,
                l_max=h.l_max,
                cutoff=h.cutoff.radius,
                cutoff_width=h.cutoff.width,
                center_weight=h.density.center_weight,
                center_all_species=soap.center_all_species,
            )  # [atom, S*N, lm]
            w1, w2 = soap.mixing_matrices(dtype, device)
            self.symmetric = w2 is w1
            if w1 is None:
                w1 = w2 = torch.eye(c.shape[1], dtype=dtype, device=device)  # full SOAP
                self.symmetric = True
            self.y1 = torch.einsum("aIm,Ik->akm", c, w1)  # [atom, K1, lm]
            self.y2 = self.y1 if self.symmetric else torch.einsum("aIm,Ik->akm", c, w2)
            from ..representations.soap import power_spectrum

            p_values = power_spectrum(self.y1, self.y2, soap.plan, h.l_max)  # [atom, F']
            norm = torch.linalg.vector_norm(p_values, dim=1, keepdim=True)  # [atom, 1]
            self.norm = torch.where(norm > 0, norm, torch.ones_like(norm))
            self.x_values = p_values / self.norm if h.normalize else p_values
            self.extra = h.covariance_sigma0 is not None
            self.features = (
                torch.cat(
                    [self.x_values, torch.full_like(self.x_values[:, :1], h.covariance_sigma0)], 1
                )
                if self.extra
                else self.x_values
            )
        n_max = h.radial.n_max
        self.blocks1 = w1.reshape(h.n_species, n_max, -1)  # [S, N, K1]
        self.blocks2 = self.blocks1 if self.symmetric else w2.reshape(h.n_species, n_max, -1)
        self.lm_to_l = l_of_lm(h.l_max, device)
        neighbor_species = self.species_index[pairs.j]
        self.keep = (neighbor_species >= 0).nonzero().squeeze(1)  # pairs with a known neighbour
        self.neighbor_species = neighbor_species

    def pair_dphi(self, sel: torch.Tensor) -> torch.Tensor:
        """``d phi_p / d r_p [p, lm, 3, N]`` of the pair basis (neighbour species not applied)."""
        return self.pair_dphi_of(self.vectors[sel])

    def pair_dphi_of(self, vec: torch.Tensor, direction_major: bool = False) -> torch.Tensor:
        """``d phi(r) / d r`` at pair vectors ``vec [p, 3]`` (Å), 1/Å.

        Layout ``[p, lm, 3, N]``, or ``[p, 3, lm, N]`` with ``direction_major``.
        """
        h = self.hypers
        r = torch.linalg.vector_norm(vec, dim=1)  # [p]
        radial, d_radial = _radial_with_derivative(self.soap.radial_basis, r)  # [p, n, l]
        taper, d_taper = _cutoff_with_derivative(r, h.cutoff.radius, h.cutoff.width)  # [p]
        rt = (radial * taper[:, None, None])[:, :, self.lm_to_l].transpose(1, 2)  # [p, lm, n]
        d_rt = (d_radial * taper[:, None, None] + radial * d_taper[:, None, None])[
            :, :, self.lm_to_l
        ]
        d_rt = d_rt.transpose(1, 2)  # [p, lm, n]
        harmonics, d_harmonics = _harmonics_with_gradient(vec, h.l_max)  # [p, lm], [p, 3, lm]
        unit = vec / r[:, None]  # [p, 3]
        n_p, n_lm, n = vec.shape[0], harmonics.shape[1], rt.shape[2]
        if direction_major:
            out = torch.empty(n_p, 3, n_lm, n, dtype=vec.dtype, device=vec.device)
            torch.mul((d_rt * harmonics[:, :, None])[:, None], unit[:, :, None, None], out=out)
            return out.addcmul_(rt[:, None], d_harmonics[:, :, :, None])  # [p, 3, lm, n]
        out = torch.empty(n_p, n_lm, 3, n, dtype=vec.dtype, device=vec.device)
        torch.mul((d_rt * harmonics[:, :, None])[:, :, None, :], unit[:, None, :, None], out=out)
        return out.addcmul_(
            rt[:, :, None, :], d_harmonics.transpose(1, 2)[:, :, :, None]
        )  # [p, lm, 3, n]

    def pair_dy(self, sel: torch.Tensor):
        """``dy1, dy2 [p, 3, K, lm]``: derivatives of the mixed density of ``i_p`` by ``r_p``."""
        h = self.hypers
        vec, s_j = self.vectors[sel], self.neighbor_species[sel]
        r = torch.linalg.vector_norm(vec, dim=1)  # [p]
        radial, d_radial = _radial_with_derivative(self.soap.radial_basis, r)  # [p, n, l]
        taper, d_taper = _cutoff_with_derivative(r, h.cutoff.radius, h.cutoff.width)  # [p]
        rt = radial * taper[:, None, None]
        d_rt = d_radial * taper[:, None, None] + radial * d_taper[:, None, None]
        harmonics, d_harmonics = _harmonics_with_gradient(vec, h.l_max)  # [p, lm], [p, 3, lm]
        unit = vec / r[:, None]
        lm_to_l = self.lm_to_l
        d_phi = (
            d_rt[:, None, :, lm_to_l] * unit[:, :, None, None] * harmonics[:, None, None, :]
            + rt[:, None, :, lm_to_l] * d_harmonics[:, :, None, :]
        )  # [p, 3, n, lm]
        dy1 = _mix(d_phi, s_j, self.blocks1)  # [p, 3, K1, lm]
        dy2 = dy1 if self.symmetric else _mix(d_phi, s_j, self.blocks2)
        return dy1, dy2

    def finish(self, dp: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """Normalisation and the constant column applied to ``dP [q, d, F']`` of centres ``[q]``."""
        if self.hypers.normalize:
            xi = self.x_values[centers][:, None, :]  # [q, 1, F']
            dp = (dp - xi * (dp * xi).sum(-1, keepdim=True)) / self.norm[centers][:, None, :]
        if self.extra:
            dp = torch.cat([dp, torch.zeros_like(dp[..., :1])], dim=-1)
        return dp


def soap_local_features(soap, batch, *, pair_chunk: int = 512, derivatives: bool = True):
    """Features of every atom and, lazily, their derivatives with respect to each pair vector.

    Parameters
    ----------
    soap : tradens.SOAP
        Representation (every atom a centre, not averaged).
    batch : tradens.Batch
        Structures.
    pair_chunk : int
        Pairs per yielded derivative chunk (memory ``pair_chunk * 3 * F``).
    derivatives : bool
        Whether to return the pair-derivative generator.

    Returns
    -------
    X : torch.Tensor
        ``[atom, F]`` features, identical to ``soap.forward(batch)``.
    chunks : generator or None
        Yields ``(i [p], j [p], r [p, 3], dX [p, 3, F])`` where ``dX[p, d, f]``
        is ``d X_{i_p, f} / d r_{p, d}`` (``r_p = x_j - x_i + shift``, Å).
    """
    ctx = _Context(soap, batch)
    if not derivatives:
        return ctx.features, None
    h = ctx.hypers

    def chunks():
        keep = ctx.keep
        for start in range(0, keep.shape[0], pair_chunk):
            with torch.no_grad():
                sel = keep[start : start + pair_chunk]
                i, j = ctx.pairs.i[sel], ctx.pairs.j[sel]
                dy1, dy2 = ctx.pair_dy(sel)
                dp = _ps_derivative(
                    dy1, ctx.y1[i], dy2, ctx.y2[i], soap.plan, h.l_max, ctx.symmetric
                )
            yield i, j, ctx.vectors[sel], ctx.finish(dp, i)

    return ctx.features, chunks()


def _mix(d_phi: torch.Tensor, species: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``dy [p, 3, K, lm] = W_{s_j}^T dphi`` (``blocks [S, N, K]``), grouped by species."""
    out = torch.empty(
        d_phi.shape[0], 3, blocks.shape[2], d_phi.shape[3], dtype=d_phi.dtype, device=d_phi.device
    )
    for s in torch.unique(species).tolist():
        rows = (species == s).nonzero().squeeze(1)
        out[rows] = torch.einsum("pdnm,nk->pdkm", d_phi[rows], blocks[s])
    return out
