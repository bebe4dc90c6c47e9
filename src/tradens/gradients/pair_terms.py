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

The derivatives of the pair basis ``d phi/dr`` (:func:`pair_basis_gradient`)
are analytic and come from :mod:`tradens.density.derivatives` (radial terms
with their ``r``-derivatives, harmonic gradients); forward-mode AD through the
radial basis would be 6-10x slower than its evaluation. :func:`soap_local_features`
yields the per-pair feature derivatives for bases that are not a linear map
of the summed features (kernels, per-element weights); the structure-summed
Jacobian of :mod:`tradens.gradients.summed` never forms them. Checked against
autograd of :class:`tradens.SOAP` in ``tests/test_models_jacobian.py``.
"""

from __future__ import annotations

import math

import torch

from ..density.angular import l_of_lm
from ..density.derivatives import harmonics_and_gradient
from ..density.expansion import expand_density
from ..systems.neighbors import neighbor_list, pair_vectors

__all__ = ["soap_local_features", "check_soap_for_potentials", "pair_basis_gradient"]


def check_soap_for_potentials(soap) -> None:
    """Raise ``ValueError`` if a SOAP cannot define an extensive potential."""
    h = soap.hypers
    if h.average:
        raise ValueError("a potential needs per-atom features; got SOAP with average=True")
    if h.center_species is not None:
        raise ValueError(
            "a potential needs every atom as a centre; got SOAP with center_species set"
        )


# ------------------------------------------------------------------ the pair basis
def pair_basis_gradient(soap, vectors: torch.Tensor) -> torch.Tensor:
    """``d phi_nlm(r) / d r [pair, 3, lm, N]`` (1/Å) at pair vectors ``vectors [pair, 3]`` (Å).

    ``phi_nlm(r) = f_c(r) R_nl(r) Y_lm(r_hat)`` is the unmixed pair basis of
    the density (neighbour element not applied), so
    ``dphi = (f_c R_nl)' Y_lm r_hat + f_c R_nl grad Y_lm``. The radial terms
    with their ``r``-derivatives and the harmonic gradients come from
    :func:`tradens.density.derivatives.radial_terms` and
    :func:`~tradens.density.derivatives.harmonics_and_gradient`.
    """
    l_max = soap.hypers.l_max
    r = torch.linalg.vector_norm(vectors, dim=1)  # [p]
    terms, transform = soap.expansion.radial_terms(r)  # [p, 2, L, c], [c, N] or None
    terms = terms.transpose(1, 2)  # [p, L, 2, c]
    if transform is not None:
        terms = terms @ transform  # [p, L, 2, N]
    lm_to_l = l_of_lm(l_max, vectors.device)
    terms = terms.index_select(1, lm_to_l)  # [p, lm, 2, N]: f_c R, (f_c R)'
    harmonics, d_harmonics = harmonics_and_gradient(vectors, l_max)  # [p, lm], [p, 3, lm]
    unit = vectors / r[:, None]  # [p, 3]
    n_pairs, n_lm, n = vectors.shape[0], harmonics.shape[1], terms.shape[3]
    out = torch.empty(n_pairs, 3, n_lm, n, dtype=vectors.dtype, device=vectors.device)
    radial_part = terms[:, :, 1] * harmonics[:, :, None]  # [p, lm, N]
    torch.mul(radial_part[:, None], unit[:, :, None, None], out=out)
    return out.addcmul_(terms[:, None, :, 0], d_harmonics[:, :, :, None])  # [p, 3, lm, N]


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
            w1, w2 = soap.mixing_matrices(dtype, device)
            self.symmetric = w2 is w1
            if w1 is None:
                weights = None  # full SOAP: the unmixed density, W = 1
            else:  # mixed per pair, without forming the unmixed [atom, S*N, lm]
                weights = w1 if self.symmetric else torch.cat([w1, w2], dim=1)
            mixed = expand_density(
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
                weights=weights,
            )  # [atom, K, lm]
            if w1 is None:
                w1 = w2 = torch.eye(mixed.shape[1], dtype=dtype, device=device)
                self.symmetric = True
            self.y1 = mixed[:, : w1.shape[1]]  # [atom, K1, lm]
            self.y2 = self.y1 if self.symmetric else mixed[:, w1.shape[1] :]
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

    def pair_dy(self, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``dy1, dy2 [p, 3, K, lm]``: derivatives of the mixed density of ``i_p`` by ``r_p``."""
        d_phi = pair_basis_gradient(self.soap, self.vectors[sel])  # [p, 3, lm, N]
        s_j = self.neighbor_species[sel]  # [p], known elements only
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
    """``dy [p, 3, K, lm] = W_{s_j}^T dphi`` of ``dphi [p, 3, lm, N]``, ``blocks [S, N, K]``."""
    n_pairs, _, n_lm, n = d_phi.shape
    mixed = torch.bmm(d_phi.reshape(n_pairs, 3 * n_lm, n), blocks[species])  # [p, 3 lm, K]
    return mixed.reshape(n_pairs, 3, n_lm, -1).transpose(2, 3)
