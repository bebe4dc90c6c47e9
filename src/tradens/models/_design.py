"""Local bases and design rows of potentials that are linear in their parameters.

Every such potential is ``E = sum_i theta . phi(X_i) + sum_i e0_{Z_i}`` with a
per-atom basis ``phi`` of the features ``X_i [F]``:

* :class:`LinearBasis`: ``phi = X`` or, per element, ``X`` placed in the
  block of the centre's element (``D = S * F``);
* :class:`ProjectionBasis`: ``phi = P X`` (random projection, ``D`` rows);
* :class:`KernelBasis`: ``phi_m = (X . X_m)^zeta`` on sparse points ``X_m``
  (optionally only between equal elements).

:func:`design_batches` yields, per batch of structures, the rows of the
linear system: energies ``sum_i phi(X_i)``, force rows ``-d(sum_i phi)/dx``
and the virial ``d(sum_i phi)/d(epsilon)``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..gradients.summed import soap_local_features, soap_summed_jacobian
from ..systems.batch import as_batch

__all__ = ["Basis", "LinearBasis", "ProjectionBasis", "KernelBasis", "design_batches", "Design"]


class Basis(Protocol):
    """A per-atom basis ``phi`` with ``D = n_outputs`` columns (the three classes below)."""

    n_outputs: int

    @property
    def summable(self) -> bool:
        """Whether ``sum_i phi(X_i)`` is a fixed linear map (``map_sum``) of ``sum_i X_i``."""
        ...

    def values(self, x: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """``phi [row, D]`` of features ``x [row, F]`` of centres with atomic ``numbers``."""
        ...

    def derivative(
        self, dx: torch.Tensor, x_centre: torch.Tensor, numbers: torch.Tensor
    ) -> torch.Tensor:
        """``dphi [q, d, D]`` from ``dX [q, d, F]`` of centres with features ``x_centre``."""
        ...


def _species_index(numbers: torch.Tensor, species: tuple[int, ...]) -> torch.Tensor:
    table = torch.full(
        (max(max(species), int(numbers.max()) if numbers.numel() else 0) + 1,),
        -1,
        dtype=torch.long,
        device=numbers.device,
    )
    table[torch.as_tensor(species, device=numbers.device)] = torch.arange(
        len(species), device=numbers.device
    )
    index = table[numbers]
    if bool((index < 0).any()):
        missing = sorted(set(numbers[index < 0].tolist()))
        raise ValueError(f"element(s) {missing} are not among the fitted species {list(species)}")
    return index


class LinearBasis:
    """``phi(X) = X``, or per element ``X`` in the block of the centre's element."""

    linear = True

    def __init__(self, n_features: int, species: tuple[int, ...] | None = None):
        self.n_features, self.species = n_features, species
        self.n_outputs = n_features * (1 if species is None else len(species))

    def values(self, x: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """``phi [row, D]``."""
        if self.species is None:
            return x
        index = _species_index(numbers, self.species)
        out = torch.zeros(x.shape[0], len(self.species), x.shape[1], dtype=x.dtype, device=x.device)
        out[torch.arange(x.shape[0], device=x.device), index] = x
        return out.reshape(x.shape[0], -1)

    def derivative(
        self, dx: torch.Tensor, x_centre: torch.Tensor, numbers: torch.Tensor
    ) -> torch.Tensor:
        """``dphi [q, d, D]`` from ``dX [q, d, F]`` of centres with features ``x_centre``."""
        if self.species is None:
            return dx
        index = _species_index(numbers, self.species)
        out = torch.zeros(
            dx.shape[0],
            dx.shape[1],
            len(self.species),
            dx.shape[2],
            dtype=dx.dtype,
            device=dx.device,
        )
        out[torch.arange(dx.shape[0], device=dx.device), :, index] = dx
        return out.reshape(dx.shape[0], dx.shape[1], -1)

    @property
    def summable(self) -> bool:
        """Whether ``sum_i dphi(X_i)`` is a fixed linear map of ``sum_i dX_i``."""
        return self.species is None

    def map_sum(self, summed: torch.Tensor) -> torch.Tensor:
        return summed


class ProjectionBasis:
    """``phi(X) = X @ P^T`` with a fixed matrix ``P [D, F]``."""

    linear = True
    summable = True

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix  # [D, F]
        self.n_outputs = int(matrix.shape[0])

    def values(self, x, numbers):
        return x @ self.matrix.to(dtype=x.dtype, device=x.device).T

    def derivative(self, dx, x_centre, numbers):
        return dx @ self.matrix.to(dtype=dx.dtype, device=dx.device).T

    def map_sum(self, summed):
        return summed @ self.matrix.to(dtype=summed.dtype, device=summed.device).T


class KernelBasis:
    """``phi_m(X) = (X . X_m)^zeta`` (times ``delta(Z, Z_m)`` with per-element sparse points)."""

    linear = False
    summable = False

    def __init__(
        self, points: torch.Tensor, zeta: float, point_numbers: torch.Tensor | None = None
    ):
        self.points, self.zeta, self.point_numbers = points, float(zeta), point_numbers
        self.n_outputs = int(points.shape[0])

    def _mask(self, numbers, dtype):
        if self.point_numbers is None:
            return None
        return (numbers[:, None] == self.point_numbers.to(numbers.device)[None, :]).to(dtype)

    def values(self, x, numbers):
        dots = x @ self.points.to(dtype=x.dtype, device=x.device).T  # [row, M]
        out = (
            dots.clamp(min=0.0) ** self.zeta
            if self.zeta != int(self.zeta)
            else dots ** int(self.zeta)
        )
        mask = self._mask(numbers, x.dtype)
        return out if mask is None else out * mask

    def derivative(self, dx, x_centre, numbers):
        points = self.points.to(dtype=dx.dtype, device=dx.device)
        dots = x_centre @ points.T  # [q, M]
        slope = self.zeta * (
            dots.clamp(min=0.0) ** (self.zeta - 1)
            if self.zeta != int(self.zeta)
            else dots ** (int(self.zeta) - 1)
        )
        mask = self._mask(numbers, dx.dtype)
        if mask is not None:
            slope = slope * mask
        return (dx @ points.T) * slope[:, None, :]  # [q, d, M]

    def regularizer(self) -> torch.Tensor:
        """``K_mm [M, M]``, the prior covariance of the sparse weights."""
        numbers = (
            self.point_numbers
            if self.point_numbers is not None
            else torch.zeros(self.n_outputs, dtype=torch.long)
        )
        return self.values(self.points.to(torch.float64), numbers.to(self.points.device))


class Design:
    """Rows of one batch: energies ``[s, D]``, forces ``[atom, 3, D]``, virial ``[s, 3, 3, D]``."""

    def __init__(self, energy, forces, virial):
        self.energy, self.forces, self.virial = energy, forces, virial


def _representation_kind(representation) -> str:
    from ..representations.soap import SOAP

    return "soap" if isinstance(representation, SOAP) else "generic"


def design_batches(
    representation,
    basis,
    frames,
    *,
    forces: bool,
    stress: bool,
    batch_size: int = 8,
    dtype=torch.float64,
    device="cpu",
):
    """Yield ``(start, batch, Design)`` for consecutive batches of ``frames``."""
    kind = _representation_kind(representation)
    for start in range(0, len(frames), batch_size):
        batch = as_batch(
            frames[start : start + batch_size], dtype=dtype, device=device, first_index=start
        )
        if not (forces or stress):
            with torch.no_grad():
                x, rows = representation.forward(batch)
                if basis.summable:  # sum the features first, then map: P sum_i X_i
                    summed = torch.zeros(
                        batch.n_structures, x.shape[1], dtype=x.dtype, device=x.device
                    )
                    energy = basis.map_sum(summed.index_add_(0, batch.structure[rows], x))
                else:
                    phi = basis.values(x, batch.numbers[rows])
                    energy = torch.zeros(
                        batch.n_structures, phi.shape[1], dtype=phi.dtype, device=phi.device
                    )
                    energy.index_add_(0, batch.structure[rows], phi)
            yield start, batch, Design(energy, None, None)
        elif kind == "soap" and basis.summable:
            x, gradient, virial = soap_summed_jacobian(representation, batch)
            phi = basis.values(x, batch.numbers)
            energy = torch.zeros(
                batch.n_structures, phi.shape[1], dtype=phi.dtype, device=phi.device
            )
            energy.index_add_(0, batch.structure, phi)
            force_rows = basis.map_sum(gradient).neg_()  # in place: no second [atom, 3, D] copy
            yield start, batch, Design(energy, force_rows, basis.map_sum(virial))
        elif kind == "soap":
            yield start, batch, _pairwise_design(representation, basis, batch)
        else:
            yield start, batch, _generic_design(representation, basis, batch)


def _pairwise_design(soap, basis, batch) -> Design:
    """Design from per-pair feature derivatives (any basis)."""
    x, chunks = soap_local_features(soap, batch)
    numbers = batch.numbers
    phi = basis.values(x, numbers)
    n_out = phi.shape[1]
    energy = torch.zeros(batch.n_structures, n_out, dtype=phi.dtype, device=phi.device)
    energy.index_add_(0, batch.structure, phi)
    gradient = torch.zeros(batch.n_atoms, 3, n_out, dtype=phi.dtype, device=phi.device)
    virial = torch.zeros(batch.n_structures, 3, 3, n_out, dtype=phi.dtype, device=phi.device)
    for i, j, vec, dx in chunks:
        dphi = basis.derivative(dx, x[i], numbers[i])  # [p, 3, D]
        gradient.index_add_(0, j, dphi)
        gradient.index_add_(0, i, -dphi)
        virial.index_add_(0, batch.structure[i], vec[:, :, None, None] * dphi[:, None, :, :])
    return Design(energy, -gradient, virial)


def _generic_design(representation, basis, batch) -> Design:
    """Design of any representation from :func:`tradens.gradients.descriptor_gradients`."""
    from ..gradients.api import descriptor_gradients

    grads = descriptor_gradients(representation, batch, strain=True)
    x, rows = grads.values, grads.rows
    numbers = batch.numbers[rows]
    phi = basis.values(x, numbers)
    n_out = phi.shape[1]
    energy = torch.zeros(batch.n_structures, n_out, dtype=phi.dtype, device=phi.device)
    energy.index_add_(0, batch.structure[rows], phi)
    row, atom = grads.index[:, 0], grads.index[:, 1]
    dphi = basis.derivative(grads.positions, x[row], numbers[row])  # [entry, 3, D]
    gradient = torch.zeros(batch.n_atoms, 3, n_out, dtype=phi.dtype, device=phi.device)
    gradient.index_add_(0, atom, dphi)
    if grads.strain is None:  # asked for with strain=True above
        raise RuntimeError("descriptor_gradients(strain=True) returned no strain derivatives")
    strain = basis.derivative(grads.strain.reshape(x.shape[0], 9, -1), x, numbers)  # [row, 9, D]
    strain = 0.5 * (strain + strain.reshape(-1, 3, 3, n_out).transpose(1, 2).reshape(-1, 9, n_out))
    virial = torch.zeros(batch.n_structures, 9, n_out, dtype=phi.dtype, device=phi.device)
    virial.index_add_(0, batch.structure[rows], strain)
    return Design(energy, -gradient, virial.reshape(-1, 3, 3, n_out))
