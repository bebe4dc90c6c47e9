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
from functools import lru_cache

import torch

__all__ = ["spherical_harmonics", "lm_index", "l_of_lm"]


def lm_index(l: int, m: int) -> int:
    """Flat index of ``(l, m)`` in the tradens layout."""
    return l * l + l + m


@lru_cache(maxsize=None)
def _l_of_lm_list(l_max: int) -> tuple[int, ...]:
    return tuple(l for l in range(l_max + 1) for _ in range(2 * l + 1))


def l_of_lm(l_max: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Degree ``l`` of every flat ``(l, m)`` index, shape ``[(l_max+1)**2]``."""
    return torch.tensor(_l_of_lm_list(l_max), dtype=torch.long, device=device)


@lru_cache(maxsize=None)
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
    if l_max < 0:
        raise ValueError(f"l_max must be >= 0, got {l_max}")
    if vectors.shape[-1] != 3:
        raise ValueError(f"vectors must have a last dimension of 3, got shape {tuple(vectors.shape)}")
    unit = vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    x, y, z = unit[..., 0], unit[..., 1], unit[..., 2]

    # azimuthal parts C_m = Re (x+iy)^m, S_m = Im (x+iy)^m, each [...]
    cos_m = [torch.ones_like(x)]
    sin_m = [torch.zeros_like(x)]
    for m in range(1, l_max + 1):
        cos_m.append(x * cos_m[-1] - y * sin_m[-1])
        sin_m.append(x * sin_m[-1] + y * cos_m[-2])

    # Q[l][m], polynomials in z, each [...]
    q: list[list[torch.Tensor | None]] = [[None] * (l + 1) for l in range(l_max + 1)]
    double_factorial = 1.0  # (2m-1)!!
    for m in range(l_max + 1):
        if m > 0:
            double_factorial *= 2 * m - 1
        q[m][m] = torch.full_like(z, double_factorial)
        if m + 1 <= l_max:
            q[m + 1][m] = (2 * m + 1) * z * q[m][m]
        for l in range(m + 2, l_max + 1):
            q[l][m] = ((2 * l - 1) * z * q[l - 1][m] - (l + m - 1) * q[l - 2][m]) / (l - m)

    norms = _normalisation(l_max)
    columns = []
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            if m < 0:
                columns.append(norms[l][-m] * q[l][-m] * sin_m[-m])
            elif m == 0:
                columns.append(norms[l][0] * q[l][0])
            else:
                columns.append(norms[l][m] * q[l][m] * cos_m[m])
    return torch.stack(columns, dim=-1)  # [..., (l_max+1)^2]
