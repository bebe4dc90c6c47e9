"""Analytic vector-Jacobian product of SOAP: forces and virial of ``E = sum_rows f(X_row)``.

Used by :func:`tradens.gradients.energy_forces_stress` for
:class:`~tradens.representations.soap.SOAP` (every mixing mode and coupling, both radial
bases) when no second derivative is asked for. Autograd runs only from the
mixed densities ``y [atom, K, lm]`` (a detached leaf) through the power
spectrum and the model, which gives ``G = dE/dy [atom, K, lm]`` (all ``K``
channels of both densities when they differ). For a symmetric power spectrum
the leaves are the densities split by degree and by chunks of rows
(:func:`~tradens.representations.soap.power_spectrum_blocks`), so the backward pass writes
every block's gradient once instead of filling a zero tensor of the whole
density for every slice (which cost more than the products themselves).
Then one pass over the pairs,
chunk by chunk of whole centres, contracts ``G`` with the pair derivatives of
the density. For pair ``p`` (centre ``i``, vector ``r``, neighbour species
``s``) the density term is ``Q_kl(r) Y_lm(rhat)`` with ``Q = W[s]^T f_c R``
(mixed) or the species block of ``f_c R`` (unmixed), so

    dE/dr_a = sum_{k,lm} G_iklm (Q'_kl rhat_a Y_lm + Q_kl dY_lm/dr_a)
            = rhat_a sum_lm (Z'_lm - l Z_lm / |r|) Y_lm
              + (1/|r|) sum_lm Z_lm sum_m' C_l[m', a, m] Y_{l-1,m'}

with ``Z_lm = sum_k G_iklm Q_kl`` and ``Z'`` from ``Q'``, using the solid
harmonic gradients ``C_l``
(:func:`tradens.density.derivatives.contract_harmonic_gradients`). ``Z`` is one
batched matrix product per degree over the centres of a chunk (``G_i`` shared
by the pairs of centre ``i``, neighbour lists padded to the longest of the
chunk) in the mixed case, and a gather of ``G[i, s]`` with an elementwise
contraction over the radial index in the unmixed case. Nothing feature-sized
is formed per pair. Pair forces ``dE/dr_p`` are scattered to the atoms
(``+`` on ``j``, ``-`` on ``i``) and ``sum_p r_p (x) dE/dr_p`` gives the strain
derivative. The autograd path of :func:`~tradens.gradients.energy_forces_stress`
(``method="autograd"``) is the test reference.

With the compiled kernels (mixed SOAP on the CPU) the pass is fused: the
mixed radial terms ``Q``, ``Q'`` and the harmonics of every pair are evaluated
once, give the density ``A_i = sum_p Q_p Y_p`` (:func:`tradens.kernels.compiled.pair_density`)
and, after the backward pass through the products, the pair forces
(:func:`tradens.kernels.compiled.pair_forces`), as long as they fit in
``FUSED_BYTES``; beyond that the density expansion and the pair pass each
evaluate them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..density.angular import spherical_harmonics
from ..density.derivatives import contract_harmonic_gradients, solid_gradient_matrices
from ..kernels.compiled import pair_density, pair_forces, use_compiled
from ..representations.soap import power_spectrum_blocks

__all__ = ["soap_energy_and_gradients"]

PAIR_CHUNK = 4096  # pairs per chunk on the CPU (per-pair terms stay in cache)
FUSED_BYTES = 512 * 2**20  # largest store of per-pair terms of the fused compiled path
GRAM_BYTES = 32 * 2**20  # Gram blocks of one chunk of rows in the backward through the products


def soap_energy_and_gradients(soap, model_fn, batch, *, pair_chunk: int | None = None, pairs=None):
    """Energies and ``dE/dx``, ``dE/d eps`` of ``E = sum_rows model_fn(X)`` for SOAP.

    Parameters
    ----------
    soap : SOAP
        The representation.
    model_fn : callable
        ``model_fn(values [row, F], numbers [row]) -> energies [row]``.
    batch : Batch
        The structures.
    pair_chunk : int, optional
        Pairs per chunk (whole centres per chunk); default 4096 on the CPU,
        65536 elsewhere.
    pairs : Pairs, optional
        The batch's neighbour pairs when already known.

    Returns
    -------
    energy : Tensor ``[structure]``
        Detached model energies.
    d_positions : Tensor ``[atom, 3]``
        ``dE/dx`` (energy unit / Å).
    d_strain : Tensor ``[structure, 3, 3]``
        ``dE/d eps`` for the symmetrised strain (energy unit).
    """
    h = soap.hypers
    dtype, device = batch.positions.dtype, batch.positions.device
    expansion = soap.expansion
    with torch.no_grad():
        if pairs is None:
            pairs = expansion.pairs(batch)
        vectors = expansion.vectors(
            batch, pairs, batch.positions.detach(), batch.cells.detach()
        )  # [pair, 3]
        species_index = soap.species_map(batch.numbers)  # [atom]
        w1, w2 = soap.mixing_matrices(dtype, device)
        symmetric = w1 is None or w2 is w1
        w1 = None if w1 is None else w1.detach()
        weights = (
            None if w1 is None else (w1 if symmetric else torch.cat([w1, w2.detach()], dim=1))
        )  # [S*N, Kt]
        rows = soap.center_rows(batch)  # [row] atoms
        if pair_chunk is None:
            pair_chunk = PAIR_CHUNK if device.type == "cpu" else 65536
        fused = _fused_pair_terms(soap, batch, pairs, vectors, species_index, weights, rows)
        if fused is not None:
            density = fused.density  # [atom, Kt, lm]
        else:
            density = expansion.coefficients(
                batch, pairs, vectors, weights=weights, species_index=species_index
            )  # [atom, Kt, lm]
        y, structure_of_row, row_ids, numbers = _row_densities(density, rows, batch, h.average)
    # ---- dE/dy by autograd through the power spectrum and the model only
    with torch.enable_grad():
        if symmetric:
            leaves, values, row_chunk = _symmetric_leaves(soap, y)  # values [row, F]
        else:
            leaf = y.detach().requires_grad_(True)
            k1 = y.shape[1] if w1 is None else w1.shape[1]  # w1 is set (not symmetric)
            leaves = [leaf]
            values = soap._products(leaf[:, :k1], leaf[:, k1:], row_chunk=256, out=None)  # [row, F]
        per_row = model_fn(values, numbers).reshape(-1)  # [row]
        if per_row.shape[0] != values.shape[0]:
            raise ValueError(
                f"model_fn must return one energy per row ({values.shape[0]}), "
                f"got {per_row.shape[0]}"
            )
        energy = torch.zeros(batch.n_structures, dtype=per_row.dtype, device=device)
        energy = energy.index_add(0, row_ids if h.average else structure_of_row, per_row)
        grad_y = None
        if energy.requires_grad and leaves:
            grads = torch.autograd.grad(energy.sum(), leaves, allow_unused=True)
            if symmetric:
                grad_y = _joined_leaf_gradients(grads, y, h.l_max + 1, row_chunk)  # [row, Kt, lm]
            else:
                grad_y = grads[0]
    energy = energy.detach()
    d_positions = torch.zeros(batch.n_atoms, 3, dtype=dtype, device=device)
    d_strain = torch.zeros(batch.n_structures, 3, 3, dtype=dtype, device=device)
    if grad_y is None or pairs.i.shape[0] == 0:
        return energy, d_positions, d_strain
    with torch.no_grad():
        g_atom = _atom_gradients(grad_y, rows, structure_of_row, batch.n_atoms, h.average)
        if fused is not None:
            centre, neighbour, pair_vec = fused.centre, fused.neighbour, fused.vectors
            d_pairs = _fused_pair_gradients(fused, g_atom, h.l_max)  # [p, 3]
        else:
            active = _active_pairs(pairs, species_index, rows, batch.n_atoms)
            centre, neighbour, pair_vec = pairs.i[active], pairs.j[active], vectors[active]
            d_pairs = pair_energy_gradients(
                soap, weights, g_atom, centre, pair_vec, species_index[neighbour], pair_chunk
            )  # [p, 3]
        d_positions.index_add_(0, neighbour, d_pairs)
        d_positions.index_add_(0, centre, d_pairs, alpha=-1.0)
        virial = pair_vec[:, :, None] * d_pairs[:, None, :]  # [p, 3, 3]: r_a dE/dr_b
        d_strain.index_add_(0, batch.structure[centre], virial)
        d_strain = 0.5 * (d_strain + d_strain.transpose(1, 2))
    return energy, d_positions, d_strain


def _row_densities(
    density: torch.Tensor, rows: torch.Tensor, batch, average: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Densities of the feature rows ``y [row, Kt, lm]``, summed per structure when ``average``.

    Also returns the structure of each centre, the row ids and the rows' atomic numbers (0 for
    averaged rows).
    """
    structure_of_row = batch.structure[rows]
    if average:
        y = density.new_zeros((batch.n_structures,) + density.shape[1:])
        y.index_add_(0, structure_of_row, density[rows])  # [structure, Kt, lm]
        row_ids = torch.arange(batch.n_structures, device=batch.positions.device)
        return y, structure_of_row, row_ids, torch.zeros_like(row_ids)
    y = density if rows.shape[0] == batch.n_atoms else density[rows]  # [row, Kt, lm]
    return y, structure_of_row, rows, batch.numbers[rows]


def _symmetric_leaves(soap, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """Autograd leaves of ``y [row, Kt, lm]``, the features ``[row, F]`` and the rows per chunk.

    One leaf per chunk of rows and degree (``[rows, Kt, 2l+1]``): the backward then writes
    each block's gradient directly (slicing one big leaf fills a zero tensor of its size for
    every slice). A chunk's Gram blocks ``[rows, Kt, Kt]`` take about ``GRAM_BYTES``.
    """
    n_l = soap.hypers.l_max + 1
    row_chunk = max(1, GRAM_BYTES // (y.element_size() * y.shape[1] ** 2))
    leaves, parts = [], []
    for start in range(0, y.shape[0], row_chunk):
        blocks = [
            y[start : start + row_chunk, :, l * l : (l + 1) * (l + 1)]
            .contiguous()
            .requires_grad_(True)
            for l in range(n_l)
        ]
        leaves.extend(blocks)
        parts.append(soap._finish_products(power_spectrum_blocks(blocks, blocks, soap.plan)))
    if not parts:  # no centre rows
        return leaves, y.new_zeros(0, soap.n_features), row_chunk
    return leaves, torch.cat(parts) if len(parts) > 1 else parts[0], row_chunk  # [row, F]


def _joined_leaf_gradients(grads: tuple, y: torch.Tensor, n_l: int, row_chunk: int) -> torch.Tensor:
    """``dE/dy [row, Kt, lm]`` from the gradients of the :func:`_symmetric_leaves` (None: 0)."""
    grad_y = torch.zeros_like(y)  # [row, Kt, lm]
    n_chunks = len(grads) // n_l
    for c in range(n_chunks):
        rows_c = slice(c * row_chunk, (c + 1) * row_chunk)
        for l in range(n_l):
            g = grads[c * n_l + l]
            if g is not None:
                grad_y[rows_c, :, l * l : (l + 1) * (l + 1)] = g
    return grad_y


def _atom_gradients(
    grad_y: torch.Tensor,
    rows: torch.Tensor,
    structure_of_row: torch.Tensor,
    n_atoms: int,
    average: bool,
) -> torch.Tensor:
    """``G [atom, Kt, lm]``: ``dE/dy`` of each centre's row, zero for atoms that are not centres.

    With ``average`` a centre takes its structure's row.
    """
    if average:
        g_atom = grad_y.new_zeros((n_atoms,) + grad_y.shape[1:])
        g_atom[rows] = grad_y[structure_of_row]
        return g_atom
    if rows.shape[0] == n_atoms:
        return grad_y
    g_atom = grad_y.new_zeros((n_atoms,) + grad_y.shape[1:])
    g_atom[rows] = grad_y  # [atom, Kt, lm]
    return g_atom


def _fused_pair_gradients(fused, g_atom: torch.Tensor, l_max: int) -> torch.Tensor:
    """``dE/dr_p [p, 3]`` of the fused pairs by the compiled kernel, from ``G [atom, Kt, lm]``."""
    d_pairs = torch.empty_like(fused.vectors)  # [p, 3]
    pair_forces(
        fused.ab,
        fused.centre,
        g_atom.transpose(1, 2).contiguous(),
        fused.harmonics,
        fused.vectors,
        d_pairs,
        solid_gradient_matrices(l_max),
    )
    return d_pairs


def _active_pairs(
    pairs, species_index: torch.Tensor, rows: torch.Tensor, n_atoms: int
) -> torch.Tensor:
    """Pairs of centre rows with a known neighbour species, sorted by centre: indices ``[p]``."""
    is_centre = torch.zeros(n_atoms, dtype=torch.bool, device=rows.device)
    is_centre[rows] = True
    active = ((species_index[pairs.j] >= 0) & is_centre[pairs.i]).nonzero().squeeze(1)
    i = pairs.i[active]
    if i.shape[0] > 1 and not bool((i[1:] >= i[:-1]).all()):
        active = active[torch.argsort(i, stable=True)]
    return active


class _PairTerms(NamedTuple):
    """Per-pair terms of the fused compiled path, pairs in neighbour-species order."""

    centre: torch.Tensor  # [p] centre atom
    neighbour: torch.Tensor  # [p] neighbour atom
    vectors: torch.Tensor  # [p, 3] pair vectors (Å)
    ab: torch.Tensor  # [p, 2, L, Kt] mixed radial values Q and r-derivatives Q' (1/Å)
    harmonics: torch.Tensor  # [p, lm]
    density: torch.Tensor  # [atom, Kt, lm] mixed densities, centre terms included


def _fused_pair_terms(soap, batch, pairs, vectors, species_index, weights, rows):
    """Per-pair terms and mixed densities in one compiled pass (mixed SOAP); None if not served.

    Equal to :func:`~tradens.density.expansion.expand_density` with ``weights`` up to
    the order of the sums over pairs.
    """
    if weights is None or not use_compiled(vectors, weights):
        return None
    h = soap.hypers
    n_l, n_k = h.l_max + 1, weights.shape[1]
    n_lm = n_l * n_l
    active = _active_pairs(pairs, species_index, rows, batch.n_atoms)
    n_pairs = active.shape[0]
    if n_pairs * vectors.element_size() * (2 * n_l * n_k + n_lm + 3) > FUSED_BYTES:
        return None
    pair_species = species_index[pairs.j[active]]
    order = active[
        torch.argsort(pair_species, stable=True)
    ]  # neighbour-species order for the mixing
    species = species_index[pairs.j[order]]  # [p]
    vec = vectors[order]  # [p, 3]
    # all pairs at once (the store is bounded by FUSED_BYTES): a few large kernels instead of many
    # small ones
    ab = vec.new_empty(n_pairs, 2, n_l, n_k)  # [p, 2, L, Kt]: Q, Q'
    soap.expansion.mixed_radial(weights)(
        torch.linalg.vector_norm(vec, dim=1), species, presorted=True, out=ab
    )
    harmonics = spherical_harmonics(vec, h.l_max)  # [p, lm]
    centre = pairs.i[order]
    density_lm = vec.new_zeros(batch.n_atoms, n_lm, n_k)  # [atom, lm, Kt]
    pair_density(ab, centre, harmonics, density_lm)
    density = density_lm.transpose(1, 2).contiguous()  # [atom, Kt, lm]
    if h.density.center_weight != 0.0:
        term = soap.expansion.centre_term(species_index, vec.dtype, vec.device)  # [atom, S*N]
        density[:, :, 0] += term @ weights
    return _PairTerms(centre, pairs.j[order], vec, ab, harmonics, density)


def pair_energy_gradients(
    soap,
    weights,
    g_atom: torch.Tensor,
    centre: torch.Tensor,
    vectors: torch.Tensor,
    species: torch.Tensor,
    pair_chunk: int,
) -> torch.Tensor:
    """``dE/dr_p [pair, 3]`` for pairs sorted by centre.

    Parameters
    ----------
    weights : Tensor ``[S*N, Kt]`` or None
        Mixing matrix (both densities side by side when they differ); None for
        the unmixed SOAP (``Kt = S*N``).
    g_atom : Tensor ``[atom, Kt, lm]``
        ``dE/dy`` of every atom's density.
    centre, vectors, species : Tensor ``[pair]``, ``[pair, 3]`` (Å), ``[pair]``
        Centre atom (non-decreasing), pair vector and neighbour species.
    pair_chunk : int
        Pairs per chunk (whole centres).
    """
    h = soap.hypers
    n_pairs = centre.shape[0]
    device = vectors.device
    out = vectors.new_empty(n_pairs, 3)
    if n_pairs == 0:
        return out
    n_l, n_species = h.l_max + 1, h.n_species
    expansion = soap.expansion
    transform = expansion.radial_terms(vectors.new_ones(1))[1]  # [a, N] or None
    n_max = h.radial.n_max
    if weights is None:  # unmixed: the species block of G, [atom, S, N, lm]
        mix = None
        g_blocks = g_atom.reshape(-1, n_species, n_max, n_l * n_l)
        if transform is not None:  # fold the grid transform: [atom, S, a, lm]
            g_blocks = torch.matmul(transform, g_blocks)
        g_blocks = g_blocks.reshape(-1, g_blocks.shape[2], n_l * n_l)  # [atom*S, c, lm]
    else:  # mixing (and the grid transform) per species: [S, c, Kt]
        mix = weights.reshape(n_species, n_max, -1)
        if transform is not None:
            mix = torch.matmul(transform, mix)
        if use_compiled(vectors, g_atom, weights):
            return _compiled_pair_gradients(
                soap, weights, g_atom, centre, vectors, species, pair_chunk
            )
        g_degrees = [
            g_atom[:, :, l * l : (l + 1) * (l + 1)].contiguous() for l in range(n_l)
        ]  # [atom, Kt, 2l+1]
    first_centre = int(centre[0])
    counts = torch.bincount(centre - first_centre)  # pairs of each centre from the first
    for c0, c1, p0, p1 in _centre_chunks(counts, pair_chunk):
        sel = slice(p0, p1)
        vec = vectors[sel]  # [p, 3]
        r = torch.linalg.vector_norm(vec, dim=1)  # [p]
        if mix is None:
            terms = expansion.radial_terms(r)[0]  # [p, 2, L, c]
            lm_terms = terms[:, :, _lm_to_l(n_l, device)]  # [p, 2, lm, c]
            g_pair = g_blocks.index_select(0, centre[sel] * n_species + species[sel])  # [p, c, lm]
            z = torch.einsum("ptmc,pcm->ptm", lm_terms, g_pair)  # [p, 2, lm]
        else:
            z = _contract_mixed(
                soap,
                r,
                species[sel],
                mix,
                [g[first_centre + c0 : first_centre + c1] for g in g_degrees],
                counts[c0:c1],
            )  # [p, 2, lm]
        out[sel] = contract_harmonic_gradients(vec, z, h.l_max)
    return out


def _compiled_pair_gradients(
    soap, weights, g_atom, centre, vectors, species, pair_chunk: int
) -> torch.Tensor:
    """``dE/dr_p [pair, 3]`` of mixed SOAP by :func:`tradens.kernels.compiled.pair_forces`.

    Pairs are taken in neighbour-species order (one sort), so the mixed radial
    terms ``Q``, ``Q'`` of a chunk are one matrix product per species segment
    (:class:`~tradens.density.derivatives.MixedRadial`); with ``Y`` and ``G`` the
    compiled loop gives ``dE/dr`` of every pair.
    """
    radial = soap.expansion.mixed_radial(weights)
    solid = solid_gradient_matrices(soap.hypers.l_max)
    n_l, n_k = soap.hypers.l_max + 1, weights.shape[1]
    g_lm = g_atom.transpose(1, 2).contiguous()  # [atom, lm, Kt]
    order = torch.argsort(species, stable=True)  # [p]
    vectors, centre, species = vectors[order], centre[order], species[order]
    by_species = vectors.new_empty(vectors.shape[0], 3)
    for p0 in range(0, vectors.shape[0], pair_chunk):
        sel = slice(p0, p0 + pair_chunk)
        vec = vectors[sel]  # [p, 3]
        r = torch.linalg.vector_norm(vec, dim=1)  # [p]
        ab = radial(r, species[sel], presorted=True).view(-1, 2, n_l, n_k)  # [p, 2, L, Kt]: Q, Q'
        pair_forces(
            ab, centre[sel], g_lm, spherical_harmonics(vec, n_l - 1), vec, by_species[sel], solid
        )
    out = torch.empty_like(by_species)
    out[order] = by_species
    return out


def _lm_to_l(n_l: int, device) -> torch.Tensor:
    return torch.tensor([l for l in range(n_l) for _ in range(2 * l + 1)], device=device)


def _centre_chunks(counts: torch.Tensor, size: int) -> list[tuple[int, int, int, int]]:
    """Consecutive centre ranges with about ``size`` pairs: ``(c0, c1, p0, p1)``."""
    counts_list = counts.tolist()
    out = []
    c0 = p0 = 0
    total = 0
    for c, count in enumerate(counts_list):
        if total and total + count > size:
            out.append((c0, c, p0, p0 + total))
            c0, p0, total = c, p0 + total, 0
        total += count
    out.append((c0, len(counts_list), p0, p0 + total))
    return out


def _contract_mixed(
    soap,
    r: torch.Tensor,
    species: torch.Tensor,
    mix: torch.Tensor,
    g_degrees: list,
    counts: torch.Tensor,
) -> torch.Tensor:
    """``Z [p, 2, lm]``: ``Z_tlm = sum_k Q[p, l, t, k] G[i_p, k, lm]`` (consecutive centres' pairs).

    ``Q = rho^(t) M[s_p]`` (``t = 0``: values, ``1``: ``r``-derivatives) is one
    matrix product per neighbour species (pairs sorted by species), written
    pair-major with a zero row; one gather pads the centres' neighbour lists
    to the longest (``counts [centre]``, zeros allowed), then one batched
    product per degree and ``t`` over the centres, ``g_degrees[l] [centre, Kt,
    2l+1]``.
    """
    device = r.device
    n_pairs = r.shape[0]
    n_species, n_c, n_k = mix.shape
    n_centres = counts.shape[0]
    width = int(counts.max())
    order = torch.argsort(species, stable=True)  # pairs grouped by species
    sizes = torch.bincount(species, minlength=n_species).tolist()
    terms = soap.expansion.radial_terms(r.index_select(0, order), layout="degree")[
        0
    ]  # [L, p, 2, c], species order
    n_l = terms.shape[0]
    q = terms.new_empty(n_l, n_pairs + 1, 2, n_k)  # [L, p+1, 2, Kt], pair p zero
    q[:, n_pairs] = 0.0
    start = 0
    for s, size in enumerate(sizes):
        if size:
            block = slice(start, start + size)
            mixed = torch.bmm(
                terms[:, block].reshape(n_l, size * 2, n_c), mix[s].expand(n_l, n_c, n_k)
            )
            q[:, block] = mixed.view(n_l, size, 2, n_k)
            start += size
    # padded slot of every pair (centre order) and the sorted row of every slot
    arange = torch.arange(n_pairs, device=device)
    owner = torch.repeat_interleave(torch.arange(n_centres, device=device), counts)  # [p]
    slot = owner * width + arange - (torch.cumsum(counts, 0) - counts)[owner]  # [p]
    position = torch.empty_like(order).scatter_(0, order, arange)  # sorted row of each pair
    take = torch.full((n_centres * width,), n_pairs, dtype=torch.long, device=device)
    take.scatter_(0, slot, position)
    padded = q.index_select(1, take).view(n_l, n_centres, width * 2, n_k)  # [L, c, 2J, Kt]
    blocks = [
        torch.bmm(padded[l], g_degrees[l]).view(n_centres, width, 2, 2 * l + 1) for l in range(n_l)
    ]  # [c, J, 2, 2l+1]
    z = torch.cat(blocks, dim=3).view(n_centres * width, 2, -1)  # [c J, 2, lm]
    return z.index_select(0, slot)  # [p, 2, lm]
