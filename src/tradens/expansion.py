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
) -> torch.Tensor:
    """Unmixed density coefficients of every atom.

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
        Pairs processed at once (bounds the ``[pair, n, lm]`` intermediate).

    Returns
    -------
    torch.Tensor
        ``c [atom, S*N, (l_max+1)^2]``.
    """
    dtype, device = vectors.dtype, vectors.device
    n_atoms, n_max, n_lm = batch.n_atoms, radial.n_max, (l_max + 1) ** 2
    lm_to_l = l_of_lm(l_max, device)  # [lm]
    coefficients = torch.zeros(n_atoms * n_species, n_max * n_lm, dtype=dtype, device=device)
    neighbor_species = species_index[pairs.j]  # [pair]
    keep = neighbor_species >= 0
    if not bool(keep.all()):
        keep_index = keep.nonzero().squeeze(1)
    else:
        keep_index = None
    for start in range(0, len(pairs), pair_chunk):
        stop = min(start + pair_chunk, len(pairs))
        sel = slice(start, stop)
        vec = vectors[sel]  # [p, 3]
        i, s_j = pairs.i[sel], neighbor_species[sel]
        if keep_index is not None:
            mask = keep[sel]
            vec, i, s_j = vec[mask], i[mask], s_j[mask]
        if vec.shape[0] == 0:
            continue
        r = torch.linalg.vector_norm(vec, dim=1)  # [p]
        taper = cosine_cutoff(r, cutoff, cutoff_width)  # [p]
        radial_values = radial(r) * taper[:, None, None]  # [p, n, l]
        harmonics = spherical_harmonics(vec, l_max)  # [p, lm]
        contribution = radial_values[:, :, lm_to_l] * harmonics[:, None, :]  # [p, n, lm]
        coefficients.index_add_(0, i * n_species + s_j, contribution.reshape(-1, n_max * n_lm))
    coefficients = coefficients.reshape(n_atoms, n_species * n_max, n_lm)
    if center_weight != 0.0:
        center = radial.center_values(dtype, device) * (center_weight / math.sqrt(4.0 * math.pi))  # [n]
        term = torch.zeros(n_atoms, n_species, n_max, n_lm, dtype=dtype, device=device)
        if center_all_species:
            has_species = (species_index >= 0).to(dtype)[:, None, None]  # [atom, 1, 1]
            term[:, :, :, 0] = center[None, None, :] * has_species
        else:
            own = species_index >= 0
            atoms = own.nonzero().squeeze(1)
            term[atoms, species_index[atoms], :, 0] = center
        coefficients = coefficients + term.reshape(n_atoms, n_species * n_max, n_lm)
    return coefficients
