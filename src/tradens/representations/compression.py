"""Embeddings chosen from the data: the leading components of the density covariance.

The tensor-reduced SOAP mixes the ``S*N`` element-radial channels of the density
into ``K`` channels with a matrix ``W`` (random, GAP's, given or learned). Read as a
compression of the density (the view of Darby et al., PRL 131, 028001), the best
rank-``K`` linear map in the least-squares sense over a training set is spanned by
the leading eigenvectors of the channel covariance

.. math::

    C_{IJ} = \\frac{1}{n} \\sum_{i} \\sum_{l} \\frac{1}{2l+1} \\sum_{m}
             c_{i,I,lm}\\, c_{i,J,lm},

with ``c`` the unmixed density coefficients (:mod:`tradens.density.expansion`) of
the training atoms ``i`` and the ``1/(2l+1)`` of the power spectrum. Per mode:
``"radial+element"`` uses ``C`` itself (``W [S*N, K]``), ``"element"`` the
species block sums ``C^S_{st} = sum_n C_{sN+n, tN+n}`` (``W [S, K]``) and
``"radial"`` ``C^R_{nn'} = sum_s C_{sN+n, sN+n'}`` (``W [N, K]``). The columns of
``W`` are orthonormal eigenvectors (largest eigenvalue first, each with its
largest-magnitude entry positive), so with ``K = S*N`` (radial+element, tensor
coupling) the features are an orthogonal transformation of the full SOAP's and
every dot product (and kernel) between them is unchanged.

:func:`pca_mixing` returns a :class:`~tradens.hypers.Mixing` with ``weights="given"``:
it is serialised with the representation and every model that holds it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..hypers import Mixing
from ..systems.batch import _as_frames, as_batch
from .soap import SOAP

__all__ = ["density_covariance", "pca_mixing", "with_pca_mixing"]


def density_covariance(soap: SOAP, frames, *, batch_size: int = 16, max_atoms: int | None = None):
    """Channel covariance ``C [S*N, S*N]`` of the unmixed density over ``frames``' atoms.

    Parameters
    ----------
    soap : SOAP
        Its species, radial basis, cutoff and density settings are used (its mixing is not).
    frames : ase.Atoms or list of them
        Training structures (never modified).
    batch_size : int
        Structures per batch.
    max_atoms : int, optional
        Stop after this many atoms (in order), to bound the cost.

    Returns
    -------
    numpy.ndarray
        float64 ``[S*N, S*N]``, symmetric positive semi-definite.
    """
    frames = _as_frames(frames)
    expansion = soap.expansion
    n_channels = expansion.n_species * expansion.n_max
    l_max = expansion.l_max
    scale = torch.tensor(
        [1.0 / (2 * l + 1) for l in range(l_max + 1) for _ in range(2 * l + 1)],
        dtype=torch.float64,
    )  # [lm]
    covariance = torch.zeros(n_channels, n_channels, dtype=torch.float64)
    seen = 0
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            batch = as_batch(frames[start : start + batch_size], first_index=start)
            pairs = expansion.pairs(batch)
            vectors = expansion.vectors(batch, pairs)
            c = expansion.coefficients(batch, pairs, vectors)  # [atom, S*N, lm]
            if max_atoms is not None:
                c = c[: max(0, max_atoms - seen)]
            weighted = c * scale.sqrt()[None, None, :]  # [atom, S*N, lm]
            flat = weighted.permute(1, 0, 2).reshape(n_channels, -1)  # [S*N, atom*lm]
            covariance += flat @ flat.T
            seen += c.shape[0]
            if max_atoms is not None and seen >= max_atoms:
                break
    if seen == 0:
        raise ValueError("no atoms to estimate the density covariance from")
    return (covariance / seen).numpy()


def _leading(matrix: np.ndarray, channels: int) -> np.ndarray:
    """The ``channels`` leading orthonormal eigenvectors ``[d, channels]`` (sign-fixed)."""
    values, vectors = np.linalg.eigh(matrix)
    order = np.argsort(values)[::-1][:channels]
    out = vectors[:, order]
    signs = np.sign(out[np.argmax(np.abs(out), axis=0), np.arange(out.shape[1])])
    return out * np.where(signs == 0, 1.0, signs)[None, :]


def pca_mixing(
    soap: SOAP,
    frames,
    channels: int,
    *,
    mode: str = "radial+element",
    batch_size: int = 16,
    max_atoms: int | None = None,
) -> Mixing:
    """A :class:`~tradens.hypers.Mixing` whose ``W`` spans the leading density components.

    Parameters
    ----------
    soap : SOAP
        Species, radial basis, cutoff and density settings (see :func:`density_covariance`).
    frames : ase.Atoms or list of them
        Training structures.
    channels : int
        ``K``: at most ``S*N`` (radial+element), ``S`` (element) or ``N`` (radial).
    mode : {"radial+element", "element", "radial"}
        What is mixed (as :class:`~tradens.hypers.Mixing`).
    batch_size, max_atoms
        As :func:`density_covariance`.

    Returns
    -------
    Mixing
        ``weights="given"`` with the eigenvectors as ``matrix`` (symmetric mixing).

    Examples
    --------
    >>> import ase.build
    >>> from tradens import SOAP
    >>> cell = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    >>> cell.numbers[:2] = 28
    >>> soap = SOAP(cutoff=3.0, l_max=2, radial={"n_max": 3}, species=[28, 29])
    >>> mixing = pca_mixing(soap, [cell], channels=2)
    >>> mixing.weights, (len(mixing.matrix), len(mixing.matrix[0]))
    ('given', (6, 2))
    """
    n_species, n_max = soap.expansion.n_species, soap.expansion.n_max
    limit = {"radial+element": n_species * n_max, "element": n_species, "radial": n_max}
    if mode not in limit:
        raise ValueError(f"mixing mode must be one of {list(limit)}, got {mode!r}")
    if not 1 <= int(channels) <= limit[mode]:
        raise ValueError(
            f"channels must be between 1 and {limit[mode]} for mode {mode!r} "
            f"(S={n_species}, N={n_max}), got {channels}"
        )
    covariance = density_covariance(soap, frames, batch_size=batch_size, max_atoms=max_atoms)
    blocks = covariance.reshape(n_species, n_max, n_species, n_max)
    if mode == "element":
        covariance = np.einsum("sntn->st", blocks)  # [S, S]
    elif mode == "radial":
        covariance = np.einsum("snsm->nm", blocks)  # [N, N]
    matrix = _leading(covariance, int(channels))
    return Mixing(mode=mode, channels=int(channels), weights="given", matrix=matrix.tolist())


def with_pca_mixing(soap: SOAP, frames, channels: int, **options) -> SOAP:
    """A copy of ``soap`` (its coupling, normalisation, ...) mixed by :func:`pca_mixing`."""
    mixing = pca_mixing(soap, frames, channels, **options)
    return SOAP(dataclasses.replace(soap.hypers, mixing=mixing))
