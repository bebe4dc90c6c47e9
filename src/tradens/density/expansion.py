"""The neighbour density expansion: :class:`DensityExpansion`, its stages, and the coefficients.

For centre ``i`` the smeared neighbour density of species ``s`` is expanded as

.. math::

    c^{s}_{i,nlm} = \\sum_{j \\in i,\\, s_j = s} f_c(r_{ij})\\, R_{nl}(r_{ij})\\,
    Y_{lm}(\\hat r_{ij}) \\;+\\; w_0\\, \\delta_{s s_i}\\, R_{n0}(0)\\, Y_{00} ,

with every periodic image ``j`` within the cutoff (``R`` from
:mod:`tradens.density.radial`, real ``Y`` from :mod:`tradens.density.angular`, cosine taper
``f_c``). The result is dense over the unmixed channels ``I = s*N + n``:
``c [atom, S*N, (l_max+1)^2]``. Mixing into ``K`` channels is a matrix product
with ``W [S*N, K1]`` (:mod:`tradens.density.embeddings`).

Stages
------
A :class:`DensityExpansion` (built by every representation from its hypers,
``representation.expansion``) is the one object that every representation and
every derivative path goes through:

1. :meth:`DensityExpansion.pairs` — the neighbour list of a batch (computed
   once per batch and passed down), :meth:`DensityExpansion.vectors` — the
   pair vectors ``r_ij [pair, 3]``, differentiable in positions and cells;
2. :meth:`DensityExpansion.pair_terms` — per pair: tapered radial values,
   harmonics and, with ``derivatives=True``, their ``r``-derivatives (the maths
   of :mod:`tradens.density.derivatives`); :meth:`DensityExpansion.mixed_radial`
   mixes the radial terms by neighbour species;
3. :meth:`DensityExpansion.coefficients` — ``c [atom, S*N, lm]`` or the mixed
   ``A [atom, K, lm]`` (:func:`expand_density`), centre term included.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ..kernels import memory as _memory
from ..systems.batch import Batch
from ..systems.neighbors import Pairs, neighbor_list, pair_vectors
from . import derivatives as _derivatives
from .angular import _spherical_harmonics_by_degree, l_of_lm, spherical_harmonics
from .radial import cosine_cutoff, taper_with_derivative

__all__ = ["DensityExpansion", "PairTerms", "SpeciesMap", "UnknownSpeciesError", "expand_density"]

_UNMIXED_PER_PAIR = 32  # largest S*N computed per pair without mixing


class UnknownSpeciesError(ValueError):
    """An atom's element is not in the species list.

    Attributes
    ----------
    missing : list of int
        The atomic numbers not in the list.
    species : list of int
        The species list.
    """

    def __init__(self, missing, species, remedy: str, structure: int | None = None):
        self.missing, self.species, self.remedy = list(missing), list(species), remedy
        self.structure = structure
        where = "" if structure is None else f"structure {structure}: "
        super().__init__(
            f"{where}element(s) with atomic number {self.missing} not in species "
            f"{self.species}; {remedy}"
        )

    def in_structure(self, batch: Batch) -> UnknownSpeciesError:
        """This error naming the first structure of ``batch`` with a missing element.

        The structure is numbered as in the caller's list (``batch.first_index``);
        the elements listed are that structure's.
        """
        wanted = torch.as_tensor(self.missing, device=batch.numbers.device)
        bad = torch.isin(batch.numbers, wanted).nonzero()
        if bad.numel() == 0 or self.structure is not None:
            return self
        local = int(batch.structure[int(bad[0, 0])])
        start, stop = batch.offsets[local], batch.offsets[local + 1]
        numbers = batch.numbers[start:stop]
        missing = sorted({int(z) for z in numbers[torch.isin(numbers, wanted)].cpu().tolist()})
        return UnknownSpeciesError(missing, self.species, self.remedy, local + batch.first_index)


class SpeciesMap:
    """Maps atomic numbers to species channel indices.

    Parameters
    ----------
    species : sequence of int or None
        Atomic numbers in channel order. ``None`` is the wildcard: every atom is
        the single species 0 (GAP ``species_Z=0``).
    unknown : {"error", "skip"}
        What to do with atoms whose element is not in ``species``: raise an
        :class:`UnknownSpeciesError` (a ``ValueError``) naming it, or ignore
        them as neighbours (GAP's behaviour; they are still centres, without a
        centre term).
    remedy : str
        The advice that ends the error message.
    """

    def __init__(
        self,
        species,
        unknown: str = "error",
        remedy: str = "add them to the species list or pass unknown_species='skip'",
    ):
        if unknown not in ("error", "skip"):
            raise ValueError(f"unknown_species must be 'error' or 'skip', got {unknown!r}")
        self.species = None if species is None else tuple(int(z) for z in species)
        self.unknown, self.remedy = unknown, remedy
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
            raise UnknownSpeciesError(missing, self.species, self.remedy)
        return index


class PairTerms(NamedTuple):
    """Per-pair terms of a density expansion (:meth:`DensityExpansion.pair_terms`)."""

    distances: torch.Tensor  # [p] |r| (Å)
    radial: torch.Tensor  # [p, N, L] tapered radial basis f_c R
    harmonics: torch.Tensor  # [p, lm] real spherical harmonics Y(rhat)
    d_radial: torch.Tensor | None  # [p, N, L] d(f_c R)/dr (1/Å), with derivatives=True
    d_harmonics: torch.Tensor | None  # [p, 3, lm] dY/dr (1/Å), with derivatives=True


class DensityExpansion:
    """The atomic density expansion of a representation, stage by stage (see the module docstring).

    Parameters
    ----------
    radial : radial basis
        ``r [pair] -> R [pair, N, L]`` with ``n_max``, ``l_max`` and ``center_values``.
    species_map : SpeciesMap
        Atomic numbers -> species channels.
    l_max : int
        Largest angular degree.
    cutoff, cutoff_width : float
        Cutoff radius and cosine taper width, Å.
    center_weight : float
        Weight of the centre atom's own Gaussian.
    center_all_species : bool
        Put the centre term in every species channel (else only the centre's own).
    """

    def __init__(
        self,
        radial,
        species_map: SpeciesMap,
        *,
        l_max: int,
        cutoff: float,
        cutoff_width: float,
        center_weight: float,
        center_all_species: bool,
    ):
        self.radial, self.species_map = radial, species_map
        self.l_max, self.cutoff, self.cutoff_width = int(l_max), float(cutoff), float(cutoff_width)
        self.center_weight, self.center_all_species = float(center_weight), bool(center_all_species)

    @property
    def n_species(self) -> int:
        """Number of species channels ``S``."""
        return self.species_map.n_species

    @property
    def n_max(self) -> int:
        """Number of radial functions ``N``."""
        return int(self.radial.n_max)

    # ---- stage 1: neighbours
    def pairs(self, batch: Batch) -> Pairs:
        """Neighbour pairs within the cutoff (once per batch; pass them down)."""
        return neighbor_list(batch, self.cutoff)

    def vectors(
        self,
        batch: Batch,
        pairs: Pairs,
        positions: torch.Tensor | None = None,
        cells: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pair vectors ``r_ij [pair, 3]`` (Å), differentiable in ``positions`` and ``cells``."""
        return pair_vectors(batch, pairs, positions, cells)

    # ---- stage 2: per-pair terms and their r-derivatives
    def pair_terms(self, vectors: torch.Tensor, *, derivatives: bool = False) -> PairTerms:
        """Tapered radial terms and harmonics of pair vectors ``[p, 3]`` (and ``r``-derivatives)."""
        r = torch.linalg.vector_norm(vectors, dim=1)  # [p]
        if not derivatives:
            taper = cosine_cutoff(r, self.cutoff, self.cutoff_width)  # [p]
            radial = self.radial(r) * taper[:, None, None]  # [p, N, L]
            return PairTerms(r, radial, spherical_harmonics(vectors, self.l_max), None, None)
        radial, d_radial = self.radial_with_derivative(r)  # [p, N, L]
        harmonics, d_harmonics = _derivatives.harmonics_and_gradient(vectors, self.l_max)
        return PairTerms(r, radial, harmonics, d_radial, d_harmonics)

    def taper(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine taper ``[p]`` and its ``r``-derivative (1/Å)."""
        return taper_with_derivative(r, self.cutoff, self.cutoff_width)

    def radial_terms(self, r: torch.Tensor, *, layout: str = "pair"):
        """:func:`tradens.density.derivatives.radial_terms` of this expansion's basis and taper."""
        return _derivatives.radial_terms(
            self.radial, r, self.cutoff, self.cutoff_width, layout=layout
        )

    def radial_with_derivative(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tapered radial basis ``[p, N, L]`` and its ``r``-derivative (1/Å)."""
        return _derivatives.radial_with_derivative(self.radial, r, self.cutoff, self.cutoff_width)

    def radial_primitive(self, r: torch.Tensor):
        """Gaussian-grid primitive ``[p, 2L, a]`` and ``T [a, N]`` (None for other bases)."""
        return _derivatives.radial_primitive(self.radial, r, self.cutoff, self.cutoff_width)

    def mixed_radial(self, weights: torch.Tensor) -> _derivatives.MixedRadial:
        """Mixed radial terms ``Q, Q' [p, 2L, K]`` by neighbour species, mixing ``W [S*N, K]``."""
        return _derivatives.MixedRadial(
            self.radial, self.cutoff, self.cutoff_width, weights, self.n_species
        )

    # ---- stage 3: coefficients
    def coefficients(
        self,
        batch: Batch,
        pairs: Pairs,
        vectors: torch.Tensor,
        *,
        weights: torch.Tensor | None = None,
        species_index: torch.Tensor | None = None,
        pair_chunk: int | None = None,
    ) -> torch.Tensor:
        """``c [atom, S*N, lm]``, or the mixed ``A [atom, K, lm]`` with ``weights [S*N, K]``.

        See :func:`expand_density`; ``species_index`` defaults to the batch's.
        """
        if species_index is None:
            species_index = self.species_map(batch.numbers)
        return expand_density(
            batch,
            pairs,
            vectors,
            species_index,
            n_species=self.n_species,
            radial=self.radial,
            l_max=self.l_max,
            cutoff=self.cutoff,
            cutoff_width=self.cutoff_width,
            center_weight=self.center_weight,
            center_all_species=self.center_all_species,
            pair_chunk=pair_chunk,
            weights=weights,
        )

    def centre_term(
        self, species_index: torch.Tensor, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """The centre atom's own Gaussian in the ``l = 0`` coefficients, ``[atom, S*N]``."""
        return centre_term(
            self.radial,
            species_index,
            n_species=self.n_species,
            center_weight=self.center_weight,
            center_all_species=self.center_all_species,
            dtype=dtype,
            device=device,
        )


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
    pair_chunk: int | None = None,
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
    pair_chunk : int, optional
        Bound on the pairs processed at once (bounds the per-pair intermediates;
        a chunk never splits the neighbours of one atom). Default: 4096 on the
        CPU (the intermediates stay in cache), 65536 on other devices.
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
        raise ValueError(
            f"weights must have {n_species * n_max} rows (S*N), got {tuple(weights.shape)}"
        )
    i, s_j, vectors = _listed_pairs_by_centre(pairs, species_index, vectors)
    weights_or_identity, per_pair = _mixing_strategy(weights, n_species, n_max, dtype, device)
    if pair_chunk is None:
        channels = n_max if weights_or_identity is None else weights_or_identity.shape[1]
        pair_chunk = _default_pair_chunk(device, l_max, n_max, channels if per_pair else None)
    options = dict(
        n_species=n_species,
        radial=radial,
        l_max=l_max,
        cutoff=cutoff,
        cutoff_width=cutoff_width,
        pair_chunk=pair_chunk,
    )
    if per_pair:
        mixed = _expand_per_pair(
            batch.n_atoms, i, s_j, vectors, weights_or_identity, **options
        )  # [atom, K, lm]
    else:
        mixed = _expand_unmixed(batch.n_atoms, i, s_j, vectors, **options)  # [atom, S*N, lm]
    if center_weight != 0.0:
        term = centre_term(
            radial,
            species_index,
            n_species=n_species,
            center_weight=center_weight,
            center_all_species=center_all_species,
            dtype=dtype,
            device=device,
        )  # [atom, S*N]
        if weights_or_identity is not None:
            term = term @ weights_or_identity  # [atom, K]
        mixed[:, :, 0] += term  # mixed is a fresh tensor of this function: in place is safe
    if weights is not None and weights_or_identity is not weights:
        mixed = torch.einsum("aIm,Ik->akm", mixed, weights)  # c -> A [atom, K, lm]
    return mixed


def _listed_pairs_by_centre(
    pairs: Pairs, species_index: torch.Tensor, vectors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs whose neighbour is a listed element, sorted by centre (stable).

    Returns centre ``i [p]``, neighbour species ``s_j [p]`` and ``r_ij [p, 3]`` (Å); no copy
    when nothing is dropped or reordered.
    """
    neighbor_species = species_index[pairs.j]  # [pair]
    i, s_j = pairs.i, neighbor_species
    if not bool((neighbor_species >= 0).all()):
        keep = (neighbor_species >= 0).nonzero().squeeze(1)
        i, s_j, vectors = i[keep], s_j[keep], vectors[keep]
    if i.shape[0] > 1 and not bool((i[1:] >= i[:-1]).all()):
        order = torch.argsort(i, stable=True)
        i, s_j, vectors = i[order], s_j[order], vectors[order]
    return i, s_j, vectors


def _mixing_strategy(
    weights: torch.Tensor | None,
    n_species: int,
    n_max: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor | None, bool]:
    """``(matrix applied per pair or None, per_pair)``: how :func:`expand_density` accumulates.

    Per pair with ``W`` when it has fewer columns than ``S*N`` (``A`` directly), per pair with
    ``R`` itself for one species, per pair with ``W = 1`` for few unmixed channels, else ``c``
    by outer products and ``index_add``.
    """
    n_unmixed = n_species * n_max
    if weights is not None and weights.shape[1] < n_unmixed:
        return weights, True  # mix per pair: A directly
    if n_species == 1:
        return None, True  # per pair with R itself: c (K = N)
    if n_unmixed <= _UNMIXED_PER_PAIR:
        # few unmixed channels: c per pair with W = 1 beats the outer products and index_add
        return torch.eye(n_unmixed, dtype=dtype, device=device), True
    return None, False  # c by outer products and index_add


def centre_term(
    radial,
    species_index: torch.Tensor,
    *,
    n_species: int,
    center_weight: float,
    center_all_species: bool,
    dtype: torch.dtype,
    device,
) -> torch.Tensor:
    """The centre atom's own Gaussian in the ``l = 0`` coefficients, ``[atom, S*N]`` (unmixed).

    ``center_weight R_n(0) / sqrt(4 pi)`` in the centre's own species channel
    (or in every channel with ``center_all_species``); zero for ignored atoms.
    """
    n_atoms = species_index.shape[0]
    center = radial.center_values(dtype, device)  # [n]
    center = center * (center_weight / math.sqrt(4.0 * math.pi))
    present = (species_index >= 0).to(dtype)  # [atom]
    if center_all_species:
        owner = present[:, None].expand(-1, n_species)  # [atom, S]
    else:
        owner = torch.zeros(n_atoms, n_species, dtype=dtype, device=device)
        atoms = (species_index >= 0).nonzero().squeeze(1)
        owner = owner.index_put((atoms, species_index[atoms]), torch.ones_like(atoms, dtype=dtype))
    return (owner[:, :, None] * center[None, None, :]).reshape(n_atoms, -1)


def _default_pair_chunk(device: torch.device, l_max: int, n_max: int, channels: int | None) -> int:
    """Pairs per chunk: on the CPU about 10 MB of per-pair intermediates, so that they stay in
    cache (elementwise kernels are several times faster there); elsewhere 65536."""
    if device.type != "cpu":
        return 65536
    if channels is None:  # outer products [p, N, lm]
        return 4096
    n_l = l_max + 1
    per_pair = n_l * (n_max + 2 * channels) + n_l * n_l  # radial basis, Q twice, harmonics
    return max(512, min(16384, (10 * 2**20 // 8) // per_pair))


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


def _expand_unmixed(
    n_atoms: int,
    i,
    s_j,
    vectors,
    *,
    n_species: int,
    radial,
    l_max: int,
    cutoff: float,
    cutoff_width: float,
    pair_chunk: int,
) -> torch.Tensor:
    """``c [atom, S*N, lm]`` by per-pair outer products and ``index_add``."""
    dtype, device = vectors.dtype, vectors.device
    n_max, n_lm = radial.n_max, (l_max + 1) ** 2
    lm_to_l = l_of_lm(l_max, device)  # [lm]
    coefficients = _memory.zeros(n_atoms * n_species, n_max * n_lm, dtype=dtype, device=device)
    for start in range(0, i.shape[0], pair_chunk):
        sel = slice(start, start + pair_chunk)
        radial_values, harmonics = _pair_terms(vectors[sel], radial, l_max, cutoff, cutoff_width)
        contribution = radial_values[:, :, lm_to_l] * harmonics[:, None, :]  # [p, n, lm]
        # in place: coefficients is a fresh tensor of this function (and index_add's backward needs
        # neither its input nor its output)
        coefficients.index_add_(
            0, i[sel] * n_species + s_j[sel], contribution.reshape(-1, n_max * n_lm)
        )
    return coefficients.reshape(n_atoms, n_species * n_max, n_lm)


def _expand_per_pair(
    n_atoms: int,
    i,
    s_j,
    vectors,
    weights,
    *,
    n_species: int,
    radial,
    l_max: int,
    cutoff: float,
    cutoff_width: float,
    pair_chunk: int,
) -> torch.Tensor:
    """Mixed density ``A [atom, K, lm]`` without the unmixed ``c``.

    Per pair ``Q[p, l, k] = sum_n W[s_p N + n, k] R[p, n, l]``: the pairs are
    grouped by neighbour species (padded to a common count, one batched
    product over species; or one product per species when the counts are very
    uneven), and with a radial basis that has ``primitive`` the radial
    transform is folded into ``W``. Then per atom and degree
    ``A_l[i] = Q_l[i]^T Y_l[i]``, a batched product over the atoms' neighbour
    lists padded to a common length. ``weights=None`` means ``W = 1`` (one
    species, unmixed).
    """
    dtype, device = vectors.dtype, vectors.device
    n_max, n_l = radial.n_max, l_max + 1
    n_channels = n_max if weights is None else weights.shape[1]
    w = None if weights is None else weights.reshape(n_species, n_max, -1)  # [S, N, K]
    mixes: dict = {}  # per radial transform: the mixing folded in, [S, a, K] (and [l*S, a, K])
    tracked = vectors.requires_grad or (w is not None and w.requires_grad)
    graph = torch.is_grad_enabled() and tracked
    # A [atom, K, lm]: without autograd one buffer that every chunk writes its atoms into;
    # with autograd (mixed is None) the chunks' blocks, concatenated at the end
    mixed = (
        None if graph else _memory.empty(n_atoms, n_channels, n_l * n_l, dtype=dtype, device=device)
    )
    pieces = []
    distances = torch.linalg.vector_norm(vectors, dim=1)  # [pair]
    tapers = cosine_cutoff(distances, cutoff, cutoff_width)  # [pair]
    all_counts = torch.bincount(i, minlength=n_atoms)  # neighbours of every atom
    for atom_start, atom_stop, pair_start, pair_stop in _atom_chunks(n_atoms, i, pair_chunk):
        n_chunk = atom_stop - atom_start
        n_pairs = pair_stop - pair_start
        if n_pairs == 0:  # isolated atoms: no density
            if mixed is None:
                pieces.append(vectors.new_zeros(n_chunk, n_channels, n_l * n_l))
            else:
                mixed[atom_start:atom_stop] = 0.0
            continue
        ci = i[pair_start:pair_stop] - atom_start  # [p]
        vec = vectors[pair_start:pair_stop]  # [p, 3]
        counts = all_counts[atom_start:atom_stop]  # [atom]
        width = int(counts.max())  # padded neighbour-list length J
        with torch.profiler.record_function("expansion/pair_terms"):
            harmonics = _spherical_harmonics_by_degree(vec, l_max)  # [p, 2l+1] per l
            # one extra pair (r = cutoff, weight 0) gives a zero row for padding (at the cutoff,
            # not at a short distance that would send the Bessel functions to their series)
            r = torch.cat(
                [distances[pair_start:pair_stop], distances.new_full((1,), cutoff)]
            )  # [p+1]
            taper = torch.cat([tapers[pair_start:pair_stop], tapers.new_zeros(1)])  # [p+1]
            if hasattr(radial, "primitive"):
                basis, transform = radial.primitive(r, taper)  # [l, p+1, a] (tapered), [a, n]
            else:
                basis = radial(r).permute(2, 0, 1) * taper[None, :, None]  # [l, p+1, n]
                transform = None
        with torch.profiler.record_function("expansion/mix_pairs"):
            source, row = _mixed_pair_terms(
                basis, transform, w, mixes, s_j[pair_start:pair_stop], n_species, n_l
            )  # [l, p+1, K] (row: pair p's row of source, None when it is row p)
        with torch.profiler.record_function("expansion/accumulate"):
            blocks = _padded_products(source, row, harmonics, counts, ci, width, n_channels)
            if mixed is None:
                pieces.append(torch.cat(blocks, dim=2))  # [atom, K, lm]
            else:
                torch.cat(blocks, dim=2, out=mixed[atom_start:atom_stop])  # while in cache
    if mixed is None:
        return torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0]  # [atom, K, lm]
    return mixed  # [atom, K, lm]


def _mixed_pair_terms(
    basis: torch.Tensor,
    transform: torch.Tensor | None,
    w: torch.Tensor | None,
    mixes: dict,
    species: torch.Tensor,
    n_species: int,
    n_l: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``Q [l, p+1, K]``, the radial terms mixed by neighbour species, and the row of each pair.

    ``basis [l, p+1, a]`` (last pair: the zero row) with its ``transform [a, n]`` or None;
    ``w [S, N, K]`` or None (``W = 1``). ``mixes`` caches the transform folded into ``w``
    across chunks. The row is None when pair ``p`` is row ``p`` (row ``p`` of the last pair
    is zero), else ``[p+1]`` (see :func:`_mix_by_species`).
    """
    if w is None:
        # [l, p+1, N]
        source = basis if transform is None else torch.matmul(basis, transform)
        return source, None  # pair p is row p of source, row n_pairs is zero
    if "mix" not in mixes:
        mix = w if transform is None else torch.matmul(transform, w)  # [S, a, K]
        mixes["mix"] = mix
        mixes["by_degree"] = mix.expand(n_l, -1, -1, -1).reshape(
            n_l * n_species, mix.shape[1], -1
        )  # [l*S, a, K]
    if n_species == 1:
        return torch.matmul(basis, mixes["mix"][0]), None  # [l, p+1, K]
    return _mix_by_species(basis, species, mixes["by_degree"])


def _padded_products(
    source: torch.Tensor,
    row: torch.Tensor | None,
    harmonics: list[torch.Tensor],
    counts: torch.Tensor,
    ci: torch.Tensor,
    width: int,
    n_channels: int,
) -> list[torch.Tensor]:
    """``A_l [atom, K, 2l+1]`` of one chunk's atoms, per degree: ``Q_l[i]^T Y_l[i]``.

    The neighbour lists are padded to ``width`` (``J``): ``Q`` as ``[l, atom, J, K]``,
    ``Y_l`` as ``[atom, J, 2l+1]``. ``counts [atom]`` neighbours per atom, ``ci [p]`` the
    chunk-local centre of each pair.
    """
    n_pairs, n_chunk, n_l, device = ci.shape[0], counts.shape[0], len(harmonics), ci.device
    full = n_pairs == n_chunk * width  # every atom has J pairs: padding is a reshape
    if not full:
        first = torch.cumsum(counts, 0) - counts  # [atom]
        slot = ci * width + (torch.arange(n_pairs, device=device) - first[ci])  # [p]
    if row is None and full:
        padded_q = source[:, :n_pairs]  # [l, atom*J, K]
    else:
        zero_row = n_pairs if row is None else int(row[-1])
        pair_row = torch.arange(n_pairs, device=device) if row is None else row[:-1]
        if full:
            take = pair_row
        else:
            take = torch.full((n_chunk * width,), zero_row, dtype=torch.long, device=device)
            take[slot] = pair_row
        padded_q = source.index_select(1, take)  # [l, atom*J, K]
    padded_q = padded_q.reshape(n_l, n_chunk, width, n_channels)
    blocks = []  # A_l [atom, K, 2l+1] of this chunk's atoms
    for l, y_l in enumerate(harmonics):  # y_l [p, 2l+1]
        if full:
            y_l = y_l.reshape(n_chunk, width, 2 * l + 1)
        else:
            y_l = y_l.new_zeros(n_chunk * width, 2 * l + 1).index_copy(0, slot, y_l)
            y_l = y_l.reshape(n_chunk, width, 2 * l + 1)  # [atom, J, 2l+1]
        blocks.append(torch.bmm(padded_q[l].transpose(1, 2), y_l))  # [atom, K, 2l+1]
    return blocks


def _mix_by_species(basis: torch.Tensor, species: torch.Tensor, w: torch.Tensor):
    """``Q[l, p] = basis[l, p] @ w[l, species[p]]`` for ``basis [l, p+1, a]``, ``w [l*S, a, K]``.

    The last row of ``basis`` is zero (padding). Returns ``(source, row)`` with
    ``Q[:, p] = source[:, row[p]]`` for ``p < len(species)`` and
    ``source[:, row[-1]]`` zero.
    """
    n_l, _, n_a = basis.shape
    n_pairs, n_species = species.shape[0], w.shape[0] // n_l
    device = basis.device
    sizes = torch.bincount(species, minlength=n_species)  # [S]
    order = torch.argsort(species, stable=True)  # pairs grouped by species
    capacity = int(sizes.max()) + 1  # at least one zero row per species block
    row = torch.empty(n_pairs + 1, dtype=torch.long, device=device)
    if n_species * capacity <= 2 * n_pairs + 64:
        # pad every species block to a common length: one batched product over (l, species)
        start = torch.cumsum(sizes, 0) - sizes  # [S]
        sorted_species = species[order]
        rank = torch.arange(n_pairs, device=device) - start[sorted_species]  # within its species
        row[order] = sorted_species * capacity + rank
        row[-1] = capacity - 1  # the last slot of species 0 is padding
        take = torch.full((n_species * capacity,), n_pairs, dtype=torch.long, device=device)
        take[row[:-1]] = torch.arange(n_pairs, device=device)
        padded = basis.index_select(1, take)  # [l, S*C, a]
        source = torch.bmm(padded.view(n_l * n_species, capacity, n_a), w)  # [l*S, C, K]
        return source.view(n_l, n_species * capacity, -1), row
    # very uneven species counts: one product per species, then a zero row
    counts = sizes.cpu().tolist()
    groups = torch.split(basis[:, order], counts, dim=1)
    w = w[:n_species]  # [S, a, K] (the same for every degree)
    parts = [torch.matmul(part, w[s]) for s, part in enumerate(groups) if counts[s] > 0]
    parts.append(torch.matmul(basis[:, -1:], w[0]))  # the zero row
    row[order] = torch.arange(n_pairs, device=device)
    row[-1] = n_pairs
    return torch.cat(parts, dim=1), row  # [l, p+1, K] in species order
