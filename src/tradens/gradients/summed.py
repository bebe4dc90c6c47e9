"""Structure-summed SOAP Jacobians: the force and virial design rows of linear potentials.

For ``E = theta . sum_i X_i`` the force rows of a structure are
``-d(sum_i X_i)/dx_a [atom, 3, F]`` and the stress rows come from the virial
``sum_p r_p (x) d(sum_i X_i)/dr_p [3, 3, F]``. :func:`soap_summed_jacobian`
is the one dispatcher of this product (recorded as ``"summed"`` in
:mod:`tradens.gradients.paths`); :func:`_summed_analytic` is its torch
implementation for every SOAP that can define a potential (full, tensor or
element-wise reduced, symmetric or asymmetric mixing, any radial basis,
unknown neighbour elements). It never forms ``[pair, 3, F]`` intermediates:

``dX_i/dr_p`` is bilinear in the pair's mixed density derivative
``dy_p = W_{s_j}^T dphi(r_p)`` and the centre's density ``y_i``. Per block of
atoms (across structure boundaries, buffers allocated once per batch) the
*incoming* pairs ``q`` (``j_q = a``) of each atom give every term from one
evaluation of ``dphi`` per pair:

* neighbour term ``sum_{q: j_q = a} B(W_{s_a}^T dphi_q, y_{i_q})``: one padded
  batched GEMM ``sum_q dphi_q y_{i_q}^T`` per degree (inner dimension
  ``neighbours x (2l+1)``), mixed once per atom;
* centre terms ``G_a = sum_{p: i_p = a} dy_p`` and the virial moments
  ``H_a = sum_p sym(r_p (x) dy_p)`` from the reverse pairs (the list is full:
  ``p = (a, b, r)`` has ``q = (b, a, -r)`` and ``dphi(-r) = (-1)^(l+1) dphi(r)``),
  summed per (atom, element of the other atom) by one sparse product and
  mixed by one GEMM;
* normalisation ``X . dP / |P|`` through the projection vectors ``u``.

An asymmetric mixing (``W1 != W2``) runs the same code on the concatenated
channels ``[W1, W2]``. The per-pair maths (radial basis and taper with their
``r``-derivatives, harmonics and their gradient) comes from
:mod:`tradens.density.derivatives` via
:func:`tradens.gradients.pair_terms.pair_basis_gradient`. Checked against
autograd in ``tests/test_models_jacobian.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import paths
from .pair_terms import (
    _Context,
    check_soap_for_potentials,
    pair_basis_gradient,
    soap_local_features,
)

__all__ = ["soap_summed_jacobian", "soap_local_features", "check_soap_for_potentials"]

_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
_FULL = [0, 5, 4, 5, 1, 3, 4, 3, 2]  # Voigt index of every (a, b), row-major


def soap_summed_jacobian(
    soap, batch, *, atom_chunk: int = 24
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, gradient and virial of the summed features of every structure.

    Parameters
    ----------
    soap : tradens.SOAP
        Every atom a centre, not averaged (:func:`check_soap_for_potentials`).
    batch : tradens.Batch
        The structures.
    atom_chunk : int
        Atoms per block (memory ``~ atom_chunk * neighbours * 6 * lm * N``
        doubles, allocated once per call).

    Returns
    -------
    X : torch.Tensor
        ``[atom, F]`` features, as ``soap.forward(batch)``.
    gradient : torch.Tensor
        ``[atom, 3, F]``: ``d (sum_i X_i) / d x_a`` (the force design rows are
        its negative), 1/Å.
    virial : torch.Tensor
        ``[structure, 3, 3, F]``: ``sum_p r_p (x) d(sum_i X_i)/d r_p``, the
        derivative by a (symmetric) strain.
    """
    if not isinstance(atom_chunk, int) or atom_chunk < 1:
        raise ValueError(f"atom_chunk must be a positive int, got {atom_chunk!r}")
    ctx = _Context(soap, batch)
    with torch.no_grad():
        gradient, voigt = _summed_analytic(ctx, soap.plan, batch, atom_chunk)
    paths.record("summed", "analytic")
    virial = voigt[:, _FULL]  # [structure, 9, F']
    if ctx.extra:  # the constant sigma0 column has no derivative
        gradient = torch.cat([gradient, torch.zeros_like(gradient[..., :1])], dim=-1)
        virial = torch.cat([virial, torch.zeros_like(virial[..., :1])], dim=-1)
    return ctx.features, gradient, virial.reshape(batch.n_structures, 3, 3, -1)


def _summed_analytic(
    ctx: _Context, plan, batch, atom_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient ``[atom, 3, F']`` and Voigt virial ``[structure, 6, F']`` of ``sum_i X_i``.

    ``F'`` excludes the ``sigma0`` column. See the module docstring.
    """
    h = ctx.hypers
    l_max = h.l_max
    dtype, device = batch.positions.dtype, batch.positions.device
    n_atoms, n_lm = batch.n_atoms, (l_max + 1) ** 2
    scale = 1.0 / ctx.norm if h.normalize else torch.ones_like(ctx.norm)  # [atom, 1]
    u1, u2 = _projection_vectors(ctx, plan, l_max)  # [atom, K1, lm], [atom, K2, lm]
    if ctx.symmetric:
        ty = ctx.y1 * scale[:, :, None]  # [atom, C, lm], y / |P|
        u, blocks, offset = u1 + u2, ctx.blocks1, 0
    else:  # channels [K1 | K2]
        ty = torch.cat([ctx.y1, ctx.y2], dim=1) * scale[:, :, None]
        u = torch.cat([u1, u2], dim=1)
        blocks, offset = torch.cat([ctx.blocks1, ctx.blocks2], dim=2), ctx.y1.shape[1]
    n_species, n_max, n_c = blocks.shape
    # one zero block for elements outside the representation (no density contribution)
    blocks = torch.cat([blocks, blocks.new_zeros(1, n_max, n_c)])  # [S+1, N, C]
    species = torch.where(ctx.species_index >= 0, ctx.species_index, n_species)  # [atom]
    first = torch.as_tensor(plan.first, device=device)
    second = torch.as_tensor(plan.second, device=device) + offset
    n_out = len(plan) * (l_max + 1)
    # flat [C, C] positions of the two products dy_k y_k' (T[k, k']) and y_k dy_k' (T[k', k])
    pos_a, pos_b = first * n_c + second, second * n_c + first  # [P]
    directions = torch.arange(9, device=device)[:, None] * (n_c * n_c)  # [9, 1]
    centre_index = torch.cat([(directions + pos_a).reshape(-1), (directions + pos_b).reshape(-1)])
    # the neighbour product comes out as [C (k'), 3, C (k)]: position k' 3C + d C + k
    d3 = torch.arange(3, device=device)[:, None] * n_c
    neighbour_index = torch.cat(
        [
            (second * 3 * n_c + d3 + first).reshape(-1),
            (first * 3 * n_c + d3 + second).reshape(-1),
        ]
    )  # [2 * 3P]
    factor = torch.as_tensor(plan.factor, dtype=dtype, device=device)
    degree_scales = [factor / math.sqrt(2 * l + 1) for l in range(l_max + 1)]  # [P] each
    parity = 1.0 - 2.0 * torch.remainder(ctx.lm_to_l.to(dtype) + 1.0, 2.0)  # (-1)^(l+1), [lm]

    order = torch.argsort(ctx.pairs.j, stable=True)  # the incoming pairs of every atom, contiguous
    i_all, j_all = ctx.pairs.i[order], ctx.pairs.j[order]
    vec_all = ctx.vectors[order]
    counts = torch.bincount(j_all, minlength=n_atoms)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    starts_list, ends_list, counts_list = starts.tolist(), ends.tolist(), counts.tolist()
    work = _Workspace(
        min(atom_chunk, n_atoms),
        max(counts_list, default=0),
        n_lm,
        n_max,
        n_c,
        n_out,
        dtype,
        device,
    )
    terms = _BlockTerms(
        ty_t=ty.transpose(1, 2).contiguous(),  # [atom, lm, C]
        u_t=u.transpose(1, 2).contiguous(),  # [atom, lm, C]
        x_values=ctx.x_values,  # [atom, F']
        blocks=blocks,
        species=species,
        parity=parity,
        centre_index=centre_index,
        neighbour_index=neighbour_index,
        degree_scales=degree_scales,
        normalize=bool(h.normalize),
    )
    gradient = torch.zeros(n_atoms, 3, n_out, dtype=dtype, device=device)
    voigt = torch.zeros(batch.n_structures, 6, n_out, dtype=dtype, device=device)
    inside = torch.tensor([[0.5 * h.cutoff.radius, 0.0, 0.0]], dtype=dtype, device=device)
    for a0 in range(0, n_atoms, atom_chunk):
        a1 = min(a0 + atom_chunk, n_atoms)
        lo, hi = starts_list[a0], ends_list[a1 - 1]
        if hi == lo:
            continue
        # the incoming pairs of every atom padded to nb slots: [row * nb], padding slots point
        # at a dummy pair inside the cutoff whose derivative is zeroed below
        nb = max(counts_list[a0:a1])
        slot = torch.arange(nb, device=device)
        valid = (slot[None, :] < counts[a0:a1, None]).reshape(-1)  # [row*nb]
        index = (starts[a0:a1, None] + slot[None, :]).reshape(-1).clamp(max=hi - 1)
        vec = torch.where(valid[:, None], vec_all[index], inside)  # [row*nb, 3]
        centres = torch.where(valid, i_all[index], i_all[lo])  # [row*nb]
        d_phi = pair_basis_gradient(ctx.soap, vec)  # [row*nb, 3, lm, N]
        padding = (~valid).nonzero().squeeze(1)
        if padding.numel():
            d_phi.view(d_phi.shape[0], -1).index_fill_(0, padding, 0.0)
        out = _block(terms, work, a0, a1, nb, valid, centres, vec, d_phi)  # [row, 9, F']
        gradient[a0:a1] += out[:, :3]
        voigt.index_add_(0, batch.structure[a0:a1], out[:, 3:])
    return gradient, voigt


@dataclass
class _BlockTerms:
    """Per-batch quantities shared by every block (see :func:`_summed_analytic`)."""

    ty_t: torch.Tensor  # [atom, lm, C], y / |P|
    u_t: torch.Tensor  # [atom, lm, C], projection vectors
    x_values: torch.Tensor  # [atom, F']
    blocks: torch.Tensor  # [S+1, N, C]
    species: torch.Tensor  # [atom], S for elements outside the representation
    parity: torch.Tensor  # [lm], (-1)^(l+1)
    centre_index: torch.Tensor  # [2 * 9P]
    neighbour_index: torch.Tensor  # [2 * 3P]
    degree_scales: list[torch.Tensor]  # L x [P]
    normalize: bool


class _Workspace:
    """Buffers of the largest block, allocated once per batch and reused by every block."""

    def __init__(
        self,
        n_rows: int,
        n_neighbours: int,
        n_lm: int,
        n_max: int,
        n_c: int,
        n_out: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        size = max(n_rows * n_neighbours, 1)
        self.padded = torch.empty(size * n_lm * 3 * n_max, dtype=dtype, device=device)
        self.density = torch.empty(size * n_lm * n_c, dtype=dtype, device=device)
        self.output = torch.empty(n_rows * 9 * n_out, dtype=dtype, device=device)

    def padded_view(self, n_rows: int, n_lm: int, nb: int, width: int) -> torch.Tensor:
        """``[row, lm, nb, width]`` view of the pair-derivative buffer (not initialised)."""
        return self.padded[: n_rows * n_lm * nb * width].view(n_rows, n_lm, nb, width)

    def density_flat(self, size: int) -> torch.Tensor:
        """The first ``size`` elements of the centre-density buffer (not initialised)."""
        return self.density[:size]


def _block(
    t: _BlockTerms,
    work: _Workspace,
    a0: int,
    a1: int,
    nb: int,
    valid: torch.Tensor,
    centres: torch.Tensor,
    vec: torch.Tensor,
    d_phi: torch.Tensor,
) -> torch.Tensor:
    """``[row, 9, F']``: gradient (3) and virial (6 Voigt) rows of atoms ``a0:a1``.

    The incoming pairs ``q`` of every atom are padded to ``nb`` slots
    (``[row * nb]``, ``valid`` marks the real ones): centres ``i_q``, vectors
    ``r_q`` ``vec [row*nb, 3]`` (Å) and basis derivatives
    ``d_phi [row*nb, 3, lm, N]`` (1/Å, zero in padding slots).
    """
    dtype, device = vec.dtype, vec.device
    n_rows, n_slots = a1 - a0, vec.shape[0]
    _, _, n_lm, n_max = d_phi.shape
    n_c = t.blocks.shape[2]
    flat_phi = d_phi.view(n_slots, 3 * n_lm * n_max)
    rows = torch.arange(n_rows, device=device).repeat_interleave(nb)  # [row*nb]
    # ---- centre terms G (3) and H (6 Voigt) from the reverse pairs (r_p = -r_q), summed per
    # (atom, element of the other atom) by one sparse product, then mixed by one GEMM
    other = t.species[centres]  # [row*nb]
    present, bucket_of = torch.unique(other, return_inverse=True)
    n_present = present.shape[0]
    bucket = rows * n_present + bucket_of  # [row*nb]
    moments = torch.cat([valid[:, None].to(dtype), -vec], dim=1)  # [row*nb, 4]: 1, -r_q
    gather = torch.sparse_coo_tensor(
        torch.stack(
            [
                (4 * bucket[:, None] + torch.arange(4, device=device)).reshape(-1),
                torch.arange(n_slots, device=device).repeat_interleave(4),
            ]
        ),
        moments.reshape(-1),
        (4 * n_rows * n_present, n_slots),
        check_invariants=False,
    )
    buckets = torch.sparse.mm(gather, flat_phi).reshape(n_rows, n_present, 4, 3, n_lm, n_max)
    second = buckets[:, :, 1:]  # [row, S', 3 (r), 3 (d), lm, N]
    nine = torch.stack(
        [buckets[:, :, 0, d] for d in range(3)]
        + [0.5 * (second[:, :, a, b] + second[:, :, b, a]) for a, b in _VOIGT],
        dim=3,
    )  # [row, S', lm, 9, N]
    nine = nine.permute(0, 2, 3, 1, 4).reshape(n_rows * n_lm * 9, n_present * n_max)
    mixed = nine @ t.blocks[present].reshape(n_present * n_max, n_c)  # [row*lm*9, C]
    mixed = mixed.reshape(n_rows, n_lm, 9, n_c).mul_(t.parity[:, None, None])  # [row, lm, 9, C]
    x_rows = t.x_values[a0:a1]  # [row, F']
    projection = torch.einsum("rmc,rmdc->rd", t.u_t[a0:a1], mixed)  # [row, 9]: <u_a, G_a | H_a>
    # ---- neighbour term sum_q B(W_{s_a}^T dphi_q, ty_{i_q}): padded batched GEMMs per degree
    padded = work.padded_view(n_rows, n_lm, nb, 3 * n_max)  # [row, lm, nb, 3N]
    padded.view(n_rows, n_lm, nb, 3, n_max).copy_(
        d_phi.view(n_rows, nb, 3, n_lm, n_max).permute(0, 3, 1, 2, 4)
    )
    lm = torch.arange(n_lm, device=device)
    where = (centres.view(n_rows, 1, nb) * n_lm + lm[None, :, None]).reshape(-1)  # [row*lm*nb]
    dens = torch.index_select(
        t.ty_t.view(-1, n_c), 0, where, out=work.density_flat(where.shape[0] * n_c).view(-1, n_c)
    ).view(n_rows, n_lm, nb, n_c)  # [row, lm, nb, C]: ty of the centre of every slot
    w_rows = t.blocks[t.species[a0:a1]]  # [row, N, C]
    ty_rows = t.ty_t[a0:a1]  # [row, lm, C]
    n_l = len(t.degree_scales)
    out = work.output[: n_rows * 9 * len(t.degree_scales[0]) * n_l].view(n_rows, 9, -1, n_l)
    for l, scale in enumerate(t.degree_scales):
        block, width = slice(l * l, (l + 1) * (l + 1)), 2 * l + 1
        a = padded[:, block].reshape(n_rows, width * nb, 3 * n_max)
        c = dens[:, block].reshape(n_rows, width * nb, n_c)
        summed = torch.bmm(c.transpose(1, 2), a)  # [row, C (k'), 3N]: sum_q ty_{i_q} dphi_q^T
        neighbour = torch.bmm(summed.view(n_rows, 3 * n_c, n_max), w_rows)  # [row, C*3, C]
        neighbour = neighbour.view(n_rows, -1).index_select(1, t.neighbour_index)
        g = mixed[:, block].reshape(n_rows, width, 9 * n_c).transpose(1, 2)  # [row, 9C, 2l+1]
        centre = torch.bmm(g, ty_rows[:, block]).view(n_rows, -1)  # [row, 9 C C]
        centre = centre.index_select(1, t.centre_index).view(n_rows, 2, 9, -1).sum(1)
        centre[:, :3] -= neighbour.view(n_rows, 2, 3, -1).sum(1)
        out[..., l] = centre.mul_(scale)  # [row, 9, P]: -grad (3), virial (6)
    out = out.view(n_rows, 9, -1)
    out[:, :3].neg_()  # neighbour - B(G_a, ty_a)
    out[:, :3].addcmul_(projection[:, :3, None], x_rows[:, None, :])  # + X_a <u_a, G_a>
    out[:, 3:].addcmul_(projection[:, 3:, None], x_rows[:, None, :], value=-1.0)
    if t.normalize:  # -sum_q <u_{i_q}, W_{s_a}^T dphi_q> X_{i_q}
        wu = torch.bmm(
            t.u_t.index_select(0, centres).view(n_rows, nb * n_lm, n_c), w_rows.transpose(1, 2)
        )  # [row, nb*lm, N]: (W_{s_a} u_{i_q})^T
        s_q = torch.bmm(
            d_phi.view(n_slots, 3, n_lm * n_max), wu.view(n_slots, n_lm * n_max, 1)
        )  # [row*nb, 3, 1], zero in padding slots
        c0, c1 = int(centres.min()), int(centres.max()) + 1
        weights = torch.zeros(n_rows, 3, c1 - c0, dtype=dtype, device=device)
        weights.index_put_(
            (rows[:, None], torch.arange(3, device=device)[None, :], (centres - c0)[:, None]),
            s_q[:, :, 0],
            accumulate=True,
        )
        out[:, :3] -= (weights.view(n_rows * 3, c1 - c0) @ t.x_values[c0:c1]).view(n_rows, 3, -1)
    return out


def _projection_vectors(ctx: _Context, plan, l_max: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    return u1 / ctx.norm[:, :, None], u2 / ctx.norm[:, :, None]
