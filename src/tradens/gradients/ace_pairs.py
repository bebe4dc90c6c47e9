"""Analytic per-pair Jacobians of the tensor-reduced ACE (channel-diagonal products).

Used by :func:`tradens.gradients.descriptor_gradients` (``method="pair"``, the
default for such an :class:`~tradens.representations.ace.ACE`); the Jacobian-vector
products of :mod:`tradens.gradients.reference` are its test reference.

In the diagonal mode every feature ``B_i[k, s]`` (channel ``k``, slot ``s``: the
feature's place among those of its channel) is a polynomial in the atomic base
``A_i[k, :]`` of that channel alone. So one vector-Jacobian product with the
cotangent that selects slot ``s`` in every channel and every row gives

    G_i[k, s, lm] = d B_i[k, s] / d A_i[k, lm]

for all ``i`` and ``k`` at once: ``P`` backward passes (``P`` = features per
channel), each through the products of the slot's l-tuple group only
(:meth:`~tradens.invariants.product_basis.ProductBasisPlan.from_blocks` with ``group``, from
per-degree leaves), instead of one pass per feature. The pair
derivatives of the atomic base (pair ``p``: centre ``i``, vector ``r``,
neighbour species ``s_j``) are

    d A_i[k, lm] / d r_a = Q'_kl rhat_a Y_lm + Q_kl dY_lm / d r_a,
    Q_kl = sum_n W[s_j n, k] f_c R_nl(r),

and ``d B_i / d r_p = sum_lm (d A_i / d r_p)[k, lm] G_i[k, s, lm]``: one batched
matrix product per chunk of centres (neighbour lists padded to the longest of
the chunk), ``[centre K, 3 J, lm] @ [centre K, lm, P]``. Entries are scattered to
``(row, j)`` with ``+`` and ``(row, i)`` with ``-``; the strain derivative is
``sum_p r_p (x) dB/dr_p``. With ``normalize`` the chain rule of ``X = B / |B|``
is applied per row at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..density.derivatives import harmonics_and_gradient
from .results import DescriptorGradients, _atom_entries

__all__ = ["ace_pair_gradients"]


def _slots(plan, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Channel ``[F]`` and slot ``[F]`` of every kept feature, and the slots per channel ``P``."""
    channel = np.array([plan.labels[i].k[0] for i in keep.tolist()], dtype=np.int64)
    slot = np.zeros_like(channel)
    seen = np.zeros(plan.n_channels, dtype=np.int64)
    for f, k in enumerate(channel):
        slot[f] = seen[k]
        seen[k] += 1
    if channel.size and not np.all(seen == seen[0]):
        raise ValueError("channel-diagonal ACE features must have as many slots in every channel")
    return torch.as_tensor(channel), torch.as_tensor(slot), int(seen[0]) if channel.size else 0


def _base_gradients(
    plan,
    keep: torch.Tensor,
    base: torch.Tensor,
    channel: torch.Tensor,
    slot: torch.Tensor,
    n_slots: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``B [atom, F]`` and ``G [atom, K, P, lm] = dB[k, s] / dA[k, lm]``.

    Group by group of the product basis (features sharing an l-tuple), so that
    each backward pass runs through that group's products only.
    """
    n_atoms, n_k, n_lm = base.shape
    device = base.device
    n_l = plan.l_max + 1
    n_features = keep.shape[0]
    feature_of_label = torch.full((plan.n_features,), -1, dtype=torch.long)
    feature_of_label[keep] = torch.arange(n_features)
    values = base.new_zeros(n_atoms, n_features)
    out = base.new_zeros(n_atoms, n_k, n_slots, n_lm)
    # one leaf per degree [atom, K, 2l+1]: the backward passes write each block once
    leaves = [
        base[:, :, l * l : (l + 1) * (l + 1)].contiguous().requires_grad_(True) for l in range(n_l)
    ]
    for gi, group in enumerate(plan.groups):
        features = feature_of_label[
            torch.as_tensor(group.positions.reshape(-1))
        ]  # [C] feature or -1
        used = (features >= 0).nonzero().squeeze(1)
        if used.numel() == 0:
            continue
        with torch.enable_grad():
            block = plan.from_blocks(leaves, group=gi)  # [atom, C]
        values[:, features[used].to(device)] = block.detach()[:, used.to(device)]
        if not block.requires_grad:
            continue
        slots_here = torch.full(features.shape, -1, dtype=torch.long)
        slots_here[used] = slot[features[used]]
        distinct = torch.unique(slots_here[used]).tolist()
        for n, s in enumerate(distinct):
            selector = (slots_here == s).to(device=device, dtype=base.dtype)  # [C]
            grads = torch.autograd.grad(
                block,
                leaves,
                grad_outputs=selector.expand_as(block),
                retain_graph=n + 1 < len(distinct),
                allow_unused=True,
            )
            for l, grad in enumerate(grads):
                if grad is not None:
                    out[:, :, s, l * l : (l + 1) * (l + 1)] += grad  # [atom, K, 2l+1]
    return values, out


@dataclass
class _PairTerms:
    """The pairs whose neighbour is a listed element, sorted by centre, and their terms."""

    i: torch.Tensor  # [p] centre
    j: torch.Tensor  # [p] neighbour
    species: torch.Tensor  # [p] neighbour species
    vec: torch.Tensor  # [p, 3] pair vectors, Å
    r: torch.Tensor  # [p] distances, Å
    rhat: torch.Tensor  # [p, 3]
    harmonics: torch.Tensor  # [p, lm]
    d_harmonics: torch.Tensor  # [p, 3, lm]


def _sorted_pair_terms(
    pairs, vectors: torch.Tensor, species_index: torch.Tensor, l_max: int
) -> _PairTerms:
    """:class:`_PairTerms` of ``pairs`` (``vectors [pair, 3]``, ``species_index [atom]``)."""
    known = (species_index[pairs.j] >= 0).nonzero().squeeze(1)
    order = known[torch.argsort(pairs.i[known], stable=True)]  # pairs by centre
    pair_i, pair_j, vec = pairs.i[order], pairs.j[order], vectors[order]
    r = torch.linalg.vector_norm(vec, dim=1)  # [p]
    harmonics, d_harmonics = harmonics_and_gradient(vec, l_max)  # [p, lm], [p, 3, lm]
    return _PairTerms(
        pair_i, pair_j, species_index[pair_j], vec, r, vec / r[:, None], harmonics, d_harmonics
    )


def _chunk_derivatives(
    mixed: torch.Tensor,
    terms: _PairTerms,
    sel: slice,
    lm_to_l: torch.Tensor,
    g: torch.Tensor,
    local: torch.Tensor,
    rank: torch.Tensor,
    width: int,
    channel: torch.Tensor,
    slot: torch.Tensor,
) -> torch.Tensor:
    """``d values / d r_p [q, 3, F]`` of the pairs of one chunk of consecutive centres.

    ``mixed [q, 2L, K]``: the mixed radial terms ``Q`` then ``Q'`` (weights of the neighbour
    species) of the pairs ``terms[sel]``; ``lm_to_l [lm]`` the degree of each ``lm``;
    ``g [c, K, P, lm]`` the chunk's base gradients; ``local [q]`` the centre within the chunk
    and ``rank [q]`` the place in its neighbour list (padded to ``width``); ``channel``,
    ``slot [F]`` pick each feature's column of ``[K, P]``.
    """
    n_centres, n_k, n_slots, n_lm = g.shape
    n_l = mixed.shape[1] // 2
    rhat, harmonics, d_harmonics = terms.rhat[sel], terms.harmonics[sel], terms.d_harmonics[sel]
    q = mixed[:, :n_l].transpose(1, 2)  # [q, K, L]
    dq = mixed[:, n_l:].transpose(1, 2)
    # dA/dr [q, K, 3, lm] = Q' rhat Y + Q dY
    d_base = (
        dq[:, :, None, lm_to_l] * (rhat[:, :, None] * harmonics[:, None, :])[:, None]
        + q[:, :, None, lm_to_l] * d_harmonics[:, None]
    )
    # padding rows stay uninitialised: every output row of the batched product depends on its
    # own input row only, and the padding rows' outputs are never read
    padded = d_base.new_empty(n_centres, n_k, width, 3, n_lm)  # [c, K, J, 3, lm]
    padded[local, :, rank] = d_base
    lhs = padded.view(n_centres * n_k, width * 3, n_lm)
    rhs = g.transpose(2, 3).reshape(n_centres * n_k, n_lm, n_slots)  # [c K, lm, P]
    per_pair = torch.bmm(lhs, rhs).view(n_centres, n_k, width, 3, n_slots)  # [c, K, J, 3, P]
    per_pair = per_pair[local, :, rank].transpose(1, 2)  # [q, 3, K, P]
    return per_pair[:, :, channel.to(g.device), slot.to(g.device)]  # [q, 3, F]


def _joined(parts: list, dim: int):
    """``parts`` concatenated along ``dim`` (no copy for a single embedding)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _normalised(
    values: torch.Tensor,
    jacobian: torch.Tensor,
    strain_jacobian: torch.Tensor | None,
    rows_of_entry: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``X = B / |B|`` and its derivatives ``dX = (dB - X (X . dB)) / |B|`` (``|B| = 0``: 1)."""
    norm = torch.linalg.vector_norm(values, dim=1)  # [row]
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    unit = values / safe[:, None]
    x = unit[rows_of_entry][:, None, :]  # [entry, 1, F]
    jacobian = (jacobian - x * (jacobian * x).sum(-1, keepdim=True)) / safe[
        rows_of_entry, None, None
    ]
    if strain_jacobian is not None:
        xs = unit[:, None, None, :]
        strain_jacobian = (
            strain_jacobian - xs * (strain_jacobian * xs).sum(-1, keepdim=True)
        ) / safe[:, None, None, None]
    return unit, jacobian, strain_jacobian


def ace_pair_gradients(
    ace, batch, *, strain: bool, chunk_bytes: int, pairs=None
) -> DescriptorGradients:
    """Atom-resolved Jacobians of a channel-diagonal ACE (see the module docstring).

    Parameters
    ----------
    ace : ACE
        With ``mode="diagonal"`` for every order.
    batch : Batch
        The structures.
    strain : bool
        Also return ``d values / d eps [row, 3, 3, F]``.
    chunk_bytes : int
        Working memory of the padded per-pair terms of one chunk of centres.
    pairs : Pairs, optional
        The batch's neighbour pairs when already known.
    """
    h = ace.hypers
    dtype, device = batch.positions.dtype, batch.positions.device
    n_atoms = batch.n_atoms
    l_max = max(h.l_max)
    n_l = l_max + 1
    expansion = ace.expansion
    with torch.no_grad():
        if pairs is None:
            pairs = expansion.pairs(batch)
        vectors = expansion.vectors(batch, pairs, batch.positions, batch.cells)  # [pair, 3]
        species_index = ace.species_map(batch.numbers)  # [atom]
        terms = _sorted_pair_terms(pairs, vectors, species_index, l_max)
        pair_i, vec = terms.i, terms.vec
        lm_to_l = torch.tensor([l for l in range(n_l) for _ in range(2 * l + 1)], device=device)
        row_of_atom = torch.arange(n_atoms, device=device)
        index, entry_j, entry_i = _atom_entries(batch, pair_i, terms.j, row_of_atom, n_atoms)
        counts = torch.bincount(pair_i, minlength=n_atoms)  # [atom] pairs per centre
        starts = torch.cumsum(counts, 0) - counts

        value_blocks, position_blocks, strain_blocks = [], [], []
        for name, plan, keep in ace.groups:
            weights = getattr(ace, name).detach().to(dtype=dtype, device=device)  # [S*N, K]
            n_k = weights.shape[1]
            base = expansion.coefficients(
                batch, pairs, vectors, weights=weights, species_index=species_index
            )  # [atom, K, lm]
            channel, slot, n_slots = _slots(plan, keep)
            values, g = _base_gradients(
                plan, keep, base, channel, slot, n_slots
            )  # [atom, F], [atom, K, P, lm]
            n_features = values.shape[1]
            mixer = expansion.mixed_radial(weights)
            jacobian = torch.zeros(index.shape[0], 3, n_features, dtype=dtype, device=device)
            strain_jacobian = (
                torch.zeros(n_atoms, 3, 3, n_features, dtype=dtype, device=device)
                if strain
                else None
            )
            width = int(counts.max()) if counts.numel() else 0
            per_centre = max(1, width) * 3 * n_k * n_l * n_l * vec.element_size() * 2
            chunk = max(1, int(chunk_bytes // per_centre))
            for c0 in range(0, n_atoms if width else 0, chunk):
                c1 = min(n_atoms, c0 + chunk)
                p0, p1 = int(starts[c0]), int(starts[c1 - 1] + counts[c1 - 1])
                if p1 == p0:
                    continue
                sel = slice(p0, p1)
                local = pair_i[sel] - c0  # [q] centre within the chunk
                rank = (
                    torch.arange(p0, p1, device=device) - starts[pair_i[sel]]
                )  # [q] place in the centre's list
                mixed = mixer(terms.r[sel], terms.species[sel])  # [q, 2L, K]: Q then Q'
                d_values = _chunk_derivatives(
                    mixed, terms, sel, lm_to_l, g[c0:c1], local, rank, width, channel, slot
                )  # [q, 3, F]
                jacobian.index_add_(0, entry_j[sel], d_values)
                jacobian.index_add_(0, entry_i[sel], d_values, alpha=-1.0)
                if strain_jacobian is not None:  # strain=True
                    strain_jacobian.index_add_(
                        0, pair_i[sel], vec[sel][:, :, None, None] * d_values[:, None]
                    )
            value_blocks.append(values)
            position_blocks.append(jacobian)
            strain_blocks.append(strain_jacobian)

        values = _joined(value_blocks, 1)  # [row, F]
        jacobian = _joined(position_blocks, 2)  # [entry, 3, F]
        strain_jacobian = _joined(strain_blocks, 3) if strain else None  # [row, 3, 3, F]
        if h.normalize:  # X = B / |B|: dX = (dB - X (X . dB)) / |B|
            values, jacobian, strain_jacobian = _normalised(
                values, jacobian, strain_jacobian, index[:, 0]
            )
    return DescriptorGradients(
        values=values,
        rows=torch.arange(n_atoms, device=device),
        positions=jacobian,
        index=index,
        shifts=None,
        strain=strain_jacobian,
    )
