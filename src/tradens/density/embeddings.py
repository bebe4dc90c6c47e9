"""Element (and radial) embeddings: the mixing matrices W of tensor reduction.

Unmixed density channels are indexed ``I = s * n_max + n`` (species ``s`` in
the order of the species list, radial index ``n`` fastest). A mixing maps them
to ``K1`` mixed channels with a matrix ``W [S*N, K1]``:

==================  =====================================  ==================
mode                W                                      K1
==================  =====================================  ==================
``"radial+element"`` dense ``[S*N, K]`` (the paper's R+Z)    ``K``
``"element"``        ``E ⊗ 1_N``, ``E [S, K]``: ``W[sN+n, kN+n] = E[s, k]``   ``K*N``
``"radial"``         ``1_S ⊗ Rm``, ``Rm [N, K]``: ``W[sN+n, sK+k] = Rm[n, k]``  ``K*S``
==================  =====================================  ==================

The free parameters (``[S*N, K]``, ``[S, K]`` or ``[N, K]``) come from a weight
source: GAP's generator reproduced bit for bit (``"gap"``), a seeded
``torch`` Gaussian (``"random"``), or a user-given matrix (``"given"``). Any of
them can be made learnable (a ``torch.nn.Parameter``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "MIX_MODES",
    "ParkMiller",
    "free_weight_shape",
    "gap_weights",
    "random_weights",
    "expand_weights",
]

MIX_MODES = ("radial+element", "element", "radial")


class ParkMiller:
    """The Park–Miller minimal standard generator (Schrage's method).

    ``x <- 16807 x mod (2^31 - 1)``; :meth:`reseed` discards 100 steps; normal
    deviates come from the Marsaglia polar method without caching the second
    value. This is the textbook generator whose draws GAP's ``soap`` uses for
    its mixing weights (see ``docs/gap-compatibility.md``).
    """

    _A, _M, _Q, _R = 16807, 2147483647, 127773, 2836

    def __init__(self, seed: int):
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Set the state to ``seed`` and discard 100 steps."""
        self.state = int(seed)
        for _ in range(100):
            self._step()

    def _step(self) -> int:
        k = int(self.state / self._Q)  # truncation toward zero
        x = self._A * (self.state - k * self._Q) - self._R * k
        if x < 0:
            x += self._M
        self.state = x
        return x

    def uniform(self) -> float:
        """One uniform deviate in ``(0, 1)``."""
        return self._step() / self._M

    def normal(self) -> float:
        """One standard normal deviate (Marsaglia polar method)."""
        while True:
            v1 = 2.0 * self.uniform() - 1.0
            v2 = 2.0 * self.uniform() - 1.0
            r = v1 * v1 + v2 * v2
            if r <= 1.0:
                break
        return v1 * math.sqrt(-2.0 * math.log(r) / r)


def free_weight_shape(mode: str, n_species: int, n_max: int, channels: int) -> tuple[int, int]:
    """Shape of the free parameters of a mixing: ``[S*N, K]``, ``[S, K]`` or ``[N, K]``."""
    if mode == "radial+element":
        return (n_species * n_max, channels)
    if mode == "element":
        return (n_species, channels)
    if mode == "radial":
        return (n_max, channels)
    raise ValueError(f"unknown mixing mode {mode!r}; expected one of {MIX_MODES}")


def gap_weights(
    mode: str,
    species: list[int],
    n_max: int,
    channels: int,
    *,
    mix_shift: int = 0,
    density: int = 1,
) -> np.ndarray:
    """Free mixing parameters drawn exactly as GAP's ``soap`` draws them.

    Parameters
    ----------
    mode : str
        ``"radial+element"``, ``"element"`` or ``"radial"``.
    species : list of int
        Atomic numbers in channel order.
    n_max, channels : int
        Number of radial functions ``N`` and of mixed channels ``K``.
    mix_shift : int
        GAP's ``mix_shift``, added to every seed.
    density : int
        1 for the first density, 2 for the second (seeds 200 higher).

    Returns
    -------
    numpy.ndarray
        float64, shape :func:`free_weight_shape`.
    """
    offset = mix_shift + 200 * density
    rng = ParkMiller(1)
    if mode == "radial+element":
        out = np.empty((len(species) * n_max, channels))
        for s, z in enumerate(species):
            rng.reseed(z + offset)
            for n in range(n_max):
                for k in range(channels):
                    out[s * n_max + n, k] = rng.normal()
        return out
    if mode == "element":
        out = np.empty((len(species), channels))
        for s, z in enumerate(species):
            rng.reseed(z + offset)
            for k in range(channels):
                out[s, k] = rng.normal()
        return out
    if mode == "radial":
        out = np.empty((n_max, channels))
        rng.reseed(n_max + offset)
        for n in range(n_max):
            for k in range(channels):
                out[n, k] = rng.normal()
        return out
    raise ValueError(f"unknown mixing mode {mode!r}; expected one of {MIX_MODES}")


def random_weights(mode: str, n_species: int, n_max: int, channels: int, seed: int) -> np.ndarray:
    """Free mixing parameters as independent N(0, 1) draws of a seeded torch generator."""
    shape = free_weight_shape(mode, n_species, n_max, channels)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float64).numpy()


def expand_weights(mode: str, free: torch.Tensor, n_species: int, n_max: int) -> torch.Tensor:
    """Full mixing matrix ``W [S*N, K1]`` from the free parameters (differentiable).

    See the module docstring for the layouts.
    """
    if mode == "radial+element":
        return free  # [S*N, K]
    eye_n = torch.eye(n_max, dtype=free.dtype, device=free.device)
    eye_s = torch.eye(n_species, dtype=free.dtype, device=free.device)
    if mode == "element":
        # W[sN+n, kN+n'] = E[s, k] delta_nn'
        return torch.einsum("sk,nm->snkm", free, eye_n).reshape(n_species * n_max, -1)
    if mode == "radial":
        # W[sN+n, s'K+k] = Rm[n, k] delta_ss'
        return torch.einsum("nk,st->sntk", free, eye_s).reshape(n_species * n_max, -1)
    raise ValueError(f"unknown mixing mode {mode!r}; expected one of {MIX_MODES}")
