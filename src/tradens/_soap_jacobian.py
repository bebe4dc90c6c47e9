"""Fast analytic Jacobians of symmetric mixed SOAP (TR-SOAP), written straight into the output.

Used by :func:`tradens._soap_gradients.soap_pair_gradients` when both
densities are the same mixed density (``sym_mix``) and the products are all
``b <= a`` channel pairs (``coupling=T``, plan structure ``"triangle"``) or the
matching channels (``coupling=F`` with ``R+Z`` mixing, structure
``"diagonal"``). Everything else takes the general path there.

Notation: row (centre) ``i`` with mixed density ``y [K, lm]``, unit feature
vector ``x = v / |v|``; pair ``p`` of the row with unit vector ``rhat``, mixed
radial terms ``B = W[s]^T f_c R`` and ``A = W[s]^T (f_c R)'`` (``[K, L]``),
harmonics ``Y`` and ``dY/dr_a``. With ``c_l = (2l+1)^{-1/2} / |v|`` and

    alpha_akl = c_l A_kl rhat_a,   gamma_kl = c_l B_kl,
    beta_kl = sum_m y_klm Y_lm,     delta_akl = sum_m y_klm dY_lm/dr_a,

the derivative of the stored product ``(k, b, l)`` along axis ``a`` is

    dv = f_kb (alpha_k beta_b + beta_k alpha_b + gamma_k delta_b + delta_k gamma_b)

(``f = 1`` on the diagonal, ``sqrt 2`` off it; ``coupling=F`` keeps ``b = k``),
and ``dx = dv - x (x . dv)``. The dot product needs no pass over ``dv``:
``x . dv = alpha^T M beta + gamma^T M delta`` summed over ``l``, with the
symmetric ``M_l[k, b] = f_kb x_kbl`` (``2 x_kkl`` on the diagonal).

Work is done per chunk of whole rows (pairs are sorted by centre): the radial
and angular terms of the chunk's pairs, ``beta`` and ``delta`` as one batched
matrix product per degree over the rows (``y`` shared by all pairs of a row,
padded to the longest row of the chunk), then the output slab of the chunk is
written channel by channel (``k``), each write a broadcast product of small
``[entry, 3, K, L]`` factors, so no ``[pair, 3, feature]`` temporary is formed.
The centre entry (``-sum`` of the row) and the strain derivative ``sum_p r_p (x)
dX/dr_p`` are one matrix product per row over the finished slab.
"""

from __future__ import annotations

import math

import torch

from ._density_derivatives import harmonics_and_gradient, radial_primitive_with_derivative, radial_with_derivative

__all__ = ["fast_structure", "write_jacobian"]

SQRT2 = math.sqrt(2.0)


def fast_structure(soap, symmetric: bool, weights) -> str | None:
    """``"triangle"``, ``"diagonal"`` or ``None`` (no fast path) for a SOAP."""
    h = soap.hypers
    if weights is None or not symmetric or h.average:
        return None
    structure = soap.plan.structure
    if structure == "diagonal" or (structure == "triangle" and soap.plan.dense):
        return structure
    return None


class _Radial:
    """Mixed radial terms ``[pair, 2L, K]`` (``B`` then ``A``) of the pairs of one chunk."""

    def __init__(self, soap, weights: torch.Tensor):
        h = soap.hypers
        self.soap = soap
        self.n_species, self.n_l = h.n_species, h.l_max + 1
        n_max = weights.shape[0] // h.n_species
        blocks = weights.reshape(h.n_species, n_max, -1)  # [S, N, K]
        probe = radial_primitive_with_derivative(soap, weights.new_ones(1))
        self.grid = probe is not None
        if self.grid:  # fold the grid transform into the mixing: [S, a, K]
            blocks = torch.matmul(probe[1], blocks)
        self.blocks = blocks.contiguous()

    def __call__(self, r: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        n_l = self.n_l
        if self.grid:
            basis, _ = radial_primitive_with_derivative(self.soap, r)  # [p, 2L, a]
        else:
            radial, d_radial = radial_with_derivative(self.soap, r)  # [p, N, L]
            basis = torch.cat([radial, d_radial], dim=2).transpose(1, 2).contiguous()  # [p, 2L, N]
        n_pairs, n_c = basis.shape[0], basis.shape[2]
        order = torch.argsort(species, stable=True)
        counts = torch.bincount(species, minlength=self.n_species).tolist()
        by_species = basis[order].reshape(n_pairs * 2 * n_l, n_c)  # pairs sorted by species
        product = basis.new_empty(n_pairs * 2 * n_l, self.blocks.shape[2])  # [p 2L, K]
        start = 0
        for s, count in enumerate(counts):
            if count:
                rows = slice(start * 2 * n_l, (start + count) * 2 * n_l)
                torch.mm(by_species[rows], self.blocks[s], out=product[rows])
                start += count
        out = torch.empty_like(product).view(n_pairs, 2 * n_l, -1)
        out[order] = product.view(n_pairs, 2 * n_l, -1)
        return out  # [p, 2L, K]


def _symmetric_weights(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, k: int, n_l: int) -> torch.Tensor:
    """``M [row, L, K, K]``: ``sqrt2 x_kbl`` off the diagonal (both halves), ``2 x_kkl`` on it."""
    n_rows = x.shape[0]
    xt = x.reshape(n_rows, -1, n_l).transpose(1, 2)  # [row, L, q]
    factor = torch.full(first.shape, SQRT2, dtype=x.dtype, device=x.device)  # [q]
    factor[first == second] = 2.0
    m = x.new_zeros(n_rows, n_l, k, k)
    m[:, :, first, second] = xt * factor
    m[:, :, second, first] = xt * factor
    return m


def write_jacobian(soap, structure: str, *, vectors, pair_species, y, unit, norm, weights, slot_pair,
                   row_start, centre_slot, out, strain_out, n_core: int, normalize: bool,
                   chunk_bytes: int, target=None) -> None:
    """Write ``dX_row / dr_p`` for every slot, the centre slots and the strain derivatives.

    Parameters
    ----------
    vectors : ``[pair, 3]`` pair vectors (Å); ``pair_species [pair]``.
    y : ``[row, K, lm]`` mixed densities; ``unit [row, F']`` features before
        ``covariance_sigma0`` (normalised when ``normalize``), ``norm [row]``.
    weights : ``[S*N, K]`` mixing matrix.
    slot_pair : ``[slot]`` pair of each slot, ``-1`` for centre slots and
        neighbours without a derivative; slots grouped by row:
        ``row_start [row + 1]``; ``centre_slot [row]``.
    out : ``[entry, 3, F]`` Jacobian (``n_core`` first features computed; the
        rest must be zero). Without ``target`` slots are entries and written in
        place; with ``target [slot]`` the slots are computed in a workspace and
        added to ``out[target]``.
    strain_out : ``[row, 3, 3, F]`` or None, written (not added).
    """
    device, dtype = y.device, y.dtype
    n_rows, n_k, n_lm = y.shape
    n_l = int(round(math.sqrt(n_lm)))
    n_features = out.shape[2]
    plan = soap.plan
    first = torch.as_tensor(plan.first, device=device)
    second = torch.as_tensor(plan.second, device=device)
    radial = _Radial(soap, weights)
    degree_scale = 1.0 / torch.sqrt(2.0 * torch.arange(n_l, dtype=dtype, device=device) + 1.0)  # [L]
    offsets = [k * (k + 1) // 2 * n_l for k in range(n_k + 1)]
    diagonal_index = torch.tensor([offsets[k] + k * n_l + l for k in range(n_k) for l in range(n_l)],
                                  device=device)
    counts = row_start[1:] - row_start[:-1]  # [row]
    per_slot = 8 * 3 * n_features
    target_slots = max(1, int(chunk_bytes // per_slot))
    # chunks of whole rows with about target_slots slots each
    bounds = [0]
    starts = row_start.tolist()
    while bounds[-1] < n_rows:
        r0 = bounds[-1]
        goal = starts[r0] + target_slots
        r1 = int(torch.searchsorted(row_start, torch.tensor(goal, device=device), right=True)) - 1
        bounds.append(min(n_rows, max(r0 + 1, r1)))
    counts_list = counts.tolist()
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        s0, s1 = starts[r0], starts[r1]
        n_slots, n_local = s1 - s0, r1 - r0
        if n_slots == 0:
            continue
        chunk_counts = counts[r0:r1]
        width = max(counts_list[r0:r1])
        uniform = all(c == width for c in counts_list[r0:r1])
        pair = slot_pair[s0:s1]  # [E]
        valid = (pair >= 0).nonzero().squeeze(1)
        sel = pair[valid]
        slot_row = torch.repeat_interleave(torch.arange(n_local, device=device), chunk_counts)  # [E] local
        # ---- per-pair terms, zero on centre slots
        vec = vectors[sel]  # [q, 3]
        r = torch.linalg.vector_norm(vec, dim=1)
        harmonics, d_harmonics = harmonics_and_gradient(vec, n_l - 1)  # [q, lm], [q, 3, lm]
        mixed = radial(r, pair_species[sel])  # [q, 2L, K]
        angular = vec.new_zeros(n_slots, 4, n_lm)  # [E, 4, lm]: Y, dY/dr_a
        angular[valid, 0] = harmonics
        angular[valid, 1:] = d_harmonics
        ab = vec.new_zeros(n_slots, 2, n_k, n_l)  # [E, 2, K, L]: B, A
        ab[valid] = mixed.view(-1, 2, n_l, n_k).transpose(2, 3)
        rhat = vec.new_zeros(n_slots, 3)
        rhat[valid] = vec / r[:, None]
        slot_vec = vec.new_zeros(n_slots, 3)
        slot_vec[valid] = vec
        # ---- beta, delta: per degree, [row, P*4, 2l+1] @ [row, 2l+1, K]
        if uniform:
            padded = angular.view(n_local, width, 4, n_lm)
        else:
            rank = torch.arange(n_slots, device=device) - (row_start[r0:r1] - s0)[slot_row]
            slot_index = slot_row * width + rank  # [E]
            padded = angular.new_zeros(n_local * width, 4, n_lm)
            padded[slot_index] = angular
            padded = padded.view(n_local, width, 4, n_lm)
        yc = y[r0:r1]  # [R, K, lm]
        uv = angular.new_empty(n_local, width * 4, n_k, n_l)  # [R, P*4, K, L]
        for l in range(n_l):
            block = slice(l * l, (l + 1) * (l + 1))
            uv[..., l] = torch.bmm(padded[..., block].reshape(n_local, width * 4, 2 * l + 1),
                                   yc[:, :, block].transpose(1, 2))
        x_rows = unit[r0:r1]  # [R, F']
        scale = degree_scale[None, :] / norm[r0:r1, None]  # [R, L]
        s = None
        if normalize:  # M beta, M delta: [R, L, P*4, K] @ [R, L, K, K]
            m = _symmetric_weights(x_rows, first, second, n_k, n_l) if structure == "triangle" else None
            if m is not None:
                m_uv = torch.matmul(uv.permute(0, 3, 1, 2), m).permute(0, 2, 3, 1)  # [R, P*4, K, L]
            else:  # diagonal: M = 2 x_kl
                m_uv = uv * (2.0 * x_rows.view(n_local, 1, n_k, n_l))
            m_uv = m_uv.reshape(n_local * width, 4, n_k, n_l)
            if not uniform:
                m_uv = m_uv[slot_index]
        uv = uv.view(n_local * width, 4, n_k, n_l)
        if not uniform:
            uv = uv[slot_index]  # [E, 4, K, L]
        slot_scale = scale[slot_row]  # [E, L]
        beta = uv[:, 0]  # [E, K, L]
        delta = uv[:, 1:]  # [E, 3, K, L]
        gamma = ab[:, 0] * slot_scale[:, None, :]  # [E, K, L]
        alpha = (ab[:, 1] * slot_scale[:, None, :])[:, None] * rhat[:, :, None, None]  # [E, 3, K, L]
        if normalize:
            s = (torch.einsum("eakl,ekl->ea", alpha, m_uv[:, 0])
                 + torch.einsum("ekl,eakl->ea", gamma, m_uv[:, 1:]))  # [E, 3]
        # ---- the slab
        slab = out[s0:s1] if target is None else out.new_zeros(n_slots, 3, n_features)
        core = slab[:, :, :n_core]  # [E, 3, F']
        x_slots = x_rows[slot_row] if normalize else None  # [E, F']
        if structure == "diagonal":
            view = core.view(n_slots, 3, n_k, n_l)
            torch.mul(alpha, beta[:, None], out=view)
            view.addcmul_(delta, gamma[:, None])
            view.mul_(2.0)
            if normalize:
                view.addcmul_(s[:, :, None, None], x_slots.view(n_slots, 1, n_k, n_l), value=-1.0)
        else:
            beta2, gamma2 = beta * SQRT2, gamma * SQRT2
            alpha2, delta2 = alpha * SQRT2, delta * SQRT2
            for k in range(n_k):
                view = core[:, :, offsets[k]:offsets[k + 1]].view(n_slots, 3, k + 1, n_l)
                torch.mul(alpha[:, :, k:k + 1], beta2[:, None, :k + 1], out=view)
                view.addcmul_(beta[:, None, k:k + 1], alpha2[:, :, :k + 1])
                view.addcmul_(gamma[:, None, k:k + 1], delta2[:, :, :k + 1])
                view.addcmul_(delta[:, :, k:k + 1], gamma2[:, None, :k + 1])
            diagonal = core.index_select(2, diagonal_index).mul_(1.0 / SQRT2)  # f_kk = 1
            core.index_copy_(2, diagonal_index, diagonal)
            if normalize:
                core.addcmul_(s[:, :, None], x_slots[:, None, :], value=-1.0)
        # ---- centre slots (-sum of the row) and strain (sum_p r_p (x) dX/dr_p)
        columns = 4 if strain_out is not None else 1
        slot_weights = torch.cat([torch.ones_like(slot_vec[:, :1]), slot_vec], dim=1)[:, :columns]  # [E, c]
        flat = slab.view(n_slots, 3 * n_features)
        if uniform:
            sums = torch.bmm(slot_weights.view(n_local, width, columns).transpose(1, 2),
                             flat.view(n_local, width, -1))  # [R, c, 3F]
        else:
            sums = flat.new_empty(n_local, columns, 3 * n_features)
            local_starts = (row_start[r0:r1 + 1] - s0).tolist()
            for row in range(n_local):
                a, b = local_starts[row], local_starts[row + 1]
                torch.mm(slot_weights[a:b].T, flat[a:b], out=sums[row])
        slab[centre_slot[r0:r1] - s0] = -sums[:, 0].view(n_local, 3, n_features)
        if strain_out is not None:
            strain_out[r0:r1] = sums[:, 1:].view(n_local, 3, 3, n_features)
        if target is not None:
            out.index_add_(0, target[s0:s1], slab)
