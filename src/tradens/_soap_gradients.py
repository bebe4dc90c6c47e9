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

from .angular import spherical_harmonics
from .gradients import DescriptorGradients, atom_entries
from .neighbors import neighbor_list, pair_vectors
from .radial import GaussianGridBasis, cosine_cutoff, scaled_spherical_in
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
        # (y * u).sum() rather than grad_outputs=u: the latter imports sympy on first use
        (vjp,) = torch.autograd.grad((y * u).sum(), x, create_graph=True)  # [p, d]
        columns = []
        for a in range(x.shape[1]):
            (column,) = torch.autograd.grad(vjp[:, a].sum(), u, retain_graph=a + 1 < x.shape[1])
            columns.append(column)  # [p, ...]
    return y.detach(), torch.stack(columns, dim=1)


def _radial_with_derivative(soap: SOAP, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        d_taper = -0.5 * math.pi / width * torch.sin(math.pi * t) * (r < h.cutoff.radius).to(r.dtype)
    else:
        d_taper = torch.zeros_like(r)
    basis = soap.radial_basis
    if isinstance(basis, GaussianGridBasis):
        grid = basis._grid.to(dtype=r.dtype, device=r.device)  # [a]
        transform = basis._transform.to(dtype=r.dtype, device=r.device)  # [a, n]
        alpha, l_max = basis.alpha, basis.l_max
        x = 2.0 * alpha * r[:, None] * grid[None, :]  # [p, a]
        gauss = torch.exp(-alpha * (grid[None, :] - r[:, None]) ** 2)  # [p, a]
        bessel = scaled_spherical_in(x, l_max + 1)  # [p, a, l+2]
        degrees = torch.arange(l_max + 1, dtype=r.dtype, device=r.device)
        slope = (-2.0 * alpha * r[:, None]) [:, :, None] + degrees / r[:, None, None]  # [p, 1, l]
        d_rho = gauss[:, :, None] * (slope * bessel[:, :, :-1] + 2.0 * alpha * grid[None, :, None]
                                     * bessel[:, :, 1:])  # [p, a, l]
        radial = torch.einsum("pal,an->pnl", gauss[:, :, None] * bessel[:, :, :-1], transform)  # [p, n, l]
        d_radial = torch.einsum("pal,an->pnl", d_rho, transform)
    else:
        radial, d_radial = _rowwise_jacobian(lambda q: basis(q[:, 0]), r[:, None])
        d_radial = d_radial[:, 0]
    return radial * taper[:, None, None], d_radial * taper[:, None, None] + radial * d_taper[:, None, None]


def _harmonics_with_gradient(vectors: torch.Tensor, l_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real spherical harmonics ``[pair, lm]`` (as :func:`tradens.angular.spherical_harmonics`)
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
            scale = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - k) / math.factorial(l + k))
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
            grads.append((scale * q[l][k] * d_x, scale * q[l][k] * d_y, scale * q[l][k + 1] * azimuth))
    harmonics = torch.stack(values, dim=-1)  # [p, lm]
    d_unit = torch.stack([torch.stack(g, dim=-1) for g in grads], dim=-1)  # [p, 3, lm]
    radial_part = torch.einsum("pa,pal->pl", unit, d_unit)  # [p, lm]
    return harmonics, (d_unit - unit[:, :, None] * radial_part[:, None, :]) / norm[:, :, None]


def _radial_and_angular(soap: SOAP, vectors: torch.Tensor):
    """``R, R' [pair, N, l_max+1]`` (taper included) and ``Y [pair, lm]``, ``dY/dr [pair, 3, lm]``."""
    r = torch.linalg.vector_norm(vectors, dim=1)  # [p]
    radial, d_radial = _radial_with_derivative(soap, r)
    harmonics, d_harmonics = _harmonics_with_gradient(vectors, soap.hypers.l_max)
    return radial, d_radial, harmonics, d_harmonics


def _mix(weights: torch.Tensor | None, radial: torch.Tensor, species: torch.Tensor, n_species: int) -> torch.Tensor:
    """``W[s_p]^T R_p [pair, K, c]`` from ``R [pair, N, c]`` and neighbour species ``[pair]``."""
    n_pairs, n_max, n_c = radial.shape
    if weights is None:  # unmixed: the block of species s
        out = radial.new_zeros(n_pairs, n_species, n_max, n_c)
        out[torch.arange(n_pairs, device=radial.device), species] = radial
        return out.reshape(n_pairs, n_species * n_max, n_c)
    blocks = weights.reshape(n_species, n_max, -1)[species]  # [p, N, K]
    return torch.bmm(blocks.transpose(1, 2), radial)


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


def _power_spectrum_tangent(radial2, angular, y, k1: int, weights, species, n_species: int, unit,
                            plan: _TangentPlan, symmetric: bool, weight: torch.Tensor) -> torch.Tensor:
    """Derivative of :func:`tradens.soap.power_spectrum` with respect to each pair vector.

    Parameters
    ----------
    radial2 : ``[pair, N, 2L]``, ``R`` then ``R'`` (taper included), ``L = l_max + 1``.
    angular : ``[pair, 4, lm]``, ``Y`` then ``dY/dr_a``.
    y : ``[pair, K1 (+K2), lm]``, the mixed densities of each pair's row (both
        densities stacked unless symmetric).
    weights : ``W1`` (or ``[W1 | W2]``) ``[S*N, K1 (+K2)]``, or None (unmixed).
    unit : ``[pair, 3]`` unit vectors; ``weight [pair]`` multiplies the result.

    Returns ``[pair, 3, q * L]`` (``l`` fastest). With ``A = W^T R'``, ``B = W^T R``,
    ``u_kl = sum_m y_klm Y_lm`` and ``v_akl = sum_m y_klm dY_alm``:
    ``dP_l[k, b] = (A1_kl rhat_a u2_bl + B1_kl v2_abl) + (u1_kl rhat_a A2_bl + v1_akl B2_bl)``.
    """
    n_pairs, n_l = radial2.shape[0], radial2.shape[2] // 2
    mixed = _mix(weights, radial2, species, n_species)  # [p, Kt, 2L]
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


def _density(soap: SOAP, batch: Batch, pairs, known, pair_species, species_index, radial2,
             angular) -> torch.Tensor:
    """Unmixed coefficients ``c [atom, S*N, lm]`` (as :func:`tradens.expansion.expand_density`)
    from the already evaluated radial (``radial2[:, :, :L]``) and angular (``angular[:, 0]``)
    terms of the pairs ``known``."""
    h = soap.hypers
    n_species, n_max, n_l, n_lm = h.n_species, h.radial.n_max, h.l_max + 1, (h.l_max + 1) ** 2
    lm_to_l = torch.tensor([l for l in range(n_l) for _ in range(2 * l + 1)], device=known.device)
    dtype = batch.positions.dtype
    flat = torch.zeros(batch.n_atoms * n_species, n_max * n_lm, dtype=dtype, device=known.device)
    for start in range(0, known.shape[0], 8192):
        part = slice(start, start + 8192)
        sel = known[part]
        contribution = radial2[part, :, :n_l][:, :, lm_to_l] * angular[part, 0][:, None, :]  # [p, n, lm]
        flat.index_add_(0, pairs.i[sel] * n_species + pair_species[sel], contribution.reshape(-1, n_max * n_lm))
    coefficients = flat.reshape(batch.n_atoms, n_species * n_max, n_lm)
    if h.density.center_weight != 0.0:
        center = soap.radial_basis.center_values(dtype, known.device) * (h.density.center_weight
                                                                          / math.sqrt(4.0 * math.pi))  # [n]
        term = coefficients.new_zeros(batch.n_atoms, n_species, n_max)
        if soap.center_all_species:
            term[:] = center * (species_index >= 0).to(dtype)[:, None, None]
        else:
            own = (species_index >= 0).nonzero().squeeze(1)
            term[own, species_index[own]] = center
        coefficients[:, :, 0] += term.reshape(batch.n_atoms, n_species * n_max)
    return coefficients


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
        for start in range(0, n_known, 8192):
            part = slice(start, start + 8192)
            radial2[part, :, :n_l], radial2[part, :, n_l:], angular[part, 0], angular[part, 1:] = \
                _radial_and_angular(soap, vectors[known[part]])
        coefficients = _density(soap, batch, pairs, known, pair_species, species_index, radial2,
                                angular)  # [atom, S*N, lm]
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
            all_atoms = centres.shape[0] == batch.n_atoms  # centres are sorted
            c_rows = coefficients if all_atoms else coefficients[centres]  # [row, S*N, lm]
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
            del c_rows  # the unmixed density is not needed any more
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
            radial2, angular = radial2[on_centre], angular[on_centre]
        k1 = y1.shape[1]
        y_both = y1 if symmetric else torch.cat([y1, y2], dim=1)  # [row, K1 (+K2), lm]
        w_both = None if w1 is None else (w1 if symmetric else torch.cat([w1, w2], dim=1))
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
            dv = _power_spectrum_tangent(radial2[local], angular[local], y_both[r], k1, w_both, species,
                                         h.n_species, unit_vectors, tangent_plan, symmetric,
                                         inverse_norm[r])  # [p, 3, F']
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
