"""Summed SOAP Jacobians, one structure (or block of atoms) at a time, from one pass over pairs.

This is the fast path of :func:`tradens.gradients.summed.soap_summed_jacobian`
for symmetric mixings (``W1 = W2``; tensor-reduced or full SOAP) when every
neighbour's element is known. It needs the same per-atom quantities,

* ``G_a = sum_{p: i_p = a} dy_p`` (centre term, ``[3, K, lm]``),
* ``H_a = sum_{p: i_p = a} sym(r_p (x) dy_p)`` (virial, 6 Voigt components),
* ``N_a = sum_{p: j_p = a} B(dy_p, ty_{i_p})`` (neighbour term) and
* ``s_p = <u_{i_p}, dy_p>`` (normalisation, scattered as ``s_p X_{i_p}`` onto ``j_p``),

with ``dy_p = W_{s_{j_p}}^T dphi(r_p)``, but takes all of them from the
*incoming* pairs ``q`` (``j_q = a``) of each atom, so one evaluation of
``dphi`` per pair serves every term and all intermediates are per block of
atoms (cache-sized) instead of per batch:

* The neighbour list is full (``p = (a, b, r)`` has the reverse
  ``q = (b, a, -r)``), and ``phi_lm(-r) = (-1)^l phi_lm(r)``, so
  ``dphi(r_p) = (-1)^(l+1) dphi(r_q)``. Hence
  ``G_a = sum_{q: j_q = a} W_{s_{i_q}}^T (-1)^(l+1) dphi_q`` and the virial
  uses ``r_p = -r_q``.
* The mixing of ``G`` and ``H`` is applied after summing the pair terms per
  (atom, neighbour element) bucket: one GEMM ``[atom*lm*9, S'*N] @ [S'*N, K]``
  over the ``S'`` elements present, instead of one small product per pair.
* The neighbour term mixes once per atom (``W_{s_a}``) after the padded
  batched GEMM ``sum_q dphi_q ty_{i_q}^T`` (inner dimension
  ``neighbours x (2l+1)``).

Checked against autograd in ``tests/test_models_jacobian.py`` (every variant
that takes this path, and the general path it replaces).
"""

from __future__ import annotations

import math

import torch

__all__ = ["structure_summed_jacobian", "fast_path_applies"]

_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def fast_path_applies(ctx) -> bool:
    """Whether :func:`structure_summed_jacobian` handles this context."""
    return bool(ctx.symmetric) and bool((ctx.neighbor_species >= 0).all())


def structure_summed_jacobian(ctx, plan, batch, u, atom_chunk: int = 16):
    """Gradient ``[atom, 3, F']`` and Voigt virial ``[structure, 6, F']`` of ``sum_i X_i``.

    Parameters
    ----------
    ctx : tradens.gradients.pair_terms._Context
        Batch context (pairs, densities, norms, mixing blocks).
    plan : tradens.representations.soap.PairPlan
        Stored channel pairs of the power spectrum.
    batch : tradens.Batch
        The structures.
    u : torch.Tensor
        ``[atom, K, lm]``: ``u1 + u2`` of the normalisation (zero without it).
    atom_chunk : int
        Most atoms per block (memory ``~ atoms * neighbours * 9 * lm * N``).

    Returns
    -------
    gradient : torch.Tensor
        ``[atom, 3, F']``, ``d(sum_i X_i)/dx_a`` in 1/Å (no ``sigma0`` column).
    voigt : torch.Tensor
        ``[structure, 6, F']``, ``sum_p r_p (x) d(sum_i X_i)/d r_p`` (Voigt order).
    """
    h = ctx.hypers
    l_max = h.l_max
    dtype, device = batch.positions.dtype, batch.positions.device
    n_atoms, n_lm = batch.n_atoms, (l_max + 1) ** 2
    blocks = ctx.blocks1  # [S, N, K]
    n_max, k = blocks.shape[1], blocks.shape[2]
    scale = 1.0 / ctx.norm if h.normalize else torch.ones_like(ctx.norm)  # [atom, 1]
    ty = ctx.y1 * scale[:, :, None]  # [atom, K, lm]
    ty_t = ty.transpose(1, 2).contiguous()  # [atom, lm, K]
    u_t = u.transpose(1, 2).contiguous()  # [atom, lm, K]
    x_values = ctx.x_values  # [atom, F']
    n_out = x_values.shape[1]
    ls = ctx.lm_to_l.to(dtype)
    parity = 1.0 - 2.0 * torch.remainder(ls + 1.0, 2.0)  # (-1)^(l+1), [lm]
    first = torch.as_tensor(plan.first, device=device)
    second = torch.as_tensor(plan.second, device=device)
    factor = torch.as_tensor(plan.factor, dtype=dtype, device=device)
    flat, flat_t = first * k + second, second * k + first
    species = ctx.species_index  # [atom]
    pairs = ctx.pairs
    order = torch.argsort(pairs.j, stable=True)  # incoming pairs of every atom, contiguous
    i_all, j_all, vec_all = pairs.i[order], pairs.j[order], ctx.vectors[order]
    counts = torch.bincount(j_all, minlength=n_atoms)
    ends = torch.cumsum(counts, 0)
    starts_list, ends_list = (ends - counts).tolist(), ends.tolist()
    counts_list = counts.tolist()
    gradient = torch.zeros(n_atoms, 3, n_out, dtype=dtype, device=device)
    voigt = torch.zeros(batch.n_structures, 6, n_out, dtype=dtype, device=device)
    table = torch.full((blocks.shape[0],), -1, dtype=torch.long, device=device)
    with torch.no_grad():
        for s in range(batch.n_structures):
            s0, s1 = batch.offsets[s], batch.offsets[s + 1]
            for a0 in range(s0, s1, atom_chunk):
                a1 = min(a0 + atom_chunk, s1)
                lo, hi = starts_list[a0], ends_list[a1 - 1]
                if hi == lo:
                    continue
                nb = max(counts_list[a0:a1])
                _block(
                    ctx,
                    plan,
                    i_all[lo:hi],
                    j_all[lo:hi],
                    vec_all[lo:hi],
                    torch.as_tensor(starts_list[a0:a1], device=device),
                    a0,
                    a1,
                    s0,
                    s1,
                    nb,
                    ty,
                    ty_t,
                    u,
                    u_t,
                    x_values,
                    parity,
                    blocks,
                    species,
                    table,
                    first,
                    second,
                    factor,
                    flat,
                    flat_t,
                    n_max,
                    k,
                    n_lm,
                    l_max,
                    gradient,
                    voigt[s],
                )
    return gradient, voigt


def _block(
    ctx,
    plan,
    i_q,
    j_q,
    vec,
    starts,
    a0,
    a1,
    s0,
    s1,
    nb,
    ty,
    ty_t,
    u,
    u_t,
    x_values,
    parity,
    blocks,
    species,
    table,
    first,
    second,
    factor,
    flat,
    flat_t,
    n_max,
    k,
    n_lm,
    l_max,
    gradient,
    voigt_s,
):
    """Atoms ``a0:a1`` of the structure ``s0:s1``; adds into ``gradient`` and ``voigt_s``."""
    dtype, device = vec.dtype, vec.device
    n_rows, n_pairs = a1 - a0, i_q.shape[0]
    rows = j_q - a0  # [q]
    slot = rows * nb + (torch.arange(n_pairs, device=device) - starts[rows] + starts[0])
    d_phi = ctx.pair_dphi_of(vec, direction_major=True)  # [q, 3, lm, N]
    n_flat = 3 * n_lm * n_max
    flat_phi = d_phi.reshape(n_pairs, n_flat)
    # ---- centre terms G, H from the reverse pairs (r_p = -r_q), summed per (atom, element of
    # the other atom) by one sparse product: rows (bucket, c) with c = 0 (1) and 1..3 (-r_c)
    other = species[i_q]  # [q] element of i_q, the neighbour of a in the reverse pair
    present = torch.unique(other)
    n_present = present.shape[0]
    table[present] = torch.arange(n_present, device=device)
    bucket = rows * n_present + table[other]  # [q]
    table[present] = -1
    gather = torch.sparse_coo_tensor(
        torch.stack(
            [
                (4 * bucket[:, None] + torch.arange(4, device=device)).reshape(-1),
                torch.arange(n_pairs, device=device).repeat_interleave(4),
            ]
        ),
        torch.cat([torch.ones_like(vec[:, :1]), -vec], dim=1).reshape(-1),
        (4 * n_rows * n_present, n_pairs),
        check_invariants=False,
    )
    buckets = torch.sparse.mm(gather, flat_phi).reshape(n_rows, n_present, 4, 3, n_lm, n_max)
    moments = buckets[:, :, 1:]  # [row, S', 3 (r), 3 (d), lm, N]
    nine = torch.stack(
        [buckets[:, :, 0, d] for d in range(3)]
        + [0.5 * (moments[:, :, a, b] + moments[:, :, b, a]) for a, b in _VOIGT],
        dim=3,
    )  # [row, S', lm, 9, N]
    nine = nine.permute(0, 2, 3, 1, 4).reshape(n_rows * n_lm * 9, n_present * n_max)
    mixed = nine @ blocks[present].reshape(n_present * n_max, k)  # [row*lm*9, K]
    mixed = mixed.reshape(n_rows, n_lm, 9, k) * parity[None, :, None, None]  # (-1)^(l+1)
    mixed = mixed.permute(0, 2, 3, 1)  # [row, 9, K, lm]
    g_mix, h_mix = mixed[:, :3], mixed[:, 3:]  # [row, 3, K, lm], [row, 6, K, lm]
    ty_rows, u_rows, x_rows = ty[a0:a1], u[a0:a1], x_values[a0:a1]
    out = gradient[a0:a1]
    out += x_rows[:, None, :] * torch.einsum("qkm,qdkm->qd", u_rows, g_mix)[:, :, None]
    voigt_s -= torch.einsum("qkm,qdkm->qd", u_rows, h_mix).T @ x_rows  # [6, F']
    # ---- per degree: neighbour term sum_q B(W_{s_a}^T dphi_q, ty_{i_q}) (padded batched GEMM,
    # mixed once per atom) minus the centre term B(G_a, ty_a); virial sum_a B(H_a, ty_a)
    padded = torch.empty(n_rows * nb, n_flat, dtype=dtype, device=device)
    padded.index_copy_(0, slot, flat_phi)
    filled = torch.zeros(n_rows * nb, dtype=torch.bool, device=device)
    filled[slot] = True
    padded.index_fill_(0, (~filled).nonzero().squeeze(1), 0.0)
    padded5 = padded.reshape(n_rows, nb, 3, n_lm, n_max)
    centres = torch.full((n_rows * nb,), a0, dtype=torch.long, device=device)
    centres.index_copy_(0, slot, i_q)
    dens = ty_t.index_select(0, centres).reshape(n_rows, nb, n_lm, k)  # [row, nb, lm, K]
    w_rows = blocks[species[a0:a1]]  # [row, N, K]
    columns, virial_columns = [], []
    for l in range(l_max + 1):
        block, width = slice(l * l, (l + 1) * (l + 1)), 2 * l + 1
        a = padded5[:, :, :, block].transpose(2, 3).reshape(n_rows, nb * width, 3 * n_max)
        c = dens[:, :, block].reshape(n_rows, nb * width, k)
        t = torch.bmm(a.transpose(1, 2), c).reshape(n_rows, 3, n_max, k)  # [row, 3, N, K]
        t = torch.einsum("rna,rdnb->rdab", w_rows, t)  # [row, 3, K, K]
        ty_l = ty_rows[:, :, block]  # [row, K, 2l+1]
        centre = torch.bmm(g_mix[..., block].reshape(n_rows, 3 * k, width), ty_l.transpose(1, 2))
        t = (t - centre.reshape(n_rows, 3, k, k)).reshape(n_rows, 3, k * k)
        scale = factor / math.sqrt(width)
        columns.append((t.index_select(2, flat) + t.index_select(2, flat_t)) * scale)
        v = torch.einsum("rdkm,rbm->dkb", h_mix[..., block], ty_l).reshape(6, k * k)
        virial_columns.append((v.index_select(1, flat) + v.index_select(1, flat_t)) * scale)
    out += torch.stack(columns, dim=-1).reshape(n_rows, 3, -1)
    voigt_s += torch.stack(virial_columns, dim=-1).reshape(6, -1)
    # ---- normalisation: -sum_q <u_{i_q}, W_{s_a}^T dphi_q> X_{i_q}
    if ctx.hypers.normalize:
        wu = torch.bmm(
            u_t.index_select(0, centres).reshape(n_rows, nb * n_lm, k), w_rows.transpose(1, 2)
        )  # [row, nb*lm, N]: (W_{s_a} u_{i_q})^T
        s_q = torch.bmm(
            padded.reshape(n_rows * nb, 3, n_lm * n_max), wu.reshape(n_rows * nb, n_lm * n_max, 1)
        ).reshape(n_rows, nb, 3)
        weights = torch.zeros(n_rows, 3, s1 - s0, dtype=dtype, device=device)
        other_local = (centres - s0).reshape(n_rows, nb)
        weights.scatter_add_(
            2, other_local[:, None, :].expand(n_rows, 3, nb), s_q.transpose(1, 2).contiguous()
        )
        out -= (weights.reshape(n_rows * 3, s1 - s0) @ x_values[s0:s1]).reshape(n_rows, 3, -1)
