"""TorchScript form of fitted potentials: per-atom energies from pair vectors.

:func:`scripted_potential` turns a fitted :class:`~tradens.models.LinearPotential`,
:class:`~tradens.models.SparseKernelPotential`, :class:`~tradens.models.LearnedPotential`
or :class:`~tradens.models.EnsemblePotential` (on SOAP or tensor-reduced SOAP) into a
``torch.nn.Module`` that TorchScript compiles: ``forward(vectors, centers, neighbors,
numbers) -> [member, atom]`` energies (eV). Forces and stress come from autograd
through the pair vectors, as in MD engines. The features are
:class:`~tradens.representations.scripted.ScriptedSOAP`; the readouts below are
the models' own formulas:

* linear: ``e_i = theta_{Z_i} . x_i + e0_{Z_i}`` (one ``theta`` or one per element;
  a random projection ``P`` is folded in as ``P^T theta``);
* sparse kernel: ``e_i = sum_m c_m (x_i . x_m)^zeta [Z_i = Z_m] + e0_{Z_i}``;
* learned: the model's :class:`~tradens.models._readout.Readout` module itself.
"""

from typing import Any

import torch

from ..representations.scripted import ScriptedSOAP, scripted_representation
from ._design import KernelBasis, LinearBasis, ProjectionBasis
from ._pair_density import Augmented, pair_densities

__all__ = ["ScriptedPotential", "scripted_potential"]


def _number_table(species, values, fill: float, dtype: torch.dtype) -> torch.Tensor:
    table = torch.full((119,), fill, dtype=dtype)
    for z, v in zip(species, values, strict=True):
        table[int(z)] = v
    return table


class LinearReadout(torch.nn.Module):
    """``e = theta_{t(Z)} . x`` with ``theta [T, F]`` and ``t(Z)`` from ``table [119]``."""

    theta: torch.Tensor
    table: torch.Tensor

    def __init__(self, theta: torch.Tensor, table: torch.Tensor):
        super().__init__()
        self.register_buffer("theta", theta)  # [T, F]
        self.register_buffer("table", table)  # [119] row of theta, -1 if none

    def forward(self, x: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        row = self.table[numbers]  # [row]
        if bool((row < 0).any()):
            raise ValueError("an atom's element is not among the model's fitted species")
        return (x * self.theta[row]).sum(1)  # [row]


class KernelReadout(torch.nn.Module):
    """``e = sum_m c_m k(x, x_m)``, ``k = (x . x_m)^zeta`` (only equal elements if given)."""

    points: torch.Tensor
    weights: torch.Tensor
    point_numbers: torch.Tensor

    def __init__(
        self,
        points: torch.Tensor,
        weights: torch.Tensor,
        zeta: float,
        point_numbers: torch.Tensor,
    ):
        super().__init__()
        self.register_buffer("points", points)  # [M, F]
        self.register_buffer("weights", weights)  # [M]
        self.register_buffer("point_numbers", point_numbers)  # [M] or [0]
        self.zeta = float(zeta)
        self.integer_zeta = float(int(zeta)) == float(zeta)
        self.per_element = point_numbers.shape[0] > 0

    def forward(self, x: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        dots = x @ self.points.T  # [row, M]
        if self.integer_zeta:
            k = dots ** int(self.zeta)
        else:
            k = dots.clamp(min=0.0) ** self.zeta
        if self.per_element:
            k = k * (numbers[:, None] == self.point_numbers[None, :]).to(k.dtype)
        return k @ self.weights  # [row]


class LearnedReadout(torch.nn.Module):
    """A :class:`~tradens.models._readout.Readout` with the model's species index."""

    table: torch.Tensor

    def __init__(self, readout: torch.nn.Module, table: torch.Tensor):
        super().__init__()
        self.readout = readout
        self.register_buffer("table", table)  # [119] species row, S for unknown

    def forward(self, x: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        return self.readout(x, self.table[numbers])


class ScriptedPairDensity(torch.nn.Module):
    """:class:`~tradens.models._pair_density.PairDensity` from pair vectors (TorchScript)."""

    table: torch.Tensor
    embedding: torch.Tensor
    grid: torch.Tensor

    def __init__(self, pair, dtype: torch.dtype):
        super().__init__()
        table = torch.full((119,), len(pair.species), dtype=torch.long)
        for index, z in enumerate(pair.species):
            table[int(z)] = index
        self.register_buffer("table", table)  # [119] embedding row
        embedding = pair.embedding.detach()
        rows = torch.cat([embedding, embedding.mean(0, keepdim=True)], dim=0)  # [S+1, P]
        self.register_buffer("embedding", rows.to(dtype))
        self.register_buffer("grid", pair.centres.to(dtype))
        self.width, self.cutoff = float(pair.width), float(pair.cutoff)

    def forward(
        self,
        vectors: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        numbers: torch.Tensor,
    ) -> torch.Tensor:
        inside = torch.linalg.vector_norm(vectors, dim=1) < self.cutoff  # [pair]
        return pair_densities(
            vectors[inside],
            centers[inside],
            self.table[numbers][neighbors[inside]],
            self.embedding,
            self.grid,
            self.width,
            self.cutoff,
            numbers.shape[0],
        )  # [atom, P*B]


class ScriptedAugmented(torch.nn.Module):
    """SOAP features, then pair densities (:class:`~tradens.models._pair_density.Augmented`)."""

    def __init__(self, inner: ScriptedSOAP, pair: ScriptedPairDensity):
        super().__init__()
        self.inner, self.pair = inner, pair
        self.cutoff = max(inner.cutoff, pair.cutoff)

    def centre_rows(self, numbers: torch.Tensor) -> torch.Tensor:
        return self.inner.centre_rows(numbers)

    def forward(
        self,
        vectors: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        numbers: torch.Tensor,
    ) -> torch.Tensor:
        values = self.inner(vectors, centers, neighbors, numbers)  # [row, F]
        pair = self.pair(vectors, centers, neighbors, numbers)  # [atom, P*B]
        return torch.cat([values, pair[self.inner.centre_rows(numbers)]], dim=1)


class ScriptedPotential(torch.nn.Module):
    """Per-atom energies of a fitted potential (or of every member of an ensemble).

    ``forward(vectors, centers, neighbors, numbers) -> [member, atom]`` (eV),
    differentiable in ``vectors`` (see :class:`ScriptedSOAP` for the arguments).
    """

    references: torch.Tensor
    known: torch.Tensor

    def __init__(
        self,
        features: list[torch.nn.Module],
        readouts: list[torch.nn.Module],
        references: torch.Tensor,
        known: torch.Tensor,
    ):
        super().__init__()
        self.features = torch.nn.ModuleList(features)
        self.readouts = torch.nn.ModuleList(readouts)
        self.register_buffer("references", references)  # [member, 119] e0 per element (eV)
        self.register_buffer("known", known)  # [member, 119] elements with an e0
        self.n_members = len(features)
        self.cutoff: float = max(float(f.cutoff) for f in features)  # type: ignore[arg-type]

    def forward(
        self,
        vectors: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        numbers: torch.Tensor,
    ) -> torch.Tensor:
        energies: list[torch.Tensor] = []
        member = 0
        # (TorchScript's zip has no strict=; both lists have one entry per member)
        for features, readout in zip(self.features, self.readouts):  # noqa: B905
            if not bool(self.known[member][numbers].all()):
                raise ValueError("an atom's element has no reference energy in this model")
            energy = self.references[member][numbers].to(vectors.dtype)  # [atom]
            x = features(vectors, centers, neighbors, numbers)  # [row, F]
            rows = features.centre_rows(numbers)  # type: ignore[operator]
            energy = energy.index_add(0, rows, readout(x, numbers[rows]))
            energies.append(energy)
            member += 1
        return torch.stack(energies)  # [member, atom]


def _readout(model, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """The readout module of one fitted model and its baseline."""
    from .learned import LearnedPotential
    from .linear import LinearPotential

    if isinstance(model, LearnedPotential):
        table = torch.full((119,), len(model.species_), dtype=torch.long)
        for index, z in enumerate(model.species_):
            table[int(z)] = index
        module = _copy_module(model.readout_, dtype)
        baseline = None if model.readout_.reference is not None else model.baseline_
        return LearnedReadout(module, table), baseline
    if not isinstance(model, LinearPotential):
        raise ValueError(f"{type(model).__name__} cannot be exported")
    basis = model.basis_
    theta = torch.as_tensor(model._theta, dtype=torch.float64)  # [D]
    if isinstance(basis, KernelBasis):
        numbers = (
            torch.zeros(0, dtype=torch.long)
            if basis.point_numbers is None
            else torch.as_tensor(basis.point_numbers, dtype=torch.long)
        )
        readout: torch.nn.Module = KernelReadout(
            basis.points.detach().to(dtype), theta.to(dtype), basis.zeta, numbers
        )
    elif isinstance(basis, ProjectionBasis):
        folded = basis.matrix.to(torch.float64).T @ theta  # P^T theta [F]
        table = torch.zeros(119, dtype=torch.long)
        readout = LinearReadout(folded[None, :].to(dtype), table)
    elif isinstance(basis, LinearBasis):
        if basis.species is None:
            table = torch.zeros(119, dtype=torch.long)
            readout = LinearReadout(theta[None, :].to(dtype), table)
        else:
            table = torch.full((119,), -1, dtype=torch.long)
            for index, z in enumerate(basis.species):
                table[int(z)] = index
            blocks = theta.reshape(len(basis.species), basis.n_features)  # [S, F]
            readout = LinearReadout(blocks.to(dtype), table)
    else:
        raise ValueError(f"no TorchScript form of the basis {type(basis).__name__}")
    return readout, model.baseline_


def _copy_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    import copy

    out = copy.deepcopy(module).to(dtype)
    for parameter in out.parameters():
        parameter.requires_grad_(False)
    return out


def _scripted_features(representation, dtype: torch.dtype) -> torch.nn.Module:
    if isinstance(representation, Augmented):
        return ScriptedAugmented(
            scripted_representation(representation.inner, dtype),
            ScriptedPairDensity(representation.pair, dtype),
        )
    return scripted_representation(representation, dtype)


def scripted_potential(model, dtype: torch.dtype = torch.float64) -> ScriptedPotential:
    """The TorchScript-compatible form of a fitted potential (see the module docstring).

    Parameters
    ----------
    model : LinearPotential, SparseKernelPotential, LearnedPotential or EnsemblePotential
        Fitted, on a :class:`~tradens.SOAP` representation.
    dtype : torch.dtype
        ``torch.float64`` (default) or ``torch.float32``.

    Raises
    ------
    ValueError
        For an unfitted model, or a model or representation without a TorchScript form.
    """
    from .ensemble import EnsemblePotential

    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    model._check_fitted()
    members = list(model.members_) if isinstance(model, EnsemblePotential) else [model]
    features, readouts, references, known = [], [], [], []
    for member in members:
        member._check_fitted()
        features.append(_scripted_features(member._representation_for_prediction(), dtype))
        readout, baseline = _readout(member, dtype)
        readouts.append(readout)
        if baseline is None:
            references.append(torch.zeros(119, dtype=torch.float64))
            known.append(torch.ones(119, dtype=torch.bool))
        else:
            species, values = list(baseline.species_), list(baseline.reference_energies_)
            references.append(_number_table(species, values, 0.0, torch.float64))
            known.append(_number_table(species, [1.0] * len(species), 0.0, torch.float64) > 0)
    return ScriptedPotential(
        features, readouts, torch.stack(references).to(dtype), torch.stack(known)
    )
