"""Real spherical harmonics.

Convention (used everywhere in tradens): for each degree ``l`` the ``2l+1``
orders are stored in the order ``m = -l, ..., l`` and all degrees are
concatenated, so the flat index of ``(l, m)`` is ``l*l + l + m`` and a full set
up to ``l_max`` has ``(l_max+1)**2`` entries.

The functions are orthonormal on the unit sphere,

.. math::

    Y_{l0} = \\sqrt{\\tfrac{2l+1}{4\\pi}}\\, Q_l^0(z), \\quad
    Y_{l,\\pm m} = \\sqrt{2}\\, \\sqrt{\\tfrac{2l+1}{4\\pi}
    \\tfrac{(l-m)!}{(l+m)!}}\\, Q_l^m(z)\\,
    \\{\\operatorname{Re},\\operatorname{Im}\\}(x + i y)^m ,

with :math:`Q_l^m = P_l^m(\\cos\\theta)/\\sin^m\\theta` a polynomial in ``z``
(no Condon-Shortley phase). Writing the azimuthal part as a polynomial in
``x, y`` keeps the functions smooth (and autograd finite) at the poles.
"""

from __future__ import annotations

import math
from functools import cache

import torch

__all__ = ["spherical_harmonics", "lm_index", "l_of_lm"]


def lm_index(l: int, m: int) -> int:
    """Flat index of ``(l, m)`` in the tradens layout."""
    return l * l + l + m


@cache
def _l_of_lm_list(l_max: int) -> tuple[int, ...]:
    return tuple(l for l in range(l_max + 1) for _ in range(2 * l + 1))


def l_of_lm(l_max: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Degree ``l`` of every flat ``(l, m)`` index, shape ``[(l_max+1)**2]``."""
    return torch.tensor(_l_of_lm_list(l_max), dtype=torch.long, device=device)


@cache
def _normalisation(l_max: int) -> tuple[tuple[float, ...], ...]:
    # norms[l][m] for m = 0..l, including the sqrt(2) for m > 0.
    norms = []
    for l in range(l_max + 1):
        row = []
        for m in range(l + 1):
            value = (2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m)
            row.append(math.sqrt(value) * (math.sqrt(2.0) if m > 0 else 1.0))
        norms.append(tuple(row))
    return tuple(norms)


def spherical_harmonics(vectors: torch.Tensor, l_max: int) -> torch.Tensor:
    """Real spherical harmonics of the directions of ``vectors``.

    Parameters
    ----------
    vectors : torch.Tensor
        Shape ``[..., 3]``; only the direction matters (the vectors are
        normalised here). Must not contain zero vectors.
    l_max : int
        Largest degree (inclusive), ``>= 0``.

    Returns
    -------
    torch.Tensor
        Shape ``[..., (l_max+1)**2]``, same dtype and device as ``vectors``,
        in the ``m = -l..l`` layout described in the module docstring.
    """
    return _harmonics(vectors, l_max, by_degree=False)


def _spherical_harmonics_by_degree(vectors: torch.Tensor, l_max: int) -> list[torch.Tensor]:
    """:func:`spherical_harmonics` split by degree: ``[Y_0, ..., Y_lmax]``, ``Y_l [..., 2l+1]``.

    Each block is contiguous (cheaper than slicing the concatenated layout
    when the blocks are used one degree at a time).
    """
    return _harmonics(vectors, l_max, by_degree=True)


def _harmonics(vectors: torch.Tensor, l_max: int, *, by_degree: bool):
    if l_max < 0:
        raise ValueError(f"l_max must be >= 0, got {l_max}")
    if vectors.shape[-1] != 3:
        raise ValueError(
            f"vectors must have a last dimension of 3, got shape {tuple(vectors.shape)}"
        )
    if torch.is_grad_enabled() and vectors.requires_grad or _has_tangent(vectors):
        # the differentiable form, shared with TorchScript exports
        constants = recurrence_constants(l_max)
        if by_degree:
            return real_harmonics_by_degree(vectors, l_max, *constants)  # [..., 2l+1] each
        return real_harmonics(vectors, l_max, *constants)  # [..., lm]
    unit = vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    x, y, z = unit[..., 0], unit[..., 1], unit[..., 2]
    diagonal, first, up, down = _recurrence(l_max)

    # azimuthal parts C_m = Re (x+iy)^m, S_m = Im (x+iy)^m, each [...] (m >= 1)
    cos_m: list = [None] * (l_max + 1)
    sin_m: list = [None] * (l_max + 1)
    if l_max >= 1:
        cos_m[1], sin_m[1] = x, y
    for m in range(2, l_max + 1):
        cos_m[m] = x * cos_m[m - 1] - y * sin_m[m - 1]
        sin_m[m] = torch.addcmul(y * cos_m[m - 1], x, sin_m[m - 1])

    # normalised Legendre parts N_lm Q_l^m (floats where constant), by the recurrence
    # N_lm Q_l^m = a_lm z N_{l-1,m} Q_{l-1}^m + b_lm N_{l-2,m} Q_{l-2}^m
    q: list = [[None] * (l + 1) for l in range(l_max + 1)]
    for m in range(l_max + 1):
        q[m][m] = diagonal[m]  # N_mm (2m-1)!!
        if m + 1 <= l_max:
            q[m + 1][m] = first[m] * z
        for l in range(m + 2, l_max + 1):
            if isinstance(q[l - 2][m], float):
                q[l][m] = (up[l, m] * z) * q[l - 1][m] + down[l, m] * q[l - 2][m]
            else:
                q[l][m] = torch.addcmul(down[l, m] * q[l - 2][m], z, q[l - 1][m], value=up[l, m])

    n_lm = (l_max + 1) ** 2
    # no autograd: write every column straight into its place
    shape, dtype, device = vectors.shape[:-1], vectors.dtype, vectors.device
    if by_degree:
        slots = [
            torch.empty(shape + (2 * l + 1,), dtype=dtype, device=device) for l in range(l_max + 1)
        ]
    else:
        out = torch.empty(shape + (n_lm,), dtype=dtype, device=device)
        slots = [out[..., l * l : (l + 1) * (l + 1)] for l in range(l_max + 1)]
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            legendre, target = q[l][abs(m)], slots[l][..., l + m]
            if m == 0:
                if isinstance(legendre, float):
                    target.fill_(legendre)
                else:
                    target.copy_(legendre)
            else:
                torch.mul((sin_m if m < 0 else cos_m)[abs(m)], legendre, out=target)
    return slots if by_degree else out  # [..., (l_max+1)^2]


def _has_tangent(tensor: torch.Tensor) -> bool:
    import torch.autograd.forward_ad as fwAD

    return fwAD.unpack_dual(tensor).tangent is not None


@cache
def _recurrence(l_max: int):
    """Constants of the normalised Legendre recurrence (see :func:`spherical_harmonics`)."""
    norms = _normalisation(l_max)
    diagonal, first, up, down = [], [], {}, {}
    double_factorial = 1.0  # (2m-1)!!
    for m in range(l_max + 1):
        if m > 0:
            double_factorial *= 2 * m - 1
        diagonal.append(norms[m][m] * double_factorial)  # N_mm Q_m^m
        if m + 1 <= l_max:
            # N_{m+1,m} Q_{m+1}^m / z
            first.append(norms[m + 1][m] * (2 * m + 1) * double_factorial)
        for l in range(m + 2, l_max + 1):
            # Q_l^m = ((2l-1) z Q_{l-1}^m - (l+m-1) Q_{l-2}^m) / (l-m)
            up[l, m] = (2 * l - 1) / (l - m) * norms[l][m] / norms[l - 1][m]
            down[l, m] = -(l + m - 1) / (l - m) * norms[l][m] / norms[l - 2][m]
    return diagonal, first, up, down


def recurrence_constants(l_max: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """Constants of :func:`real_harmonics` for degree ``l_max``: ``diagonal, first, up, down``.

    ``up`` and ``down`` are flattened ``[(l_max+1)^2]`` tables indexed ``l (l_max+1) + m``.
    """
    diagonal, first, up, down = _recurrence(l_max)
    n_l = l_max + 1
    up_flat, down_flat = [0.0] * (n_l * n_l), [0.0] * (n_l * n_l)
    for (l, m), value in up.items():
        up_flat[l * n_l + m] = value
    for (l, m), value in down.items():
        down_flat[l * n_l + m] = value
    return list(diagonal), list(first), up_flat, down_flat


def real_harmonics_by_degree(
    vectors: torch.Tensor,
    l_max: int,
    diagonal: list[float],
    first: list[float],
    up: list[float],
    down: list[float],
) -> list[torch.Tensor]:
    """Real spherical harmonics of ``vectors [..., 3]``, by degree: ``Y_l [..., 2l+1]``.

    The one differentiable implementation (TorchScript-compatible: exported
    potentials run exactly this code); :func:`spherical_harmonics` uses it
    whenever a graph is needed. ``C_m + i S_m = (x + i y)^m`` of the unit
    vector, and the normalised associated Legendre parts ``N_lm Q_l^m(z)`` by
    the recurrence ``N_lm Q_l^m = a_lm z N_{l-1,m} Q_{l-1}^m + b_lm N_{l-2,m}
    Q_{l-2}^m`` with the constants of :func:`recurrence_constants`.
    """
    n_l = l_max + 1
    unit = vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    x, y, z = unit[..., 0], unit[..., 1], unit[..., 2]
    ones = torch.ones_like(z)
    cos_m = [ones]  # Re (x+iy)^m
    sin_m = [torch.zeros_like(z)]  # Im (x+iy)^m
    for m in range(1, n_l):
        if m == 1:
            cos_m.append(x)
            sin_m.append(y)
        else:
            cos_m.append(x * cos_m[m - 1] - y * sin_m[m - 1])
            sin_m.append(torch.addcmul(y * cos_m[m - 1], x, sin_m[m - 1]))
    # q[l * n_l + m] = N_lm Q_l^m(z), m <= l
    q = [ones for _ in range(n_l * n_l)]
    for m in range(n_l):
        q[m * n_l + m] = ones * diagonal[m]
        if m + 1 <= l_max:
            q[(m + 1) * n_l + m] = z * first[m]
        for l in range(m + 2, n_l):
            if l == m + 2:  # N_mm Q_m^m is a constant (the same operations as the fast path)
                q[l * n_l + m] = (z * up[l * n_l + m]) * q[(l - 1) * n_l + m] + down[
                    l * n_l + m
                ] * diagonal[m]
            else:
                q[l * n_l + m] = torch.addcmul(
                    q[(l - 2) * n_l + m] * down[l * n_l + m],
                    z,
                    q[(l - 1) * n_l + m],
                    value=up[l * n_l + m],
                )
    blocks: list[torch.Tensor] = []
    for l in range(n_l):
        columns: list[torch.Tensor] = []
        for m in range(-l, l + 1):
            legendre = q[l * n_l + abs(m)]
            if m == 0:
                columns.append(legendre)
            elif m < 0:
                columns.append(sin_m[-m] * legendre)
            else:
                columns.append(cos_m[m] * legendre)
        blocks.append(torch.stack(columns, dim=-1))  # [..., 2l+1]
    return blocks


def real_harmonics(
    vectors: torch.Tensor,
    l_max: int,
    diagonal: list[float],
    first: list[float],
    up: list[float],
    down: list[float],
) -> torch.Tensor:
    """:func:`real_harmonics_by_degree` as one tensor ``[..., (l_max+1)^2]`` (differentiable)."""
    return torch.cat(
        real_harmonics_by_degree(vectors, l_max, diagonal, first, up, down), dim=-1
    )  # [..., lm]
