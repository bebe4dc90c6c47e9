"""Analytic per-pair Jacobians of the (tensor-reduced) SOAP power spectrum.

For centre ``i`` with unmixed density ``c_i = c0 + sum_p phi_p`` (pair ``p``
with vector ``r_p``, neighbour species ``s_p``; :mod:`tradens.expansion`) the
derivative with respect to one pair vector is

* density: ``d phi_p / d r_p [3, N, lm]`` (forward-mode autograd on the
  radial basis, with ``r``, and on the harmonics, with the three directions;
  ``phi`` depends on nothing else),
* mixed densities: with ``phi = R_nl(r) Y_lm(r_hat)``, the tangent of channel
  ``k`` along axis ``a`` is rank-structured,
  ``dY_{k,lm} = A_kl rhat_a Y_lm + B_kl dY_lm/dr_a`` with ``A = W[s_p]^T R'``
  and ``B = W[s_p]^T R`` (only the ``N`` rows of species ``s_p`` of ``W``),
* power spectrum: ``dP_l[k, b] = sum_m dY1_km Y2_bm + Y1_km dY2_bm`` is then a
  sum of outer products of ``A, B`` with ``u_b = sum_m Y2_bm Y_lm`` and
  ``v_ab = sum_m Y2_bm dY_lm/dr_a``, evaluated only for the stored pairs
  ``(k, b)`` (no ``K x K`` Gram matrix per pair and axis),
* normalisation: ``dx = (dv - x (x . dv)) / |v|``.

Pairs are processed in chunks sized by a working-memory target, and the results
are scattered into the requested layout (atom- or image-resolved) and the strain
derivative ``sum_p r_p (x) dX/dr_p``. The autograd path of
:func:`tradens.gradients.descriptor_gradients` (``method="jvp"``) is the test
reference for this one.
"""

from __future__ import annotations

import math

import torch

from ._density_derivatives import radial_and_angular
from .gradients import DescriptorGradients, atom_entries
from .neighbors import neighbor_list, pair_vectors
from .soap import SOAP, power_spectrum
from .systems import Batch

__all__ = ["soap_pair_gradients"]


def _mix(weights: torch.Tensor | None, radial: torch.Tensor, species: torch.Tensor, n_species: int) -> torch.Tensor:
    """``W[s_p]^T R_p [pair, K, c]`` from ``R [pair, N, c]`` and neighbour species ``[pair]``.

    Pairs are grouped by species so that each species is one matrix product
    (a batch of tiny per-pair products is far slower).
    """
    n_pairs, n_max, n_c = radial.shape
    if weights is None:  # unmixed: the block of species s
        out = radial.new_zeros(n_pairs, n_species, n_max, n_c)
        out[torch.arange(n_pairs, device=radial.device), species] = radial
        return out.reshape(n_pairs, n_species * n_max, n_c)
    blocks = weights.reshape(n_species, n_max, -1)  # [S, N, K]
    order = torch.argsort(species, stable=True)
    counts = torch.bincount(species, minlength=n_species).tolist()
    by_species = radial[order].transpose(1, 2).reshape(-1, n_max)  # [p*c, N], pairs sorted by species
    product = radial.new_empty(n_pairs * n_c, blocks.shape[2])  # [p*c, K]
    start = 0
    for s, count in enumerate(counts):
        if count:
            rows = slice(start * n_c, (start + count) * n_c)
            torch.mm(by_species[rows], blocks[s], out=product[rows])
            start += count
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n_pairs, device=order.device)
    return product.reshape(n_pairs, n_c, -1)[inverse].transpose(1, 2).contiguous()  # [p, K, c]


class _TangentPlan:
    """Index tensors of a :class:`~tradens.soap.PairPlan` for the tangent (built once per call)."""

    def __init__(self, plan, l_max: int, dtype: torch.dtype, device: torch.device):
        self.first = torch.as_tensor(plan.first, device=device)  # [q]
        self.second = torch.as_tensor(plan.second, device=device)  # [q]
        self.second_first = torch.cat([self.second, self.first])  # [2q]
        degrees = torch.arange(l_max + 1, dtype=dtype, device=device)
        factor = torch.as_tensor(plan.factor, dtype=dtype, device=device)
        self.scale = factor[:, None] / torch.sqrt(2.0 * degrees + 1.0)  # [q, l]
        lm_to_l = torch.tensor([l for l in range(l_max + 1) for _ in range(2 * l + 1)], device=device)
        self.blocks_t = torch.nn.functional.one_hot(lm_to_l, l_max + 1).to(dtype).T.contiguous()  # [l, lm]


def _power_spectrum_tangent(mixed, angular, y, k1: int, unit, plan: _TangentPlan, symmetric: bool,
                            weight: torch.Tensor) -> torch.Tensor:
    """Derivative of :func:`tradens.soap.power_spectrum` with respect to each pair vector.

    Parameters
    ----------
    mixed : ``[pair, K1 (+K2), 2L]``, ``W^T R`` then ``W^T R'`` (taper included),
        ``L = l_max + 1``, both densities stacked unless symmetric.
    angular : ``[pair, 4, lm]``, ``Y`` then ``dY/dr_a``.
    y : ``[pair, K1 (+K2), lm]``, the mixed densities of each pair's row (both
        densities stacked unless symmetric).
    unit : ``[pair, 3]`` unit vectors; ``weight [pair]`` multiplies the result.

    Returns ``[pair, 3, q * L]`` (``l`` fastest). With ``A = W^T R'``, ``B = W^T R``,
    ``u_kl = sum_m y_klm Y_lm`` and ``v_akl = sum_m y_klm dY_alm``:
    ``dP_l[k, b] = (A1_kl rhat_a u2_bl + B1_kl v2_abl) + (u1_kl rhat_a A2_bl + v1_akl B2_bl)``.
    """
    n_pairs, n_l = mixed.shape[0], mixed.shape[2] // 2
    # u and v of every channel in one matmul: [p, 4L, lm] @ [p, lm, Kt]
    design = (angular[:, :, None, :] * plan.blocks_t).reshape(n_pairs, 4 * n_l, -1)
    uv = torch.bmm(design, y.transpose(1, 2)).reshape(n_pairs, 4, n_l, -1)  # [p, 4, L, Kt]
    u = uv[:, 0].transpose(1, 2)  # [p, Kt, L]
    v = uv[:, 1:].transpose(2, 3).contiguous()  # [p, 3, Kt, L]
    b, a = mixed[:, :, :n_l], mixed[:, :, n_l:]
    if symmetric:
        a1 = a2 = a
        b1 = b2 = b
        u1 = u2 = u
        v1 = v2 = v
    else:
        a1, a2, b1, b2 = a[:, :k1], a[:, k1:], b[:, :k1], b[:, k1:]
        u1, u2, v1, v2 = u[:, :k1], u[:, k1:], v[:, :, :k1], v[:, :, k1:]
    first, second = plan.first, plan.second
    scale = plan.scale * weight[:, None, None]  # [p, q, l]
    pick = torch.index_select
    along = (pick(a1, 1, first) * pick(u2, 1, second) + pick(u1, 1, first) * pick(a2, 1, second)) * scale
    if symmetric:  # one gather of v for both terms
        gathered = pick(v, 2, plan.second_first)  # [p, 3, 2q, l]
        n_q = first.shape[0]
        values = gathered[:, :, :n_q] * (pick(b1, 1, first) * scale)[:, None]  # [p, 3, q, l]
        values.addcmul_(gathered[:, :, n_q:], (pick(b2, 1, second) * scale)[:, None])
        del gathered
    else:
        values = pick(v2, 2, second)  # [p, 3, q, l]
        values.mul_((pick(b1, 1, first) * scale)[:, None])
        values.addcmul_(pick(v1, 2, first), (pick(b2, 1, second) * scale)[:, None])
    values.addcmul_(along[:, None], unit[:, :, None, None])
    return values.reshape(n_pairs, 3, -1)


def _segment_matrix(local_rows: torch.Tensor, n_rows: int, weights: torch.Tensor) -> torch.Tensor:
    """Dense ``[n_rows * c, pair]`` with ``weights[p, :]`` in row block ``local_rows[p]``; ``weights [pair, c]``."""
    n_pairs, columns = weights.shape
    out = weights.new_zeros(n_rows, columns, n_pairs)
    out[local_rows, :, torch.arange(n_pairs, device=weights.device)] = weights
    return out.reshape(n_rows * columns, n_pairs)


def _density(soap: SOAP, batch: Batch, pair_i, pair_species, species_index, radial, angular,
             weights) -> torch.Tensor:
    """Mixed densities ``Y [atom, K, lm] = W^T c`` (``c`` of :func:`tradens.expansion.expand_density`;
    ``W = 1`` when ``weights`` is None) from the radial terms (``radial[:, :, :L]``, already
    mixed unless ``weights`` is None) and harmonics ``angular[:, 0]`` of the pairs with
    centres ``pair_i`` and neighbour species ``pair_species``."""
    h = soap.hypers
    n_species, n_max, n_l = h.n_species, h.radial.n_max, h.l_max + 1
    lm_to_l = torch.tensor([l for l in range(n_l) for _ in range(2 * l + 1)], device=pair_i.device)
    dtype = batch.positions.dtype
    if weights is None:  # unmixed: accumulate [p, N, lm] into row i*S + s of [atom*S, N*lm]
        out = torch.zeros(batch.n_atoms * n_species, n_max * n_l * n_l, dtype=dtype, device=pair_i.device)
        rows, n_channels = pair_i * n_species + pair_species, n_species * n_max
    else:
        out = torch.zeros(batch.n_atoms, radial.shape[1] * n_l * n_l, dtype=dtype, device=pair_i.device)
        rows, n_channels = pair_i, radial.shape[1]
    blocks_t = torch.nn.functional.one_hot(lm_to_l, n_l).to(dtype).T  # [l, lm]
    for start in range(0, pair_i.shape[0], 1024):  # small chunks: temporaries reuse freed memory
        part = slice(start, start + 1024)
        radial_part = radial[part, :, :n_l].reshape(-1, n_l)  # [p*K, l]
        terms = torch.mm(radial_part, blocks_t).reshape(-1, radial.shape[1], blocks_t.shape[1])
        # terms[p, k, lm] = R[p, k, l(lm)]
        terms.mul_(angular[part, 0][:, None, :])
        out.index_add_(0, rows[part], terms.reshape(terms.shape[0], -1))
    out = out.reshape(batch.n_atoms, n_channels, n_l * n_l)
    if h.density.center_weight != 0.0:  # the centre's own Gaussian, l = 0 only
        center = soap.radial_basis.center_values(dtype, pair_i.device) * (h.density.center_weight
                                                                           / math.sqrt(4.0 * math.pi))  # [n]
        term = out.new_zeros(batch.n_atoms, n_species, n_max)
        if soap.center_all_species:
            term[:] = center * (species_index >= 0).to(dtype)[:, None, None]
        else:
            own = (species_index >= 0).nonzero().squeeze(1)
            term[own, species_index[own]] = center
        term = term.reshape(batch.n_atoms, n_species * n_max)
        out[:, :, 0] += term if weights is None else term @ weights
    return out


def soap_pair_gradients(soap: SOAP, batch: Batch, *, strain: bool = True, images: bool = False,
                        chunk_bytes: int = 16 * 2**20) -> DescriptorGradients:
    """Jacobians of SOAP features (see :func:`tradens.gradients.descriptor_gradients`)."""
    h = soap.hypers
    device = batch.positions.device
    positions = batch.positions.detach()
    cells = batch.cells.detach()
    dtype = positions.dtype
    pairs = neighbor_list(batch, h.cutoff.radius)
    vectors = pair_vectors(batch, pairs, positions, cells)  # [pair, 3]
    species_index = soap.species_map(batch.numbers)  # [atom]
    with torch.no_grad():
        pair_species = species_index[pairs.j]  # [pair]
        known = (pair_species >= 0).nonzero().squeeze(1)
        # radial and angular parts (with derivatives) of every pair with a known neighbour
        n_known, n_l, n_lm = known.shape[0], h.l_max + 1, (h.l_max + 1) ** 2
        radial2 = vectors.new_empty(n_known, h.radial.n_max, 2 * n_l)  # R then R'
        angular = vectors.new_empty(n_known, 4, n_lm)  # Y then dY/dr
        for start in range(0, n_known, 2048):
            part = slice(start, start + 2048)
            radial2[part, :, :n_l], radial2[part, :, n_l:], angular[part, 0], angular[part, 1:] = \
                radial_and_angular(soap, vectors[known[part]])
        w1, w2 = soap.mixing_matrices(dtype, device)
        w1 = None if w1 is None else w1.detach()
        symmetric = w1 is None or w2 is w1  # the same density on both sides
        w2 = w1 if symmetric else w2.detach()
        w_both = None if w1 is None else (w1 if symmetric else torch.cat([w1, w2], dim=1))  # [S*N, K1 (+K2)]
        # W^T R and W^T R' of every pair (unmixed: per chunk, below)
        mixed = None if w_both is None else _mix(w_both, radial2, pair_species[known], h.n_species)
        if mixed is not None:
            del radial2
        # mixed densities of every atom, both sides stacked: [atom, K1 (+K2), lm]
        density = _density(soap, batch, pairs.i[known], pair_species[known], species_index,
                           radial2 if mixed is None else mixed, angular, w_both)
        centres = soap.center_rows(batch)
        row_of_atom = torch.full((batch.n_atoms,), -1, dtype=torch.long, device=device)
        if h.average:
            if images:
                raise ValueError("images=True is per centre; it cannot be combined with average=True")
            rows = torch.arange(batch.n_structures, device=device)
            row_of_atom[centres] = batch.structure[centres]
            y_both = density.new_zeros((batch.n_structures,) + density.shape[1:])
            y_both = y_both.index_add(0, batch.structure[centres], density[centres])
        else:
            rows = centres
            row_of_atom[centres] = torch.arange(centres.shape[0], device=device)
            all_atoms = centres.shape[0] == batch.n_atoms  # centres are sorted
            y_both = density if all_atoms else density[centres]  # [row, K1 (+K2), lm]
        del density
        k1 = y_both.shape[1] if symmetric else w1.shape[1]
        y1, y2 = (y_both, y_both) if symmetric else (y_both[:, :k1], y_both[:, k1:])
        raw = power_spectrum(y1, y2, soap.plan, h.l_max)  # [row, F']
        if h.normalize:
            norm = torch.linalg.vector_norm(raw, dim=1)
            norm = torch.where(norm > 0, norm, torch.ones_like(norm))  # [row]
        else:
            norm = torch.ones(raw.shape[0], dtype=dtype, device=device)
        unit = raw / norm[:, None]  # [row, F']
        n_core = unit.shape[1]
        values = unit
        if h.covariance_sigma0 is not None:
            values = torch.cat([unit, torch.full_like(unit[:, :1], h.covariance_sigma0)], dim=1)
        n_features = values.shape[1]

        pair_rows = row_of_atom[pairs.i]  # [pair]
        active = known[pair_rows[known] >= 0]  # pairs with a derivative
        # output layout
        if images:
            image_pairs = (pair_rows >= 0).nonzero().squeeze(1)  # one entry per image, even zero ones
            counts = torch.bincount(pair_rows[image_pairs], minlength=rows.shape[0])  # [row]
            starts = torch.cumsum(counts + 1, 0) - (counts + 1)  # centre entry of each row
            n_entries = int((counts + 1).sum())
            entry_of_pair = torch.full((len(pairs),), -1, dtype=torch.long, device=device)
            # image pairs are sorted by centre, so their rank within the row is contiguous
            rank = torch.arange(image_pairs.shape[0], device=device) - \
                (torch.cumsum(counts, 0) - counts)[pair_rows[image_pairs]]
            entry_of_pair[image_pairs] = starts[pair_rows[image_pairs]] + 1 + rank
            index = torch.empty(n_entries, 2, dtype=torch.long, device=device)
            shifts = torch.zeros(n_entries, 3, dtype=torch.long, device=device)
            index[starts, 0] = torch.arange(rows.shape[0], device=device)
            index[starts, 1] = rows
            index[entry_of_pair[image_pairs], 0] = pair_rows[image_pairs]
            index[entry_of_pair[image_pairs], 1] = pairs.j[image_pairs]
            shifts[entry_of_pair[image_pairs]] = pairs.shifts[image_pairs]
            plus, minus = entry_of_pair, starts[pair_rows.clamp(min=0)]
        else:
            shifts = None
            index, plus, minus = atom_entries(batch, pairs.i[active], pairs.j[active], row_of_atom, rows.shape[0])
            entry_j = torch.full((len(pairs),), -1, dtype=torch.long, device=device)
            entry_i = torch.full((len(pairs),), -1, dtype=torch.long, device=device)
            entry_j[active], entry_i[active] = plus, minus
            plus, minus = entry_j, entry_i
        n_rows = rows.shape[0]
        if images:
            centre_entry = starts
        else:
            keys = (index[:, 0] * batch.n_atoms + index[:, 1]).contiguous()
            centre_entry = torch.searchsorted(keys, torch.arange(n_rows, device=device) * batch.n_atoms + rows)
        # write each entry once when no two pairs share it (cells larger than twice the cutoff)
        targets = plus[active]
        direct = not h.average and targets.unique().numel() == targets.numel() \
            and not bool(torch.isin(targets, centre_entry).any())
        if direct:
            jacobian = torch.empty(index.shape[0], 3, n_features, dtype=dtype, device=device)
            covered = torch.zeros(index.shape[0], dtype=torch.bool, device=device)
            covered[targets] = True
            covered[centre_entry] = True
            jacobian[~covered] = 0.0  # images of elements outside the species list
            jacobian[:, :, n_core:] = 0.0  # the covariance_sigma0 column
        else:
            jacobian = torch.zeros(index.shape[0], 3, n_features, dtype=dtype, device=device)
        core = jacobian[:, :, :n_core]
        centre_sum = torch.zeros(n_rows, 3, n_core, dtype=dtype, device=device) if not h.average else None
        strain_jacobian = None
        if strain:
            strain_jacobian = torch.zeros(n_rows, 3, 3, n_features, dtype=dtype, device=device)
        core_strain = strain_jacobian[..., :n_core] if strain else None

        on_centre = pair_rows[known] >= 0
        if not bool(on_centre.all()):  # keep the pairs of centres only
            angular = angular[on_centre]
            if mixed is None:
                radial2 = radial2[on_centre]
            else:
                mixed = mixed[on_centre]
        tangent_plan = _TangentPlan(soap.plan, h.l_max, dtype, device)
        inverse_norm = 1.0 / norm  # [row]
        # chunks of pairs sized by the [pair, 3, F] temporaries (small chunks stay in cache)
        n_plan, n_l = len(soap.plan), h.l_max + 1
        per_pair = 8 * (4 * 3 * n_core + 6 * 3 * n_plan * n_l + 4 * (y1.shape[1] + y2.shape[1]) * y1.shape[2])
        chunk = max(1, int(chunk_bytes // per_pair))
        for start in range(0, active.shape[0], chunk):
            sel = active[start:start + chunk]
            local = slice(start, start + sel.shape[0])
            n_pairs = sel.shape[0]
            vec = vectors[sel]  # [p, 3]
            species = pair_species[sel]
            r = pair_rows[sel]
            unit_vectors = vec / torch.linalg.vector_norm(vec, dim=1, keepdim=True)  # [p, 3]
            # dv / |v|
            chunk_mixed = _mix(None, radial2[local], species, h.n_species) if mixed is None else mixed[local]
            dv = _power_spectrum_tangent(chunk_mixed, angular[local], y_both[r], k1, unit_vectors, tangent_plan,
                                         symmetric, inverse_norm[r])  # [p, 3, F']
            del chunk_mixed
            if h.normalize:  # dx = dv/|v| - x (x . dv/|v|)
                x = unit[r]  # [p, F']
                dv.baddbmm_(torch.bmm(dv, x[:, :, None]), x[:, None, :], alpha=-1.0)
            if direct:
                core.index_copy_(0, plus[sel], dv)
            else:
                core.index_add_(0, plus[sel], dv)
            flat = dv.reshape(n_pairs, -1)  # [p, 3F']
            first_row = int(r[0])
            n_local = int(r[-1]) - first_row + 1  # rows are non-decreasing along the pairs
            if n_local <= max(64, n_pairs // 4):
                # per-row sums of dv and of r (x) dv as one matmul: [rows * 4, p] @ [p, 3F']
                weights = torch.cat([torch.ones_like(vec[:, :1]), vec], dim=1) if strain else torch.ones_like(vec[:, :1])
                sums = torch.mm(_segment_matrix(r - first_row, n_local, weights), flat)
                sums = sums.reshape(n_local, weights.shape[1], 3, -1)  # [rows, 1 (+3), 3, F']
                if centre_sum is not None:
                    centre_sum[first_row:first_row + n_local] += sums[:, 0]
                if strain:  # d X / d eps_ab = sum_p r_pa dX/dr_pb
                    core_strain[first_row:first_row + n_local] += sums[:, 1:]
            else:
                if centre_sum is not None:
                    centre_sum.index_add_(0, r, dv)
                if strain:
                    core_strain.index_add_(0, r, vec[:, :, None, None] * dv[:, None, :, :])
            if centre_sum is None:  # averaged: the centre atoms differ within a row
                core.index_add_(0, minus[sel], dv, alpha=-1.0)
        if centre_sum is not None:
            if direct:
                core.index_copy_(0, centre_entry, centre_sum.neg_())
            else:
                core.index_add_(0, centre_entry, centre_sum, alpha=-1.0)
    return DescriptorGradients(values=values, rows=rows, positions=jacobian, index=index, shifts=shifts,
                               strain=strain_jacobian)
