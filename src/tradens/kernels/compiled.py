"""Optional compiled CPU kernels (numba), with the pure-torch code as fallback and test reference.

A leaf of the import graph: arrays in, arrays out, nothing imported from tradens
(the solid-harmonic gradient matrices, series tables and grids are passed in).

numba is an optional dependency (``pip install tradens[fast]``). When it is
importable, CPU float32/float64 tensors take the compiled loops below; on any
other device, without numba, or with ``TRADENS_COMPILED=0`` in the environment
(or :func:`set_compiled(False) <set_compiled>`), the torch implementation runs.
Both give the same numbers to rounding (tested).

The kernels are compiled on first use (a few seconds) and cached on disk next
to this file when that directory is writable.

Kernels
-------
``triangle_slab``
    The tensor-coupled (``coupling=T``) TR-SOAP Jacobian slab of
    :func:`tradens.gradients.soap_jacobian.write_jacobian`: every output element written
    once, with the normalisation, the centre entry (``-sum`` of the row) and
    the strain sums accumulated in the same pass, so the output is read and
    written exactly once (the torch version makes about ten passes).
``gauss_grid_radial``
    GAP's Gaussian-grid radial primitive (exponentially scaled modified
    spherical Bessel functions times Gaussians, tapered) and its
    ``r``-derivative for every pair, one pass per pair instead of about
    forty whole-array operations; optionally mixed into the channels in the
    same pass (``rho @ W[species]``), so the primitive is never stored.
``pair_density``
    The mixed density ``A_i = sum_j Q_ij Y(r_ij)`` from stored per-pair terms,
    so that the forces path evaluates the radial terms and harmonics of each
    pair once for the density and the forces.
``pair_forces``
    ``dE/dr`` of every pair for the forces of mixed SOAP
    (:func:`tradens.gradients.soap_forces.pair_energy_gradients`): the contraction of
    ``dE/dy`` with the pair's mixed radial terms, and the solid-harmonic
    gradient coefficients instead of ``dY/dr``.
"""

from __future__ import annotations

import math
import os
from types import ModuleType
from typing import Literal

import numpy as np
import torch

__all__ = [
    "compiled_available",
    "gauss_grid_radial",
    "pair_density",
    "pair_forces",
    "set_compiled",
    "triangle_slab",
    "use_compiled",
]

_ENABLED = os.environ.get("TRADENS_COMPILED", "1").strip().lower() not in (
    "0",
    "false",
    "no",
    "off",
)
# numba's module, False when unavailable, None before the first try
_NUMBA: ModuleType | Literal[False] | None = None


def _numba() -> ModuleType | Literal[False]:
    global _NUMBA
    if _NUMBA is None:
        try:
            import numba  # noqa: F401

            _NUMBA = numba
        except Exception:  # ImportError, or a numba that does not match numpy
            _NUMBA = False
    return _NUMBA


def _jit() -> ModuleType:
    """numba, to build a kernel (its callers run only when :func:`use_compiled` said yes)."""
    numba = _numba()
    if numba is False:
        raise RuntimeError("the compiled kernels need numba (pip install 'tradens[fast]')")
    return numba


def compiled_available() -> bool:
    """Whether numba can be imported (the compiled CPU kernels can run)."""
    return bool(_numba())


def set_compiled(enabled: bool) -> bool:
    """Switch the compiled kernels on or off globally; returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


def use_compiled(*tensors: torch.Tensor) -> bool:
    """Whether the compiled kernels serve these tensors (CPU, float32/64, no autograd, numba)."""
    if not _ENABLED or not compiled_available():
        return False
    return all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad
        for t in tensors
    )


_TRIANGLE = None


def _triangle_kernel():
    global _TRIANGLE
    if _TRIANGLE is None:
        numba = _jit()
        sqrt2 = math.sqrt(2.0)

        @numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc", "nsz", "arcp"})
        def kernel(
            uv, ab, rhat, scale, x, vec, row_start, centre_slot, out, strain, with_strain, normalize
        ):  # pragma: no cover - compiled
            # uv [E, 4, L, K] (beta, delta_xyz); ab [E, 2, L, K] (B, A); rhat [E, 3]; scale [E, L]
            # x [R, Fc]; vec [E, 3]; row_start [R + 1], centre_slot [R] (local slots)
            # out [E, 3, F]; strain [R, 3, 3, F]
            n_rows = row_start.shape[0] - 1
            n_l, n_k = uv.shape[2], uv.shape[3]
            n_core = x.shape[1]
            n_features = out.shape[2]
            acc = np.empty(
                (4, n_features), out.dtype
            )  # sum, r_x, r_y, r_z weighted sums of the row
            t = np.empty(n_core, out.dtype)  # dv of one (slot, axis) in GAP's (a, b <= a, l) order
            tmp = np.empty((n_l, n_k), out.dtype)  # one channel a: [l, b]
            alpha = np.empty((n_l, n_k), out.dtype)
            gamma = np.empty((n_l, n_k), out.dtype)
            for row in range(n_rows):
                xr = x[row]
                c0 = centre_slot[row]
                for ax in range(3):
                    acc[:] = 0.0
                    a0 = acc[0]
                    a1 = acc[1]
                    a2 = acc[2]
                    a3 = acc[3]
                    for e in range(row_start[row], row_start[row + 1]):
                        if e == c0:
                            continue
                        beta = uv[e, 0]
                        delta = uv[e, 1 + ax]
                        ra = rhat[e, ax]
                        for l in range(n_l):
                            sl = scale[e, l]
                            for k in range(n_k):
                                gamma[l, k] = ab[e, 0, l, k] * sl
                                alpha[l, k] = ab[e, 1, l, k] * sl * ra
                        off = 0
                        for a in range(n_k):
                            for l in range(n_l):
                                aa = alpha[l, a]
                                bb = beta[l, a]
                                gg = gamma[l, a]
                                dd = delta[l, a]
                                al = alpha[l]
                                bl = beta[l]
                                gl = gamma[l]
                                dl = delta[l]
                                tl = tmp[l]
                                for b in range(a + 1):
                                    tl[b] = sqrt2 * (
                                        aa * bl[b] + bb * al[b] + gg * dl[b] + dd * gl[b]
                                    )
                                tl[a] *= 1.0 / sqrt2
                            for b in range(a + 1):
                                for l in range(n_l):
                                    t[off + b * n_l + l] = tmp[l, b]
                            off += (a + 1) * n_l
                        sa = 0.0
                        if normalize:  # dx = dv - x (x . dv)
                            for c in range(n_core):
                                sa += t[c] * xr[c]
                        o = out[e, ax]
                        for c in range(n_core):
                            o[c] = t[c] - sa * xr[c]
                        for c in range(n_core, n_features):
                            o[c] = 0.0
                        v0 = vec[e, 0]
                        v1 = vec[e, 1]
                        v2 = vec[e, 2]
                        for c in range(n_core):
                            a0[c] += o[c]
                        for c in range(n_core):
                            a1[c] += v0 * o[c]
                        for c in range(n_core):
                            a2[c] += v1 * o[c]
                        for c in range(n_core):
                            a3[c] += v2 * o[c]
                    oc = out[c0, ax]
                    for c in range(n_features):
                        oc[c] = -a0[c]
                    if with_strain:
                        for c in range(n_features):
                            strain[row, 0, ax, c] = a1[c]
                            strain[row, 1, ax, c] = a2[c]
                            strain[row, 2, ax, c] = a3[c]

        _TRIANGLE = kernel
    return _TRIANGLE


def triangle_slab(
    uv, ab, rhat, scale, x, vec, row_start, centre_slot, out, strain, normalize: bool
) -> None:
    """Tensor-coupled Jacobian slab, normalisation, centre entries and strain in one compiled pass.

    For slot ``e`` and axis ``a`` with ``alpha = A scale rhat_a`` and ``gamma = B
    scale`` it writes ``dv[k, b, l] = f_kb (alpha_k beta_b + beta_k alpha_b +
    gamma_k delta_b + delta_k gamma_b)`` (``f = sqrt 2`` off the diagonal, 1 on
    it) in GAP's ``(k, b <= k, l)`` column order, then ``dx = dv - x (x . dv)``
    when normalising. The centre slot of each row gets ``-sum`` of the row's
    slots and ``strain[row, p, a] = sum_e r_ep dx_ea``.

    Parameters
    ----------
    uv : Tensor ``[E, 4, L, K]``
        ``beta = sum_m y Y`` then ``delta_a = sum_m y dY/dr_a`` per slot (1/Å for delta).
    ab : Tensor ``[E, 2, L, K]``
        Mixed radial values ``B`` and ``r``-derivatives ``A`` (1/Å) per slot, zero on centre slots.
    rhat : Tensor ``[E, 3]``
        Unit pair vectors.
    scale : Tensor ``[E, L]``
        ``(2l + 1)^{-1/2} / |v|`` of the slot's row.
    x : Tensor ``[R, Fc]``
        Feature vectors of the rows (unit vectors when normalising), ``Fc = K (K + 1) L / 2``.
    vec : Tensor ``[E, 3]``
        Pair vectors (Å), zero on centre slots.
    row_start : Tensor ``[R + 1]`` int64
        First slot of each row (local); ``centre_slot [R]`` the centre slot of each row.
    out : Tensor ``[E, 3, F]``
        Written (columns ``>= Fc`` set to zero); C-contiguous.
    strain : Tensor ``[R, 3, 3, F]`` or None
        Written (C-contiguous).
    normalize : bool
        Whether ``x`` are unit vectors of normalised features.
    """
    kernel = _triangle_kernel()
    dtype = out.dtype
    with_strain = strain is not None
    if strain is None:
        strain = out.new_empty(1, 3, 3, out.shape[2])
    arrays = [t.detach().to(dtype).contiguous().numpy() for t in (uv, ab, rhat, scale, x, vec)]
    kernel(
        *arrays,
        row_start.contiguous().numpy(),
        centre_slot.contiguous().numpy(),
        out.numpy(),
        strain.numpy(),
        with_strain,
        bool(normalize),
    )


_PAIR_FORCES = None


def _pair_forces_kernel():
    global _PAIR_FORCES
    if _PAIR_FORCES is None:
        numba = _jit()

        @numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc", "nsz", "arcp"})
        def kernel(
            ab, centre, g, harmonics, vec, c_lm, c_lower, c_axis, c_value, out
        ):  # pragma: no cover
            # ab [p, 2, L, K] (Q, Q'); centre [p] rows of g; g [row, lm, K]; harmonics [p, lm];
            # vec [p, 3]; solid-harmonic gradient coefficients (c_lm, c_lower, c_axis, c_value)
            # [nnz]; out [p, 3]
            n_pairs = ab.shape[0]
            n_l, n_k = ab.shape[2], ab.shape[3]
            n_lm = n_l * n_l
            z = np.empty(n_lm, out.dtype)
            for p in range(n_pairs):
                gi = g[centre[p]]
                q = ab[p, 0]
                dq = ab[p, 1]
                y = harmonics[p]
                r = math.sqrt(vec[p, 0] ** 2 + vec[p, 1] ** 2 + vec[p, 2] ** 2)
                inverse = 1.0 / r
                along = 0.0
                lm = 0
                for l in range(n_l):
                    ql = q[l]
                    dql = dq[l]
                    for _ in range(2 * l + 1):
                        gl = gi[lm]
                        zz = 0.0
                        dz = 0.0
                        for k in range(n_k):
                            zz += ql[k] * gl[k]
                            dz += dql[k] * gl[k]
                        z[lm] = zz
                        along += (dz - l * zz * inverse) * y[lm]
                        lm += 1
                t0 = 0.0
                t1 = 0.0
                t2 = 0.0
                for n in range(c_lm.shape[0]):  # sum_lm Z_lm sum_m' C_l[m', a, m] Y_{l-1,m'}
                    term = c_value[n] * z[c_lm[n]] * y[c_lower[n]]
                    a = c_axis[n]
                    if a == 0:
                        t0 += term
                    elif a == 1:
                        t1 += term
                    else:
                        t2 += term
                out[p, 0] = (vec[p, 0] * along + t0) * inverse
                out[p, 1] = (vec[p, 1] * along + t1) * inverse
                out[p, 2] = (vec[p, 2] * along + t2) * inverse

        _PAIR_FORCES = kernel
    return _PAIR_FORCES


_SOLID: dict = {}


def _solid_gradient_entries(matrices) -> tuple[np.ndarray, ...]:
    """Nonzeros of the solid-harmonic gradient matrices ``C_l [m', a, m]`` as flat arrays.

    Cached per ``l_max`` (the matrices depend on nothing else).
    """
    l_max = len(matrices) - 1
    if l_max not in _SOLID:
        lm, lower, axis, value = [], [], [], []
        for l, c in enumerate(matrices):
            if l == 0:
                continue
            for mp, a, m in torch.nonzero(c).tolist():
                lm.append(l * l + m)
                lower.append((l - 1) * (l - 1) + mp)
                axis.append(a)
                value.append(float(c[mp, a, m]))
        _SOLID[l_max] = (
            np.array(lm, dtype=np.int64),
            np.array(lower, dtype=np.int64),
            np.array(axis, dtype=np.int64),
            np.array(value, dtype=np.float64),
        )
    return _SOLID[l_max]


def pair_forces(ab, centre, g, harmonics, vectors, out, solid_matrices) -> None:
    """``dE/dr_p = sum_{k,lm} G_iklm (Q'_kl rhat Y_lm + Q_kl dY_lm/dr)`` per pair (compiled).

    With ``Z_lm = sum_k G_iklm Q_kl`` (and ``Z'`` from ``Q'``) this is
    ``rhat sum_lm (Z'_lm - l Z_lm / r) Y_lm + (1/r) sum_lm Z_lm sum_m' C_l[m', a, m] Y_{l-1,m'}``
    (solid-harmonic gradients ``C_l``, passed in as ``solid_matrices``),
    so only the values ``Y`` are needed.

    Parameters
    ----------
    ab : Tensor ``[p, 2, L, K]``
        Mixed radial values ``Q`` and ``r``-derivatives ``Q'`` (1/Å) of each pair.
    centre : Tensor ``[p]`` int64
        Row of ``g`` of each pair's centre.
    g : Tensor ``[row, lm, K]``
        ``dE/dy`` of the centres' mixed densities (``lm`` before ``K``).
    harmonics : Tensor ``[p, lm]``
        ``Y_lm(rhat)``.
    vectors : Tensor ``[p, 3]``
        Pair vectors (Å).
    out : Tensor ``[p, 3]``
        Written, C-contiguous (energy unit / Å).
    solid_matrices : sequence of Tensor
        ``C_l [2l-1, 3, 2l+1]`` for ``l = 0..L-1``
        (:func:`tradens.density.derivatives.solid_gradient_matrices`).
    """
    kernel = _pair_forces_kernel()
    n_l = ab.shape[2]
    if len(solid_matrices) != n_l:
        raise ValueError(
            f"pair_forces needs {n_l} solid-gradient matrices, got {len(solid_matrices)}"
        )
    c_lm, c_lower, c_axis, c_value = _solid_gradient_entries(solid_matrices)
    dtype = out.dtype
    kernel(
        ab.detach().to(dtype).contiguous().numpy(),
        centre.contiguous().numpy(),
        g.detach().to(dtype).contiguous().numpy(),
        harmonics.to(dtype).contiguous().numpy(),
        vectors.to(dtype).contiguous().numpy(),
        c_lm,
        c_lower,
        c_axis,
        c_value.astype(out.numpy().dtype),
        out.numpy(),
    )


_GAUSS_GRID = None


def _gauss_grid_kernel():
    global _GAUSS_GRID
    if _GAUSS_GRID is None:
        numba = _jit()

        @numba.njit(cache=True, nogil=True, fastmath={"contract", "nsz", "arcp"})
        def kernel(
            r, taper, d_taper, grid, alpha, threshold, table, origin, species, blocks, mixed, out
        ):  # pragma: no cover - compiled
            # r, taper, d_taper [p]; grid [a]; table [k, L + 1] power-series coefficients;
            # unmixed: out [p, 2L, a] (values, then r-derivatives);
            # mixed: out [p, 2L, K] = rho [p, 2L, a] @ blocks[species[p]] with blocks [S, a, K]
            n_pairs, n_grid = r.shape[0], grid.shape[0]
            n_terms, n_bessel = table.shape[0], table.shape[1]
            n_l = out.shape[1] // 2
            n_k = out.shape[2]
            y_scale = 1.0 / (threshold * threshold)  # y = x^2 / (2 y_max), y_max = threshold^2 / 2
            bessel = np.empty(n_bessel)
            sums = np.empty(n_bessel)
            for p in range(n_pairs):
                rp = r[p]
                if mixed:
                    out[p] = 0.0
                    weights = blocks[species[p]]  # [a, K]
                for a in range(n_grid):
                    ga = grid[a]
                    gauss = math.exp(-alpha * (ga - rp) ** 2)
                    if origin and a == 0:  # x = 0: i_0 = 1, i_l = 0
                        bessel[:] = 0.0
                        bessel[0] = 1.0
                    else:
                        x = 2.0 * alpha * rp * ga
                        if x < threshold:  # power series (the recurrence cancels here)
                            y = x * x * y_scale
                            sums[:] = 0.0
                            power = 1.0
                            for k in range(n_terms):
                                for l in range(n_bessel):
                                    sums[l] += power * table[k, l]
                                power *= y
                            scale = math.exp(-x)
                            for l in range(n_bessel):
                                bessel[l] = scale * sums[l]
                                scale *= x
                        else:  # closed forms of i_0, i_1 and the upward recurrence
                            e2 = math.exp(-2.0 * x)
                            inverse = 0.5 / x
                            bessel[0] = (1.0 - e2) * inverse
                            if n_bessel > 1:
                                bessel[1] = (1.0 + e2) * inverse - bessel[0] / x
                            for l in range(2, n_bessel):
                                bessel[l] = (
                                    bessel[l - 2] - (2 * l - 1) * (2.0 * inverse) * bessel[l - 1]
                                )
                    for l in range(n_l):
                        value = bessel[l] * gauss
                        slope = l / rp - 2.0 * alpha * rp
                        d_value = (bessel[l + 1] * (2.0 * alpha * ga) + bessel[l] * slope) * gauss
                        d_value = d_value * taper[p] + value * d_taper[p]
                        value = value * taper[p]
                        if mixed:
                            row, d_row, w = out[p, l], out[p, n_l + l], weights[a]
                            for k in range(n_k):
                                row[k] += value * w[k]
                                d_row[k] += d_value * w[k]
                        else:
                            out[p, l, a] = value
                            out[p, n_l + l, a] = d_value

        _GAUSS_GRID = kernel
    return _GAUSS_GRID


def gauss_grid_radial(
    r,
    grid,
    alpha: float,
    threshold: float,
    table,
    out,
    *,
    taper,
    d_taper,
    species=None,
    blocks=None,
) -> None:
    """GAP's Gaussian-grid radial primitive per pair and its ``r``-derivative, optionally mixed.

    ``rho[p, l, a] = w_p exp(-alpha (r - r_a)^2) exp(-x) i_l(x)`` with ``x =
    2 alpha r r_a`` and the cutoff taper ``w``, and ``d rho / dr`` in rows
    ``L..2L-1`` (:func:`tradens.density.derivatives.radial_primitive`).
    With ``blocks`` the result is mixed in the same pass: ``out[p] = rho[p] @
    blocks[species[p]]``, and ``rho`` itself is never stored.

    Parameters
    ----------
    r : Tensor ``[p]``
        Pair distances (Å), positive.
    grid : Tensor ``[a]``
        Gaussian centres ``r_a`` (Å); ``grid[0] == 0`` is handled exactly.
    alpha : float
        Gaussian exponent (1/Å^2).
    threshold : float
        Arguments ``x`` below it take the power series with coefficients
        ``table [k, L + 1]`` (:func:`tradens.density.radial._series_coefficients`).
    out : Tensor ``[p, 2L, a]``, or ``[p, 2L, K]`` with ``blocks``
        Written, C-contiguous.
    taper, d_taper : Tensor ``[p]``
        Cutoff taper and its ``r``-derivative (1/Å).
    species : Tensor ``[p]`` int64, optional
        Mixing block of each pair (with ``blocks``).
    blocks : Tensor ``[S, a, K]``, optional
        Mixing matrices per neighbour species (grid transform folded in).
    """
    kernel = _gauss_grid_kernel()
    dtype = out.dtype
    n_l = out.shape[1] // 2
    if table.shape[1] < n_l + 1:
        raise ValueError(f"the series table has {table.shape[1]} degrees, {n_l + 1} needed")
    mixed = blocks is not None
    if mixed and (
        species is None or blocks.shape[1] != grid.shape[0] or blocks.shape[2] != out.shape[2]
    ):
        raise ValueError("mixing needs species [p] and blocks [S, a, K] matching grid and out")

    def array(t):
        return t.detach().to(dtype).contiguous().numpy()

    kernel(
        array(r),
        array(taper),
        array(d_taper),
        array(grid),
        float(alpha),
        float(threshold),
        table.to(torch.float64).contiguous().numpy(),
        bool(grid[0] == 0.0),
        (species if mixed else r.new_zeros(1, dtype=torch.long)).contiguous().numpy(),
        array(blocks) if mixed else np.zeros((1, 1, 1), out.numpy().dtype),
        mixed,
        out.numpy(),
    )


_PAIR_DENSITY = None


def _pair_density_kernel():
    global _PAIR_DENSITY
    if _PAIR_DENSITY is None:
        numba = _jit()

        @numba.njit(cache=True, nogil=True, fastmath={"contract", "nsz", "arcp"})
        def kernel(ab, centre, harmonics, out):  # pragma: no cover - compiled
            # ab [p, 2, L, K] (Q first); centre [p]; harmonics [p, lm]; out [atom, lm, K], added to
            n_pairs, n_l, n_k = ab.shape[0], ab.shape[2], ab.shape[3]
            for p in range(n_pairs):
                target = out[centre[p]]
                q = ab[p, 0]
                y = harmonics[p]
                for l in range(n_l):
                    for lm in range(l * l, (l + 1) * (l + 1)):
                        value = y[lm]
                        row = target[lm]
                        for k in range(n_k):
                            row[k] += q[l, k] * value

        _PAIR_DENSITY = kernel
    return _PAIR_DENSITY


def pair_density(ab, centre, harmonics, out) -> None:
    """``out[i, lm, k] += sum_{p: centre_p = i} Q[p, l, k] Y[p, lm]`` (compiled).

    Parameters
    ----------
    ab : Tensor ``[p, 2, L, K]``
        Mixed (tapered) radial values ``Q`` of each pair first (the derivatives are not read).
    centre : Tensor ``[p]`` int64
        Row of ``out`` of each pair.
    harmonics : Tensor ``[p, lm]``
        ``Y_lm(rhat)`` of each pair.
    out : Tensor ``[atom, lm, K]``
        Added to; C-contiguous.
    """
    kernel = _pair_density_kernel()
    dtype = out.dtype
    kernel(
        ab.detach().to(dtype).contiguous().numpy(),
        centre.contiguous().numpy(),
        harmonics.detach().to(dtype).contiguous().numpy(),
        out.numpy(),
    )
