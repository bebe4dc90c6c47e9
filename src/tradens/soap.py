"""The SOAP power spectrum, full and tensor-reduced (correlation order 2).

With unmixed coefficients ``c [row, S*N, lm]`` (:mod:`tradens.expansion`) and
mixing matrices ``W1 [S*N, K1]``, ``W2 [S*N, K2]`` the mixed densities are
``Y1 = W1^T c``, ``Y2 = W2^T c`` and

.. math::

    P_l[a, b] = (2l+1)^{-1/2} \\sum_m Y^{(1)}_{a l m} Y^{(2)}_{b l m}
              = (W_1^T G_l W_2)[a, b] .

A *pair plan* lists the ``(a, b, factor)`` triples that are stored; value
``P_l[a, b] * factor`` goes to column ``p * (l_max+1) + l`` (``l`` fastest),
GAP's layout. The full SOAP is ``W1 = W2 = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .embeddings import expand_weights, gap_weights, random_weights
from .expansion import SpeciesMap, expand_density
from .features import Features
from .hypers import Cutoff, Density, Mixing, RadialBasis, SoapHypers
from .neighbors import neighbor_list, pair_vectors
from .radial import make_radial_basis
from .systems import Batch, as_batch

__all__ = ["SOAP", "PairPlan", "pair_plan", "power_spectrum"]

SQRT2 = math.sqrt(2.0)
SQRT2_FLOAT32 = float(np.float32(SQRT2))  # GAP keeps element-wise factors in single precision


@dataclass(frozen=True)
class PairPlan:
    """Which products ``P_l[a, b]`` are stored, in order, with their factors."""

    first: np.ndarray  # [pair] channel a of the first density
    second: np.ndarray  # [pair] channel b of the second density
    factor: np.ndarray  # [pair] float64
    dense: bool  # True when most of the K1 x K2 products are kept (use a matmul)

    def __len__(self) -> int:
        return int(self.first.shape[0])


def _plan(pairs: list[tuple[int, int, float]], k1: int, k2: int) -> PairPlan:
    array = np.array(pairs, dtype=np.float64).reshape(-1, 3)
    first, second = array[:, 0].astype(np.int64), array[:, 1].astype(np.int64)
    return PairPlan(first, second, array[:, 2].copy(), dense=len(pairs) * 4 > k1 * k2)


def pair_plan(*, mode: str | None, coupling: str, symmetric: bool, n_species: int, n_max: int,
              channels: int = 0, diagonal_radial: bool = False) -> PairPlan:
    """GAP's pair order for every SOAP variant (see ``docs/gap-compatibility.md``).

    Parameters
    ----------
    mode : {None, "radial+element", "element", "radial"}
        ``None`` for the unmixed (full) SOAP.
    coupling : {"tensor", "elementwise"}
        All channel pairs, or matching channels only.
    symmetric : bool
        Whether both densities are the same (then only ``b <= a`` is kept, with
        a factor sqrt(2) off the diagonal).
    n_species, n_max, channels : int
        ``S``, ``N`` and ``K``.
    diagonal_radial : bool
        Full SOAP only: keep ``n = n'`` pairs.
    """
    S, N, K = n_species, n_max, channels
    if mode is None:
        k1 = S * N
        pairs = [(a, b, 1.0 if a == b else SQRT2) for a in range(k1) for b in range(a + 1)
                 if not diagonal_radial or a % N == b % N]
        return _plan(pairs, k1, k1)
    k1 = {"radial+element": K, "element": K * N, "radial": K * S}[mode]
    if coupling == "tensor":
        if symmetric:
            pairs = [(a, b, 1.0 if a == b else SQRT2) for a in range(k1) for b in range(a + 1)]
        else:
            pairs = [(a, b, 1.0) for a in range(k1) for b in range(k1)]
        return _plan(pairs, k1, k1)
    if mode == "radial+element":
        return _plan([(k, k, 1.0) for k in range(K)], k1, k1)
    if mode == "element":
        pairs = [(k * N + a, k * N + b, SQRT2_FLOAT32 if symmetric and a != b else 1.0)
                 for k in range(K) for a in range(N) for b in range(a + 1 if symmetric else N)]
        return _plan(pairs, k1, k1)
    pairs = [(s * K + k, t * K + k, SQRT2_FLOAT32 if symmetric and s != t else 1.0)
             for s in range(S) for t in range(s + 1 if symmetric else S) for k in range(K)]
    return _plan(pairs, k1, k1)


def power_spectrum(y1: torch.Tensor, y2: torch.Tensor, plan: PairPlan, l_max: int) -> torch.Tensor:
    """Stored products of two mixed densities.

    Parameters
    ----------
    y1, y2 : torch.Tensor
        ``[row, K1, (l_max+1)^2]`` and ``[row, K2, (l_max+1)^2]``.
    plan : PairPlan
        Pairs to keep.
    l_max : int
        Largest degree.

    Returns
    -------
    torch.Tensor
        ``[row, len(plan) * (l_max+1)]`` with ``l`` fastest.
    """
    first = torch.as_tensor(plan.first, device=y1.device)
    second = torch.as_tensor(plan.second, device=y1.device)
    factor = torch.as_tensor(plan.factor, dtype=y1.dtype, device=y1.device)  # [pair]
    columns = []
    for l in range(l_max + 1):
        block = slice(l * l, (l + 1) * (l + 1))
        scale = 1.0 / math.sqrt(2 * l + 1)
        a, b = y1[:, :, block], y2[:, :, block]  # [row, K, 2l+1]
        if plan.dense:
            gram = torch.bmm(a, b.transpose(1, 2))  # [row, K1, K2]
            values = gram[:, first, second]  # [row, pair]
        else:
            values = (a[:, first, :] * b[:, second, :]).sum(-1)  # [row, pair]
        columns.append(values * (factor * scale))
    return torch.stack(columns, dim=-1).reshape(y1.shape[0], -1)  # [row, pair*(l_max+1)]


class SOAP(torch.nn.Module):
    """Smooth overlap of atomic positions, full or tensor-reduced.

    Construct from a :class:`~tradens.hypers.SoapHypers` or from its keywords.
    The unmixed channel order, pair order and values follow GAP's ``soap``
    (``docs/gap-compatibility.md``); the trailing ``covariance_sigma0`` column
    is only present if ``covariance_sigma0`` is set.

    Parameters
    ----------
    hypers : SoapHypers, optional
        All hyperparameters; or give them as keywords.
    **kwargs
        Keywords of :class:`~tradens.hypers.SoapHypers`. ``cutoff``,
        ``density``, ``radial`` and ``mixing`` may also be plain numbers or
        dicts: ``cutoff=5.0``, ``radial={"n_max": 8}``, ``mixing={"channels": 16}``.

    Examples
    --------
    >>> import ase.build
    >>> from tradens import SOAP
    >>> atoms = ase.build.bulk("NiCu", "zincblende", a=3.6) * (2, 2, 2)
    >>> soap = SOAP(cutoff=4.0, l_max=3, radial={"n_max": 4}, species=[28, 29],
    ...             mixing={"channels": 4})
    >>> features = soap.compute(atoms)
    >>> features.values.shape
    (16, 40)
    """

    def __init__(self, hypers: SoapHypers | None = None, **kwargs):
        super().__init__()
        if hypers is None:
            hypers = SoapHypers(**_coerce(kwargs))
        elif kwargs:
            raise TypeError("give either a SoapHypers object or keywords, not both")
        elif isinstance(hypers, dict):
            hypers = SoapHypers(**_coerce(dict(hypers)))
        self.hypers = hypers
        h = hypers
        self.radial_basis = make_radial_basis(h.radial.kind, n_max=h.radial.n_max, l_max=h.l_max,
                                              cutoff=h.cutoff.radius, sigma=h.density.sigma,
                                              error_exponent=h.radial.error_exponent)
        self.species_map = SpeciesMap(h.species, h.unknown_species)
        self.center_all_species = (h.n_species == 1) if h.density.center_all_species is None \
            else h.density.center_all_species
        mix = h.mixing
        self.plan = pair_plan(mode=None if mix is None else mix.mode, coupling=h.coupling,
                              symmetric=True if mix is None else mix.symmetric, n_species=h.n_species,
                              n_max=h.radial.n_max, channels=0 if mix is None else mix.channels,
                              diagonal_radial=h.diagonal_radial)
        self.register_buffer("weights1", None)
        self.register_buffer("weights2", None)
        self.fixed_matrices = None  # (W1, W2) override, used for GAP's nu_R/nu_S/Z_map
        if mix is not None:
            free = _free_weights(mix, h)
            params = [torch.as_tensor(np.asarray(f), dtype=torch.float64) for f in free]
            for index, value in enumerate(params, start=1):
                name = f"weights{index}"
                if mix.learnable:
                    delattr(self, name)
                    self.register_parameter(name, torch.nn.Parameter(value))
                else:
                    self.register_buffer(name, value)

    # ------------------------------------------------------------------ metadata
    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        extra = 0 if self.hypers.covariance_sigma0 is None else 1
        return len(self.plan) * (self.hypers.l_max + 1) + extra

    def feature_labels(self) -> dict[str, np.ndarray]:
        """``{"channel_1", "channel_2", "l"}`` arrays describing every column."""
        n_l = self.hypers.l_max + 1
        labels = {
            "channel_1": np.repeat(self.plan.first, n_l),
            "channel_2": np.repeat(self.plan.second, n_l),
            "l": np.tile(np.arange(n_l), len(self.plan)),
        }
        if self.hypers.covariance_sigma0 is not None:
            labels = {k: np.append(v, -1) for k, v in labels.items()}
        return labels

    def channel_names(self) -> list[str]:
        """Name of every (mixed) density channel, in order."""
        h = self.hypers
        species = ["*"] if h.species is None else [str(z) for z in h.species]
        N = h.radial.n_max
        if h.mixing is None:
            return [f"Z{z}n{n}" for z in species for n in range(N)]
        K = h.mixing.channels
        if h.mixing.mode == "radial+element":
            return [f"k{k}" for k in range(K)]
        if h.mixing.mode == "element":
            return [f"k{k}n{n}" for k in range(K) for n in range(N)]
        return [f"Z{z}k{k}" for z in species for k in range(K)]

    def feature_names(self) -> list[str]:
        """Readable name of every column, e.g. ``"Z28n0.Z29n3.l2"``."""
        names = self.channel_names()
        labels = self.feature_labels()
        out = [f"{names[a]}.{names[b]}.l{l}" for a, b, l in
               zip(labels["channel_1"], labels["channel_2"], labels["l"]) if l >= 0]
        if self.hypers.covariance_sigma0 is not None:
            out.append("covariance_sigma0")
        return out

    # ------------------------------------------------------------------ compute
    def mixing_matrices(self, dtype: torch.dtype, device: torch.device):
        """Full ``W1 [S*N, K1]`` and ``W2`` (``None`` for the unmixed SOAP)."""
        if self.fixed_matrices is not None:
            w1, w2 = (w.to(dtype=dtype, device=device) for w in self.fixed_matrices)
            return w1, w2
        if self.weights1 is None:
            return None, None
        h = self.hypers
        w1 = expand_weights(h.mixing.mode, self.weights1.to(dtype=dtype, device=device), h.n_species,
                            h.radial.n_max)
        if self.weights2 is None:
            return w1, w1
        w2 = expand_weights(h.mixing.mode, self.weights2.to(dtype=dtype, device=device), h.n_species,
                            h.radial.n_max)
        return w1, w2

    def forward(self, batch: Batch, positions: torch.Tensor | None = None,
                cells: torch.Tensor | None = None, *, row_chunk: int = 256,
                out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable features of a batch.

        Parameters
        ----------
        batch : Batch
            Validated structures.
        positions, cells : torch.Tensor, optional
            Replacements for the batch's positions ``[atom, 3]`` and cells
            ``[structure, 3, 3]`` (e.g. strained, requiring grad).
        row_chunk : int
            Rows per power-spectrum chunk (bounds memory).
        out : torch.Tensor, optional
            Preallocated output ``[row, feature]`` (no autograd).

        Returns
        -------
        values : torch.Tensor
            ``[row, feature]``.
        rows : torch.Tensor
            Atom index (into the batch) of every row, or the structure index
            when averaging.
        """
        h = self.hypers
        positions = batch.positions if positions is None else positions
        dtype, device = positions.dtype, positions.device
        pairs = neighbor_list(batch, h.cutoff.radius)
        vectors = pair_vectors(batch, pairs, positions, cells)  # [pair, 3]
        species_index = self.species_map(batch.numbers)  # [atom]
        coefficients = expand_density(
            batch, pairs, vectors, species_index, n_species=h.n_species, radial=self.radial_basis,
            l_max=h.l_max, cutoff=h.cutoff.radius, cutoff_width=h.cutoff.width,
            center_weight=h.density.center_weight, center_all_species=self.center_all_species,
        )  # [atom, S*N, lm]
        rows = self.center_rows(batch)
        coefficients = coefficients[rows]  # [row, S*N, lm]
        if h.average:
            structure = batch.structure[rows]
            summed = torch.zeros((batch.n_structures,) + coefficients.shape[1:], dtype=dtype, device=device)
            coefficients = summed.index_add(0, structure, coefficients)  # [structure, S*N, lm]
            rows = torch.arange(batch.n_structures, device=device)
        w1, w2 = self.mixing_matrices(dtype, device)
        n_rows = coefficients.shape[0]
        chunks = []
        for start in range(0, n_rows, row_chunk):
            c = coefficients[start:start + row_chunk]  # [chunk, S*N, lm]
            if w1 is None:
                y1 = y2 = c
            else:
                y1 = torch.einsum("rIm,Ik->rkm", c, w1)  # [chunk, K1, lm]
                y2 = y1 if w2 is w1 else torch.einsum("rIm,Ik->rkm", c, w2)
            values = power_spectrum(y1, y2, self.plan, h.l_max)  # [chunk, F']
            if h.normalize:
                norm = torch.linalg.vector_norm(values, dim=1, keepdim=True)
                values = values / torch.where(norm > 0, norm, torch.ones_like(norm))
            if h.covariance_sigma0 is not None:
                values = torch.cat([values, torch.full_like(values[:, :1], h.covariance_sigma0)], dim=1)
            if out is not None:
                out[start:start + values.shape[0]] = values
            else:
                chunks.append(values)
        if out is not None:
            return out, rows
        if not chunks:
            return torch.zeros(0, self.n_features, dtype=dtype, device=device), rows
        return torch.cat(chunks, dim=0), rows

    def center_rows(self, batch: Batch) -> torch.Tensor:
        """Atom indices (into the batch) that are centres, ``[row]``."""
        if self.hypers.center_species is None:
            return torch.arange(batch.n_atoms, device=batch.positions.device)
        wanted = torch.as_tensor(self.hypers.center_species, device=batch.numbers.device)
        return torch.isin(batch.numbers, wanted).nonzero().squeeze(1)

    def compute(self, systems, *, output: str = "numpy", dtype: torch.dtype | None = None,
                device: torch.device | str | None = None, batch_size: int = 64,
                progress: bool = False) -> Features:
        """Features of one or many structures.

        Parameters
        ----------
        systems : ase.Atoms, System, dict, or a list of them
            The structures (never modified).
        output : {"numpy", "torch"}
            Array type of the result.
        dtype, device : optional
            Floating dtype (float64 default, float32 available) and device.
        batch_size : int
            Structures per batch.
        progress : bool
            Show a tqdm progress bar.

        Returns
        -------
        Features
            ``values [row, feature]`` with ``structure``, ``center`` and
            ``numbers`` of each row, ``labels`` and ``names`` of each column.
        """
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        frames = _frames(systems)
        parts, structure, center, numbers = [], [], [], []
        iterator = range(0, len(frames), batch_size)
        if progress:
            iterator = tqdm(iterator, desc="SOAP", unit="batch")
        with torch.no_grad():
            for start in iterator:
                batch = as_batch(frames[start:start + batch_size], dtype=dtype, device=device)
                values, rows = self.forward(batch)
                parts.append(values)
                if self.hypers.average:
                    structure.append(rows + start)
                    center.append(torch.full_like(rows, -1))
                    numbers.append(torch.zeros_like(rows))
                else:
                    structure.append(batch.structure[rows] + start)
                    offsets = torch.as_tensor(batch.offsets[:-1], device=rows.device)
                    center.append(rows - offsets[batch.structure[rows]])
                    numbers.append(batch.numbers[rows])
        values = torch.cat(parts)
        result = Features(values, torch.cat(structure), torch.cat(center), torch.cat(numbers),
                          labels=self.feature_labels(), names=self.feature_names())
        return result.numpy() if output == "numpy" else result


def _frames(systems) -> list:
    from .systems import _as_frames
    return _as_frames(systems)


def _coerce(kwargs: dict) -> dict:
    """Accept numbers and dicts for the structured hypers."""
    out = dict(kwargs)
    if isinstance(out.get("cutoff"), (int, float)):
        out["cutoff"] = Cutoff(radius=float(out["cutoff"]))
    for key, cls in (("cutoff", Cutoff), ("density", Density), ("radial", RadialBasis), ("mixing", Mixing)):
        value = out.get(key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "type"}
            out[key] = cls(**value)
    return out


def _free_weights(mix: Mixing, h: SoapHypers) -> list[np.ndarray]:
    """Free mixing parameters of density 1 (and 2 when not symmetric)."""
    S, N, K = h.n_species, h.radial.n_max, mix.channels
    n_densities = 1 if mix.symmetric else 2
    if mix.weights == "onehot":
        return [np.eye(K)] * n_densities
    if mix.weights == "gap":
        species = [0] if h.species is None else list(h.species)
        return [gap_weights(mix.mode, species, N, K, mix_shift=mix.seed, density=d)
                for d in range(1, n_densities + 1)]
    if mix.weights == "random":
        return [random_weights(mix.mode, S, N, K, mix.seed + 1000003 * (d - 1))
                for d in range(1, n_densities + 1)]
    from .embeddings import free_weight_shape
    shape = free_weight_shape(mix.mode, S, N, K)
    matrices = [np.asarray(mix.matrix, dtype=np.float64)] if mix.symmetric else \
        [np.asarray(m, dtype=np.float64) for m in mix.matrix]
    for m in matrices:
        if m.shape != shape:
            raise ValueError(f"given mixing matrix must have shape {shape} for mode {mix.mode!r}, "
                             f"got {m.shape}")
    if len(matrices) != n_densities:
        raise ValueError("symmetric=False needs a pair of given matrices")
    return matrices
