"""Fast analytic Jacobians of symmetric mixed SOAP (TR-SOAP), written straight into the output.

Used by :func:`tradens.gradients.soap_pairs.soap_pair_gradients` when both
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
written channel by channel: in GAP's layout the products of channel ``a`` with
``b <= a`` are the contiguous columns ``[a(a+1)/2 L, (a+1)(a+2)/2 L)`` with ``l``
fastest, so each channel is four broadcast products of small ``[entry, 3, K, L]``
factors written in place (sub-chunks of ~4 MB of output stay in cache), and no
``[pair, 3, feature]`` or ``[pair, 3, L, K, K]`` temporary is formed.
The centre entry (``-sum`` of the row) and the strain derivative ``sum_p r_p (x)
dX/dr_p`` are one matrix product per row over the finished slab.

With numba installed (CPU, float32/64), the ``"triangle"`` slab is instead
written by :func:`tradens.kernels.compiled.triangle_slab`, which also forms ``x . dv``,
the centre entries and the strain sums in the same pass (so ``M_l`` and the
broadcast products are skipped); the torch code stays the fallback and the
test reference.
"""

from __future__ import annotations

import math

import torch

from ..density.derivatives import harmonics_and_gradient
from ..kernels.compiled import triangle_slab, use_compiled

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


def _symmetric_weights(
    x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, k: int, n_l: int
) -> torch.Tensor:
    """``M [row, L, K, K]``: ``sqrt2 x_kbl`` off the diagonal (both halves), ``2 x_kkl`` on it."""
    n_rows = x.shape[0]
    xt = x.reshape(n_rows, -1, n_l).transpose(1, 2)  # [row, L, q]
    factor = torch.full(first.shape, SQRT2, dtype=x.dtype, device=x.device)  # [q]
    factor[first == second] = 2.0
    m = x.new_zeros(n_rows, n_l, k, k)
    m[:, :, first, second] = xt * factor
    m[:, :, second, first] = xt * factor
    return m


def _chunks(row_start: torch.Tensor, size: int) -> list[tuple[int, int]]:
    """Consecutive ranges of whole rows with about ``size`` slots each."""
    n_rows = row_start.shape[0] - 1
    starts = row_start.tolist()
    bounds = [0]
    while bounds[-1] < n_rows:
        r0 = bounds[-1]
        r1 = (
            int(
                torch.searchsorted(
                    row_start, torch.tensor(starts[r0] + size, device=row_start.device), right=True
                )
            )
            - 1
        )
        bounds.append(min(n_rows, max(r0 + 1, r1)))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _small_launches_are_cheap(device: torch.device) -> bool:
    """CPU: loop over cache-sized pieces; GPU: few large kernels (each launch costs ~10 us)."""
    return device.type == "cpu"


def _slot_terms(
    vectors: torch.Tensor,
    pair_species: torch.Tensor,
    pair: torch.Tensor,
    radial,
    n_l: int,
    n_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair terms of the slots of one chunk, zero on slots without a pair (``pair < 0``).

    Returns ``angular [E, 4, lm]`` (``Y`` then ``dY/dr_a``), ``ab [E, 2, L, K]`` (the mixed
    radial terms ``B``, ``A`` from ``radial``), ``rhat [E, 3]`` and the pair vectors
    ``[E, 3]`` (Å).
    """
    n_slots = pair.shape[0]
    valid = (pair >= 0).nonzero().squeeze(1)
    sel = pair[valid]
    vec = vectors[sel]  # [q, 3]
    r = torch.linalg.vector_norm(vec, dim=1)
    harmonics, d_harmonics = harmonics_and_gradient(vec, n_l - 1)  # [q, lm], [q, 3, lm]
    angular = vec.new_zeros(n_slots, 4, n_l * n_l)  # [E, 4, lm]: Y, dY/dr_a
    angular[valid, 0] = harmonics
    angular[valid, 1:] = d_harmonics
    del harmonics, d_harmonics
    ab = vec.new_zeros(n_slots, 2, n_l, n_k)  # [E, 2, L, K]: B, A
    ab[valid] = radial(r, pair_species[sel]).view(-1, 2, n_l, n_k)
    rhat = vec.new_zeros(n_slots, 3)
    rhat[valid] = vec / r[:, None]
    slot_vec = vec.new_zeros(n_slots, 3)
    slot_vec[valid] = vec
    return angular, ab, rhat, slot_vec


def _row_sums(
    slab: torch.Tensor,
    slot_vec: torch.Tensor,
    with_strain: bool,
    local_starts: torch.Tensor,
    width: int,
    slot_index: torch.Tensor | None,
    small_launches: bool,
) -> torch.Tensor:
    """``[R, c, 3F]`` per row: ``sum_p dX/dr_p`` and (``with_strain``) ``sum_p r_p (x) dX/dr_p``.

    ``slab [E, 3, F]`` holds the slots of the chunk's rows (row ``k`` owns slots
    ``local_starts[k]:local_starts[k + 1]``, at most ``width``); ``slot_index [E]`` places
    each slot in the rows padded to ``width`` (None: every row has ``width`` slots).
    """
    n_slots, n_local = slab.shape[0], local_starts.shape[0] - 1
    columns = 4 if with_strain else 1
    slot_weights = torch.cat([torch.ones_like(slot_vec[:, :1]), slot_vec], dim=1)[
        :, :columns
    ]  # [E, c]
    flat = slab.view(n_slots, slab.shape[1] * slab.shape[2])  # [E, 3F]
    if slot_index is None:
        return torch.bmm(
            slot_weights.view(n_local, width, columns).transpose(1, 2),
            flat.view(n_local, width, -1),
        )  # [R, c, 3F]
    if not small_launches:  # one batched product over rows padded to the widest row
        padded_flat = flat.new_zeros(n_local * width, flat.shape[1])
        padded_flat[slot_index] = flat
        padded_weights = slot_weights.new_zeros(n_local * width, columns)
        padded_weights[slot_index] = slot_weights
        return torch.bmm(
            padded_weights.view(n_local, width, columns).transpose(1, 2),
            padded_flat.view(n_local, width, -1),
        )  # [R, c, 3F]
    sums = flat.new_empty(n_local, columns, flat.shape[1])
    starts = local_starts.tolist()
    for row in range(n_local):
        lo, hi = starts[row], starts[row + 1]
        torch.mm(slot_weights[lo:hi].T, flat[lo:hi], out=sums[row])
    return sums


def write_jacobian(
    soap,
    structure: str,
    *,
    vectors,
    pair_species,
    y,
    unit,
    norm,
    weights,
    slot_pair,
    row_start,
    centre_slot,
    out,
    strain_out,
    n_core: int,
    normalize: bool,
    chunk_bytes: int,
    target=None,
) -> None:
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
    chunk_bytes : working memory of the per-pair terms of one chunk of rows.
    """
    device, dtype = y.device, y.dtype
    n_rows, n_k, n_lm = y.shape
    n_l = int(round(math.sqrt(n_lm)))
    n_features = out.shape[2]
    plan = soap.plan
    first = torch.as_tensor(plan.first, device=device)
    second = torch.as_tensor(plan.second, device=device)
    radial = soap.expansion.mixed_radial(weights)
    degree_scale = 1.0 / torch.sqrt(
        2.0 * torch.arange(n_l, dtype=dtype, device=device) + 1.0
    )  # [L]
    counts = row_start[1:] - row_start[:-1]  # [row]
    counts_list = counts.tolist()
    starts = row_start.tolist()
    per_slot = 8 * (20 * n_k * n_l + 8 * n_lm)
    contiguous = n_core == n_features
    # triangle: the plan's pairs are (a, b <= a) in order (PairPlan), so channel a owns the columns
    # offsets[a] : offsets[a + 1] with l fastest; output sub-chunks of ~4 MB stay in cache across
    # the four passes of a channel
    offsets = [a * (a + 1) // 2 * n_l for a in range(n_k + 1)]
    small_launches = _small_launches_are_cheap(device)
    sub = (
        max(1, int(4 * 2**20 // (8 * 3 * n_features)))
        if structure == "triangle" and small_launches
        else 1 << 30
    )
    compiled = (
        structure == "triangle"
        and use_compiled(y, out)
        and (strain_out is None or strain_out.is_contiguous())
    )
    for r0, r1 in _chunks(row_start, max(1, int(chunk_bytes // per_slot))):
        s0, s1 = starts[r0], starts[r1]
        n_slots, n_local = s1 - s0, r1 - r0
        chunk_counts = counts[r0:r1]
        width = max(counts_list[r0:r1])
        uniform = all(c == width for c in counts_list[r0:r1])
        slot_row = torch.repeat_interleave(
            torch.arange(n_local, device=device), chunk_counts
        )  # [E] local
        angular, ab, rhat, slot_vec = _slot_terms(
            vectors, pair_species, slot_pair[s0:s1], radial, n_l, n_k
        )  # [E, 4, lm], [E, 2, L, K], [E, 3], [E, 3]
        # ---- beta, delta: per degree, [row, P*4, 2l+1] @ [row, 2l+1, K]
        if uniform:
            padded = angular.view(n_local, width, 4, n_lm)
        else:
            rank = torch.arange(n_slots, device=device) - (row_start[r0:r1] - s0)[slot_row]
            slot_index = slot_row * width + rank  # [E]
            padded = angular.new_zeros(n_local * width, 4, n_lm)
            padded[slot_index] = angular
            padded = padded.view(n_local, width, 4, n_lm)
        del angular
        yc = y[r0:r1]  # [R, K, lm]
        uv = yc.new_empty(n_l, n_local, width * 4, n_k)  # [L, R, P*4, K]
        for l in range(n_l):
            block = slice(l * l, (l + 1) * (l + 1))
            torch.bmm(
                padded[..., block].reshape(n_local, width * 4, 2 * l + 1),
                yc[:, :, block].transpose(1, 2),
                out=uv[l],
            )
        del padded
        x_rows = unit[r0:r1]  # [R, F']
        slab = out[s0:s1] if target is None else out.new_zeros(n_slots, 3, n_features)
        if compiled:  # one pass: products, normalisation, centre slots and strain
            uv = uv.permute(1, 2, 0, 3).reshape(n_local * width, 4, n_l, n_k)
            if not uniform:
                uv = uv[slot_index]  # [E, 4, L, K]
            slot_scale = (degree_scale[None, :] / norm[r0:r1, None])[slot_row]  # [E, L]
            triangle_slab(
                uv,
                ab,
                rhat,
                slot_scale,
                x_rows,
                slot_vec,
                row_start[r0 : r1 + 1] - s0,
                centre_slot[r0:r1] - s0,
                slab,
                None if strain_out is None else strain_out[r0:r1],
                normalize,
            )
            if target is not None:
                out.index_add_(0, target[s0:s1], slab)
            continue
        x_full = (
            x_rows
            if contiguous
            else torch.cat([x_rows, x_rows.new_zeros(n_local, n_features - n_core)], 1)
        )
        if normalize:  # M beta, M delta
            if structure == "triangle":
                m = _symmetric_weights(x_rows, first, second, n_k, n_l)  # [R, L, K, K]
                m_uv = torch.matmul(uv, m.transpose(0, 1))  # [L, R, P*4, K]
            else:  # diagonal: M = 2 x_kl
                m_uv = uv * (2.0 * x_rows.view(n_local, n_k, n_l).permute(2, 0, 1)[:, :, None, :])
            m_uv = m_uv.permute(1, 2, 0, 3).reshape(n_local * width, 4, n_l, n_k)
            if not uniform:
                m_uv = m_uv[slot_index]
        uv = uv.permute(1, 2, 0, 3).reshape(n_local * width, 4, n_l, n_k)
        if not uniform:
            uv = uv[slot_index]  # [E, 4, L, K]
        slot_scale = (degree_scale[None, :] / norm[r0:r1, None])[slot_row]  # [E, L]
        beta = uv[:, 0]  # [E, L, K]
        delta = uv[:, 1:]  # [E, 3, L, K]
        gamma = ab[:, 0] * slot_scale[:, :, None]  # [E, L, K]
        alpha = (ab[:, 1] * slot_scale[:, :, None])[:, None] * rhat[
            :, :, None, None
        ]  # [E, 3, L, K]
        del ab
        s = None  # x . dv [E, 3], set iff normalize
        if normalize:  # x . dv
            s = torch.einsum("ealk,elk->ea", alpha, m_uv[:, 0]) + torch.einsum(
                "elk,ealk->ea", gamma, m_uv[:, 1:]
            )  # [E, 3]
            del m_uv
        # ---- the slab
        if structure == "diagonal":
            dv = alpha * beta[:, None]  # [E, 3, L, K]
            dv.addcmul_(delta, gamma[:, None]).mul_(2.0)
            view = slab[:, :, :n_core].view(n_slots, 3, n_k, n_l)
            view.copy_(dv.transpose(2, 3))
            if s is not None:
                view.addcmul_(
                    s[:, :, None, None], x_rows[slot_row].view(n_slots, 1, n_k, n_l), value=-1.0
                )
        else:  # triangle
            # straight into GAP's (a, b <= a, l) layout, one channel a at a time, with every
            # factor scaled by 2^(1/4): dv[a, b, l] = sqrt2 (alpha_a beta_b + beta_a alpha_b
            # + gamma_a delta_b + delta_a gamma_b), then f_aa = 1 on the diagonal
            quarter = 2.0**0.25
            fa = (alpha * quarter).transpose(2, 3).contiguous()  # [E, 3, K, L]
            fd = (delta * quarter).transpose(2, 3).contiguous()  # [E, 3, K, L]
            fb = (beta * quarter).transpose(1, 2).unsqueeze(1).contiguous()  # [E, 1, K, L]
            fg = (gamma * quarter).transpose(1, 2).unsqueeze(1).contiguous()  # [E, 1, K, L]
            del alpha, beta, gamma, delta, uv
            for e0 in range(0, n_slots, sub):
                e1 = min(n_slots, e0 + sub)
                part = slab[e0:e1]  # [e, 3, F]
                a_, b_, g_, d_ = fa[e0:e1], fb[e0:e1], fg[e0:e1], fd[e0:e1]
                for a in range(n_k):
                    block = part[:, :, offsets[a] : offsets[a + 1]].view(
                        e1 - e0, 3, a + 1, n_l
                    )  # [e, 3, b, L]
                    torch.mul(a_[:, :, a, None], b_[:, :, : a + 1], out=block)
                    block.addcmul_(b_[:, :, a, None], a_[:, :, : a + 1])
                    block.addcmul_(g_[:, :, a, None], d_[:, :, : a + 1])
                    block.addcmul_(d_[:, :, a, None], g_[:, :, : a + 1])
                    block[:, :, a].mul_(1.0 / SQRT2)  # f_aa = 1
                if not contiguous:
                    part[:, :, n_core:] = 0.0
                if s is not None:
                    part.addcmul_(
                        s[e0:e1, :, None], x_full[slot_row[e0:e1]][:, None, :], value=-1.0
                    )
        # ---- centre slots (-sum of the row) and strain (sum_p r_p (x) dX/dr_p)
        local_starts = row_start[r0 : r1 + 1] - s0
        sums = _row_sums(
            slab,
            slot_vec,
            strain_out is not None,
            local_starts,
            width,
            None if uniform else slot_index,
            small_launches,
        )  # [R, 1 (+3), 3F]
        slab[centre_slot[r0:r1] - s0] = -sums[:, 0].view(n_local, 3, n_features)
        if strain_out is not None:
            strain_out[r0:r1] = sums[:, 1:].view(n_local, 3, 3, n_features)
        if target is not None:
            out.index_add_(0, target[s0:s1], slab)
