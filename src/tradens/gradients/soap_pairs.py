"""Analytic per-pair Jacobians of the (tensor-reduced) SOAP power spectrum.

For centre ``i`` with unmixed density ``c_i = c0 + sum_p phi_p`` (pair ``p``
with vector ``r_p``, neighbour species ``s_p``; :mod:`tradens.density.expansion`) the
derivative with respect to one pair vector is

* density: ``phi_p = f_c(r) R_nl(r) Y_lm(r_hat)`` depends on ``r_p`` only;
  ``R'`` and ``dY/dr`` in closed form (:mod:`tradens.density.derivatives`),
* mixed densities: with ``phi = R_nl(r) Y_lm(r_hat)``, the tangent of channel
  ``k`` along axis ``a`` is rank-structured,
  ``dY_{k,lm} = A_kl rhat_a Y_lm + B_kl dY_lm/dr_a`` with ``A = W[s_p]^T R'``
  and ``B = W[s_p]^T R`` (only the ``N`` rows of species ``s_p`` of ``W``),
* power spectrum: ``dP_l[k, b] = sum_m dY1_km Y2_bm + Y1_km dY2_bm`` is then a
  sum of outer products of ``A, B`` with ``u_b = sum_m Y2_bm Y_lm`` and
  ``v_ab = sum_m Y2_bm dY_lm/dr_a``, evaluated only for the stored pairs
  ``(k, b)`` (no ``K x K`` Gram matrix per pair and axis),
* normalisation: ``dx = (dv - x (x . dv)) / |v|``.

Pairs are processed in blocks of ``BLOCK`` pairs (radial and angular terms) and,
inside, in chunks sized by a working-memory target (small chunks stay in cache);
the results are written into the requested layout (atom- or image-resolved) and
the strain derivative ``sum_p r_p (x) dX/dr_p``. Apart from the output, memory
is bounded by the blocks (a few MB) and ``[row, F]`` arrays. The autograd path of
:func:`tradens.gradients.descriptor_gradients` (``method="jvp"``) is the test
reference for this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..density.derivatives import harmonics_and_gradient
from ..kernels import memory as _memory
from ..representations.soap import SOAP, power_spectrum
from ..systems.batch import Batch
from ..systems.neighbors import Pairs
from .results import DescriptorGradients, _atom_entries
from .soap_jacobian import _small_launches_are_cheap, fast_structure, write_jacobian

__all__ = ["soap_pair_gradients"]

BLOCK = 2048  # pairs per block of radial and angular terms


def _species_block(radial: torch.Tensor, species: torch.Tensor, n_species: int) -> torch.Tensor:
    """Unmixed SOAP: ``R [pair, N, c]`` in its neighbour species block, ``[pair, S*N, c]``."""
    n_pairs, n_max, n_c = radial.shape
    out = radial.new_zeros(n_pairs, n_species, n_max, n_c)
    out[torch.arange(n_pairs, device=radial.device), species] = radial
    return out.reshape(n_pairs, n_species * n_max, n_c)


class _TangentPlan:
    """Index tensors of a :class:`~tradens.representations.soap.PairPlan` for the tangent.

    Built once per call.
    """

    def __init__(self, plan, l_max: int, dtype: torch.dtype, device: torch.device):
        self.first = torch.as_tensor(plan.first, device=device)  # [q]
        self.second = torch.as_tensor(plan.second, device=device)  # [q]
        self.second_first = torch.cat([self.second, self.first])  # [2q]
        degrees = torch.arange(l_max + 1, dtype=dtype, device=device)
        factor = torch.as_tensor(plan.factor, dtype=dtype, device=device)
        self.scale = factor[:, None] / torch.sqrt(2.0 * degrees + 1.0)  # [q, l]
        lm_to_l = torch.tensor(
            [l for l in range(l_max + 1) for _ in range(2 * l + 1)], device=device
        )
        self.blocks_t = (
            torch.nn.functional.one_hot(lm_to_l, l_max + 1).to(dtype).T.contiguous()
        )  # [l, lm]


def _power_spectrum_tangent(
    mixed, angular, y, k1: int, unit, plan: _TangentPlan, symmetric: bool, weight: torch.Tensor
) -> torch.Tensor:
    """Derivative of :func:`tradens.representations.soap.power_spectrum` by each pair vector.

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
    n_q = first.shape[0]
    if symmetric:  # one gather of (A, u, B) and one of v, at the second then the first channel
        small = pick(torch.stack([a1, u1, b1], dim=1), 2, plan.second_first)  # [p, 3, 2q, l]
        a_s, a_f, u_s, u_f = (
            small[:, 0, :n_q],
            small[:, 0, n_q:],
            small[:, 1, :n_q],
            small[:, 1, n_q:],
        )
        b_s, b_f = small[:, 2, :n_q], small[:, 2, n_q:]
        along = (a_f * u_s + u_f * a_s) * scale
        gathered = pick(v, 2, plan.second_first)  # [p, 3, 2q, l]
        values = gathered[:, :, :n_q] * (b_f * scale)[:, None]  # [p, 3, q, l]
        values.addcmul_(gathered[:, :, n_q:], (b_s * scale)[:, None])
        del gathered
    else:
        along = (
            pick(a1, 1, first) * pick(u2, 1, second) + pick(u1, 1, first) * pick(a2, 1, second)
        ) * scale
        values = pick(v2, 2, second)  # [p, 3, q, l]
        values.mul_((pick(b1, 1, first) * scale)[:, None])
        values.addcmul_(pick(v1, 2, first), (pick(b2, 1, second) * scale)[:, None])
    values.addcmul_(along[:, None], unit[:, :, None, None])
    return values.reshape(n_pairs, 3, -1)


def _segment_matrix(local_rows: torch.Tensor, n_rows: int, weights: torch.Tensor) -> torch.Tensor:
    """Dense ``[n_rows * c, pair]``: ``weights[p, :]`` in row block ``local_rows[p]``.

    ``weights`` is ``[pair, c]``.
    """
    n_pairs, columns = weights.shape
    out = weights.new_zeros(n_rows, columns, n_pairs)
    out[local_rows, :, torch.arange(n_pairs, device=weights.device)] = weights
    return out.reshape(n_rows * columns, n_pairs)


def _image_layout(pairs, pair_rows, rows, image_rank):
    """Entries of the image-resolved layout: per row the centre, then its image pairs.

    Returns ``index [entry, 2]``, ``shifts [entry, 3]``, the entry of every pair
    (``-1`` for pairs of non-centres) and the centre entry of every row.
    """
    device = pair_rows.device
    image_pairs = (pair_rows >= 0).nonzero().squeeze(1)  # one entry per image, even zero ones
    image_rows = pair_rows[image_pairs]
    counts = torch.bincount(image_rows, minlength=rows.shape[0])  # [row]
    starts = torch.cumsum(counts + 1, 0) - (counts + 1)  # centre entry of each row
    if image_rank is None:  # pairs are sorted by centre: the rank within the row is contiguous
        rank = (
            torch.arange(image_pairs.shape[0], device=device)
            - (torch.cumsum(counts, 0) - counts)[image_rows]
        )
    else:
        rank = image_rank[image_pairs]
    entry_of_pair = torch.full((len(pairs),), -1, dtype=torch.long, device=device)
    entry_of_pair[image_pairs] = starts[image_rows] + 1 + rank
    n_entries = int((counts + 1).sum())
    index = torch.empty(n_entries, 2, dtype=torch.long, device=device)
    shifts = torch.zeros(n_entries, 3, dtype=torch.long, device=device)
    index[starts, 0] = torch.arange(rows.shape[0], device=device)
    index[starts, 1] = rows
    index[entry_of_pair[image_pairs], 0] = image_rows
    index[entry_of_pair[image_pairs], 1] = pairs.j[image_pairs]
    shifts[entry_of_pair[image_pairs]] = pairs.shifts[image_pairs]
    return index, shifts, entry_of_pair, starts


def soap_pair_gradients(
    soap: SOAP,
    batch: Batch,
    *,
    strain: bool = True,
    images: bool = False,
    chunk_bytes: int = 16 * 2**20,
    image_rank: torch.Tensor | None = None,
    fast: bool = True,
    pairs: Pairs | None = None,
) -> DescriptorGradients:
    """Jacobians of SOAP features (see :func:`tradens.gradients.descriptor_gradients`).

    ``image_rank [pair]`` (images layout only) sets the position of each pair of
    :func:`tradens.systems.neighbors.neighbor_list` within its row (0-based, after the
    centre entry); by default the neighbour-list order. ``fast=False`` forces
    the general per-pair path (tests) instead of :mod:`tradens.gradients.soap_jacobian`
    for symmetric mixed SOAP. ``pairs``: the batch's neighbour pairs when
    already known (their order sets the images layout).
    """
    h = soap.hypers
    if h.average and images:
        raise ValueError("images=True is per centre; it cannot be combined with average=True")
    with torch.no_grad():
        setup = _prepare(soap, batch, pairs, images, image_rank)
        strain_jacobian = None
        if strain:
            strain_jacobian = _memory.zeros(
                setup.n_rows,
                3,
                3,
                setup.n_features,
                dtype=batch.positions.dtype,
                device=batch.positions.device,
            )
        structure = fast_structure(soap, setup.symmetric, setup.weights) if fast else None
        if structure is not None:
            jacobian = _fast_jacobian(soap, structure, setup, strain_jacobian, chunk_bytes)
        else:
            jacobian = _general_jacobian(soap, setup, strain_jacobian, chunk_bytes)
    return DescriptorGradients(
        values=setup.values,
        rows=setup.rows,
        positions=jacobian,
        index=setup.index,
        shifts=setup.shifts,
        strain=strain_jacobian,
    )


@dataclass
class _Setup:
    """What both Jacobian paths of :func:`soap_pair_gradients` need, computed once per batch."""

    vectors: torch.Tensor  # [pair, 3] pair vectors, Å
    pair_species: torch.Tensor  # [pair] species of the neighbour (-1: not listed)
    pair_rows: torch.Tensor  # [pair] row of the pair's centre (-1: not a centre)
    active: torch.Tensor  # [q] pairs with a derivative
    y: torch.Tensor  # [row, Kt, lm] mixed (or unmixed) densities of the rows
    k1: int  # channels of the first density (y[:, :k1]; all of y when symmetric)
    symmetric: bool  # the same density on both sides of the power spectrum
    weights: torch.Tensor | None  # [S*N, Kt] mixing matrices side by side, None unmixed
    unit: torch.Tensor  # [row, F'] features before covariance_sigma0 (normalised)
    norm: torch.Tensor  # [row] norm of the raw power spectrum (1 without normalize)
    values: torch.Tensor  # [row, F] the features
    rows: torch.Tensor  # [row] centre atom (structure when averaged) of each row
    index: torch.Tensor  # [entry, 2] (row, atom) of each output entry
    shifts: torch.Tensor | None  # [entry, 3] cell shift of each entry (images layout)
    plus: torch.Tensor  # [pair] entry that gets +dX/dr_p (-1: none)
    minus: torch.Tensor | None  # [pair] entry that gets -dX/dr_p (atom layout), None for images
    centre_entry: torch.Tensor  # [row] the row's centre entry (-sum_p dX/dr_p)
    direct: bool  # no two pairs share an entry: entries are written once, not added

    @property
    def n_rows(self) -> int:
        return self.rows.shape[0]

    @property
    def n_core(self) -> int:
        return self.unit.shape[1]

    @property
    def n_features(self) -> int:
        return self.values.shape[1]


def _prepare(
    soap: SOAP,
    batch: Batch,
    pairs: Pairs | None,
    images: bool,
    image_rank: torch.Tensor | None,
) -> _Setup:
    """Densities, features and output layout of :func:`soap_pair_gradients` (no autograd)."""
    h = soap.hypers
    device, dtype = batch.positions.device, batch.positions.dtype
    expansion = soap.expansion
    if pairs is None:
        pairs = expansion.pairs(batch)
    vectors = expansion.vectors(
        batch, pairs, batch.positions.detach(), batch.cells.detach()
    )  # [pair, 3]
    species_index = soap.species_map(batch.numbers)  # [atom]
    pair_species = species_index[pairs.j]  # [pair]
    known = (pair_species >= 0).nonzero().squeeze(1)  # neighbours of a listed element
    w1, w2 = soap.mixing_matrices(dtype, device)
    symmetric = w1 is None or w2 is w1  # the same density on both sides
    w1 = None if w1 is None else w1.detach()
    w_both = None if w1 is None else (w1 if symmetric else torch.cat([w1, w2.detach()], dim=1))

    # ---- values: mixed densities of the rows, power spectrum, normalisation
    density = expansion.coefficients(
        batch, pairs, vectors, weights=w_both, species_index=species_index
    )  # [atom, Kt, lm] (mixed) or [atom, S*N, lm]
    rows, row_of_atom, y_both = _row_densities(density, soap.center_rows(batch), batch, h.average)
    del density
    k1 = y_both.shape[1] if symmetric or w1 is None else w1.shape[1]
    y1, y2 = (y_both, y_both) if symmetric else (y_both[:, :k1], y_both[:, k1:])
    raw = power_spectrum(y1, y2, soap.plan, h.l_max)  # [row, F']
    norm = torch.linalg.vector_norm(raw, dim=1) if h.normalize else torch.ones_like(raw[:, 0])
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))  # [row]
    unit = raw / norm[:, None]  # [row, F']
    del raw
    values = unit
    if h.covariance_sigma0 is not None:
        values = torch.cat([unit, torch.full_like(unit[:, :1], h.covariance_sigma0)], dim=1)

    # ---- output layout: plus[pair] gets +dX/dr_p, the row's centre entry -sum_p dX/dr_p
    pair_rows = row_of_atom[pairs.i]  # [pair]
    active = known[pair_rows[known] >= 0]  # pairs with a derivative
    n_rows = rows.shape[0]
    if images:
        index, shifts, plus, centre_entry = _image_layout(pairs, pair_rows, rows, image_rank)
        minus = None
    else:
        shifts = None
        index, entry_j, entry_i = _atom_entries(
            batch, pairs.i[active], pairs.j[active], row_of_atom, n_rows
        )
        plus = torch.full((len(pairs),), -1, dtype=torch.long, device=device)
        minus = torch.full((len(pairs),), -1, dtype=torch.long, device=device)
        plus[active], minus[active] = entry_j, entry_i
        keys = (index[:, 0] * batch.n_atoms + index[:, 1]).contiguous()
        centre_entry = torch.searchsorted(
            keys, torch.arange(n_rows, device=device) * batch.n_atoms + rows
        )
    # write each entry once when no two pairs share it (cells larger than twice the cutoff)
    targets = plus[active]
    direct = (
        not h.average
        and targets.unique().numel() == targets.numel()
        and not bool(torch.isin(targets, centre_entry).any())
    )
    return _Setup(
        vectors,
        pair_species,
        pair_rows,
        active,
        y_both,
        k1,
        symmetric,
        w_both,
        unit,
        norm,
        values,
        rows,
        index,
        shifts,
        plus,
        minus,
        centre_entry,
        direct,
    )


def _row_densities(
    density: torch.Tensor, centres: torch.Tensor, batch: Batch, average: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, the row of every atom (-1: none) and the densities of the rows ``[row, Kt, lm]``.

    A row per centre atom, or per structure (summed over its centres) when ``average``.
    """
    device = batch.positions.device
    row_of_atom = torch.full((batch.n_atoms,), -1, dtype=torch.long, device=device)
    if average:
        rows = torch.arange(batch.n_structures, device=device)
        row_of_atom[centres] = batch.structure[centres]
        y_both = density.new_zeros((batch.n_structures,) + density.shape[1:])
        y_both = y_both.index_add(0, batch.structure[centres], density[centres])
        return rows, row_of_atom, y_both
    row_of_atom[centres] = torch.arange(centres.shape[0], device=device)
    y_both = density if centres.shape[0] == batch.n_atoms else density[centres]  # [row, Kt, lm]
    return centres, row_of_atom, y_both


def _general_jacobian(
    soap: SOAP, setup: _Setup, strain_jacobian: torch.Tensor | None, chunk_bytes: int
) -> torch.Tensor:
    """``[entry, 3, F]`` Jacobian by the per-pair path: blocks of pairs, chunks inside."""
    h = soap.hypers
    vectors, y_both, unit = setup.vectors, setup.y, setup.unit
    pair_species, pair_rows, active = setup.pair_species, setup.pair_rows, setup.active
    plus, minus, direct = setup.plus, setup.minus, setup.direct
    device, dtype = vectors.device, vectors.dtype
    n_l, n_core = h.l_max + 1, setup.n_core
    # zero: images of elements outside the species list, the covariance_sigma0 column
    jacobian = _memory.zeros(setup.index.shape[0], 3, setup.n_features, dtype=dtype, device=device)
    core = jacobian[:, :, :n_core]
    centre_sum = (
        None if h.average else torch.zeros(setup.n_rows, 3, n_core, dtype=dtype, device=device)
    )
    core_strain = None if strain_jacobian is None else strain_jacobian[..., :n_core]
    tangent_plan = _TangentPlan(soap.plan, h.l_max, dtype, device)
    inverse_norm = 1.0 / setup.norm  # [row]
    per_pair = 8 * (
        4 * 3 * n_core + 6 * 3 * len(soap.plan) * n_l + 4 * y_both.shape[1] * y_both.shape[2]
    )
    block_size = (
        BLOCK if _small_launches_are_cheap(device) else 16 * BLOCK
    )  # fewer, larger launches on a GPU
    chunk = max(1, min(block_size, int(chunk_bytes // per_pair)))
    mixer = None if setup.weights is None else soap.expansion.mixed_radial(setup.weights)
    for block_start in range(0, active.shape[0], block_size):
        block = active[block_start : block_start + block_size]
        block_vectors = vectors[block]  # [b, 3]
        distances = torch.linalg.vector_norm(block_vectors, dim=1)  # [b]
        harmonics, d_harmonics = harmonics_and_gradient(block_vectors, h.l_max)
        angular = torch.cat([harmonics[:, None], d_harmonics], dim=1)  # [b, 4, lm]: Y then dY/dr
        del harmonics, d_harmonics
        if mixer is None:  # [b, N, 2L]: f_c R then its r-derivative
            radial2 = torch.cat(soap.expansion.radial_with_derivative(distances), dim=2)
            mixed = None
        else:  # [b, Kt, 2L]: W[s]^T f_c R then W[s]^T (f_c R)'
            mixed = mixer(distances, pair_species[block]).transpose(1, 2).contiguous()
        for start in range(0, block.shape[0], chunk):
            local = slice(start, start + chunk)
            sel = block[local]
            vec = vectors[sel]  # [p, 3]
            r = pair_rows[sel]
            unit_vectors = vec / torch.linalg.vector_norm(vec, dim=1, keepdim=True)  # [p, 3]
            chunk_mixed = (
                mixed[local]
                if mixed is not None
                else _species_block(radial2[local], pair_species[sel], h.n_species)
            )
            # dv / |v|
            dv = _power_spectrum_tangent(
                chunk_mixed,
                angular[local],
                y_both[r],
                setup.k1,
                unit_vectors,
                tangent_plan,
                setup.symmetric,
                inverse_norm[r],
            )  # [p, 3, F']
            del chunk_mixed
            if h.normalize:  # dx = dv/|v| - x (x . dv/|v|)
                x = unit[r]  # [p, F']
                dv.baddbmm_(torch.bmm(dv, x[:, :, None]), x[:, None, :], alpha=-1.0)
            if direct:
                core.index_copy_(0, plus[sel], dv)
            else:
                core.index_add_(0, plus[sel], dv)
            if centre_sum is None and minus is not None:  # averaged (so no images): the
                core.index_add_(0, minus[sel], dv, alpha=-1.0)  # centres differ within a row
            _accumulate_rows(dv, r, vec, centre_sum, core_strain)
    if centre_sum is not None:
        if direct:
            core.index_copy_(0, setup.centre_entry, centre_sum.neg_())
        else:
            core.index_add_(0, setup.centre_entry, centre_sum, alpha=-1.0)
    return jacobian


def _accumulate_rows(
    dv: torch.Tensor, r: torch.Tensor, vec: torch.Tensor, centre_sum, core_strain
) -> None:
    """Add ``sum_p dv_p`` (centre entries) and ``sum_p r_p (x) dv_p`` (strain) per row, in place."""
    n_pairs = dv.shape[0]
    first_row = int(r[0])
    n_local = int(r[-1]) - first_row + 1  # rows are non-decreasing along the pairs
    if n_local <= max(64, n_pairs // 4):  # both sums as one matmul: [rows * 4, p] @ [p, 3F']
        columns = [torch.ones_like(vec[:, :1])] if centre_sum is not None else []
        if core_strain is not None:
            columns.append(vec)
        if not columns:
            return
        weights = torch.cat(columns, dim=1)  # [p, 1 (+3)]
        sums = torch.mm(_segment_matrix(r - first_row, n_local, weights), dv.reshape(n_pairs, -1))
        sums = sums.reshape(n_local, weights.shape[1], 3, -1)  # [rows, 1 (+3), 3, F']
        offset = 0
        if centre_sum is not None:
            centre_sum[first_row : first_row + n_local] += sums[:, 0]
            offset = 1
        if core_strain is not None:  # d X / d eps_ab = sum_p r_pa dX/dr_pb
            core_strain[first_row : first_row + n_local] += sums[:, offset:]
    else:
        if centre_sum is not None:
            centre_sum.index_add_(0, r, dv)
        if core_strain is not None:
            core_strain.index_add_(0, r, vec[:, :, None, None] * dv[:, None, :, :])


def _fast_jacobian(
    soap: SOAP,
    structure: str,
    setup: _Setup,
    strain_jacobian: torch.Tensor | None,
    chunk_bytes: int,
) -> torch.Tensor:
    """The Jacobian of :func:`soap_pair_gradients` by :func:`.soap_jacobian.write_jacobian`.

    Slots are the output entries when every entry receives at most one pair
    (``direct``); otherwise one slot per row (the centre) and per active pair,
    added into the entries.
    """
    vectors, pair_rows, active, index = setup.vectors, setup.pair_rows, setup.active, setup.index
    plus, centre_entry = setup.plus, setup.centre_entry
    n_rows, n_features = setup.n_rows, setup.n_features
    device, dtype = vectors.device, vectors.dtype
    n_entries = index.shape[0]
    if setup.direct:
        slot_pair = torch.full((n_entries,), -1, dtype=torch.long, device=device)
        slot_pair[plus[active]] = active
        per_row = torch.bincount(index[:, 0], minlength=n_rows)
        row_start = torch.cat([per_row.new_zeros(1), torch.cumsum(per_row, 0)])
        centre_slot, target = centre_entry, None
        jacobian = _memory.zeros(
            n_entries, 3, n_features, dtype=dtype, device=device
        )  # covariance_sigma0: 0
    else:
        active_rows = pair_rows[active]  # non-decreasing: pairs are sorted by centre
        per_row = torch.bincount(active_rows, minlength=n_rows) + 1
        row_start = torch.cat([per_row.new_zeros(1), torch.cumsum(per_row, 0)])
        centre_slot = row_start[:-1]
        first_active = torch.cumsum(per_row - 1, 0) - (
            per_row - 1
        )  # index into active of each row's first
        slot_of_active = (
            row_start[active_rows]
            + 1
            + torch.arange(active.shape[0], device=device)
            - first_active[active_rows]
        )
        n_slots = int(row_start[-1])
        slot_pair = torch.full((n_slots,), -1, dtype=torch.long, device=device)
        slot_pair[slot_of_active] = active
        target = torch.empty(n_slots, dtype=torch.long, device=device)
        target[centre_slot] = centre_entry
        target[slot_of_active] = plus[active]
        jacobian = _memory.zeros(n_entries, 3, n_features, dtype=dtype, device=device)
    write_jacobian(
        soap,
        structure,
        vectors=vectors,
        pair_species=setup.pair_species,
        y=setup.y,
        unit=setup.unit,
        norm=setup.norm,
        weights=setup.weights,
        slot_pair=slot_pair,
        row_start=row_start,
        centre_slot=centre_slot,
        out=jacobian,
        strain_out=strain_jacobian,
        n_core=setup.n_core,
        normalize=soap.hypers.normalize,
        chunk_bytes=chunk_bytes,
        target=target,
    )
    return jacobian
