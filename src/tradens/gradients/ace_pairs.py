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
        known = (species_index[pairs.j] >= 0).nonzero().squeeze(1)
        order = known[torch.argsort(pairs.i[known], stable=True)]  # pairs by centre
        pair_i, pair_j, vec = pairs.i[order], pairs.j[order], vectors[order]
        pair_species = species_index[pair_j]  # [p]
        r = torch.linalg.vector_norm(vec, dim=1)  # [p]
        harmonics, d_harmonics = harmonics_and_gradient(vec, l_max)  # [p, lm], [p, 3, lm]
        rhat = vec / r[:, None]
        lm_to_l = torch.tensor([l for l in range(n_l) for _ in range(2 * l + 1)], device=device)
        row_of_atom = torch.arange(n_atoms, device=device)
        index, entry_j, entry_i = _atom_entries(batch, pair_i, pair_j, row_of_atom, n_atoms)
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
                # mixed radial terms Q, Q' of the chunk's pairs (weights of the neighbour species)
                mixed = mixer(r[sel], pair_species[sel])  # [q, 2L, K]: Q then Q'
                q = mixed[:, :n_l].transpose(1, 2)  # [q, K, L]
                dq = mixed[:, n_l:].transpose(1, 2)
                # dA/dr [q, K, 3, lm] = Q' rhat Y + Q dY
                d_base = (
                    dq[:, :, None, lm_to_l]
                    * (rhat[sel, :, None] * harmonics[sel, None, :])[:, None]
                    + q[:, :, None, lm_to_l] * d_harmonics[sel][:, None]
                )
                # padding rows stay uninitialised: every output row of the batched product depends
                # on its own input row only, and the padding rows' outputs are never read
                padded = d_base.new_empty(c1 - c0, n_k, width, 3, n_l * n_l)  # [c, K, J, 3, lm]
                padded[local, :, rank] = d_base
                lhs = padded.view((c1 - c0) * n_k, width * 3, n_l * n_l)
                rhs = (
                    g[c0:c1].transpose(2, 3).reshape((c1 - c0) * n_k, n_l * n_l, n_slots)
                )  # [c K, lm, P]
                per_pair = torch.bmm(lhs, rhs).view(
                    c1 - c0, n_k, width, 3, n_slots
                )  # [c, K, J, 3, P]
                per_pair = per_pair[local, :, rank].transpose(1, 2)  # [q, 3, K, P]
                d_values = per_pair[:, :, channel.to(device), slot.to(device)]  # [q, 3, F]
                jacobian.index_add_(0, entry_j[sel], d_values)
                jacobian.index_add_(0, entry_i[sel], d_values, alpha=-1.0)
                if strain_jacobian is not None:  # strain=True
                    strain_jacobian.index_add_(
                        0, pair_i[sel], vec[sel][:, :, None, None] * d_values[:, None]
                    )
            value_blocks.append(values)
            position_blocks.append(jacobian)
            strain_blocks.append(strain_jacobian)

        def joined(parts, dim):  # no copy for a single embedding
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)

        values = joined(value_blocks, 1)  # [row, F]
        jacobian = joined(position_blocks, 2)  # [entry, 3, F]
        strain_jacobian = joined(strain_blocks, 3) if strain else None  # [row, 3, 3, F]
        if h.normalize:  # X = B / |B|: dX = (dB - X (X . dB)) / |B|
            norm = torch.linalg.vector_norm(values, dim=1)  # [row]
            safe = torch.where(norm > 0, norm, torch.ones_like(norm))
            unit = values / safe[:, None]
            rows_of_entry = index[:, 0]
            x = unit[rows_of_entry][:, None, :]  # [entry, 1, F]
            jacobian = (jacobian - x * (jacobian * x).sum(-1, keepdim=True)) / safe[
                rows_of_entry, None, None
            ]
            if strain:
                xs = unit[:, None, None, :]
                strain_jacobian = (
                    strain_jacobian - xs * (strain_jacobian * xs).sum(-1, keepdim=True)
                ) / safe[:, None, None, None]
            values = unit
    return DescriptorGradients(
        values=values,
        rows=torch.arange(n_atoms, device=device),
        positions=jacobian,
        index=index,
        shifts=None,
        strain=strain_jacobian,
    )
