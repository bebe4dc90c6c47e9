"""Coupling coefficients for products of real spherical harmonics.

This module builds the (generalised) Clebsch-Gordan coefficients that contract
products of ``nu`` equivariant vectors into rotation invariants. It is the
angular backbone of the ACE / tensor-reduced ACE product basis
(:mod:`tradens.invariants.product_basis`) and is also used by the test helpers.

Conventions
-----------
Real spherical harmonics follow :mod:`tradens.density.angular`: for degree ``l`` the
``2l+1`` orders are stored as ``m = -l, ..., l``. A quantity ``A_l`` (a vector
of length ``2l+1``) is *equivariant* if, under a proper rotation ``R``,
``A_l -> D_l(R) A_l`` where ``D_l(R)`` is the (real, orthogonal) Wigner matrix
of the real harmonics, defined by ``Y_l(R x) = D_l(R) Y_l(x)``
(:func:`wigner_d_real`).

Coupling tensors
----------------
For an ``l``-tuple ``(l_1, ..., l_nu)`` the coupling tensors
``U[path, m_1, ..., m_nu]`` (:func:`coupling_tensors`) are such that

.. math::

    B_{path} = \\sum_{m_1 \\dots m_\\nu} U_{path, m_1 \\dots m_\\nu}
               \\prod_{t=1}^{\\nu} A_{l_t m_t}

is invariant under proper rotations for any equivariant inputs. They are
obtained by sequential coupling ``l_1 x l_2 -> L_1``, ``L_1 x l_3 -> L_2``,
..., ``L_{nu-2} x l_nu -> 0`` with real Clebsch-Gordan coefficients (the
"coupling trees", which form an orthonormal basis of all invariants of
``V_{l_1} x ... x V_{l_nu}``), optionally symmetrised over permutations of
factors that carry the same *label* and the same ``l`` (these factors commute
in the product, so without symmetrisation one obtains linearly dependent or
vanishing features), and finally reduced to a linearly independent,
orthonormal (Frobenius inner product over ``m``) set.

Parity
------
Under inversion ``A_l -> (-1)^l A_l`` (true for densities of atoms), so
``B -> (-1)^{l_1 + ... + l_nu} B``. With ``parity="all"`` (default) the
tensors are invariant under proper rotations (SO(3)); tuples with odd
``sum(l)`` then give *pseudoscalars* that flip sign under inversion (for
``nu = 3`` the simplest one is ``(1, 1, 1)``, the triple product). With
``parity="even"`` only tuples with even ``sum(l)`` are kept: these are true
O(3) invariants. ``parity="odd"`` keeps only the pseudoscalars.

All coefficients are built in float64 numpy on the CPU and cached with
:func:`functools.lru_cache`; :func:`coupling_tensors_torch` and
:func:`real_clebsch_gordan_torch` return cached torch copies for a given
dtype/device.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from fractions import Fraction
from functools import cache

import numpy as np
import torch

from ..density.angular import spherical_harmonics

__all__ = [
    "PARITIES",
    "complex_clebsch_gordan",
    "complex_to_real_matrix",
    "real_clebsch_gordan",
    "real_clebsch_gordan_torch",
    "wigner_d_real",
    "wigner_d_real_full",
    "coupling_trees",
    "coupling_tensors",
    "coupling_tensors_torch",
    "coupling_tree_coefficients",
    "coupling_tree_tensor",
    "enumerate_l_tuples",
    "canonical_labels",
    "n_coupling_paths",
]

#: accepted values of the ``parity`` argument
PARITIES = ("all", "even", "odd")

# relative threshold below which a (symmetrised) coupling tensor is considered
# linearly dependent on the previous ones; genuine residuals are O(1e-2) or
# larger, numerical zeros O(1e-15)
_RANK_TOL = 1e-8


# ---------------------------------------------------------------------------
# input validation helpers
# ---------------------------------------------------------------------------


def _check_l(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _check_parity(parity: str) -> str:
    if parity not in PARITIES:
        raise ValueError(f"parity must be one of {PARITIES}, got {parity!r}")
    return parity


def _check_ls(ls: Sequence[int]) -> tuple[int, ...]:
    try:
        ls = tuple(ls)
    except TypeError:
        raise ValueError(f"ls must be a sequence of non-negative integers, got {ls!r}") from None
    if len(ls) == 0:
        raise ValueError("ls must contain at least one degree (nu >= 1)")
    return tuple(_check_l(f"ls[{i}]", l) for i, l in enumerate(ls))


def _parity_allows(ls: Sequence[int], parity: str) -> bool:
    total = sum(ls)
    if parity == "even":
        return total % 2 == 0
    if parity == "odd":
        return total % 2 == 1
    return True


def canonical_labels(labels: Sequence | None, nu: int) -> tuple[int, ...]:
    """Canonical form of factor labels: index of the first occurrence.

    Only the equality pattern of the labels matters, e.g.
    ``("a", "b", "a") -> (0, 1, 0)``. ``None`` means all factors carry the
    same label (channel-diagonal product), i.e. ``(0, 0, ..., 0)``.

    Parameters
    ----------
    labels : sequence of hashables or None
        One label per factor.
    nu : int
        Number of factors.

    Returns
    -------
    tuple of int
    """
    if labels is None:
        return (0,) * nu
    labels = tuple(labels)
    if len(labels) != nu:
        raise ValueError(f"labels must have one entry per factor ({nu}), got {len(labels)}")
    first: dict = {}
    out = []
    for lab in labels:
        try:
            out.append(first.setdefault(lab, len(first)))
        except TypeError:
            raise ValueError(f"labels must be hashable, got {lab!r}") from None
    return tuple(out)


# ---------------------------------------------------------------------------
# Clebsch-Gordan coefficients
# ---------------------------------------------------------------------------


def _triangle(l1: int, l2: int, L: int) -> bool:
    return abs(l1 - l2) <= L <= l1 + l2


def _complex_cg_value(l1: int, m1: int, l2: int, m2: int, L: int, M: int) -> float:
    """<l1 m1 l2 m2 | L M> (Condon-Shortley), Racah formula in exact arithmetic."""
    if m1 + m2 != M or not _triangle(l1, l2, L):
        return 0.0
    if abs(m1) > l1 or abs(m2) > l2 or abs(M) > L:
        return 0.0
    f = math.factorial
    prefactor = Fraction(
        (2 * L + 1) * f(L + l1 - l2) * f(L - l1 + l2) * f(l1 + l2 - L),
        f(l1 + l2 + L + 1),
    ) * (f(L + M) * f(L - M) * f(l1 - m1) * f(l1 + m1) * f(l2 - m2) * f(l2 + m2))
    total = Fraction(0)
    k_min = max(0, l2 - L - m1, l1 - L + m2)
    k_max = min(l1 + l2 - L, l1 - m1, l2 + m2)
    for k in range(k_min, k_max + 1):
        denominator = (
            f(k)
            * f(l1 + l2 - L - k)
            * f(l1 - m1 - k)
            * f(l2 + m2 - k)
            * f(L - l2 + m1 + k)
            * f(L - l1 - m2 + k)
        )
        total += Fraction((-1) ** k, denominator)
    if total == 0:
        return 0.0
    return math.copysign(math.sqrt(float(total * total * prefactor)), float(total))


@cache
def _complex_cg_cached(l1: int, l2: int, L: int) -> np.ndarray:
    out = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * L + 1))
    if _triangle(l1, l2, L):
        for m1 in range(-l1, l1 + 1):
            for m2 in range(-l2, l2 + 1):
                M = m1 + m2
                if abs(M) <= L:
                    out[m1 + l1, m2 + l2, M + L] = _complex_cg_value(l1, m1, l2, m2, L, M)
    out.flags.writeable = False
    return out


def complex_clebsch_gordan(l1: int, l2: int, L: int) -> np.ndarray:
    """Standard (complex basis, Condon-Shortley) Clebsch-Gordan coefficients.

    Parameters
    ----------
    l1, l2, L : int
        Degrees; ``L`` outside ``|l1-l2| .. l1+l2`` gives an all-zero array.

    Returns
    -------
    numpy.ndarray
        ``C[m1+l1, m2+l2, M+L] = <l1 m1 l2 m2 | L M>``, float64, shape
        ``[2l1+1, 2l2+1, 2L+1]`` (read-only, cached).
    """
    return _complex_cg_cached(_check_l("l1", l1), _check_l("l2", l2), _check_l("L", L))


@cache
def _complex_to_real_cached(l: int) -> np.ndarray:
    u = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    s = 1.0 / math.sqrt(2.0)
    u[l, l] = 1.0
    for m in range(1, l + 1):
        sign = (-1.0) ** m
        # Y_{l,+m} = (Y^{-m} + (-1)^m Y^{m}) / sqrt(2)
        u[l + m, l - m] = s
        u[l + m, l + m] = sign * s
        # Y_{l,-m} = i (Y^{-m} - (-1)^m Y^{m}) / sqrt(2)
        u[l - m, l - m] = 1j * s
        u[l - m, l + m] = -1j * sign * s
    u.flags.writeable = False
    return u


def complex_to_real_matrix(l: int) -> np.ndarray:
    """Unitary change of basis from complex to tradens real harmonics.

    ``Y_real[l] = U @ Y_complex[l]`` where ``Y_complex`` are the standard
    (Condon-Shortley) complex harmonics ``Y_l^m`` ordered ``m = -l..l`` and
    ``Y_real`` are those of :func:`tradens.density.angular.spherical_harmonics`.

    Returns
    -------
    numpy.ndarray
        complex128, shape ``[2l+1, 2l+1]`` (read-only, cached).
    """
    return _complex_to_real_cached(_check_l("l", l))


@cache
def _real_cg_cached(l1: int, l2: int, L: int) -> np.ndarray:
    shape = (2 * l1 + 1, 2 * l2 + 1, 2 * L + 1)
    if not _triangle(l1, l2, L):
        out = np.zeros(shape)
        out.flags.writeable = False
        return out
    u1 = _complex_to_real_cached(l1)
    u2 = _complex_to_real_cached(l2)
    uL = _complex_to_real_cached(L)
    c = _complex_cg_cached(l1, l2, L)
    # A_c = U^H A_r for the inputs; B_r = U_L B_c for the output:
    # C_r[a, b, M] = sum U_L[M, mu] C[mu1, mu2, mu] conj(U1[a, mu1]) conj(U2[b, mu2])
    cr = np.einsum(
        "Mz,xyz,ax,by->abM", uL, c, u1.conj(), u2.conj(), optimize=True
    )  # [2l1+1, 2l2+1, 2L+1]
    re, im = np.abs(cr.real).max(), np.abs(cr.imag).max()
    if im > 1e-12 and re > 1e-12:  # pragma: no cover - would be a convention bug
        raise RuntimeError(f"real CG ({l1},{l2},{L}) is not real up to a global phase")
    out = np.ascontiguousarray(cr.real if re >= im else cr.imag)
    out[np.abs(out) < 1e-15] = 0.0
    out.flags.writeable = False
    return out


def real_clebsch_gordan(l1: int, l2: int, L: int) -> np.ndarray:
    """Clebsch-Gordan coefficients in the tradens real-harmonic basis.

    ``C = real_clebsch_gordan(l1, l2, L)`` couples two equivariant vectors to a
    degree-``L`` equivariant vector: if ``A1 -> D_{l1} A1`` and
    ``A2 -> D_{l2} A2`` then ``X_M = sum_{m1 m2} C[m1, m2, M] A1[m1] A2[m2]``
    transforms as ``X -> D_L X``. The tensor is obtained from the complex
    coefficients with the unitary change of basis
    (:func:`complex_to_real_matrix`); the result is real up to a global factor
    ``i`` (for odd ``l1+l2+L``) which is removed. For fixed ``(l1, l2)`` the
    matrix ``C[(m1 m2), (L M)]`` over all allowed ``L`` is orthogonal.

    Parameters
    ----------
    l1, l2, L : int
        Degrees. If ``(l1, l2, L)`` violates the triangle rule the result is
        all zeros.

    Returns
    -------
    numpy.ndarray
        float64, shape ``[2l1+1, 2l2+1, 2L+1]`` (read-only, cached).
    """
    return _real_cg_cached(_check_l("l1", l1), _check_l("l2", l2), _check_l("L", L))


@cache
def _real_cg_torch_cached(l1: int, l2: int, L: int, dtype: torch.dtype, device: torch.device):
    return torch.as_tensor(np.array(_real_cg_cached(l1, l2, L)), dtype=dtype, device=device)


def real_clebsch_gordan_torch(
    l1: int,
    l2: int,
    L: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Cached torch copy of :func:`real_clebsch_gordan` (do not modify in place)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _real_cg_torch_cached(
        _check_l("l1", l1), _check_l("l2", l2), _check_l("L", L), dtype, device
    )


# ---------------------------------------------------------------------------
# Wigner D matrices of the real harmonics
# ---------------------------------------------------------------------------


@cache
def _fit_points(l: int) -> np.ndarray:
    # deterministic, well spread points (golden spiral), [n, 3]
    n = 4 * (2 * l + 1) + 16
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    pts = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)
    # a slight generic tilt so that no point sits exactly on a pole
    c, s = math.cos(0.3), math.sin(0.3)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    pts = pts @ tilt.T
    pts.flags.writeable = False
    return pts


def _as_rotation_numpy(R) -> np.ndarray:
    if isinstance(R, torch.Tensor):
        R = R.detach().cpu().to(torch.float64).numpy()
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"R must be a 3x3 matrix, got shape {R.shape}")
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5):
        raise ValueError("R must be an orthogonal 3x3 matrix")
    return R


def _wigner_d_numpy(l: int, R: np.ndarray) -> np.ndarray:
    if l == 0:
        return np.ones((1, 1))
    pts = _fit_points(l)  # [n, 3]
    sl = slice(l * l, (l + 1) * (l + 1))
    y = spherical_harmonics(torch.from_numpy(np.array(pts)), l)[:, sl].numpy()  # [n, 2l+1]
    y_rot = spherical_harmonics(torch.from_numpy(pts @ R.T), l)[:, sl].numpy()  # [n, 2l+1]
    # y_rot = y @ D^T  (least squares, exact up to rounding)
    d_t, *_ = np.linalg.lstsq(y, y_rot, rcond=None)
    return d_t.T


def wigner_d_real(l: int, R):
    """Wigner D matrix of the real spherical harmonics of degree ``l``.

    Defined by ``Y_l(R x) = D_l(R) Y_l(x)`` for all unit vectors ``x`` (with
    :func:`tradens.density.angular.spherical_harmonics`), so that for a density
    expansion ``A_l -> D_l(R) A_l`` when all positions are rotated by ``R``.
    ``D_l`` is real and orthogonal. It is computed by an (exact up to
    rounding) least-squares fit of ``Y_l(R x)`` against ``Y_l(x)`` on a fixed
    set of points. ``R`` may also be improper (``det R = -1``); then
    ``D_l(R) = (-1)^l D_l(-R)``.

    Parameters
    ----------
    l : int
        Degree, ``>= 0``.
    R : array_like or torch.Tensor
        ``[3, 3]`` orthogonal matrix acting on column vectors.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``[2l+1, 2l+1]``. A numpy float64 array if ``R`` is not a tensor,
        otherwise a tensor with ``R``'s dtype and device.
    """
    l = _check_l("l", l)
    d = _wigner_d_numpy(l, _as_rotation_numpy(R))
    if isinstance(R, torch.Tensor):
        return torch.as_tensor(d, dtype=R.dtype, device=R.device)
    return d


def wigner_d_real_full(l_max: int, R):
    """Block-diagonal Wigner matrix for all degrees ``0..l_max``.

    Acts on the flat ``(l_max+1)**2`` layout of
    :func:`tradens.density.angular.spherical_harmonics`:
    ``Y(R x) = D Y(x)``; rotate a tensor ``A[..., lm]`` with ``A @ D.T``.

    Parameters
    ----------
    l_max : int
        Largest degree.
    R : array_like or torch.Tensor
        ``[3, 3]`` orthogonal matrix.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``[(l_max+1)**2, (l_max+1)**2]``, same type rules as
        :func:`wigner_d_real`.
    """
    l_max = _check_l("l_max", l_max)
    Rn = _as_rotation_numpy(R)
    n = (l_max + 1) ** 2
    d = np.zeros((n, n))
    for l in range(l_max + 1):
        sl = slice(l * l, (l + 1) * (l + 1))
        d[sl, sl] = _wigner_d_numpy(l, Rn)
    if isinstance(R, torch.Tensor):
        return torch.as_tensor(d, dtype=R.dtype, device=R.device)
    return d


# ---------------------------------------------------------------------------
# coupling trees and generalised coupling tensors
# ---------------------------------------------------------------------------


@cache
def _coupling_trees_cached(ls: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    nu = len(ls)
    if nu == 1:
        return ((),) if ls[0] == 0 else ()
    if nu == 2:
        return ((),) if ls[0] == ls[1] else ()
    trees = []

    def recurse(prefix: tuple[int, ...], current: int, t: int) -> None:
        # `current` is the degree obtained after coupling factors 0..t-1
        if t == nu - 1:
            if current == ls[-1]:
                trees.append(prefix)
            return
        remaining = ls[t + 1 :]
        for L in range(abs(current - ls[t]), current + ls[t] + 1):
            # L must still be able to couple with the remaining factors to 0
            if L > sum(remaining) or L < max(remaining) - (sum(remaining) - max(remaining)):
                continue
            recurse(prefix + (L,), L, t + 1)

    recurse((), ls[0], 1)
    return tuple(trees)


def coupling_trees(ls: Sequence[int], scheme: str = "sequential") -> tuple:
    """Coupling trees of an ``l``-tuple.

    Each family enumerates an orthonormal basis (via
    :func:`coupling_tree_tensor`) of all SO(3) invariants of
    ``V_{l_1} x ... x V_{l_nu}``.

    ``scheme="sequential"``: a tree is the tuple of intermediate degrees
    ``(L_1, ..., L_{nu-2})`` of ``l_1 x l_2 -> L_1``, ``L_1 x l_3 -> L_2``,
    ..., closed by ``L_{nu-2} x l_nu -> 0`` (so ``L_{nu-2} = l_nu``) with
    ``real_clebsch_gordan(l_nu, l_nu, 0)[:, :, 0]``. For ``nu <= 2`` the only
    tree is ``()`` (present if the tuple admits an invariant).

    ``scheme="balanced"``: the factors are split into a left half
    ``l_1..l_h`` (``h = ceil(nu/2)``) and a right half; each half is coupled
    sequentially to a common degree ``L`` and the two are contracted,
    ``sum_M X^left_M X^right_M / sqrt(2L+1)``. A tree is
    ``(left_intermediates, right_intermediates)``, each the degrees after
    coupling 2, 3, ... factors of its half (the last one is ``L``; empty for a
    single factor). For ``nu <= 4`` every tree is then a dot product of two
    pair couplings, which makes evaluation cheap.

    Parameters
    ----------
    ls : sequence of int
        Degrees, any order.
    scheme : {"sequential", "balanced"}

    Returns
    -------
    tuple of trees
    """
    ls = _check_ls(ls)
    if scheme == "sequential":
        return _coupling_trees_cached(ls)
    if scheme == "balanced":
        return _balanced_trees_cached(ls)
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


@cache
def _tree_tensor(ls: tuple[int, ...], tree: tuple[int, ...]) -> np.ndarray:
    """Coupling tensor of one tree, ``[2l_1+1, ..., 2l_nu+1]``, unit Frobenius norm."""
    nu = len(ls)
    if nu == 1:
        return np.ones((1,))
    t = np.eye(2 * ls[0] + 1)  # [m1, M], current degree ls[0]
    current = ls[0]
    for i, L in enumerate(tree):
        cg = _real_cg_cached(current, ls[i + 1], L)  # [M, m, M']
        t = np.einsum("...a,abc->...bc", t, cg)  # [m1, ..., m_{i+2}, M']
        current = L
    cg = _real_cg_cached(current, ls[-1], 0)[:, :, 0]  # [M, m_nu]
    t = np.einsum("...a,ab->...b", t, cg)  # [m1, ..., m_nu]
    return t


def _label_preserving_permutations(
    ls: tuple[int, ...], labels: tuple[int, ...]
) -> list[tuple[int, ...]]:
    nu = len(ls)
    keys = [(labels[i], ls[i]) for i in range(nu)]
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    multi = [g for g in groups.values() if len(g) > 1]
    if not multi:
        return [tuple(range(nu))]
    perms = []
    for choice in itertools.product(*[itertools.permutations(g) for g in multi]):
        perm = list(range(nu))
        for group, permuted in zip(multi, choice, strict=True):
            for src, dst in zip(group, permuted, strict=True):
                perm[src] = dst
        perms.append(tuple(perm))
    return perms


def _canonical_sign(v: np.ndarray) -> np.ndarray:
    scale = np.abs(v).max()
    idx = np.flatnonzero(np.abs(v) > 1e-8 * scale)[0]
    return -v if v[idx] < 0 else v


@cache
def _reduced_cached(
    ls: tuple[int, ...], labels: tuple[int, ...] | None, parity: str
) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, ...], ...]]:
    """(U [P, *dims], coefficients over trees [P, n_trees], trees).

    ``labels=None`` means no symmetrisation.
    """
    dims = tuple(2 * l + 1 for l in ls)
    trees = _coupling_trees_cached(ls)

    def empty():
        u = np.zeros((0,) + dims)
        c = np.zeros((0, len(trees)))
        u.flags.writeable = False
        c.flags.writeable = False
        return u, c, trees

    if not trees or not _parity_allows(ls, parity):
        return empty()
    tree_mat = np.stack([_tree_tensor(ls, tr).reshape(-1) for tr in trees])  # [n_trees, prod dims]
    if labels is None:
        candidates = tree_mat.reshape((len(trees),) + dims)
    else:
        perms = _label_preserving_permutations(ls, labels)
        stack = tree_mat.reshape((len(trees),) + dims)
        if len(perms) == 1:
            candidates = stack
        else:
            # perm[src] = dst: factor src is moved to position dst
            acc = np.zeros_like(stack)
            for perm in perms:
                axes = [0] + [1 + perm.index(d) for d in range(len(ls))]
                acc += np.transpose(stack, axes)
            candidates = acc / len(perms)
    flat = candidates.reshape(len(trees), -1)  # [n_trees, prod dims]

    # Gram-Schmidt (twice) in tree order -> deterministic orthonormal basis
    basis: list[np.ndarray] = []
    for vec in flat:
        norm0 = float(np.linalg.norm(vec))
        if norm0 < _RANK_TOL:
            continue
        v = vec.copy()
        for _ in range(2):
            for b in basis:
                v -= (b @ v) * b
        norm = np.linalg.norm(v)
        if norm > _RANK_TOL * max(norm0, 1.0):
            basis.append(_canonical_sign(v / norm))
    if not basis:
        return empty()
    paths = np.stack(basis)  # [P, prod dims]
    # sanity: rank agrees with the SVD rank of the candidate set
    sv = np.linalg.svd(flat, compute_uv=False)
    rank = int((sv > _RANK_TOL * max(sv.max(), 1e-300)).sum())
    if rank != len(basis):  # pragma: no cover - numerical safeguard
        raise RuntimeError(f"rank mismatch for ls={ls}: Gram-Schmidt {len(basis)}, SVD {rank}")
    # the paths lie in the span of the (orthonormal) trees
    coeffs = paths @ tree_mat.T  # [P, n_trees]
    resid = np.abs(coeffs @ tree_mat - paths).max()
    if resid > 1e-10:  # pragma: no cover - numerical safeguard
        raise RuntimeError(f"coupling paths of {ls} are not spanned by the trees ({resid:.2e})")
    u = paths.reshape((len(basis),) + dims)
    u.flags.writeable = False
    coeffs.flags.writeable = False
    return u, coeffs, trees


def _prepare(ls, labels, parity, symmetrize):
    ls = _check_ls(ls)
    parity = _check_parity(parity)
    if not isinstance(symmetrize, bool):
        raise ValueError(f"symmetrize must be a bool, got {symmetrize!r}")
    labs = canonical_labels(labels, len(ls)) if symmetrize else None
    return ls, labs, parity


def coupling_tensors(
    ls: Sequence[int],
    labels: Sequence | None = None,
    parity: str = "all",
    symmetrize: bool = True,
) -> np.ndarray:
    """Linearly independent coupling tensors of an ``l``-tuple.

    Parameters
    ----------
    ls : sequence of int
        Degrees ``(l_1, ..., l_nu)``, ``nu >= 1``. Any order is accepted (the
        product bases use sorted tuples, or tuples sorted within blocks of
        equal channel).
    labels : sequence of hashables, optional
        One label per factor (e.g. the radial channel ``k_t``). The product of
        two factors with the same label *and* the same ``l`` commutes, so the
        tensors are symmetrised over all permutations of factors that preserve
        ``(label, l)`` before the rank reduction. ``None`` (default) means all
        factors have the same label: the channel-diagonal product
        ``prod_t A[k, l_t]`` of the tensor-reduced basis. Use distinct labels
        (e.g. ``range(nu)``) for no symmetry.
    parity : {"all", "even", "odd"}
        ``"all"``: all proper-rotation (SO(3)) invariants; tuples with odd
        ``sum(ls)`` give pseudoscalars that flip sign under inversion.
        ``"even"``: only even ``sum(ls)`` (true O(3) invariants); odd tuples
        return zero paths. ``"odd"``: only pseudoscalars.
    symmetrize : bool
        If False, ignore ``labels`` and return all (orthonormal) coupling
        trees without symmetrisation.

    Returns
    -------
    numpy.ndarray
        ``U[path, m_1, ..., m_nu]``, float64, shape
        ``[n_paths, 2l_1+1, ..., 2l_nu+1]``; ``n_paths`` may be 0. The paths
        are orthonormal in the Frobenius inner product over ``m`` and are a
        deterministic basis (Gram-Schmidt over the symmetrised coupling trees
        in the order of :func:`coupling_trees`, first significant entry
        positive). For ``nu = 2`` the single path is
        ``delta_{m1 m2} / sqrt(2l+1)``; for ``nu = 1`` it is ``[[1.0]]``
        (only ``l = 0``). The array is cached and read-only.

    Raises
    ------
    ValueError
        On negative or non-integer degrees, bad labels or parity.
    """
    ls, labs, parity = _prepare(ls, labels, parity, symmetrize)
    return _reduced_cached(ls, labs, parity)[0]


SCHEMES = ("sequential", "balanced")


def _chains(ls: tuple[int, ...]) -> list[tuple[tuple[int, ...], int]]:
    """All sequential couplings of ``ls``: (intermediate degrees, final degree).

    The intermediates are the degrees after coupling 2, 3, ..., n factors
    (so the last one is the final degree); empty for a single factor. An empty
    ``ls`` is the trivial chain of degree 0.
    """
    if len(ls) == 0:
        return [((), 0)]
    out: list[tuple[tuple[int, ...], int]] = [((), ls[0])]
    for l in ls[1:]:
        out = [
            (inter + (L,), L)
            for inter, current in out
            for L in range(abs(current - l), current + l + 1)
        ]
    return out


def _chain_tensor(ls: tuple[int, ...], inter: tuple[int, ...]) -> np.ndarray:
    """Sequential CG chain, ``[2l_1+1, ..., 2l_n+1, 2L+1]``; ``[1]`` for an empty chain."""
    if len(ls) == 0:
        return np.ones((1,))
    t = np.eye(2 * ls[0] + 1)  # [m1, M]
    current = ls[0]
    for l, L in zip(ls[1:], inter, strict=True):
        t = np.einsum("...a,abc->...bc", t, _real_cg_cached(current, l, L))  # [..., m, M']
        current = L
    return t


@cache
def _balanced_trees_cached(
    ls: tuple[int, ...],
) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    h = (len(ls) + 1) // 2
    right = _chains(ls[h:])
    trees = []
    for left_inter, left_L in _chains(ls[:h]):
        for right_inter, right_L in right:
            if left_L == right_L:
                trees.append((left_inter, right_inter))
    return tuple(trees)


def _balanced_degree(ls: tuple[int, ...], tree) -> int:
    left_inter = tree[0]
    return left_inter[-1] if left_inter else ls[0]


@cache
def _balanced_tree_tensor(ls: tuple[int, ...], tree) -> np.ndarray:
    """Unit-norm tensor of a balanced tree, ``[2l_1+1, ..., 2l_nu+1]``."""
    h = (len(ls) + 1) // 2
    left = _chain_tensor(ls[:h], tree[0])  # [m_1..m_h, M]
    right = _chain_tensor(ls[h:], tree[1])  # [m_{h+1}..m_nu, M]
    L = _balanced_degree(ls, tree)
    t = np.tensordot(left, right, axes=([-1], [-1])) / math.sqrt(2 * L + 1)
    return t.reshape(tuple(2 * l + 1 for l in ls))


@cache
def _balanced_coeffs_cached(ls, labs, parity) -> tuple[np.ndarray, tuple]:
    paths = _reduced_cached(ls, labs, parity)[0]
    trees = _balanced_trees_cached(ls)
    n_paths = paths.shape[0]
    if n_paths == 0 or not trees:
        coeffs = np.zeros((n_paths, len(trees)))
    else:
        tree_mat = np.stack([_balanced_tree_tensor(ls, t).reshape(-1) for t in trees])
        flat = paths.reshape(n_paths, -1)  # [P, prod dims]
        coeffs = flat @ tree_mat.T  # [P, n_trees], trees are orthonormal
        resid = np.abs(coeffs @ tree_mat - flat).max()
        if resid > 1e-10:  # pragma: no cover - numerical safeguard
            raise RuntimeError(f"balanced trees do not span the paths of {ls} ({resid:.2e})")
    coeffs.flags.writeable = False
    return coeffs, trees


def coupling_tree_tensor(ls: Sequence[int], tree, scheme: str = "sequential") -> np.ndarray:
    """Dense, unit-norm tensor ``[2l_1+1, ..., 2l_nu+1]`` of one coupling tree.

    See :func:`coupling_trees` for the tree formats.
    """
    ls = _check_ls(ls)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    trees = coupling_trees(ls, scheme)
    tree = tuple(tuple(x) for x in tree) if scheme == "balanced" else tuple(tree)
    if tree not in trees:
        raise ValueError(f"{tree!r} is not a {scheme} coupling tree of {ls}")
    if scheme == "balanced":
        return _balanced_tree_tensor(ls, tree)
    return _tree_tensor(ls, tree)


def coupling_tree_coefficients(
    ls: Sequence[int],
    labels: Sequence | None = None,
    parity: str = "all",
    symmetrize: bool = True,
    scheme: str = "sequential",
) -> tuple[np.ndarray, tuple]:
    """Expansion of the coupling tensors over coupling trees.

    ``coupling_tensors(ls, ...)[p] = sum_t coeffs[p, t] * T_t`` where ``T_t``
    is the (orthonormal, see :func:`coupling_tree_tensor`) tensor of tree
    ``trees[t]``. This lets the product basis be evaluated by recursive
    coupling, without forming the dense ``prod_t (2l_t+1)`` tensors.

    Parameters
    ----------
    ls, labels, parity, symmetrize
        As :func:`coupling_tensors`.
    scheme : {"sequential", "balanced"}
        Tree family, see :func:`coupling_trees`.

    Returns
    -------
    coeffs : numpy.ndarray
        ``[n_paths, n_trees]`` float64 (read-only).
    trees : tuple
        As :func:`coupling_trees` with the same ``scheme``.
    """
    ls, labs, parity = _prepare(ls, labels, parity, symmetrize)
    if scheme == "sequential":
        _, coeffs, trees = _reduced_cached(ls, labs, parity)
        return coeffs, trees
    if scheme == "balanced":
        return _balanced_coeffs_cached(ls, labs, parity)
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def n_coupling_paths(
    ls: Sequence[int],
    labels: Sequence | None = None,
    parity: str = "all",
    symmetrize: bool = True,
) -> int:
    """Number of independent paths, ``coupling_tensors(...).shape[0]``."""
    return int(coupling_tensors(ls, labels, parity, symmetrize).shape[0])


@cache
def _coupling_tensors_torch_cached(ls, labs, parity, dtype, device):
    u = _reduced_cached(ls, labs, parity)[0]
    return torch.as_tensor(np.array(u), dtype=dtype, device=device)


def coupling_tensors_torch(
    ls: Sequence[int],
    labels: Sequence | None = None,
    parity: str = "all",
    symmetrize: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Cached torch version of :func:`coupling_tensors` for ``dtype``/``device``.

    The returned tensor is shared between callers: do not modify it in place.
    """
    ls, labs, parity = _prepare(ls, labels, parity, symmetrize)
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _coupling_tensors_torch_cached(ls, labs, parity, dtype, device)


def enumerate_l_tuples(nu: int, l_max: int, parity: str = "all") -> list[tuple[int, ...]]:
    """Sorted ``l``-tuples that can couple to an invariant.

    Returns all ``(l_1 <= ... <= l_nu)`` with ``l_t <= l_max`` that satisfy
    the polygon rule ``l_nu <= l_1 + ... + l_{nu-1}`` (for ``nu = 2``:
    ``l_1 = l_2``; for ``nu = 1``: only ``(0,)``) and the parity selection.
    Some tuples may still have zero paths after symmetrisation (e.g.
    ``(1, 1, 1)`` in the channel-diagonal product); check
    :func:`n_coupling_paths`.

    Parameters
    ----------
    nu : int
        Correlation order, ``>= 1``.
    l_max : int
        Largest degree of any factor.
    parity : {"all", "even", "odd"}
        See :func:`coupling_tensors`.

    Returns
    -------
    list of tuple of int
        Lexicographically ordered.
    """
    if isinstance(nu, bool) or not isinstance(nu, (int, np.integer)) or nu < 1:
        raise ValueError(f"nu must be an integer >= 1, got {nu!r}")
    l_max = _check_l("l_max", l_max)
    parity = _check_parity(parity)
    out = []
    for ls in itertools.combinations_with_replacement(range(l_max + 1), int(nu)):
        if nu == 1 and ls[0] != 0:
            continue
        if ls[-1] > sum(ls[:-1]) and nu > 1:
            continue
        if _parity_allows(ls, parity):
            out.append(ls)
    return out
