"""Summed feature Jacobians of SOAP for linear potentials.

For ``E = theta . sum_i X_i`` the force rows of a structure are
``-d(sum_i X_i)/dx_a [atom, 3, F]`` and the stress rows come from the virial
``sum_p r_p (x) d(sum_i X_i)/dr_p [3, 3, F]``. :func:`soap_summed_jacobian`
forms both without ``[pair, 3, F]`` intermediates, using that ``dX_i/dr_p``
is bilinear in the pair's density derivative and the centre's density (see
:mod:`tradens.gradients.pair_terms` for the per-pair pieces and
``docs/models.md`` for the derivation). Checked against autograd in
``tests/test_models_jacobian.py``.
"""

from __future__ import annotations

import math

import torch

from .pair_terms import (
    _Context,
    _ps_derivative,
    check_soap_for_potentials,
    soap_local_features,
)
from .summed_blocks import fast_path_applies, structure_summed_jacobian

__all__ = ["soap_summed_jacobian", "soap_local_features", "check_soap_for_potentials"]


def soap_summed_jacobian(soap, batch):
    """Gradient and virial of the summed features of every structure.

    Uses that ``d X_i / d r_p`` is bilinear in ``dy_p = W_{s_j}^T dphi_p`` and
    the centre's own density ``y_i``. Sums over the pairs of a centre
    (centre term, virial) are sparse-dense products; sums over the pairs
    whose neighbour is a given atom ``j`` share ``W_{s_j}`` and become one
    matrix product per atom and ``l`` (inner dimension
    ``neighbours x (2l+1)``) on the small ``dphi`` (``N`` instead of ``K``
    channels), mixed afterwards.

    Returns
    -------
    X : torch.Tensor
        ``[atom, F]`` features.
    gradient : torch.Tensor
        ``[atom, 3, F]``: ``d (sum_i X_i) / d x_a`` (the force design rows are
        its negative), 1/Å.
    virial : torch.Tensor
        ``[structure, 3, 3, F]``: ``sum_p r_p (x) d(sum_i X_i)/d r_p``, the
        derivative by a (symmetric) strain.
    """
    ctx = _Context(soap, batch)
    h, plan, sym = ctx.hypers, soap.plan, ctx.symmetric
    dtype, device = batch.positions.dtype, batch.positions.device
    n_atoms, n_lm = batch.n_atoms, (h.l_max + 1) ** 2
    scale = 1.0 / ctx.norm if h.normalize else torch.ones_like(ctx.norm)  # [atom, 1]
    ty1 = ctx.y1 * scale[:, :, None]  # [atom, K1, lm], y / |P|
    ty2 = ty1 if sym else ctx.y2 * scale[:, :, None]
    blocks = [ctx.blocks1] if sym else [ctx.blocks1, ctx.blocks2]
    with torch.no_grad():
        u1, u2 = _projection_vectors(ctx, plan, h.l_max)  # [atom, K, lm], / |P|
        if fast_path_applies(ctx):
            gradient, voigt = structure_summed_jacobian(ctx, plan, batch, u1 + u2)
            virial = voigt[:, _FULL]  # [structure, 9, F']
            if ctx.extra:
                gradient = torch.cat([gradient, torch.zeros_like(gradient[..., :1])], dim=-1)
                virial = torch.cat([virial, torch.zeros_like(virial[..., :1])], dim=-1)
            return ctx.features, gradient, virial.reshape(batch.n_structures, 3, 3, -1)
        keep = ctx.keep[
            torch.argsort(ctx.pairs.j[ctx.keep], stable=True)
        ]  # pairs sorted by neighbour
        i_all, j_all, vec = ctx.pairs.i[keep], ctx.pairs.j[keep], ctx.vectors[keep]
        species = ctx.neighbor_species[keep]
        n_pairs = keep.shape[0]
        d_phi = ctx.pair_dphi(keep)  # [p, lm, 3, N]
        dys = [_mix_lm(d_phi, species, b) for b in blocks]  # [p, lm, 3, K]
        # centre terms G_i = sum_p dy_p and H_i = sum_p r_p (x) dy_p, as one sparse product
        rows = (4 * i_all[:, None] + torch.arange(4, device=device)).reshape(-1)  # [p*4]
        values = torch.cat([vec, torch.ones_like(vec[:, :1])], dim=1).reshape(-1)  # [p*4]
        columns = torch.arange(n_pairs, device=device).repeat_interleave(4)
        gather = torch.sparse_coo_tensor(
            torch.stack([rows, columns]), values, (4 * n_atoms, n_pairs), check_invariants=False
        )
        gs, hs = [], []
        for dy in dys:
            k = dy.shape[3]
            summed = torch.sparse.mm(gather, dy.reshape(n_pairs, -1)).reshape(
                n_atoms, 4, n_lm, 3, k
            )
            gs.append(summed[:, 3].permute(0, 2, 3, 1))  # [atom, 3, K, lm]
            # the virial of an invariant is symmetric: only its 6 Voigt components are formed
            hv = torch.stack(
                [0.5 * (summed[:, a, :, b] + summed[:, b, :, a]) for a, b in _VOIGT]
            )  # [6, atom, lm, K]
            hs.append(hv.permute(1, 0, 3, 2))  # [atom, 6, K, lm]
        g1, g2, h1, h2 = gs[0], gs[-1], hs[0], hs[-1]
        centre = _ps_derivative(g1, ty1, g2, ty2, plan, h.l_max, sym)  # [atom, 3, F']
        gradient = ctx.x_values[:, None, :] * _dot(u1, u2, g1, g2)[:, :, None] - centre
        virial_atom = _ps_derivative(h1, ty1, h2, ty2, plan, h.l_max, sym)  # [atom, 6, F']
        virial_atom = virial_atom - ctx.x_values[:, None, :] * _dot(u1, u2, h1, h2)[:, :, None]
        voigt = torch.zeros(batch.n_structures, 6, virial_atom.shape[2], dtype=dtype, device=device)
        voigt.index_add_(0, batch.structure, virial_atom)
        virial = voigt[:, _FULL]  # [structure, 9, F']
        del gs, hs, g1, g2, h1, h2, centre, virial_atom
        # neighbour terms: sum_{p: j_p = a} B(dy_p, ty_{i_p}) - X_{i_p} <u_{i_p}, dy_p>
        gradient += _neighbour_bilinear(
            d_phi, blocks, ty1, ty2, i_all, j_all, ctx.species_index, n_atoms, plan, h.l_max, sym
        )
        if h.normalize:
            s_p = _pair_dot(u1 + u2 if sym else u1, dys[0], i_all)  # [p, 3]
            if not sym:
                s_p = s_p + _pair_dot(u2, dys[1], i_all)
            index = torch.stack(
                [
                    (3 * j_all[:, None] + torch.arange(3, device=device)).reshape(-1),
                    i_all.repeat_interleave(3),
                ]
            )
            weights = torch.sparse_coo_tensor(
                index, s_p.reshape(-1), (3 * n_atoms, n_atoms), check_invariants=False
            )
            gradient -= torch.sparse.mm(weights, ctx.x_values).reshape(n_atoms, 3, -1)
        if ctx.extra:
            gradient = torch.cat([gradient, torch.zeros_like(gradient[..., :1])], dim=-1)
            virial = torch.cat([virial, torch.zeros_like(virial[..., :1])], dim=-1)
    return ctx.features, gradient, virial.reshape(batch.n_structures, 3, 3, -1)


_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
_FULL = [0, 5, 4, 5, 1, 3, 4, 3, 2]  # Voigt index of every (a, b), row-major


def _pair_dot(u: torch.Tensor, dy: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``<u_{i_p}, dy_p>`` over K and lm: ``u [atom, K, lm]``, ``dy [p, lm, 3, K]``: ``[p, 3]``."""
    p, n_lm, _, k = dy.shape
    ut = u.transpose(1, 2).contiguous()[centres]  # [p, lm, K]
    products = torch.bmm(dy.reshape(p * n_lm, 3, k), ut.reshape(p * n_lm, k, 1))  # [p*lm, 3, 1]
    return products.reshape(p, n_lm, 3).sum(1)


def _mix_lm(d_phi: torch.Tensor, species: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``dy [p, lm, 3, K] = dphi [p, lm, 3, N] @ W_{s_j} [N, K]``."""
    weights = blocks[species]  # [p, N, K]
    p, n_lm, _, n = d_phi.shape
    return torch.bmm(d_phi.reshape(p, n_lm * 3, n), weights).reshape(p, n_lm, 3, -1)


def _neighbour_bilinear(
    d_phi,
    blocks,
    ty1,
    ty2,
    i_all,
    j_all,
    species_index,
    n_atoms: int,
    plan,
    l_max: int,
    sym: bool,
    atom_chunk: int = 128,
) -> torch.Tensor:
    """``sum_{p: j_p = a} B(dy_p, ty_{i_p}) [atom, 3, F']``; pairs must be sorted by ``j``.

    ``dy_p = W_{s_a}^T dphi_p`` for every such pair, so ``sum_p dphi_p ty_{i_p}^T``
    is formed first (padded batched GEMMs) and mixed once per atom.
    """
    dtype, device = ty1.dtype, ty1.device
    first = torch.as_tensor(plan.first, device=device)
    second = torch.as_tensor(plan.second, device=device)
    factor = torch.as_tensor(plan.factor, dtype=dtype, device=device)
    k1, k2, n = ty1.shape[1], ty2.shape[1], d_phi.shape[3]
    flat, flat_t = first * k2 + second, second * k2 + first
    counts = torch.bincount(j_all, minlength=n_atoms)
    ends = torch.cumsum(counts, 0)
    starts = (ends - counts).tolist()
    ends = ends.tolist()
    out = torch.zeros(n_atoms, 3, len(plan) * (l_max + 1), dtype=dtype, device=device)
    for a0 in range(0, n_atoms, atom_chunk):
        a1 = min(a0 + atom_chunk, n_atoms)
        lo, hi = starts[a0], ends[a1 - 1]
        if hi == lo:
            continue
        n_rows, centres = a1 - a0, i_all[lo:hi]
        rows = j_all[lo:hi] - a0
        cols = (
            torch.arange(lo, hi, device=device)
            - torch.as_tensor(starts, device=device)[j_all[lo:hi]]
        )
        nb = int(counts[a0:a1].max())
        w1 = blocks[0][species_index[a0:a1].clamp(min=0)]  # [row, N, K1]
        w2 = blocks[-1][species_index[a0:a1].clamp(min=0)]  # [row, N, K2]

        def pad(
            values, n_rows=n_rows, nb=nb, rows=rows, cols=cols
        ):  # [q, lm, ...] -> [row, lm, nb, ...]
            padded = torch.zeros(
                (n_rows, values.shape[1], nb) + values.shape[2:], dtype=dtype, device=device
            )
            padded[rows, :, cols] = values
            return padded

        d = pad(d_phi[lo:hi].reshape(hi - lo, -1, 3 * n))  # [row, lm, nb, 3N]
        c2 = pad(ty2[centres].transpose(1, 2))  # [row, lm, nb, K2]
        c1 = c2 if sym else pad(ty1[centres].transpose(1, 2))  # [row, lm, nb, K1]
        columns = []
        for l in range(l_max + 1):
            block, width = slice(l * l, (l + 1) * (l + 1)), 2 * l + 1
            a = d[:, block].reshape(n_rows, width * nb, 3 * n)
            t = torch.bmm(
                a.transpose(1, 2), c2[:, block].reshape(n_rows, width * nb, k2)
            )  # [row, 3N, K2]
            t = torch.einsum("rna,rdnb->rdab", w1, t.reshape(n_rows, 3, n, k2)).reshape(
                n_rows, 3, k1 * k2
            )
            if sym:
                values = t.index_select(2, flat) + t.index_select(2, flat_t)
            else:
                t2 = torch.bmm(
                    c1[:, block].reshape(n_rows, width * nb, k1).transpose(1, 2), a
                )  # [row, K1, 3N]
                t2 = torch.einsum(
                    "radn,rnb->rdab", t2.reshape(n_rows, k1, 3, n), w2
                )  # [row, 3, K1, K2]
                values = (t + t2.reshape(n_rows, 3, k1 * k2)).index_select(2, flat)
            columns.append(values * (factor / math.sqrt(width)))
        out[a0:a1] = torch.stack(columns, dim=-1).reshape(n_rows, 3, -1)
    return out


def _projection_vectors(ctx, plan, l_max: int):
    """``u1, u2 [atom, K, lm]`` with ``X . dP = <u1, dy1> + <u2, dy2>``, divided by ``|P|``.

    Zero when the features are not normalised (no projection term).
    """
    y1, y2 = ctx.y1, ctx.y2
    if not ctx.hypers.normalize:
        return torch.zeros_like(y1), torch.zeros_like(y2)
    n_atoms, k1, k2, n_l = y1.shape[0], y1.shape[1], y2.shape[1], l_max + 1
    first = torch.as_tensor(plan.first, device=y1.device)
    second = torch.as_tensor(plan.second, device=y1.device)
    factor = torch.as_tensor(plan.factor, dtype=y1.dtype, device=y1.device)  # [pairs]
    ls = torch.arange(n_l, dtype=y1.dtype, device=y1.device)
    weights = factor[:, None] / torch.sqrt(2 * ls + 1)[None, :]  # [pairs, L]
    x = ctx.x_values.reshape(n_atoms, len(plan), n_l) * weights  # [atom, pairs, L]
    q = torch.zeros(n_atoms, n_l, k1, k2, dtype=y1.dtype, device=y1.device)
    for l in range(n_l):
        q[:, l].index_put_(
            (torch.arange(n_atoms, device=y1.device)[:, None], first[None, :], second[None, :]),
            x[:, :, l],
            accumulate=True,
        )
    u1, u2 = torch.empty_like(y1), torch.empty_like(y2)
    for l in range(n_l):
        block = slice(l * l, (l + 1) * (l + 1))
        u1[:, :, block] = torch.bmm(q[:, l], y2[:, :, block])  # [atom, K1, 2l+1]
        u2[:, :, block] = torch.bmm(q[:, l].transpose(1, 2), y1[:, :, block])  # [atom, K2, 2l+1]
    u1 = u1 / ctx.norm[:, :, None]
    u2 = u2 / ctx.norm[:, :, None]
    return u1, u2


def _dot(u1, u2, d1, d2) -> torch.Tensor:
    """``<u1, d1> + <u2, d2>`` over channels and lm: ``[q, directions]``."""
    return torch.einsum("qkm,qdkm->qd", u1, d1) + torch.einsum("qkm,qdkm->qd", u2, d2)
