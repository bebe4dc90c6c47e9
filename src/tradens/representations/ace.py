"""Tensor-reduced (and full) ACE invariants of body order 2 to 5.

The atomic base is the density expansion of :mod:`tradens.density.expansion` mixed by a
radial+element embedding,

.. math:: A_{i,klm} = \\sum_I W_{Ik}\\, c_{i,Ilm}
          = \\sum_j W_{k z_j} R_{kl}(r_{ij}) Y_{lm}(\\hat r_{ij}),

so each channel ``k`` has an element weight and its own radial function (a
linear combination of the radial basis). The product basis
(:mod:`tradens.invariants.product_basis`) couples ``nu = 1..4`` factors channel by channel
(``mode="diagonal"``, the tensor-reduced basis: ``K x paths`` features,
independent of the number of elements and of ``n_max``) or over channel tuples
(``mode="full"``; with ``weights="onehot"`` the channels are ``(z, n)`` and
this is the standard species-resolved ACE basis).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..density.embeddings import random_weights
from ..density.expansion import DensityExpansion, SpeciesMap
from ..density.radial import make_radial_basis
from ..hypers import (
    MAX_CHANNELS,
    MAX_L,
    Cutoff,
    Density,
    RadialBasis,
    _atomic_numbers,
    _count,
    from_dict,
    register,
)
from ..invariants.product_basis import ace_product_basis_plan
from ..systems.batch import Batch
from ..systems.neighbors import Pairs
from .features import Features, compute_in_batches
from .stream import compute_chunked, is_lazy

__all__ = ["AceHypers", "ACE"]


@register
@dataclass(frozen=True, kw_only=True)
class AceHypers:
    """Hyperparameters of :class:`ACE`.

    Parameters
    ----------
    cutoff, density, radial : Cutoff, Density, RadialBasis
        As for SOAP. The default centre weight is 0 (no self term in ``A``).
    species : tuple of int
        Atomic numbers in channel order.
    nu_max : int
        Largest correlation order, 1..4 (body order ``nu_max + 1``).
    l_max : tuple of int
        Largest degree for each order ``nu = 1..nu_max`` (the ``nu = 1``
        entry is ignored: only ``l = 0`` is invariant).
    channels : int or tuple of int
        ``K``, shared by all orders, or one per order (then every order has its
        own embedding).
    weights : {"random", "given", "onehot"}
        Embedding source. ``"onehot"`` sets ``K = S * n_max`` (channels
        ``(z, n)``).
    seed : int
        Seed of the random embedding (order ``nu`` uses ``seed + nu`` when
        embeddings are per order).
    matrix : tuple or None
        Given embedding ``[S*N, K]`` (``weights="given"``, shared ``K``).
    mode : {"diagonal", "full"} or tuple of them
        Tensor-reduced products (same channel in every factor) or all channel
        tuples (the uncompressed reference); a tuple gives one mode per order
        ``nu = 1..nu_max`` (e.g. ``("full", "full", "diagonal")``: all channel
        pairs at ``nu = 2``, as in TR-SOAP, tensor-reduced triples), and then
        every order has its own embedding as with per-order ``channels``.
    parity : {"all", "even"}
        ``"all"`` keeps proper-rotation invariants including pseudoscalars
        (odd ``sum l``, sign flips under inversion); ``"even"`` keeps O(3)
        invariants only.
    max_degree : float or None
        Full mode: keep products with ``sum_t (n_t + w_L l_t) <= max_degree``.
    w_L : float
        Weight of ``l`` in the total degree.
    normalize : bool
        Divide every feature vector by its norm.
    learnable : bool
        Register the embeddings as trainable parameters.
    """

    cutoff: Cutoff
    density: Density = field(default_factory=lambda: Density(center_weight=0.0))
    radial: RadialBasis = field(default_factory=RadialBasis)
    species: tuple[int, ...]
    nu_max: int = 3
    l_max: tuple[int, ...] = (0, 6, 4)
    channels: int | tuple[int, ...] = 16
    weights: str = "random"
    seed: int = 0
    matrix: object = None
    mode: str | tuple[str, ...] = "diagonal"
    parity: str = "all"
    max_degree: float | None = None
    w_L: float = 1.0
    normalize: bool = False
    learnable: bool = False

    def __post_init__(self):
        for name, cls in (("cutoff", Cutoff), ("density", Density), ("radial", RadialBasis)):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, from_dict(value, expected=cls))
        species = _atomic_numbers("species", self.species)
        object.__setattr__(self, "species", species)
        _count("nu_max", self.nu_max)
        if self.nu_max > 4:
            raise ValueError(f"nu_max must be <= 4, got {self.nu_max}")
        if isinstance(self.l_max, int) and not isinstance(self.l_max, bool):
            l_max = (self.l_max,) * self.nu_max
        elif isinstance(self.l_max, (list, tuple)):
            l_max = tuple(self.l_max)
        else:
            raise ValueError(
                f"l_max must be an integer or one integer per order 1..{self.nu_max}, "
                f"got {self.l_max!r}"
            )
        if len(l_max) != self.nu_max or any(
            not isinstance(l, int) or isinstance(l, bool) or l < 0 for l in l_max
        ):
            raise ValueError(
                f"l_max must give one degree >= 0 per order 1..{self.nu_max}, got {self.l_max}"
            )
        if max(l_max) > MAX_L:
            raise ValueError(f"l_max must be <= {MAX_L}, got {self.l_max}")
        object.__setattr__(self, "l_max", l_max)
        if isinstance(self.channels, (list, tuple)):
            channels = tuple(self.channels)
            if len(channels) != self.nu_max:
                raise ValueError(
                    f"channels must give one K per order 1..{self.nu_max}, got {channels}"
                )
            for k in channels:
                _count("channels (K)", k, maximum=MAX_CHANNELS)
            object.__setattr__(self, "channels", channels)
        else:
            _count("channels (K)", self.channels, maximum=MAX_CHANNELS)
        if self.weights not in ("random", "given", "onehot"):
            raise ValueError(f"weights must be 'random', 'given' or 'onehot', got {self.weights!r}")
        if (self.weights == "given") != (self.matrix is not None):
            raise ValueError("an embedding matrix must be given exactly when weights='given'")
        if self.weights in ("given", "onehot") and isinstance(self.channels, tuple):
            raise ValueError(f"weights={self.weights!r} needs one shared channels value")
        if isinstance(self.mode, (list, tuple)):
            modes = tuple(self.mode)
            if len(modes) != self.nu_max or any(m not in ("diagonal", "full") for m in modes):
                raise ValueError(
                    f"mode must be 'diagonal', 'full' or one of them per order 1..{self.nu_max}, "
                    f"got {self.mode!r}"
                )
            if self.weights in ("given", "onehot"):
                raise ValueError(
                    f"a per-order mode needs per-order embeddings, not weights={self.weights!r}"
                )
            object.__setattr__(self, "mode", modes)
        elif self.mode not in ("diagonal", "full"):
            raise ValueError(f"mode must be 'diagonal' or 'full', got {self.mode!r}")
        if self.parity not in ("all", "even"):
            raise ValueError(f"parity must be 'all' or 'even', got {self.parity!r}")
        if self.max_degree is not None and "full" not in self.modes():
            raise ValueError("max_degree (total-degree truncation) applies to mode='full' only")

    def modes(self) -> tuple[str, ...]:
        """Product mode of every order ``nu = 1..nu_max``."""
        return self.mode if isinstance(self.mode, tuple) else (self.mode,) * self.nu_max


def _check_construction_memory(h: AceHypers) -> None:
    """Refuse hypers whose embedding or product basis certainly would not fit in memory.

    The estimate is a lower bound (so a configuration that fits is never
    refused): the embedding matrices ``[S*N, K]``, the channel tuples of every
    ``mode="full"`` order (``C(K, nu)`` of ``nu`` indices at least) and one
    label per channel and ``l`` at ``nu = 2`` (about 100 bytes each).
    """
    import math

    from ..kernels.budget import check_memory

    S, N = len(h.species), h.radial.n_max
    per_order = h.channels if isinstance(h.channels, tuple) else (h.channels,) * h.nu_max
    if h.weights == "onehot":
        per_order = (S * N,) * h.nu_max
    nbytes = 0
    for nu, (K, mode, l_max) in enumerate(zip(per_order, h.modes(), h.l_max, strict=True), 1):
        nbytes += S * N * K * 8  # embedding (float64)
        if nu >= 2:
            nbytes += K * (l_max + 1) * 100 if mode == "diagonal" else 0
        if nu >= 2 and mode == "full":
            nbytes += math.comb(K, nu) * nu * 8  # distinct channel tuples [n, nu] int64
    check_memory(
        nbytes,
        f"ACE with K={h.channels}, S={S}, n_max={N}, nu_max={h.nu_max}, mode={h.mode!r}",
        "use fewer channels K, mode='diagonal' (tensor-reduced) instead of 'full', a smaller "
        "nu_max or l_max",
    )


class ACE(torch.nn.Module):
    """Tensor-reduced ACE invariants (see module docstring).

    Parameters
    ----------
    hypers : AceHypers, optional
        Or the same fields as keywords (``cutoff`` may be a number,
        ``radial``/``density`` dicts).

    Examples
    --------
    >>> import ase.build
    >>> from tradens import ACE
    >>> atoms = ase.build.bulk("NiCu", "zincblende", a=3.6) * (2, 2, 2)
    >>> ace = ACE(cutoff=4.0, species=[28, 29], nu_max=3, l_max=(0, 3, 2), channels=4,
    ...           radial={"n_max": 4})
    >>> ace.compute(atoms).values.shape[1] == ace.n_features
    True
    """

    def __init__(self, hypers: AceHypers | None = None, **kwargs):
        super().__init__()
        if hypers is None:
            if isinstance(kwargs.get("cutoff"), (int, float)):
                kwargs["cutoff"] = Cutoff(radius=float(kwargs["cutoff"]))
            hypers = AceHypers(**kwargs)
        self.hypers = h = hypers
        _check_construction_memory(h)
        S, N = len(h.species), h.radial.n_max
        self.radial_basis = make_radial_basis(
            h.radial.kind,
            n_max=N,
            l_max=max(h.l_max),
            cutoff=h.cutoff.radius,
            sigma=h.density.sigma,
            error_exponent=h.radial.error_exponent,
        )
        self.species_map = SpeciesMap(h.species, "error", remedy="add them to the species list")
        self.center_all_species = bool(h.density.center_all_species)
        self.expansion = DensityExpansion(
            self.radial_basis,
            self.species_map,
            l_max=max(h.l_max),
            cutoff=h.cutoff.radius,
            cutoff_width=h.cutoff.width,
            center_weight=h.density.center_weight,
            center_all_species=self.center_all_species,
        )
        # one embedding shared by all orders, or one per order
        modes = h.modes()
        groups: list[tuple[tuple[int, ...], int, int]]  # (orders, channels K, seed)
        if isinstance(h.channels, tuple) or isinstance(h.mode, tuple):
            per_order = h.channels if isinstance(h.channels, tuple) else (h.channels,) * h.nu_max
            groups = [((nu,), per_order[nu - 1], h.seed + nu) for nu in range(1, h.nu_max + 1)]
        else:
            groups = [(tuple(range(1, h.nu_max + 1)), h.channels, h.seed)]
        self.groups = []
        for index, (orders, K, seed) in enumerate(groups):
            if h.weights == "onehot":
                K = S * N
                matrix = np.eye(K)
            elif h.weights == "given":
                matrix = np.asarray(h.matrix, dtype=np.float64)
                if matrix.shape != (S * N, K):
                    raise ValueError(
                        f"given embedding must have shape {(S * N, K)}, got {matrix.shape}"
                    )
            else:
                matrix = random_weights("radial+element", S, N, K, seed)
            value = torch.as_tensor(matrix, dtype=torch.float64)
            if h.learnable:
                self.register_parameter(f"embedding{index}", torch.nn.Parameter(value))
            else:
                self.register_buffer(f"embedding{index}", value)
            degree = np.tile(np.arange(N), S) if h.weights == "onehot" else None
            plan = ace_product_basis_plan(
                K,
                max(orders),
                h.l_max[: max(orders)],
                mode=modes[max(orders) - 1],
                parity=h.parity,
                channel_degree=degree if h.max_degree is not None else None,
                max_degree=h.max_degree,
                w_L=h.w_L,
            )
            keep = np.array([label.nu in orders for label in plan.labels])
            self.groups.append((f"embedding{index}", plan, torch.as_tensor(np.nonzero(keep)[0])))

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return int(sum(len(keep) for _, _, keep in self.groups))

    def memory_estimate(self, n_rows: int, batch_atoms: int, dtype: torch.dtype) -> int:
        """Bytes a :meth:`compute` of ``n_rows`` output rows allocates (estimate).

        The output ``[row, feature]``, the column names and labels, and for one
        batch of ``batch_atoms`` atoms the mixed bases ``A [atom, K, lm]`` and
        the features of the batch before concatenation.
        """
        itemsize = torch.empty((), dtype=dtype).element_size()
        n_lm = (max(self.hypers.l_max) + 1) ** 2
        channels = sum(int(getattr(self, name).shape[1]) for name, _, _ in self.groups)
        output = n_rows * self.n_features * itemsize
        columns = self.n_features * (3 * 8 + 64)
        batch = batch_atoms * (channels * n_lm * 2 + 2 * self.n_features) * itemsize
        return int(output + columns + batch)

    def feature_labels(self) -> dict[str, np.ndarray]:
        """Arrays ``nu``, ``k`` (first channel), ``l`` (l-tuple as text), ``path``."""
        labels = [plan.labels[i] for _, plan, keep in self.groups for i in keep.tolist()]
        return {
            "nu": np.array([lab.nu for lab in labels]),
            "k": np.array(["-".join(map(str, lab.k)) for lab in labels]),
            "l": np.array(["-".join(map(str, lab.l)) for lab in labels]),
            "path": np.array([lab.path for lab in labels]),
        }

    def feature_names(self) -> list[str]:
        """Readable name of every column, e.g. ``"nu3.k5-5-5.l1-1-2.p0"``."""
        labels = self.feature_labels()
        return [
            f"nu{n}.k{k}.l{l}.p{p}"
            for n, k, l, p in zip(
                labels["nu"], labels["k"], labels["l"], labels["path"], strict=True
            )
        ]

    def atomic_base(
        self,
        batch: Batch,
        positions: torch.Tensor | None = None,
        cells: torch.Tensor | None = None,
        *,
        pairs: Pairs | None = None,
    ) -> list[torch.Tensor]:
        """Mixed atomic bases ``A [atom, K, lm]``, one per embedding (differentiable).

        Each is computed per pair (``A = sum_j W[z_j n, k] R_nl Y_lm``) without
        forming the unmixed density when that is cheaper. ``pairs``: the batch's
        neighbour pairs when already known.
        """
        expansion = self.expansion
        if pairs is None:
            pairs = expansion.pairs(batch)
        vectors = expansion.vectors(batch, pairs, positions, cells)  # [pair, 3]
        species_index = self.species_map(batch.numbers)  # [atom]
        bases = []
        for name, _, _ in self.groups:
            embedding = getattr(self, name).to(
                dtype=vectors.dtype, device=vectors.device
            )  # [S*N, K]
            bases.append(
                expansion.coefficients(
                    batch, pairs, vectors, weights=embedding, species_index=species_index
                )
            )  # [atom, K, lm]
        return bases

    def forward(
        self,
        batch: Batch,
        positions: torch.Tensor | None = None,
        cells: torch.Tensor | None = None,
        *,
        pairs: Pairs | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable features ``[atom, feature]`` and the atom index of each row."""
        bases = self.atomic_base(batch, positions, cells, pairs=pairs)
        blocks = [
            plan(base)[:, keep.to(base.device)]
            for base, (_, plan, keep) in zip(bases, self.groups, strict=True)
        ]
        values = torch.cat(blocks, dim=1)  # [atom, feature]
        if self.hypers.normalize:
            norm = torch.linalg.vector_norm(values, dim=1, keepdim=True)
            values = values / torch.where(norm > 0, norm, torch.ones_like(norm))
        return values, torch.arange(batch.n_atoms, device=values.device)

    def compute(
        self,
        systems,
        *,
        output: str = "numpy",
        dtype: torch.dtype | None = None,
        device=None,
        batch_size: int | None = None,
        progress: bool = False,
        min_distance: float | None = None,
        skip_bad: bool = False,
        client=None,
    ) -> Features:
        """Features of one or many structures (same contract as :meth:`tradens.SOAP.compute`)."""
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
            desc="ACE",
            min_distance=min_distance,
            skip_bad=skip_bad,
        )
