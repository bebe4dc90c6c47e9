"""The neighbour density expansion.

For centre ``i`` the smeared neighbour density of species ``s`` is expanded as

.. math::

    c^{s}_{i,nlm} = \\sum_{j \\in i,\\, s_j = s} f_c(r_{ij})\\, R_{nl}(r_{ij})\\,
    Y_{lm}(\\hat r_{ij}) \\;+\\; w_0\\, \\delta_{s s_i}\\, R_{n0}(0)\\, Y_{00} ,

with every periodic image ``j`` within the cutoff (``R`` from
:mod:`tradens.radial`, real ``Y`` from :mod:`tradens.angular`, cosine taper
``f_c``). The result is dense over the unmixed channels ``I = s*N + n``:
``c [atom, S*N, (l_max+1)^2]``. Mixing into ``K`` channels is a matrix product
with ``W [S*N, K1]`` (:mod:`tradens.embeddings`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .angular import l_of_lm, spherical_harmonics
from .neighbors import Pairs
from .radial import cosine_cutoff
from .systems import Batch

__all__ = ["SpeciesMap", "expand_density"]


class SpeciesMap:
    """Maps atomic numbers to species channel indices.

    Parameters
    ----------
    species : sequence of int or None
        Atomic numbers in channel order. ``None`` is the wildcard: every atom is
        the single species 0 (GAP ``species_Z=0``).
    unknown : {"error", "skip"}
        What to do with atoms whose element is not in ``species``: raise a
        ``ValueError`` naming it, or ignore them as neighbours (GAP's behaviour;
        they are still centres, without a centre term).
    """

    def __init__(self, species, unknown: str = "error"):
        if unknown not in ("error", "skip"):
            raise ValueError(f"unknown_species must be 'error' or 'skip', got {unknown!r}")
        self.species = None if species is None else tuple(int(z) for z in species)
        self.unknown = unknown
        if self.species is not None:
            if len(set(self.species)) != len(self.species):
                raise ValueError(f"species contains duplicates: {list(self.species)}")
            table = torch.full((max(max(self.species), 0) + 1,), -1, dtype=torch.long)
            for index, z in enumerate(self.species):
                table[z] = index
            self._table = table

    @property
    def n_species(self) -> int:
        """Number of species channels ``S``."""
        return 1 if self.species is None else len(self.species)

    def __call__(self, numbers: torch.Tensor) -> torch.Tensor:
        """Species index of each atom, ``[atom]``, ``-1`` for skipped elements."""
        if self.species is None:
            return torch.zeros_like(numbers)
        table = self._table.to(numbers.device)
        clipped = numbers.clamp(max=table.shape[0] - 1)
        index = torch.where(numbers < table.shape[0], table[clipped], torch.full_like(numbers, -1))
        if self.unknown == "error" and bool((index < 0).any()):
            missing = sorted({int(z) for z in numbers[index < 0].cpu().tolist()})
            raise ValueError(
                f"element(s) with atomic number {missing} not in species {list(self.species)}; "
                "add them to the species list or pass unknown_species='skip'"
            )
        return index


def expand_density(
    batch: Batch,
    pairs: Pairs,
    vectors: torch.Tensor,
    species_index: torch.Tensor,
    *,
    n_species: int,
    radial,
    l_max: int,
    cutoff: float,
    cutoff_width: float,
    center_weight: float,
    center_all_species: bool,
    pair_chunk: int = 16384,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Density coefficients of every atom, unmixed or mixed.

    Parameters
    ----------
    batch : Batch
        The structures.
    pairs : Pairs
        Neighbour pairs within ``cutoff``.
    vectors : torch.Tensor
        ``r_ij [pair, 3]`` in Å (differentiable).
    species_index : torch.Tensor
        Species channel of each atom ``[atom]``, ``-1`` for ignored elements.
    n_species : int
        Number of species channels ``S``.
    radial : callable
        Radial basis, ``r [pair] -> R [pair, n, l]`` with ``center_values``.
    l_max : int
        Largest angular degree.
    cutoff, cutoff_width : float
        Cutoff radius and cosine taper width, Å.
    center_weight : float
        Weight of the centre atom's own Gaussian.
    center_all_species : bool
        Put the centre term in every species channel (else only the centre's own).
    pair_chunk : int
        Bound on the pairs processed at once (bounds the per-pair intermediates;
        a chunk never splits the neighbours of one atom).
    weights : torch.Tensor, optional
        Mixing matrix ``W [S*N, K]``. When given, the mixed density
        ``A [atom, K, lm] = sum_I W[I, k] c[atom, I, lm]`` is returned instead
        of ``c`` (differentiable in ``W``). It is computed per pair, without
        forming ``c``, when that is cheaper (``K < S*N``).

    Returns
    -------
    torch.Tensor
        ``c [atom, S*N, (l_max+1)^2]``, or ``A [atom, K, (l_max+1)^2]`` with ``weights``.
    """
    dtype, device = vectors.dtype, vectors.device
    n_max = radial.n_max
    if weights is not None and weights.shape[0] != n_species * n_max:
        raise ValueError(f"weights must have {n_species * n_max} rows (S*N), got {tuple(weights.shape)}")
    neighbor_species = species_index[pairs.j]  # [pair]
    i, s_j = pairs.i, neighbor_species
    if not bool((neighbor_species >= 0).all()):
        keep = (neighbor_species >= 0).nonzero().squeeze(1)
        i, s_j, vectors = i[keep], s_j[keep], vectors[keep]
    if i.shape[0] > 1 and not bool((i[1:] >= i[:-1]).all()):
        order = torch.argsort(i, stable=True)
        i, s_j, vectors = i[order], s_j[order], vectors[order]
    if weights is None and n_species == 1:
        weights_or_identity = None  # per-pair path with R itself (K = N)
        per_pair = True
    else:
        weights_or_identity = weights
        per_pair = weights is not None and weights.shape[1] < n_species * n_max
    if per_pair:
        mixed = _expand_per_pair(batch.n_atoms, i, s_j, vectors, weights_or_identity, n_species=n_species,
                                 radial=radial, l_max=l_max, cutoff=cutoff, cutoff_width=cutoff_width,
                                 pair_chunk=pair_chunk)  # [atom, K, lm]
    else:
        mixed = _expand_unmixed(batch.n_atoms, i, s_j, vectors, n_species=n_species, radial=radial,
                                l_max=l_max, cutoff=cutoff, cutoff_width=cutoff_width,
                                pair_chunk=pair_chunk)  # [atom, S*N, lm]
    if center_weight != 0.0:
        center = radial.center_values(dtype, device) * (center_weight / math.sqrt(4.0 * math.pi))  # [n]
        present = (species_index >= 0).to(dtype)  # [atom]
        if center_all_species:
            owner = present[:, None].expand(-1, n_species)  # [atom, S]
        else:
            owner = torch.zeros(batch.n_atoms, n_species, dtype=dtype, device=device)
            atoms = (species_index >= 0).nonzero().squeeze(1)
            owner = owner.index_put((atoms, species_index[atoms]), torch.ones_like(atoms, dtype=dtype))
        term = (owner[:, :, None] * center[None, None, :]).reshape(batch.n_atoms, n_species * n_max)
        if per_pair and weights_or_identity is not None:
            term = term @ weights_or_identity  # [atom, K]
        mixed = torch.cat([mixed[:, :, :1] + term[:, :, None], mixed[:, :, 1:]], dim=2)
    if weights is not None and not per_pair:
        mixed = torch.einsum("aIm,Ik->akm", mixed, weights)  # [atom, K, lm]
    return mixed


def _pair_terms(vectors: torch.Tensor, radial, l_max: int, cutoff: float, cutoff_width: float):
    """Tapered radial values ``[p, n, l]`` and harmonics ``[p, lm]`` of pair vectors."""
    with torch.profiler.record_function("expansion/pair_terms"):
        r = torch.linalg.vector_norm(vectors, dim=1)  # [p]
        taper = cosine_cutoff(r, cutoff, cutoff_width)  # [p]
        radial_values = radial(r) * taper[:, None, None]  # [p, n, l]
        harmonics = spherical_harmonics(vectors, l_max)  # [p, lm]
    return radial_values, harmonics


def _atom_chunks(n_atoms: int, i: torch.Tensor, pair_chunk: int):
    """Contiguous atom ranges whose (sorted) pairs number about ``pair_chunk`` at most.

    Yields ``(atom_start, atom_stop, pair_start, pair_stop)``.
    """
    n_pairs = i.shape[0]
    if n_pairs <= pair_chunk:
        yield 0, n_atoms, 0, n_pairs
        return
    starts = torch.searchsorted(i, torch.arange(n_atoms + 1, device=i.device)).cpu().numpy()
    atom = 0
    while atom < n_atoms:
        # last atom whose pairs still end within pair_chunk of this chunk's first pair
        stop = int(np.searchsorted(starts, starts[atom] + pair_chunk, side="right")) - 1
        stop = min(max(stop, atom + 1), n_atoms)
        yield atom, stop, int(starts[atom]), int(starts[stop])
        atom = stop


def _expand_unmixed(n_atoms: int, i, s_j, vectors, *, n_species: int, radial, l_max: int, cutoff: float,
                    cutoff_width: float, pair_chunk: int) -> torch.Tensor:
    """``c [atom, S*N, lm]`` by per-pair outer products and ``index_add``."""
    dtype, device = vectors.dtype, vectors.device
    n_max, n_lm = radial.n_max, (l_max + 1) ** 2
    lm_to_l = l_of_lm(l_max, device)  # [lm]
    coefficients = torch.zeros(n_atoms * n_species, n_max * n_lm, dtype=dtype, device=device)
    for start in range(0, i.shape[0], pair_chunk):
        sel = slice(start, start + pair_chunk)
        radial_values, harmonics = _pair_terms(vectors[sel], radial, l_max, cutoff, cutoff_width)
        contribution = radial_values[:, :, lm_to_l] * harmonics[:, None, :]  # [p, n, lm]
        coefficients = coefficients.index_add(0, i[sel] * n_species + s_j[sel],
                                              contribution.reshape(-1, n_max * n_lm))
    return coefficients.reshape(n_atoms, n_species * n_max, n_lm)


def _expand_per_pair(n_atoms: int, i, s_j, vectors, weights, *, n_species: int, radial, l_max: int,
                     cutoff: float, cutoff_width: float, pair_chunk: int) -> torch.Tensor:
    """Mixed density ``A [atom, K, lm]`` without the unmixed ``c``.

    Per pair ``Q[p, l, k] = sum_n W[s_p N + n, k] R[p, n, l]`` (one matrix
    product per neighbour species, pairs grouped by species), then per atom and
    degree ``A_l[i] = Q_l[i]^T Y_l[i]`` as a batched product over the atoms'
    neighbour lists padded to a common length. ``weights=None`` means
    ``W = 1`` (one species, unmixed).
    """
    dtype, device = vectors.dtype, vectors.device
    n_max, n_l, n_lm = radial.n_max, l_max + 1, (l_max + 1) ** 2
    n_channels = n_max if weights is None else weights.shape[1]
    blocks = []
    for atom_start, atom_stop, pair_start, pair_stop in _atom_chunks(n_atoms, i, pair_chunk):
        n_chunk = atom_stop - atom_start
        if pair_stop == pair_start:
            blocks.append(torch.zeros(n_chunk, n_channels, n_lm, dtype=dtype, device=device))
            continue
        ci = i[pair_start:pair_stop] - atom_start  # [p]
        cs = s_j[pair_start:pair_stop]  # [p]
        vec = vectors[pair_start:pair_stop]  # [p, 3]
        counts = torch.bincount(ci, minlength=n_chunk)  # [atom]
        first = torch.cumsum(counts, 0) - counts  # [atom]
        rank = torch.arange(ci.shape[0], device=device) - first[ci]  # [p] position in its atom's list
        width = int(counts.max())  # padded neighbour-list length J
        slot = ci * width + rank  # [p]
        if weights is not None and n_species > 1:
            order = torch.argsort(cs, stable=True)  # group pairs by neighbour species
            vec, cs, slot = vec[order], cs[order], slot[order]
        radial_values, harmonics = _pair_terms(vec, radial, l_max, cutoff, cutoff_width)
        by_degree = radial_values.transpose(1, 2)  # [p, l, n]
        with torch.profiler.record_function("expansion/mix_pairs"):
            if weights is None:
                q = by_degree  # [p, l, n]
            elif n_species == 1:
                q = torch.matmul(by_degree, weights)  # [p, l, K]
            else:
                sizes = torch.bincount(cs, minlength=n_species).cpu().tolist()
                w = weights.reshape(n_species, n_max, -1)  # [S, N, K]
                parts = [torch.matmul(part, w[s]) for s, part in enumerate(torch.split(by_degree, sizes))
                         if sizes[s] > 0]
                q = torch.cat(parts) if len(parts) > 1 else parts[0]  # [p, l, K]
        with torch.profiler.record_function("expansion/accumulate"):
            padded_q = q.new_zeros(n_chunk * width, n_l, n_channels).index_copy(0, slot, q)
            padded_q = padded_q.reshape(n_chunk, width, n_l, n_channels)  # [atom, J, l, K]
            padded_y = harmonics.new_zeros(n_chunk * width, n_lm).index_copy(0, slot, harmonics)
            padded_y = padded_y.reshape(n_chunk, width, n_lm)  # [atom, J, lm]
            degrees = [torch.bmm(padded_q[:, :, l, :].transpose(1, 2),
                                 padded_y[:, :, l * l:(l + 1) * (l + 1)]) for l in range(n_l)]  # [atom, K, 2l+1]
            blocks.append(torch.cat(degrees, dim=2))  # [atom, K, lm]
    return torch.cat(blocks) if len(blocks) > 1 else blocks[0]
