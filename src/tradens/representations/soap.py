"""The SOAP power spectrum, full and tensor-reduced (correlation order 2).

With unmixed coefficients ``c [row, S*N, lm]`` (:mod:`tradens.density.expansion`) and
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
import torch.autograd.forward_ad as fwAD

from ..density.angular import l_of_lm
from ..density.embeddings import expand_weights, gap_weights, random_weights
from ..density.expansion import DensityExpansion, SpeciesMap
from ..density.radial import make_radial_basis
from ..hypers import Cutoff, Density, Mixing, RadialBasis, SoapHypers
from ..kernels import memory as _memory
from ..systems.batch import Batch
from ..systems.neighbors import Pairs
from .features import Features, compute_in_batches
from .stream import compute_chunked, is_lazy

__all__ = ["SOAP", "PairPlan", "pair_plan", "plan_size", "power_spectrum", "soap_size"]

SQRT2 = math.sqrt(2.0)
SQRT2_FLOAT32 = float(np.float32(SQRT2))  # GAP keeps element-wise factors in single precision


@dataclass(frozen=True)
class PairPlan:
    """Which products ``P_l[a, b]`` are stored, in order, with their factors."""

    first: np.ndarray  # [pair] channel a of the first density
    second: np.ndarray  # [pair] channel b of the second density
    factor: np.ndarray  # [pair] float64
    dense: bool  # True when most of the K1 x K2 products are kept (use a matmul)
    # "triangle": every b <= a of K1 = K2 channels, factor 1 on the diagonal and sqrt(2) off it
    # (full and symmetric tensor-coupled SOAP); "diagonal": (k, k, 1) for every k; else "generic"
    structure: str = "generic"

    def __len__(self) -> int:
        return int(self.first.shape[0])


def _plan(pairs, k1: int, k2: int) -> PairPlan:
    """A :class:`PairPlan` from ``(a, b, factor)`` triples or an array ``[pair, 3]``."""
    array = np.asarray(pairs, dtype=np.float64).reshape(-1, 3)
    return _plan_arrays(
        array[:, 0].astype(np.int64), array[:, 1].astype(np.int64), array[:, 2].copy(), k1, k2
    )


def _plan_arrays(
    first: np.ndarray, second: np.ndarray, factor: np.ndarray, k1: int, k2: int
) -> PairPlan:
    """A :class:`PairPlan` from its columns ``[pair]``, with its structure recognised."""
    n = first.shape[0]
    structure = "generic"
    if k1 == k2 and n == k1 * (k1 + 1) // 2:
        rows, cols = np.tril_indices(k1)
        if (
            np.array_equal(first, rows)
            and np.array_equal(second, cols)
            and np.array_equal(factor, np.where(rows == cols, 1.0, SQRT2))
        ):
            structure = "triangle"
    if (
        k1 == k2
        and n == k1
        and np.array_equal(first, np.arange(k1))
        and np.array_equal(second, first)
        and np.all(factor == 1.0)
    ):
        structure = "diagonal"
    return PairPlan(first, second, factor, dense=n * 4 > k1 * k2, structure=structure)


def _triangle(k: int, off_diagonal: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``b <= a < k`` in row order, factor 1 on the diagonal and ``off_diagonal`` off it."""
    first, second = np.tril_indices(k)  # [pair]
    factor = np.where(first == second, 1.0, off_diagonal)
    return first.astype(np.int64), second.astype(np.int64), factor


def _square(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ``(a, b)`` of ``k x k`` channels, ``a`` slowest, factor 1."""
    first = np.repeat(np.arange(k, dtype=np.int64), k)
    second = np.tile(np.arange(k, dtype=np.int64), k)
    return first, second, np.ones(k * k)


def plan_size(
    *,
    mode: str | None,
    coupling: str,
    symmetric: bool,
    n_species: int,
    n_max: int,
    channels: int = 0,
    diagonal_radial: bool = False,
) -> int:
    """Number of pairs :func:`pair_plan` would list, without listing them (same arguments)."""
    S, N, K = n_species, n_max, channels
    if mode is None:
        return N * S * (S + 1) // 2 if diagonal_radial else S * N * (S * N + 1) // 2
    k1 = {"radial+element": K, "element": K * N, "radial": K * S}[mode]
    if coupling == "tensor":
        return k1 * (k1 + 1) // 2 if symmetric else k1 * k1
    if mode == "radial+element":
        return K
    inner = N if mode == "element" else S
    return K * (inner * (inner + 1) // 2 if symmetric else inner * inner)


def pair_plan(
    *,
    mode: str | None,
    coupling: str,
    symmetric: bool,
    n_species: int,
    n_max: int,
    channels: int = 0,
    diagonal_radial: bool = False,
) -> PairPlan:
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
        first, second, factor = _triangle(k1, SQRT2)
        if diagonal_radial:
            keep = first % N == second % N
            first, second, factor = first[keep], second[keep], factor[keep]
        return _plan_arrays(first, second, factor, k1, k1)
    k1 = {"radial+element": K, "element": K * N, "radial": K * S}[mode]
    if coupling == "tensor":
        columns = _triangle(k1, SQRT2) if symmetric else _square(k1)
        return _plan_arrays(*columns, k1, k1)
    if mode == "radial+element":
        diagonal = np.arange(K, dtype=np.int64)
        return _plan_arrays(diagonal, diagonal.copy(), np.ones(K), k1, k1)
    if mode == "element":
        # (k*N + a, k*N + b) for k, then a, then b (b <= a when symmetric)
        a, b, factor = _triangle(N, SQRT2_FLOAT32) if symmetric else _square(N)
        k = np.repeat(np.arange(K, dtype=np.int64), a.shape[0])  # [pair]
        first, second = k * N + np.tile(a, K), k * N + np.tile(b, K)
        return _plan_arrays(first, second, np.tile(factor, K), k1, k1)
    # radial: (s*K + k, t*K + k) for s, then t (t <= s when symmetric), then k
    s_, t_, factor = _triangle(S, SQRT2_FLOAT32) if symmetric else _square(S)
    k = np.tile(np.arange(K, dtype=np.int64), s_.shape[0])  # [pair]
    first = np.repeat(s_, K) * K + k
    second = np.repeat(t_, K) * K + k
    return _plan_arrays(first, second, np.repeat(factor, K), k1, k1)


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
    n_l = l_max + 1
    if plan.structure == "diagonal":
        return _diagonal_products(y1, y2, l_max).reshape(y1.shape[0], -1)
    if _use_triangle(plan, y1, y2):
        out = _memory.empty(y1.shape[0], len(plan) * n_l, dtype=y1.dtype, device=y1.device)
        _triangle_products(y1, out, l_max, normalize=False, sigma0=None)
        return out
    blocks1 = [y1[:, :, l * l : (l + 1) * (l + 1)] for l in range(n_l)]  # [row, K1, 2l+1] each
    blocks2 = blocks1 if y2 is y1 else [y2[:, :, l * l : (l + 1) * (l + 1)] for l in range(n_l)]
    return power_spectrum_blocks(blocks1, blocks2, plan)


def power_spectrum_blocks(blocks1: list, blocks2: list, plan: PairPlan) -> torch.Tensor:
    """:func:`power_spectrum` from the densities split by degree, ``[row, K, 2l+1]`` per ``l``.

    With the blocks as autograd leaves, the backward pass writes each block's
    gradient directly instead of filling a zero tensor of the whole density
    for every slice (the forces path uses this).
    """
    if plan.structure == "diagonal":  # [row, K, l], l fastest
        columns = [
            (a * b).sum(-1) * (1.0 / math.sqrt(2 * l + 1))
            for l, (a, b) in enumerate(zip(blocks1, blocks2, strict=True))
        ]
        return torch.stack(columns, dim=-1).reshape(blocks1[0].shape[0], -1)
    device, dtype = blocks1[0].device, blocks1[0].dtype
    first = torch.as_tensor(plan.first, device=device)
    second = torch.as_tensor(plan.second, device=device)
    factor = torch.as_tensor(plan.factor, dtype=dtype, device=device)  # [pair]
    columns = []
    for l, (a, b) in enumerate(zip(blocks1, blocks2, strict=True)):  # [row, K, 2l+1]
        scale = 1.0 / math.sqrt(2 * l + 1)
        if plan.dense:
            gram = torch.bmm(a, b.transpose(1, 2))  # [row, K1, K2]
            values = gram[:, first, second]  # [row, pair]
        else:
            values = (a[:, first, :] * b[:, second, :]).sum(-1)  # [row, pair]
        columns.append(values * (factor * scale))
    return torch.stack(columns, dim=-1).reshape(blocks1[0].shape[0], -1)  # [row, pair*(l_max+1)]


def _use_triangle(plan: PairPlan, y1: torch.Tensor, y2: torch.Tensor) -> bool:
    """Whether the blocked-Gram kernel (no autograd) applies."""
    return plan.structure == "triangle" and y1 is y2 and y1.shape[0] > 0 and not _needs_graph(y1)


def _needs_graph(*tensors: torch.Tensor) -> bool:
    """Whether results computed from ``tensors`` must carry autograd information."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    return any(fwAD.unpack_dual(t).tangent is not None for t in tensors)


def _degree_matrix(l_max: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[lm, l]``: ``(2l+1)^{-1/2}`` where ``lm`` has degree ``l``, else 0."""
    lm_to_l = l_of_lm(l_max)
    scale = torch.tensor(
        [1.0 / math.sqrt(2 * l + 1) for l in range(l_max + 1)], dtype=torch.float64
    )
    matrix = torch.zeros(lm_to_l.shape[0], l_max + 1, dtype=torch.float64)
    matrix[torch.arange(lm_to_l.shape[0]), lm_to_l] = scale[lm_to_l]
    return matrix.to(dtype=dtype, device=device)


def _diagonal_products(y1: torch.Tensor, y2: torch.Tensor, l_max: int) -> torch.Tensor:
    """Element-wise coupling ``P[row, k, l] = (2l+1)^{-1/2} sum_m y1[row,k,lm] y2[row,k,lm]``."""
    product = y1.square() if y1 is y2 else y1 * y2  # [row, K, lm]
    return torch.matmul(product, _degree_matrix(l_max, y1.dtype, y1.device))  # [row, K, l]


def _triangle_products(
    y: torch.Tensor,
    out: torch.Tensor,
    l_max: int,
    *,
    normalize: bool,
    sigma0: float | None,
    workspace_bytes: int = 16 * 2**20,
) -> None:
    """Write the symmetric ``b <= a`` products of ``y`` into ``out`` (no autograd).

    ``out [row, P*(l_max+1) (+1)]`` receives, in GAP's layout, the values
    ``f_ab (2l+1)^{-1/2} sum_m y_alm y_blm`` (``f = 1`` on the diagonal, sqrt 2
    off it), divided by the row norm when ``normalize``, and ``sigma0`` in the
    last column when given. The Gram blocks are computed for ``b < a1`` of
    blocks of rows ``a0 <= a < a1`` only (about 60 % of the full products),
    with the scalings folded into ``y``: the row norm comes from the small
    ``[2l+1, 2l+1]`` Gram matrices, since ``||y y^T||_F = ||y^T y||_F``.
    """
    n_rows, n_channels, n_lm = y.shape
    n_l = l_max + 1
    dtype, device = y.dtype, y.device
    scale = [1.0 / math.sqrt(2 * l + 1) for l in range(n_l)]
    lm_to_l = l_of_lm(l_max)
    lm_scale = torch.tensor(
        [math.sqrt(SQRT2 * scale[l]) for l in lm_to_l.tolist()], dtype=torch.float64
    )
    lm_scale = lm_scale.to(dtype=dtype, device=device)  # [lm]
    n_blocks = max(1, math.ceil(n_channels / 48))
    block = math.ceil(n_channels / n_blocks)
    blocks = [(a0, min(n_channels, a0 + block)) for a0 in range(0, n_channels, block)]
    per_row = n_l * block * n_channels * y.element_size()
    chunk = max(1, min(n_rows, workspace_bytes // per_row))
    workspace = _memory.empty(n_l * chunk * block * n_channels, dtype=dtype, device=device)
    offsets = [a * (a + 1) // 2 * n_l for a in range(n_channels + 1)]
    # few channels: the [2l+1, 2l+1] Gram matrices for the norm cost as much as the products
    few = n_channels <= 2 * (l_max + 1) ** 2
    for start in range(0, n_rows, chunk):
        yc = y[start : start + chunk]  # [m, K, lm]
        m = yc.shape[0]
        if normalize and not few:
            norm2 = torch.zeros(m, dtype=dtype, device=device)
            for l in range(n_l):
                part = yc[:, :, l * l : (l + 1) * (l + 1)]  # [m, K, 2l+1]
                small = torch.bmm(part.transpose(1, 2), part)  # [m, 2l+1, 2l+1]
                norm2 = norm2 + small.square().sum((1, 2)) * scale[l] ** 2
            inverse = torch.where(norm2 > 0, norm2.rsqrt(), torch.ones_like(norm2))  # [m]
            ys = yc * (lm_scale[None, None, :] * inverse.sqrt()[:, None, None])
        else:
            ys = yc * lm_scale[None, None, :]  # [m, K, lm]
        dest = out[start : start + m]  # [m, F]
        for a0, a1 in blocks:
            gram = workspace[: n_l * m * (a1 - a0) * a1].view(n_l, m, a1 - a0, a1)  # [l, m, a, b]
            for l in range(n_l):
                part = ys[:, :, l * l : (l + 1) * (l + 1)]  # [m, K, 2l+1]
                torch.bmm(part[:, a0:a1], part[:, :a1].transpose(1, 2), out=gram[l])
            gram[:, :, :, a0:a1].diagonal(dim1=2, dim2=3).mul_(1.0 / SQRT2)  # f_aa = 1
            by_row = gram.permute(1, 2, 3, 0)  # [m, a, b, l]
            for a in range(a0, a1):
                dest[:, offsets[a] : offsets[a + 1]].view(m, a + 1, n_l).copy_(
                    by_row[:, a - a0, : a + 1, :]
                )
        if normalize and few:  # few channels: the row norm straight from the values
            values = dest[:, : offsets[-1]]
            norm = torch.linalg.vector_norm(values, dim=1, keepdim=True)
            values.div_(torch.where(norm > 0, norm, torch.ones_like(norm)))
        if sigma0 is not None:
            dest[:, -1] = sigma0


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

    # free mixing weights (buffers, or parameters when learnable); None for the full SOAP
    weights1: torch.Tensor | None
    weights2: torch.Tensor | None

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
        _check_construction_memory(h)
        self.radial_basis = make_radial_basis(
            h.radial.kind,
            n_max=h.radial.n_max,
            l_max=h.l_max,
            cutoff=h.cutoff.radius,
            sigma=h.density.sigma,
            error_exponent=h.radial.error_exponent,
        )
        self.species_map = SpeciesMap(h.species, h.unknown_species)
        self.center_all_species = (
            (h.n_species == 1)
            if h.density.center_all_species is None
            else h.density.center_all_species
        )
        self.expansion = DensityExpansion(
            self.radial_basis,
            self.species_map,
            l_max=h.l_max,
            cutoff=h.cutoff.radius,
            cutoff_width=h.cutoff.width,
            center_weight=h.density.center_weight,
            center_all_species=self.center_all_species,
        )
        mix = h.mixing
        self.plan = pair_plan(
            mode=None if mix is None else mix.mode,
            coupling=h.coupling,
            symmetric=True if mix is None else mix.symmetric,
            n_species=h.n_species,
            n_max=h.radial.n_max,
            channels=0 if mix is None else mix.channels,
            diagonal_radial=h.diagonal_radial,
        )
        self.register_buffer("weights1", None)
        self.register_buffer("weights2", None)
        self.fixed_matrices: tuple[torch.Tensor, torch.Tensor] | None = (
            None  # (W1, W2) override, used for GAP's nu_R/nu_S/Z_map
        )
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

    def memory_estimate(self, n_rows: int, batch_atoms: int, dtype: torch.dtype) -> int:
        """Bytes a :meth:`compute` of ``n_rows`` output rows allocates (estimate).

        The output ``[row, feature]``, the column names and labels, and the
        working set of one batch of ``batch_atoms`` atoms: the density
        coefficients ``[atom, K, lm]`` (unmixed and mixed) and one chunk of
        power-spectrum rows.
        """
        h = self.hypers
        itemsize = torch.empty((), dtype=dtype).element_size()
        n_lm = (h.l_max + 1) ** 2
        unmixed = h.n_species * h.radial.n_max
        k1 = max(self.plan.first.max(initial=0), self.plan.second.max(initial=0)) + 1
        output = n_rows * self.n_features * itemsize
        columns = self.n_features * (3 * 8 + 64)  # labels and names
        density = batch_atoms * (unmixed + 2 * k1) * n_lm * itemsize
        chunk = min(batch_atoms, 256) * self.n_features * itemsize * 2
        mixing = unmixed * 2 * k1 * itemsize
        return int(output + columns + density + chunk + mixing)

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
        cached = self.__dict__.get("_feature_names_cache")
        if cached is not None and cached[0] is self.plan:
            return list(cached[1])
        names = self.channel_names()
        labels = self.feature_labels()
        out = [
            f"{names[a]}.{names[b]}.l{l}"
            for a, b, l in zip(labels["channel_1"], labels["channel_2"], labels["l"], strict=True)
            if l >= 0
        ]
        if self.hypers.covariance_sigma0 is not None:
            out.append("covariance_sigma0")
        self.__dict__["_feature_names_cache"] = (self.plan, tuple(out))
        return out

    # ------------------------------------------------------------------ compute
    def mixing_matrices(self, dtype: torch.dtype, device: torch.device):
        """Full ``W1 [S*N, K1]`` and ``W2`` (``None`` for the unmixed SOAP)."""
        if self.fixed_matrices is not None:
            w1, w2 = (w.to(dtype=dtype, device=device) for w in self.fixed_matrices)
            return w1, w2
        h, free1, free2 = self.hypers, self.weights1, self.weights2
        if free1 is None or h.mixing is None:  # set together
            return None, None
        mode = h.mixing.mode
        w1 = expand_weights(mode, free1.to(dtype=dtype, device=device), h.n_species, h.radial.n_max)
        if free2 is None:
            return w1, w1
        w2 = expand_weights(mode, free2.to(dtype=dtype, device=device), h.n_species, h.radial.n_max)
        return w1, w2

    def forward(
        self,
        batch: Batch,
        positions: torch.Tensor | None = None,
        cells: torch.Tensor | None = None,
        *,
        row_chunk: int = 256,
        out: torch.Tensor | None = None,
        pairs: Pairs | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
        pairs : Pairs, optional
            The batch's neighbour pairs (``self.expansion.pairs(batch)``) when
            already known.

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
        expansion = self.expansion
        if pairs is None:
            pairs = expansion.pairs(batch)
        vectors = expansion.vectors(batch, pairs, positions, cells)  # [pair, 3]
        w1, w2 = self.mixing_matrices(dtype, device)
        if w1 is None or w2 is w1:
            weights = w1  # [S*N, K1] or None
        else:
            weights = torch.cat([w1, w2], dim=1)  # [S*N, K1+K2]
        density = expansion.coefficients(
            batch, pairs, vectors, weights=weights
        )  # [atom, K, lm] (K = S*N unmixed)
        rows = self.center_rows(batch)
        if h.center_species is not None:
            density = density[rows]  # [row, K, lm]
        if h.average:
            structure = batch.structure[rows]
            summed = torch.zeros(
                (batch.n_structures,) + density.shape[1:], dtype=dtype, device=device
            )
            density = summed.index_add(0, structure, density)  # [structure, K, lm]
            rows = torch.arange(batch.n_structures, device=device)
        if weights is None or w2 is w1:
            y1 = y2 = density
        else:
            y1, y2 = (
                density[:, : w1.shape[1]],
                density[:, w1.shape[1] :],
            )  # [row, K1, lm], [row, K2, lm]
        return self._products(y1, y2, row_chunk=row_chunk, out=out), rows

    def _products(
        self, y1: torch.Tensor, y2: torch.Tensor, *, row_chunk: int, out: torch.Tensor | None
    ) -> torch.Tensor:
        """Normalised power spectrum ``[row, feature]`` of mixed densities, in chunks of rows."""
        h = self.hypers
        n_rows, dtype, device = y1.shape[0], y1.dtype, y1.device
        graph = _needs_graph(y1, y2)
        if out is None and not graph:
            out = _memory.empty(n_rows, self.n_features, dtype=dtype, device=device)
        if out is not None and _use_triangle(self.plan, y1, y2) and out.stride(-1) == 1:
            with torch.profiler.record_function("soap/power_spectrum"):
                _triangle_products(
                    y1, out, h.l_max, normalize=h.normalize, sigma0=h.covariance_sigma0
                )
            return out
        chunks = []
        for start in range(0, n_rows, row_chunk):
            with torch.profiler.record_function("soap/power_spectrum"):
                values = power_spectrum(
                    y1[start : start + row_chunk], y2[start : start + row_chunk], self.plan, h.l_max
                )  # [chunk, F']
            if out is not None:
                if h.normalize:
                    norm = torch.linalg.vector_norm(values, dim=1, keepdim=True)
                    values = values / torch.where(norm > 0, norm, torch.ones_like(norm))
                stop = start + values.shape[0]
                out[start:stop, : values.shape[1]] = values
                if h.covariance_sigma0 is not None:
                    out[start:stop, -1] = h.covariance_sigma0
                continue
            chunks.append(self._finish_products(values))
        if out is not None:
            return out
        if not chunks:
            return torch.zeros(0, self.n_features, dtype=dtype, device=device)
        return torch.cat(chunks, dim=0) if len(chunks) > 1 else chunks[0]

    def _finish_products(self, values: torch.Tensor) -> torch.Tensor:
        """Raw products ``[row, F']`` -> features ``[row, F]``: normalisation, sigma0 column."""
        h = self.hypers
        if h.normalize:
            norm = torch.linalg.vector_norm(values, dim=1, keepdim=True)
            values = values / torch.where(norm > 0, norm, torch.ones_like(norm))
        if h.covariance_sigma0 is not None:
            values = torch.cat([values, torch.full_like(values[:, :1], h.covariance_sigma0)], dim=1)
        return values

    def center_rows(self, batch: Batch) -> torch.Tensor:
        """Atom indices (into the batch) that are centres, ``[row]``."""
        if self.hypers.center_species is None:
            return torch.arange(batch.n_atoms, device=batch.positions.device)
        wanted = torch.as_tensor(self.hypers.center_species, device=batch.numbers.device)
        return torch.isin(batch.numbers, wanted).nonzero().squeeze(1)

    def compute(
        self,
        systems,
        *,
        output: str = "numpy",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        min_distance: float | None = None,
        skip_bad: bool = False,
        client=None,
    ) -> Features:
        """Features of one or many structures.

        Parameters
        ----------
        systems : ase.Atoms, System, dict, a list of them, a path, an ASE database, or an iterator
            The structures (never modified). A file name (any ASE format), an
            ASE database connection or an iterator (``ase.io.iread``) is read
            lazily, ``batch_size * 16`` structures at a time
            (:mod:`tradens.representations.stream`; to write features larger than
            memory to a file, use :func:`~tradens.representations.stream.compute_to_file`).
        output : {"numpy", "torch"}
            Array type of the result.
        dtype, device : optional
            Floating dtype (float64 default, float32 available) and device.
        batch_size : int, optional
            Structures per batch; default: packed by size, about
            :data:`~tradens.systems.batch.ATOMS_PER_BATCH` atoms a batch.
        progress : bool
            Show a tqdm progress bar (structures, atoms per second).
        min_distance : float, optional
            Two atoms closer than this (Å) are an error naming them (default
            1e-6 Å, see :func:`~tradens.systems.batch.as_batch`; 0: no check).
        skip_bad : bool
            Leave out structures that fail (bad cell, NaN, overlapping atoms,
            unknown element with ``unknown_species="error"``) instead of
            raising; they are listed in ``Features.skipped`` and in a warning.
            Without it the error names the structure's index in ``systems``.
        client : distributed.Client, optional
            Compute chunks of ``batch_size * 16`` structures on the workers of
            this dask cluster (``tradens[dask]``); the rows come back in input order.

        Returns
        -------
        Features
            ``values [row, feature]`` with ``structure``, ``center`` and
            ``numbers`` of each row, ``labels`` and ``names`` of each column.
        """
        if client is not None or is_lazy(systems):
            return compute_chunked(
                self,
                systems,
                output=output,
                dtype=dtype,
                device=device,
                batch_size=batch_size,
                progress=progress,
                min_distance=min_distance,
                client=client,
                skip_bad=skip_bad,
            )
        return compute_in_batches(
            self,
            systems,
            output=output,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            progress=progress,
            desc="SOAP",
            averaged=self.hypers.average,
            min_distance=min_distance,
            skip_bad=skip_bad,
        )


def soap_size(hypers: SoapHypers) -> tuple[int, int]:
    """``(stored channel pairs, features per row)`` of SOAP hypers, counted without building them.

    GAP's ``nu_R``/``nu_S``/``Z_map`` compressions (installed by
    :func:`tradens.quip.soap_from_gap` after construction) are not included.
    """
    h = hypers
    mix = h.mixing
    pairs = plan_size(
        mode=None if mix is None else mix.mode,
        coupling=h.coupling,
        symmetric=True if mix is None else mix.symmetric,
        n_species=h.n_species,
        n_max=h.radial.n_max,
        channels=0 if mix is None else mix.channels,
        diagonal_radial=h.diagonal_radial,
    )
    return pairs, pairs * (h.l_max + 1) + (0 if h.covariance_sigma0 is None else 1)


def _check_construction_memory(h: SoapHypers) -> None:
    """Refuse hypers whose pair plan or mixing weights would not fit in memory."""
    pairs, features = soap_size(h)
    nbytes = pairs * 24  # PairPlan: first, second, factor [pair]
    if h.mixing is not None:
        S, N, K = h.n_species, h.radial.n_max, h.mixing.channels
        free = {"radial+element": S * N, "element": S, "radial": N}[h.mixing.mode] * K
        if h.mixing.weights == "onehot":
            free = K * K
        nbytes += free * 8 * (1 if h.mixing.symmetric else 2) * 2  # float64, with a copy
    from ..kernels.budget import check_memory

    check_memory(
        nbytes,
        f"SOAP with {features} features per atom ({pairs} channel pairs: {_describe_size(h)})",
        _SUGGESTION,
    )


_SUGGESTION = (
    "use fewer mixed channels K, a mixing (tensor reduction) instead of the full SOAP, "
    "coupling='elementwise', or smaller n_max/l_max"
)


def _describe_size(h: SoapHypers) -> str:
    mix = h.mixing
    kind = "full SOAP" if mix is None else f"{mix.mode} mixing K={mix.channels} ({h.coupling})"
    return f"{kind}, S={h.n_species}, n_max={h.radial.n_max}, l_max={h.l_max}"


def _coerce(kwargs: dict) -> dict:
    """Accept numbers and dicts for the structured hypers."""
    out = dict(kwargs)
    if isinstance(out.get("cutoff"), (int, float)) and not isinstance(out["cutoff"], bool):
        out["cutoff"] = Cutoff(radius=float(out["cutoff"]))
    for key, cls in (
        ("cutoff", Cutoff),
        ("density", Density),
        ("radial", RadialBasis),
        ("mixing", Mixing),
    ):
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
        return [
            gap_weights(mix.mode, species, N, K, mix_shift=mix.seed, density=d)
            for d in range(1, n_densities + 1)
        ]
    if mix.weights == "random":
        return [
            random_weights(mix.mode, S, N, K, mix.seed + 1000003 * (d - 1))
            for d in range(1, n_densities + 1)
        ]
    from ..density.embeddings import free_weight_shape

    shape = free_weight_shape(mix.mode, S, N, K)
    matrices = (
        [np.asarray(mix.matrix, dtype=np.float64)]
        if mix.symmetric
        else [np.asarray(m, dtype=np.float64) for m in mix.matrix]
    )
    for m in matrices:
        if m.shape != shape:
            raise ValueError(
                f"given mixing matrix must have shape {shape} for mode {mix.mode!r}, got {m.shape}"
            )
    if len(matrices) != n_densities:
        raise ValueError("symmetric=False needs a pair of given matrices")
    return matrices
