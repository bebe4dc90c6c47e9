"""Learned pair densities: an EAM-like radial term for :class:`~tradens.models.LearnedPotential`.

For every atom ``i`` and channel ``p``

.. math::

    G_{i,pb} = \\sum_{j \\ne i} a_{Z_j p}\\, \\phi_b(r_{ij})\\, f_c(r_{ij})

with a learned element embedding ``a [S, P]`` of the neighbour, radial
functions ``phi_b`` (Gaussians on a grid from ``r_min`` to the cutoff, width
equal to the grid step) and a cosine cutoff ``f_c``. A linear readout on ``G``
that depends on the centre element is a pair potential with element pairs
resolved through the embedding; an MLP on ``G`` is an embedded-atom model. The
Gaussian grid resolves the steep short-range repulsion that a smooth SOAP/ACE
basis with ``n_max`` radial functions over the whole cutoff does not.

:class:`Augmented` appends ``G`` to the features of a SOAP or ACE.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..systems.batch import Batch
from ..systems.neighbors import neighbor_list, pair_vectors

__all__ = ["PairDensity", "Augmented", "pair_densities"]


class PairDensity(torch.nn.Module):
    """Per-atom pair densities ``G [atom, P * B]`` (see module docstring).

    Parameters
    ----------
    species : tuple of int
        Elements in embedding-row order; other elements get the mean row.
    channels : int
        ``P``, the size of the neighbour embedding.
    n_basis : int
        ``B``, Gaussians on the grid.
    cutoff : float
        Cutoff radius, Å.
    r_min : float
        First grid point, Å.
    seed : int
        Seed of the random initial embedding (local generator).
    """

    def __init__(
        self,
        species,
        *,
        channels: int = 4,
        n_basis: int = 12,
        cutoff: float = 5.0,
        r_min: float = 1.5,
        seed: int = 0,
    ):
        super().__init__()
        if channels < 1 or n_basis < 1:
            raise ValueError(f"channels and n_basis must be >= 1, got {channels}, {n_basis}")
        if not 0.0 <= r_min < cutoff:
            raise ValueError(f"need 0 <= r_min < cutoff, got r_min={r_min}, cutoff={cutoff}")
        self.species = tuple(int(z) for z in species)
        self.channels, self.n_basis = int(channels), int(n_basis)
        self.cutoff, self.r_min = float(cutoff), float(r_min)
        generator = torch.Generator().manual_seed(int(seed))
        self.embedding = torch.nn.Parameter(
            torch.randn(len(self.species), self.channels, dtype=torch.float64, generator=generator)
            / math.sqrt(self.channels)
        )  # [S, P]
        table = torch.full((max(self.species) + 2,), len(self.species), dtype=torch.long)
        table[list(self.species)] = torch.arange(len(self.species))
        self.register_buffer("index_of_number", table, persistent=False)
        self.register_buffer(
            "centres",
            torch.linspace(self.r_min, self.cutoff, self.n_basis, dtype=torch.float64),
            persistent=False,
        )
        self.width = (self.cutoff - self.r_min) / max(self.n_basis - 1, 1)
        # buffers, declared for the type checker (in __init__: TorchScript reads the class's
        # annotations and cannot resolve them here)
        self.index_of_number: torch.Tensor  # [max Z + 2]: embedding row of each atomic number
        self.centres: torch.Tensor  # [B]: Gaussian grid, Å

    @property
    def n_features(self) -> int:
        return self.channels * self.n_basis

    def config(self) -> dict:
        return {
            "channels": self.channels,
            "n_basis": self.n_basis,
            "cutoff": self.cutoff,
            "r_min": self.r_min,
            "species": list(self.species),
        }

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Embedding row of every atomic number (``S`` for unknown elements)."""
        table = self.index_of_number.to(numbers.device)
        clipped = numbers.clamp(max=table.shape[0] - 1)
        return torch.where(numbers < table.shape[0] - 1, table[clipped], len(self.species))

    def forward(
        self, batch: Batch, positions: torch.Tensor | None = None, cells: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``G [atom, P * B]`` (differentiable in positions, cells and the embedding)."""
        positions = batch.positions if positions is None else positions
        pairs = neighbor_list(batch, self.cutoff)
        vectors = pair_vectors(batch, pairs, positions, cells)  # [pair, 3]
        rows = torch.cat([self.embedding, self.embedding.mean(0, keepdim=True)], dim=0)  # [S+1, P]
        return pair_densities(
            vectors,
            pairs.i,
            self.species_index(batch.numbers)[pairs.j],
            rows,
            self.centres,
            self.width,
            self.cutoff,
            batch.n_atoms,
        )  # [atom, P*B]


def pair_densities(
    vectors: torch.Tensor,
    centers: torch.Tensor,
    neighbor_rows: torch.Tensor,
    embedding: torch.Tensor,
    grid: torch.Tensor,
    width: float,
    cutoff: float,
    n_atoms: int,
) -> torch.Tensor:
    """``G [atom, P * B]`` from pair vectors (the one implementation; TorchScript-compatible).

    Parameters
    ----------
    vectors : torch.Tensor
        ``r_ij [pair, 3]`` (Å) of pairs within ``cutoff``.
    centers, neighbor_rows : torch.Tensor
        ``i [pair]`` and the embedding row of ``j`` ``[pair]``.
    embedding : torch.Tensor
        ``a [S+1, P]`` (last row: unknown elements).
    grid : torch.Tensor
        Gaussian centres ``[B]`` (Å).
    width, cutoff : float
        Gaussian width and cutoff (Å).
    n_atoms : int
        Atoms (rows of the result).
    """
    r = torch.linalg.vector_norm(vectors, dim=1)  # [pair]
    taper = 0.5 * (1.0 + torch.cos(math.pi * r / cutoff))  # [pair]
    centres = grid.to(dtype=r.dtype, device=r.device)
    gauss = torch.exp(-0.5 * ((r[:, None] - centres) / width) ** 2)  # [pair, B]
    radial = gauss * taper[:, None]  # [pair, B]
    weight = embedding.to(r.dtype)[neighbor_rows]  # [pair, P]
    per_pair = (weight[:, :, None] * radial[:, None, :]).reshape(r.shape[0], -1)  # [pair, P*B]
    out = torch.zeros(n_atoms, per_pair.shape[1], dtype=r.dtype, device=r.device)
    return out.index_add(0, centers, per_pair)  # [atom, P*B]


class Augmented(torch.nn.Module):
    """A representation's features followed by pair densities (same rows: all atoms).

    Parameters
    ----------
    representation : torch.nn.Module
        SOAP or ACE with one row per atom (no averaging, no centre selection).
    pair : PairDensity
        The appended pair densities.
    """

    def __init__(self, representation, pair: PairDensity):
        super().__init__()
        hypers = representation.hypers
        if getattr(hypers, "average", False) or getattr(hypers, "center_species", None) is not None:
            raise ValueError(
                "pair densities need one feature row per atom (no average, all centres)"
            )
        self.inner = representation
        self.pair = pair

    @property
    def hypers(self):
        return self.inner.hypers

    @property
    def n_features(self) -> int:
        return int(self.inner.n_features) + self.pair.n_features

    def forward(
        self, batch: Batch, positions: torch.Tensor | None = None, cells: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        values, rows = self.inner(batch, positions, cells)  # [atom, F], [atom]
        pair = self.pair(batch, positions, cells)  # [atom, P*B]
        return torch.cat([values, pair[rows]], dim=1), rows


def pair_state(pair: PairDensity) -> tuple[dict, dict]:
    """JSON config and arrays of a :class:`PairDensity`."""
    return pair.config(), {"pair/embedding": pair.embedding.detach().cpu().numpy()}


def pair_from_state(config: dict, arrays: dict) -> PairDensity:
    config = dict(config)
    pair = PairDensity(config.pop("species"), **config)
    with torch.no_grad():
        pair.embedding.copy_(torch.as_tensor(np.asarray(arrays["pair/embedding"])))
    return pair
