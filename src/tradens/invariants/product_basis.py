"""ACE product basis (tensor-reduced and full) from an atomic base ``A``.

This part of the module is a pure tensor function: given the atomic base

.. math::

    A_{i k l m} = \\sum_j W_{k z_j} R_{k l}(r_{ij}) Y_{l m}(\\hat r_{ij})

as a tensor ``A[atoms, K, (l_max+1)**2]`` (flat ``l*l + l + m`` layout of
:mod:`tradens.density.angular`), it forms the rotation-invariant products

.. math::

    B_{i, \\nu, \\mathbf{k}, \\mathbf{l}, p} = \\sum_{\\mathbf{m}}
        U^{\\mathbf{l}}_{p, m_1 \\dots m_\\nu} \\prod_{t=1}^{\\nu} A_{i k_t l_t m_t}

with the coupling tensors of :mod:`tradens.invariants.coupling`.

Modes
-----
``"diagonal"`` (tensor-reduced ACE, Darby et al., PRL 131, 028001 (2023)):
    all factors use the same channel, ``k_1 = ... = k_nu = k``; the ``l``-tuples
    are sorted ``l_1 <= ... <= l_nu`` and the coupling tensors are symmetrised
    over permutations of factors with equal ``l``. The number of features is
    ``K * sum_nu sum_{l-tuples} n_paths(l-tuple)``, independent of the number
    of chemical elements.
``"full"`` (uncompressed reference):
    all multisets of ``(k_t, l_t)`` pairs, written canonically with
    ``k_1 <= ... <= k_nu`` and ``l`` sorted within runs of equal ``k``; the
    coupling tensors are symmetrised over permutations of factors that share
    both ``k`` and ``l``.

In both modes ``nu = 1`` gives ``B = A[:, k, l=0]`` and order ``nu`` uses
``l_t <= l_max_per_order[nu-1]``. The features are linearly independent
(for generic ``A``) and exactly invariant under rotations of ``A``
(``A_l -> D_l(R) A_l``). With ``parity="all"`` odd-``sum(l)`` features are
pseudoscalars (they flip sign under inversion); ``parity="even"`` keeps only
true O(3) invariants.

Normalisation: the coupling tensors have unit Frobenius norm, so for
``nu = 2`` the feature is ``B_{k,(l,l)} = sum_m A_{klm}^2 / sqrt(2l+1)``.

Evaluation does not form the dense ``prod_t (2l_t+1)`` coupling tensors: every
path is expanded over *balanced* coupling trees
(:func:`tradens.invariants.coupling.coupling_tree_coefficients` with
``scheme="balanced"``): the first ``ceil(nu/2)`` factors and the remaining ones
are each coupled to a common degree ``L`` with real Clebsch-Gordan
coefficients, one factor at a time, over all atoms and channels at once, and
the two halves are contracted over ``M``. For ``nu <= 4`` this means only pair
couplings ``A_{l1} x A_{l2} -> L`` (``[atoms, channels, 2L+1]``), which are
computed once per call and shared by all ``l``-tuples, followed by dot
products.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import NamedTuple

import numpy as np
import torch

from .coupling import (
    PARITIES,
    coupling_tree_coefficients,
    enumerate_l_tuples,
    real_clebsch_gordan,
)

__all__ = [
    "FeatureLabel",
    "ProductBasisPlan",
    "ace_product_basis",
    "ace_product_basis_labels",
    "ace_product_basis_plan",
]

MODES = ("diagonal", "full")


class FeatureLabel(NamedTuple):
    """Meaning of one column of the product basis.

    Attributes
    ----------
    nu : int
        Correlation order (number of factors).
    k : tuple of int
        Channel of every factor (``(k,) * nu`` in the diagonal mode).
    l : tuple of int
        Degree of every factor.
    path : int
        Index of the independent coupling path
        (row of :func:`tradens.invariants.coupling.coupling_tensors` with the matching
        labels).
    """

    nu: int
    k: tuple[int, ...]
    l: tuple[int, ...]
    path: int


@dataclass
class _Group:
    """Features sharing an l-tuple and a channel-equality pattern."""

    nu: int
    ls: tuple[int, ...]
    pattern: tuple[int, ...]  # canonical factor labels (equal k <-> equal label)
    ktuples: np.ndarray  # [nK, nu] int64
    col_ids: tuple[int, ...]  # per factor: id of the distinct channel column ktuples[:, t]
    chains: list  # per balanced tree: (left chain key, right chain key)
    coeffs: np.ndarray  # [P, n_trees], includes the 1/sqrt(2L+1) of the trees
    positions: np.ndarray  # [nK, P] final column of every feature


@dataclass(eq=False)
class ProductBasisPlan:
    """Precomputed enumeration of the product basis; call it on ``A``.

    Build with :func:`ace_product_basis_plan` (cached). ``plan(A)`` returns
    ``B [atoms, n_features]``; :attr:`labels` describes the columns.
    """

    n_channels: int
    nu_max: int
    l_max_per_order: tuple[int, ...]
    mode: str
    parity: str
    labels: list[FeatureLabel]
    groups: list[_Group]
    columns: list[np.ndarray]  # distinct channel columns, referenced by _Group.col_ids
    # (cols, ls, intermediates) of a chain prefix -> degrees L it is coupled to
    couplings: dict
    _device_cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_features(self) -> int:
        """Number of columns of ``B``."""
        return len(self.labels)

    @property
    def l_max(self) -> int:
        """Largest degree used by any feature (``A`` needs at least this)."""
        return max([0] + [max(g.ls) for g in self.groups])

    def _tensors(self, device: torch.device):
        key = device
        if key not in self._device_cache:
            order = np.concatenate(
                [g.positions.reshape(-1) for g in self.groups] + [np.zeros(0, dtype=np.int64)]
            )
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.size)
            self._device_cache[key] = (
                [torch.as_tensor(c, dtype=torch.long, device=device) for c in self.columns],
                torch.as_tensor(inverse, dtype=torch.long, device=device),
            )
        return self._device_cache[key]

    def _coeffs(self, g_index: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (g_index, dtype, device)
        if key not in self._device_cache:
            c = self.groups[g_index].coeffs
            self._device_cache[key] = torch.as_tensor(c.T.copy(), dtype=dtype, device=device)
        return self._device_cache[key]  # [n_trees, P]

    def __call__(self, A: torch.Tensor) -> torch.Tensor:
        """Evaluate the product basis.

        Parameters
        ----------
        A : torch.Tensor
            ``[atoms, K, (l_max+1)**2]`` with ``K == n_channels`` and
            ``l_max >= self.l_max``; floating point, any device.

        Returns
        -------
        torch.Tensor
            ``[atoms, n_features]``, same dtype/device as ``A``;
            differentiable with respect to ``A``.
        """
        _check_A(A)
        if A.shape[1] != self.n_channels:
            raise ValueError(f"A has {A.shape[1]} channels, the plan expects {self.n_channels}")
        l_max_a = math.isqrt(A.shape[2]) - 1
        if l_max_a < self.l_max:
            raise ValueError(f"A has l_max={l_max_a}, the product basis needs l_max>={self.l_max}")
        return self.from_blocks([A[:, :, l * l : (l + 1) * (l + 1)] for l in range(self.l_max + 1)])

    def from_blocks(self, degree_blocks: list, group: int | None = None) -> torch.Tensor:
        """The product basis of ``A`` given split by degree: ``degree_blocks[l] [atoms, K, 2l+1]``.

        With the blocks as autograd leaves, a backward pass writes each
        block's gradient once (indexing one leaf ``A`` makes autograd fill a
        zero tensor of its size for every factor). With ``group`` only that
        group's features are evaluated, ``[atoms, nK * P]`` in its own order
        (``groups[group].positions.reshape(-1)`` are their label columns).
        """
        n_atoms = degree_blocks[0].shape[0]
        if not self.groups:
            return degree_blocks[0].new_zeros((n_atoms, 0))
        dtype, device = degree_blocks[0].dtype, degree_blocks[0].device
        columns, inverse = self._tensors(device)
        identity = [bool(np.array_equal(c, np.arange(self.n_channels))) for c in self.columns]

        factor_cache: dict = {}  # (col_id, l) -> [N, nK, 2l+1]
        chain_cache: dict = {}  # chain key -> [N, nK, 2L+1]

        def factor(col_id: int, l: int) -> torch.Tensor:
            key = (col_id, l)
            if key not in factor_cache:
                # [N, nK, 2l+1]; every channel in order: the block itself
                block = degree_blocks[l]
                factor_cache[key] = block if identity[col_id] else block[:, columns[col_id]]
            return factor_cache[key]

        def chain(key) -> torch.Tensor:
            """Factors of ``key`` coupled sequentially, [N, nK, 2L+1]."""
            cols, ls, inter = key
            if len(ls) == 1:
                return factor(cols[0], ls[0])
            if key not in chain_cache:
                prefix = (cols, ls, inter[:-1])
                degrees = self.couplings[prefix]
                x = chain((cols[:-1], ls[:-1], inter[:-1]))  # [N, nK, a]
                f = factor(cols[-1], ls[-1])  # [N, nK, b]
                outer = (x.unsqueeze(-1) * f.unsqueeze(-2)).flatten(-2)  # [N, nK, a*b]
                prev_l = ls[0] if len(ls) == 2 else inter[-2]
                cg = _cg_block(prev_l, ls[-1], degrees, dtype, device)  # [a*b, sum(2L+1)]
                out = outer @ cg  # [N, nK, sum(2L+1)]
                pieces = out.split([2 * L + 1 for L in degrees], dim=-1)
                for L, piece in zip(degrees, pieces, strict=True):
                    chain_cache[(cols, ls, inter[:-1] + (L,))] = piece  # [N, nK, 2L+1]
            return chain_cache[key]

        blocks = []
        for gi, g in enumerate(self.groups):
            if group is not None and gi != group:
                continue
            if g.nu == 1:
                blocks.append(factor(g.col_ids[0], 0).flatten(1))  # [N, nK]
                continue
            values = [(chain(left) * chain(right)).sum(-1) for left, right in g.chains]
            trees_values = torch.stack(values, dim=-1)  # [N, nK, n_trees]
            paths = trees_values @ self._coeffs(gi, dtype, device)  # [N, nK, P]
            blocks.append(paths.flatten(1))  # [N, nK*P]
        if group is not None:
            return blocks[0]  # [N, nK * P]
        flat = torch.cat(blocks, dim=1)  # [N, n_features], computation order
        return flat.index_select(1, inverse)  # [N, n_features], label order


@cache
def _cg_block(
    l1: int, l2: int, degrees: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Real CG of l1 x l2 -> each L in degrees, [(2l1+1)*(2l2+1), sum(2L+1)]."""
    n_in = (2 * l1 + 1) * (2 * l2 + 1)
    blocks = [real_clebsch_gordan(l1, l2, L).reshape(n_in, -1) for L in degrees]
    return torch.as_tensor(np.concatenate(blocks, axis=1), dtype=dtype, device=device)


def _check_A(A: torch.Tensor) -> tuple[int, int, int]:
    if not isinstance(A, torch.Tensor):
        raise ValueError(f"A must be a torch.Tensor, got {type(A).__name__}")
    if A.dim() != 3:
        raise ValueError(f"A must have shape [atoms, K, (l_max+1)**2], got {tuple(A.shape)}")
    if not A.is_floating_point():
        raise ValueError(f"A must be a floating point tensor, got {A.dtype}")
    n_lm = A.shape[2]
    if n_lm == 0 or math.isqrt(n_lm) ** 2 != n_lm:
        raise ValueError(f"the last dimension of A must be (l_max+1)**2, got {n_lm}")
    if A.shape[1] == 0:
        raise ValueError("A must have at least one channel")
    return A.shape[0], A.shape[1], A.shape[2]


def _normalise_l_max_per_order(nu_max, l_max_per_order) -> tuple[int, ...]:
    if isinstance(nu_max, bool) or not isinstance(nu_max, (int, np.integer)) or nu_max < 1:
        raise ValueError(f"nu_max must be an integer >= 1, got {nu_max!r}")
    if isinstance(l_max_per_order, (int, np.integer)) and not isinstance(l_max_per_order, bool):
        values = (int(l_max_per_order),) * int(nu_max)
    else:
        try:
            values = tuple(l_max_per_order)
        except TypeError:
            raise ValueError(
                f"l_max_per_order must be an int or a sequence, got {l_max_per_order!r}"
            ) from None
        if len(values) < nu_max:
            raise ValueError(
                f"l_max_per_order needs one entry per order 1..{nu_max}, got {len(values)}"
            )
        values = values[: int(nu_max)]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"l_max_per_order entries must be integers >= 0, got {v!r}")
        out.append(int(v))
    return tuple(out)


def _compositions(n: int):
    """Ordered block sizes summing to n (runs of equal channels)."""
    if n == 0:
        yield ()
        return
    for first in range(1, n + 1):
        for rest in _compositions(n - first):
            yield (first,) + rest


def _candidate_groups(
    K: int, nu_max: int, l_max_per_order: tuple[int, ...], mode: str, parity: str
) -> list[tuple[int, tuple[int, ...], tuple[int, ...], np.ndarray]]:
    """Candidate groups ``(nu, ls, pattern, ktuples [nK, nu])`` in plan order.

    ``pattern`` marks which factors share a channel (diagonal: all); ``ls`` are the degrees
    allowed by the triangle rule, ``parity`` and (``nu = 2``) ``l_1 = l_2``.
    """
    candidates = []
    for nu in range(1, nu_max + 1):
        l_max = 0 if nu == 1 else l_max_per_order[nu - 1]
        if mode == "diagonal" or nu == 1:
            pattern = (0,) * nu
            kt = np.repeat(np.arange(K, dtype=np.int64)[:, None], nu, axis=1)  # [K, nu]
            for ls in enumerate_l_tuples(nu, l_max, parity):
                candidates.append((nu, ls, pattern, kt))
            continue
        for blocks in _compositions(nu):
            r = len(blocks)
            if r > K:
                continue
            pattern = tuple(i for i, b in enumerate(blocks) for _ in range(b))
            distinct = np.array(list(itertools.combinations(range(K), r)), dtype=np.int64)
            kt = distinct[:, list(pattern)]  # [nK, nu]
            per_block = [
                itertools.combinations_with_replacement(range(l_max + 1), b) for b in blocks
            ]
            for parts in itertools.product(*per_block):
                ls = tuple(l for part in parts for l in part)
                if nu >= 2 and 2 * max(ls) > sum(ls):
                    continue
                if nu == 2 and ls[0] != ls[1]:
                    continue
                if parity == "even" and sum(ls) % 2:
                    continue
                if parity == "odd" and sum(ls) % 2 == 0:
                    continue
                candidates.append((nu, ls, pattern, kt))
    return candidates


def _coupling_chains(
    coeffs: np.ndarray,
    trees: Sequence,
    col_ids: tuple[int, ...],
    nu: int,
    ls: tuple[int, ...],
    couplings: dict,
) -> tuple[list, list[np.ndarray]]:
    """Left/right chains of the contributing trees and their coefficients ``/ sqrt(2L+1)``.

    Every intermediate coupling a chain needs is recorded in ``couplings`` (in place).
    """
    # keep the trees that contribute (symmetrisation removes e.g. odd L of equal pairs)
    keep = [i for i in range(len(trees)) if np.abs(coeffs[:, i]).max() > 1e-13]
    h = (nu + 1) // 2
    chains = []
    scaled = []
    for i in keep:
        left_inter, right_inter = trees[i]
        L = left_inter[-1] if left_inter else ls[0]
        left = (col_ids[:h], ls[:h], left_inter)
        right = (col_ids[h:], ls[h:], right_inter)
        chains.append((left, right))
        scaled.append(coeffs[:, i] / math.sqrt(2 * L + 1))
        for cols, sub_ls, inter in (left, right):
            for j in range(2, len(sub_ls) + 1):
                prefix = (cols[:j], sub_ls[:j], inter[: j - 2])
                couplings.setdefault(prefix, set()).add(inter[j - 2])
    return chains, scaled


@lru_cache(maxsize=64)
def _build_plan(
    n_channels: int,
    nu_max: int,
    l_max_per_order: tuple[int, ...],
    mode: str,
    parity: str,
    channel_degree: tuple[float, ...] | None,
    max_degree: float | None,
    w_L: float,
) -> ProductBasisPlan:
    """The plan of :func:`ace_product_basis_plan` (cached: the arguments are hashable)."""
    K = n_channels
    column_ids: dict[tuple[int, ...], int] = {}

    def col_id(col: np.ndarray) -> int:
        return column_ids.setdefault(tuple(int(c) for c in col), len(column_ids))

    def degree_ok(ktuples: np.ndarray, ls: tuple[int, ...]) -> np.ndarray:
        if max_degree is None:
            return np.ones(len(ktuples), dtype=bool)
        deg = np.asarray(channel_degree)[ktuples].sum(axis=1) + w_L * sum(ls)  # [nK]
        return deg <= max_degree + 1e-9

    candidates = _candidate_groups(K, nu_max, l_max_per_order, mode, parity)
    groups: list[_Group] = []
    raw_labels: list[FeatureLabel] = []
    couplings: dict = {}
    for nu, ls, pattern, kt in candidates:
        coeffs, trees = coupling_tree_coefficients(
            ls, labels=pattern, parity=parity, scheme="balanced"
        )
        n_paths = coeffs.shape[0]
        if n_paths == 0:
            continue
        kt = kt[degree_ok(kt, ls)]
        if len(kt) == 0:
            continue
        start = len(raw_labels)
        for krow in kt:
            k = tuple(int(x) for x in krow)
            raw_labels.extend(FeatureLabel(nu, k, ls, p) for p in range(n_paths))
        positions = np.arange(start, len(raw_labels), dtype=np.int64).reshape(len(kt), n_paths)
        col_ids = tuple(col_id(kt[:, t]) for t in range(nu))
        chains, scaled = _coupling_chains(coeffs, trees, col_ids, nu, ls, couplings)
        groups.append(
            _Group(
                nu=nu,
                ls=ls,
                pattern=pattern,
                ktuples=kt,
                col_ids=col_ids,
                chains=chains,
                coeffs=np.stack(scaled, axis=1) if nu > 1 else np.ones((1, 1)),
                positions=positions,
            )
        )

    # final column order: sorted by (nu, k-tuple, l-tuple, path)
    order = sorted(range(len(raw_labels)), key=lambda i: raw_labels[i])
    rank = np.empty(len(raw_labels), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(raw_labels))
    for g in groups:
        g.positions = rank[g.positions]
    labels = [raw_labels[i] for i in order]
    # ids are handed out in insertion order (0, 1, ...): the keys are the columns in id order
    columns = [np.asarray(col, dtype=np.int64) for col in column_ids]
    return ProductBasisPlan(
        n_channels=K,
        nu_max=nu_max,
        l_max_per_order=l_max_per_order,
        mode=mode,
        parity=parity,
        labels=labels,
        groups=groups,
        columns=columns,
        couplings={key: tuple(sorted(v)) for key, v in couplings.items()},
    )


def ace_product_basis_plan(
    n_channels: int,
    nu_max: int,
    l_max_per_order: int | Sequence[int],
    mode: str = "diagonal",
    parity: str = "all",
    channel_degree: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    max_degree: float | None = None,
    w_L: float = 1.0,
) -> ProductBasisPlan:
    """Enumerate the product basis once (cached); the plan is callable on ``A``.

    Parameters
    ----------
    n_channels : int
        Number of channels ``K`` of ``A``.
    nu_max : int
        Largest correlation order, ``>= 1``.
    l_max_per_order : int or sequence of int
        ``l_max_per_order[nu-1]`` bounds every ``l_t`` at order ``nu`` (an int
        applies to all orders). The entry for ``nu = 1`` is ignored (only
        ``l = 0`` is invariant). Extra entries beyond ``nu_max`` are ignored.
    mode : {"diagonal", "full"}
        Tensor-reduced (channel-diagonal) or full channel products, see the
        module docstring.
    parity : {"all", "even", "odd"}
        See :func:`tradens.invariants.coupling.coupling_tensors`.
    channel_degree : array_like, optional
        ``[K]`` degree ``n_k`` of every channel for the total-degree
        truncation; required when ``max_degree`` is given.
    max_degree : float, optional
        Keep a feature only if ``sum_t (n_{k_t} + w_L * l_t) <= max_degree``
        (ACE-style total degree; in the diagonal mode
        ``nu * n_k + w_L * sum(l)``). ``None``: no truncation.
    w_L : float
        Weight of the angular degree in the total degree.

    Returns
    -------
    ProductBasisPlan
    """
    if isinstance(n_channels, bool) or not isinstance(n_channels, (int, np.integer)):
        raise ValueError(f"n_channels must be an integer, got {n_channels!r}")
    if n_channels < 1:
        raise ValueError(f"n_channels must be >= 1, got {n_channels}")
    l_max_per_order = _normalise_l_max_per_order(nu_max, l_max_per_order)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if parity not in PARITIES:
        raise ValueError(f"parity must be one of {PARITIES}, got {parity!r}")
    degrees = None
    if max_degree is not None:
        if channel_degree is None:
            raise ValueError("max_degree requires channel_degree (the degree n_k of every channel)")
        if isinstance(channel_degree, torch.Tensor):
            channel_degree = channel_degree.detach().cpu().numpy()
        degrees_arr = np.asarray(channel_degree, dtype=np.float64).reshape(-1)
        if degrees_arr.shape != (n_channels,):
            raise ValueError(
                f"channel_degree must have one entry per channel ({n_channels}), "
                f"got shape {np.shape(channel_degree)}"
            )
        if not np.all(np.isfinite(degrees_arr)):
            raise ValueError("channel_degree must be finite")
        degrees = tuple(float(d) for d in degrees_arr)
        max_degree = float(max_degree)
    w_L = float(w_L)
    if not math.isfinite(w_L) or w_L < 0:
        raise ValueError(f"w_L must be a finite number >= 0, got {w_L}")
    return _build_plan(
        int(n_channels), int(nu_max), l_max_per_order, mode, parity, degrees, max_degree, w_L
    )


def ace_product_basis_labels(
    n_channels: int,
    nu_max: int,
    l_max_per_order: int | Sequence[int],
    mode: str = "diagonal",
    parity: str = "all",
    channel_degree: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    max_degree: float | None = None,
    w_L: float = 1.0,
) -> list[FeatureLabel]:
    """Feature labels (and hence the count) without evaluating anything.

    Same arguments as :func:`ace_product_basis_plan`; returns a new list of
    :class:`FeatureLabel` in column order.
    """
    plan = ace_product_basis_plan(
        n_channels, nu_max, l_max_per_order, mode, parity, channel_degree, max_degree, w_L
    )
    return list(plan.labels)


def ace_product_basis(
    A: torch.Tensor,
    nu_max: int,
    l_max_per_order: int | Sequence[int],
    mode: str = "diagonal",
    parity: str = "all",
    channel_degree: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    max_degree: float | None = None,
    w_L: float = 1.0,
) -> tuple[torch.Tensor, list[FeatureLabel]]:
    """Rotation-invariant ACE product basis of an atomic base ``A``.

    Parameters
    ----------
    A : torch.Tensor
        ``[atoms, K, (l_max+1)**2]`` atomic base, flat ``(l, m)`` layout of
        :mod:`tradens.density.angular`. Any floating dtype and device.
    nu_max, l_max_per_order, mode, parity, channel_degree, max_degree, w_L
        See :func:`ace_product_basis_plan`.

    Returns
    -------
    B : torch.Tensor
        ``[atoms, n_features]``, dtype/device of ``A``, differentiable.
        Columns are sorted by ``(nu, k-tuple, l-tuple, path)``.
    labels : list of FeatureLabel
        One record per column.

    Notes
    -----
    Number of features, with ``P(l; labels)`` the number of coupling paths
    (:func:`tradens.invariants.coupling.n_coupling_paths`):

    * diagonal: ``sum_{nu} K * sum_{l_1<=...<=l_nu <= l_max[nu]} P(l; all equal)``
      (``K`` for ``nu = 1``), before the optional degree truncation;
    * full: ``sum_{nu} sum over multisets of (k, l) pairs of P(l; k)``.

    For ``nu = 2`` the diagonal feature is ``sum_m A[i,k,l,m]**2 / sqrt(2l+1)``.
    """
    _check_A(A)
    plan = ace_product_basis_plan(
        A.shape[1], nu_max, l_max_per_order, mode, parity, channel_degree, max_degree, w_L
    )
    return plan(A), list(plan.labels)
