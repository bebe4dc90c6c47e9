"""Analytic per-pair Jacobians of the (tensor-reduced) SOAP power spectrum.

For centre ``i`` with unmixed density ``c_i = c0 + sum_p phi_p`` (pair ``p``
with vector ``r_p``, neighbour species ``s_p``; :mod:`tradens.expansion`) the
derivative with respect to one pair vector is

* density: ``d phi_p / d r_p [3, N, lm]`` (forward-mode autograd on the
  radial basis, with ``r``, and on the harmonics, with the three directions;
  ``phi`` depends on nothing else),
* mixed densities: ``dY_p = W[s_p]^T d phi_p [3, K, lm]`` (only the ``N`` rows
  of species ``s_p`` of ``W`` are touched),
* power spectrum: ``dP_l[a, b] = (2l+1)^{-1/2} sum_m (dY1_am Y2_bm + Y1_am dY2_bm)``,
  gathered in the stored pair order,
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

from .angular import l_of_lm, spherical_harmonics
from .expansion import expand_density
from .gradients import DescriptorGradients, atom_entries
from .neighbors import neighbor_list, pair_vectors
from .radial import cosine_cutoff
from .soap import SOAP, power_spectrum
from .systems import Batch

__all__ = ["soap_pair_gradients"]


def _rowwise_jacobian(function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        (vjp,) = torch.autograd.grad(y, x, grad_outputs=u, create_graph=True)  # [p, d]
        columns = []
        for a in range(x.shape[1]):
            (column,) = torch.autograd.grad(vjp[:, a].sum(), u, retain_graph=a + 1 < x.shape[1])
            columns.append(column)  # [p, ...]
    return y.detach(), torch.stack(columns, dim=1)


def _density_derivative(soap: SOAP, vectors: torch.Tensor) -> torch.Tensor:
    """``d phi / d r [pair, 3, N, lm]`` of single-neighbour densities at ``vectors [pair, 3]``."""
    h = soap.hypers
    lm_to_l = l_of_lm(h.l_max, vectors.device)
    r = torch.linalg.vector_norm(vectors, dim=1)  # [p]
    radial, d_radial = _rowwise_jacobian(
        lambda x: soap.radial_basis(x[:, 0]) * cosine_cutoff(x[:, 0], h.cutoff.radius, h.cutoff.width)[:, None, None],
        r[:, None])  # [p, n, l], [p, 1, n, l]
    harmonics, d_harmonics = _rowwise_jacobian(lambda v: spherical_harmonics(v, h.l_max), vectors)  # [p, lm], [p, 3, lm]
    unit = vectors / r[:, None]  # [p, 3]
    radial, d_radial = radial[:, :, lm_to_l], d_radial[:, 0][:, :, lm_to_l]  # [p, n, lm]
    # d(R Y)/dr_a = R'(r) rhat_a Y + R dY/dr_a
    return (d_radial[:, None] * unit[:, :, None, None] * harmonics[:, None, None, :]
            + radial[:, None] * d_harmonics[:, :, None, :])  # [p, 3, n, lm]


def _mix_tangent(weights: torch.Tensor | None, d_phi: torch.Tensor, species: torch.Tensor,
                 n_species: int) -> torch.Tensor:
    """``dY [pair, 3, K, lm]`` from ``d_phi [pair, 3, N, lm]`` for neighbour species ``[pair]``."""
    n_pairs, _, n_max, n_lm = d_phi.shape
    if weights is None:  # unmixed: place the block of species s
        out = d_phi.new_zeros(n_pairs, 3, n_species, n_max, n_lm)
        out[torch.arange(n_pairs, device=d_phi.device), :, species] = d_phi
        return out.reshape(n_pairs, 3, n_species * n_max, n_lm)
    blocks = weights.reshape(n_species, n_max, -1)[species]  # [p, N, K]
    return torch.einsum("pnk,panm->pakm", blocks, d_phi)


def _power_spectrum_tangent(dy1, y1, dy2, y2, plan, l_max: int, symmetric: bool) -> torch.Tensor:
    """Derivative of :func:`tradens.soap.power_spectrum` along ``(dy1, dy2)``.

    ``dy [pair, 3, K, lm]``, ``y [pair, K, lm]``; returns ``[pair, 3, len(plan)*(l_max+1)]``.
    """
    device = y1.device
    first = torch.as_tensor(plan.first, device=device)
    second = torch.as_tensor(plan.second, device=device)
    factor = torch.as_tensor(plan.factor, dtype=y1.dtype, device=device)
    columns = []
    for l in range(l_max + 1):
        block = slice(l * l, (l + 1) * (l + 1))
        da, b = dy1[..., block], y2[:, None, :, block]  # [p, 3, K1, m], [p, 1, K2, m]
        if plan.dense:
            gram = torch.matmul(da, b.transpose(-1, -2))  # [p, 3, K1, K2]
            if symmetric:
                gram = gram + gram.transpose(-1, -2)
            else:
                gram = gram + torch.matmul(y1[:, None, :, block], dy2[..., block].transpose(-1, -2))
            values = gram[:, :, first, second]  # [p, 3, pair]
        else:
            a, db = y1[:, None, :, block], dy2[..., block]
            values = (da[:, :, first] * b[:, :, second]).sum(-1) + (a[:, :, first] * db[:, :, second]).sum(-1)
        columns.append(values * (factor / math.sqrt(2 * l + 1)))
    stacked = torch.stack(columns, dim=-1)  # [p, 3, pair, l]
    return stacked.reshape(stacked.shape[0], 3, -1)


def soap_pair_gradients(soap: SOAP, batch: Batch, *, strain: bool = True, images: bool = False,
                        chunk_bytes: int = 64 * 2**20) -> DescriptorGradients:
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
        coefficients = expand_density(
            batch, pairs, vectors, species_index, n_species=h.n_species, radial=soap.radial_basis,
            l_max=h.l_max, cutoff=h.cutoff.radius, cutoff_width=h.cutoff.width,
            center_weight=h.density.center_weight, center_all_species=soap.center_all_species,
        )  # [atom, S*N, lm]
        centres = soap.center_rows(batch)
        row_of_atom = torch.full((batch.n_atoms,), -1, dtype=torch.long, device=device)
        if h.average:
            if images:
                raise ValueError("images=True is per centre; it cannot be combined with average=True")
            rows = torch.arange(batch.n_structures, device=device)
            row_of_atom[centres] = batch.structure[centres]
            c_rows = coefficients.new_zeros((batch.n_structures,) + coefficients.shape[1:])
            c_rows = c_rows.index_add(0, batch.structure[centres], coefficients[centres])
        else:
            rows = centres
            row_of_atom[centres] = torch.arange(centres.shape[0], device=device)
            c_rows = coefficients[centres]  # [row, S*N, lm]
        del coefficients
        w1, w2 = soap.mixing_matrices(dtype, device)
        w1 = None if w1 is None else w1.detach()
        symmetric = w1 is None or w2 is w1  # the same density on both sides
        w2 = w1 if symmetric else w2.detach()
        if w1 is None:
            y1 = y2 = c_rows
        else:
            y1 = torch.einsum("rIm,Ik->rkm", c_rows, w1)  # [row, K1, lm]
            y2 = y1 if symmetric else torch.einsum("rIm,Ik->rkm", c_rows, w2)
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
        pair_species = species_index[pairs.j]  # [pair]
        active = ((pair_rows >= 0) & (pair_species >= 0)).nonzero().squeeze(1)  # pairs with a derivative
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
        jacobian = torch.zeros(index.shape[0], 3, n_features, dtype=dtype, device=device)
        strain_jacobian = None
        if strain:
            strain_jacobian = torch.zeros(rows.shape[0], 3, 3, n_features, dtype=dtype, device=device)

        # chunks of pairs: a few [pair, 3, K1, K2] and [pair, 3, F] temporaries
        k1, k2 = y1.shape[1], y2.shape[1]
        per_pair = 8 * 3 * (3 * k1 * k2 + 6 * n_features + 4 * (k1 + k2) * y1.shape[2]) * (3 if strain else 1)
        chunk = max(1, int(chunk_bytes // per_pair))
        for start in range(0, active.shape[0], chunk):
            sel = active[start:start + chunk]
            vec = vectors[sel]  # [p, 3]
            species = pair_species[sel]
            r = pair_rows[sel]
            d_phi = _density_derivative(soap, vec)  # [p, 3, N, lm]
            dy1 = _mix_tangent(w1, d_phi, species, h.n_species)  # [p, 3, K1, lm]
            dy2 = dy1 if symmetric else _mix_tangent(w2, d_phi, species, h.n_species)
            del d_phi
            dv = _power_spectrum_tangent(dy1, y1[r], dy2, y2[r], soap.plan, h.l_max, symmetric)  # [p, 3, F']
            del dy1, dy2
            if h.normalize:
                x = unit[r][:, None, :]  # [p, 1, F']
                dv = (dv - x * (dv * x).sum(-1, keepdim=True)) / norm[r][:, None, None]
            if n_features != n_core:
                dv = torch.cat([dv, dv.new_zeros(dv.shape[0], 3, n_features - n_core)], dim=2)
            jacobian.index_add_(0, plus[sel], dv)
            jacobian.index_add_(0, minus[sel], -dv)
            if strain:
                # d X / d eps_ab = sum_p r_pa dX/dr_pb
                strain_jacobian.index_add_(0, r, vec[:, :, None, None] * dv[:, None, :, :])
    return DescriptorGradients(values=values, rows=rows, positions=jacobian, index=index, shifts=shifts,
                               strain=strain_jacobian)
