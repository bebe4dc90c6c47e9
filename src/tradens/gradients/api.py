"""Gradients of representations: forces, stress and descriptor Jacobians.

Units are Å for lengths and, for a model, whatever unit the model's energies
have (eV in practice): forces in eV/Å, stress in eV/Å^3.

Strain convention
-----------------
A strain ``eps [structure, 3, 3]`` (symmetrised, ``eps = (e + e^T) / 2``) acts
on the row-vector positions and cell vectors of its structure,

    positions' = positions (1 + eps),    cells' = cells (1 + eps),

so every pair vector becomes ``r' = r (1 + eps)`` and, for any invariant ``X``,
``dX/d eps_ab = sum_p r_pa dX/dr_pb`` (sum over the pair vectors of the
environment). ASE's stress is ``(1/V) dE/d eps``; the virial is ``-dE/d eps``.

Derivative paths
----------------
Each product has one dispatcher here and one capability check that names the
path serving a representation (:func:`forces_path`, :func:`jacobian_path`);
the dispatcher records the path it took in :mod:`tradens.gradients.paths`:

===========  ===================  ===================================================
product      path                 implementation
===========  ===================  ===================================================
forces       ``"soap-analytic"``  :mod:`.soap_forces` (SOAP, first derivatives; the
                                  compiled pair kernels are an option inside it)
forces       ``"autograd"``       one reverse pass (any module; the reference)
jacobian     ``"soap-symmetric"`` :mod:`.soap_jacobian` (symmetric mixed SOAP with
                                  ``triangle``/``diagonal`` products; compiled slab)
jacobian     ``"soap-pair"``      :mod:`.soap_pairs` (every other SOAP)
jacobian     ``"ace-pair"``       :mod:`.ace_pairs` (channel-diagonal ACE)
jacobian     ``"jvp"``            :mod:`.reference` (any module; the reference)
===========  ===================  ===================================================

Every analytic path takes its per-pair terms from the representation's
:class:`~tradens.density.expansion.DensityExpansion` (neighbours computed once
per batch by the dispatcher and passed down).

Three entry points
------------------
:func:`energy_forces_stress`
    For a model ``E = sum_rows f(X_row)`` (any differentiable ``f``): energies,
    forces ``-dE/dx`` and stress in one reverse-mode pass per batch of
    structures (a vector-Jacobian product; the Jacobian is never formed).
    Works for any representation module whose ``forward(batch, positions,
    cells)`` returns ``(values, rows)``; with ``create_graph=True`` the forces
    can be differentiated again (force matching, learnable mixing weights).
:func:`descriptor_gradients`
    Sparse descriptor Jacobians: ``dX_row / dx_atom`` for every centre and every
    atom of its environment (``[entry, 3, feature]`` with an ``[entry, 2]``
    index), optionally image-resolved (``dX_i / dr_ij`` per neighbour image, the
    layout of GAP), and strain derivatives ``[row, 3, 3, feature]``.
    :class:`~tradens.representations.soap.SOAP` uses an analytic chain rule through the power
    spectrum, in chunks of pairs (``method="pair"``); any other module gets
    forward-mode autograd over a distance-2 colouring of the atoms
    (``method="jvp"``, ``3 * colours + 9`` Jacobian-vector products).
:func:`apply_strain`
    The strained positions and cells used by both.
"""

from __future__ import annotations

import math
from typing import Literal, overload

import numpy as np
import torch

from ..kernels.determinism import deterministic
from ..representations.ace import ACE
from ..representations.soap import SOAP
from ..systems.batch import Batch, as_batch
from .ace_pairs import ace_pair_gradients
from .paths import record as record_path
from .reference import jvp_gradients
from .results import DescriptorGradients, ModelOutput, _averaged
from .soap_forces import soap_energy_and_gradients
from .soap_jacobian import fast_structure
from .soap_pairs import soap_pair_gradients

__all__ = [
    "DescriptorGradients",
    "ModelOutput",
    "apply_strain",
    "descriptor_gradients",
    "energy_forces_stress",
    "forces_path",
    "jacobian_path",
]


# ----------------------------------------------------------------------------- capabilities


def _plain(representation: object, cls: type[torch.nn.Module]) -> bool:
    """``representation`` is a ``cls`` whose ``forward`` is not overridden."""
    return isinstance(representation, cls) and type(representation).forward is cls.forward


def forces_path(representation, *, create_graph: bool = False, method: str = "auto") -> str:
    """The path of :func:`energy_forces_stress` for ``representation``: the one capability check.

    ``"soap-analytic"`` for a :class:`~tradens.representations.soap.SOAP` (not
    subclassed with another ``forward``) without ``create_graph``, else
    ``"autograd"``. ``method="autograd"`` forces the reference; ``method=
    "analytic"`` raises a ValueError where the analytic path does not serve.
    """
    if method not in ("auto", "analytic", "autograd"):
        raise ValueError(f"method must be 'auto', 'analytic' or 'autograd', got {method!r}")
    analytic = not create_graph and _plain(representation, SOAP)
    if method == "analytic" and not analytic:
        raise ValueError(
            "method='analytic' needs a SOAP representation and create_graph=False; "
            "use method='autograd'"
        )
    return "soap-analytic" if analytic and method != "autograd" else "autograd"


def jacobian_path(
    representation,
    *,
    images: bool = False,
    method: str = "auto",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> str:
    """The path of :func:`descriptor_gradients` for ``representation``: the one capability check.

    ``"soap-symmetric"`` (symmetric mixed SOAP whose products are all ``b <= a``
    channel pairs or the matching channels, not averaged), ``"soap-pair"``
    (any other SOAP), ``"ace-pair"`` (ACE with channel-diagonal products,
    without ``images``), else ``"jvp"``. ``method="jvp"`` forces the reference;
    ``method="pair"`` raises a ValueError where no analytic path serves.
    ``dtype`` and ``device`` are those of the batch (they decide whether both
    densities of a SOAP are the same tensor).
    """
    if method not in ("auto", "pair", "jvp"):
        raise ValueError(f"method must be 'auto', 'pair' or 'jvp', got {method!r}")
    if _plain(representation, SOAP):
        analytic = _soap_jacobian_kind(representation, dtype, device)
    elif (
        _plain(representation, ACE)
        and all(mode == "diagonal" for mode in representation.hypers.modes())
        and not images
    ):
        analytic = "ace-pair"
    else:
        analytic = None
    if method == "pair" and analytic is None:
        raise ValueError(
            "method='pair' is implemented for SOAP and channel-diagonal ACE (without "
            f"images=True), got {type(representation).__name__}; use method='jvp'"
        )
    if method == "jvp" or analytic is None:
        if images:
            raise ValueError(
                "images=True needs per-pair derivatives: only method='pair' (SOAP) provides them"
            )
        return "jvp"
    return analytic


def _soap_jacobian_kind(
    soap: SOAP, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> str:
    """``"soap-symmetric"`` where the fast symmetric path serves this SOAP, else ``"soap-pair"``."""
    w1, w2 = soap.mixing_matrices(dtype, torch.device(device))
    symmetric = w1 is None or w2 is w1
    return "soap-symmetric" if fast_structure(soap, symmetric, w1) is not None else "soap-pair"


# ----------------------------------------------------------------------------- strain


def apply_strain(
    batch: Batch,
    strain: torch.Tensor,
    positions: torch.Tensor | None = None,
    cells: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Strained positions ``[atom, 3]`` and cells ``[structure, 3, 3]``.

    Parameters
    ----------
    batch : Batch
        The structures.
    strain : Tensor ``[structure, 3, 3]``
        Strain (symmetrised here); zero gives back the inputs, with autograd
        reaching ``strain``.
    positions, cells : Tensor, optional
        Replacements for the batch's positions and cells.
    """
    positions = batch.positions if positions is None else positions
    cells = batch.cells if cells is None else cells
    if strain.shape != (batch.n_structures, 3, 3):
        raise ValueError(
            f"strain must have shape [{batch.n_structures}, 3, 3], got {tuple(strain.shape)}"
        )
    eps = 0.5 * (strain + strain.transpose(1, 2))  # [structure, 3, 3]
    new_positions = positions + torch.einsum(
        "pa,pab->pb", positions, eps[batch.structure]
    )  # [atom, 3]
    new_cells = cells + torch.bmm(cells, eps)  # [structure, 3, 3]
    return new_positions, new_cells


def _row_structure(representation, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
    """Structure index of every row: rows are atoms, or structures when averaged."""
    if _averaged(representation):
        return rows
    return batch.structure[rows]


def _batches(systems, batch_size: int | None, dtype, device):
    """Batches of ``systems``: ``batch_size`` structures each, or packed by size when None."""
    if isinstance(systems, Batch):
        yield systems
        return
    from ..systems.batch import _as_frames, batch_ranges, frame_atoms

    frames = _as_frames(systems)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start, stop in batch_ranges([frame_atoms(frame) for frame in frames], batch_size):
        yield as_batch(frames[start:stop], dtype=dtype, device=device, first_index=start)


# ----------------------------------------------------------------------------- model path


@overload
def energy_forces_stress(
    representation,
    model_fn,
    systems,
    *,
    batch_size: int | None = ...,
    dtype: torch.dtype | None = ...,
    device=...,
    create_graph: bool = ...,
    output: Literal["numpy"] = ...,
    method: str = ...,
) -> ModelOutput[np.ndarray]: ...
@overload
def energy_forces_stress(
    representation,
    model_fn,
    systems,
    *,
    batch_size: int | None = ...,
    dtype: torch.dtype | None = ...,
    device=...,
    create_graph: bool = ...,
    output: Literal["torch"],
    method: str = ...,
) -> ModelOutput[torch.Tensor]: ...
def energy_forces_stress(
    representation,
    model_fn,
    systems,
    *,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    create_graph: bool = False,
    output: str = "numpy",
    method: str = "auto",
) -> ModelOutput[np.ndarray] | ModelOutput[torch.Tensor]:
    """Energies, forces and stress of ``E = sum_rows model_fn(X)`` by one backward pass.

    Parameters
    ----------
    representation : torch.nn.Module
        Anything with ``forward(batch, positions, cells) -> (values [row, F], rows)``
        (:class:`~tradens.representations.soap.SOAP`, ACE, ...).
    model_fn : callable
        ``model_fn(values [row, F], numbers [row]) -> energies [row]`` (eV), with
        ``numbers`` the atomic number of each row's centre (0 for averaged rows).
    systems : ase.Atoms, list of structures, or Batch
        The structures (never modified).
    batch_size : int, optional
        Structures per backward pass; default: packed by size, about
        :data:`~tradens.systems.batch.ATOMS_PER_BATCH` atoms a pass.
    dtype, device : optional
        Floating dtype (float64 default) and device.
    create_graph : bool
        Keep the graph so that forces and stress can be differentiated again
        (e.g. a force loss with respect to model or mixing weights). Needs
        ``output="torch"``.
    output : {"numpy", "torch"}
        Array type of the result.
    method : {"auto", "analytic", "autograd"}
        ``"analytic"``: autograd only from the mixed densities through the
        power spectrum and the model, then an analytic pass over the pairs
        (:mod:`tradens.gradients.soap_forces`; :class:`~tradens.representations.soap.SOAP` without
        ``create_graph``); ``"autograd"``: one reverse pass through the whole
        representation (any module, any options); ``"auto"``: ``"analytic"``
        where it applies.

    Returns
    -------
    ModelOutput
        ``energy [structure]``, ``forces [atom, 3]``, ``virial`` and ``stress``
        ``[structure, 3, 3]`` (stress NaN unless periodic in all directions).
    """
    if output not in ("numpy", "torch"):
        raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
    if create_graph and output != "torch":
        raise ValueError("create_graph=True needs output='torch' (numpy arrays carry no graph)")
    path = forces_path(representation, create_graph=create_graph, method=method)
    parts: dict[str, list] = {
        "energy": [],
        "forces": [],
        "virial": [],
        "stress": [],
        "structure": [],
    }
    offset = 0
    with deterministic(systems.positions.device if isinstance(systems, Batch) else device):
        for batch in _batches(systems, batch_size, dtype, device):
            if path == "soap-analytic":
                energy, d_positions, d_strain = soap_energy_and_gradients(
                    representation, model_fn, batch, pairs=representation.expansion.pairs(batch)
                )
                _append(parts, batch, energy, d_positions, d_strain, offset)
                offset += batch.n_structures
                continue
            energy, d_positions, d_strain = _autograd_gradients(
                representation, model_fn, batch, create_graph
            )
            _append(
                parts,
                batch,
                energy if create_graph else energy.detach(),
                d_positions,
                d_strain,
                offset,
            )
            offset += batch.n_structures
    record_path("forces", path)
    result = {key: torch.cat(value) for key, value in parts.items()}
    if output == "numpy":
        return ModelOutput(**{key: value.detach().cpu().numpy() for key, value in result.items()})
    return ModelOutput(**result)


def _autograd_gradients(
    representation, model_fn, batch: Batch, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energies and their gradients by one reverse pass (the ``"autograd"`` forces path).

    Returns ``E [structure]`` (eV), ``dE/dx [atom, 3]`` (eV/Å) and ``dE/d eps
    [structure, 3, 3]`` (eV) of ``E = sum_rows model_fn(X)``.
    """
    positions = batch.positions.detach().clone().requires_grad_(True)  # [atom, 3]
    strain = torch.zeros_like(batch.cells, requires_grad=True)  # [structure, 3, 3]
    new_positions, new_cells = apply_strain(
        batch, strain, positions=positions, cells=batch.cells.detach()
    )
    values, rows = representation(batch, new_positions, new_cells)
    numbers = torch.zeros_like(rows) if _averaged(representation) else batch.numbers[rows]
    per_row = model_fn(values, numbers).reshape(-1)  # [row]
    if per_row.shape[0] != values.shape[0]:
        raise ValueError(
            f"model_fn must return one energy per row ({values.shape[0]}), got {per_row.shape[0]}"
        )
    structure_of_row = _row_structure(representation, batch, rows)
    energy = torch.zeros(batch.n_structures, dtype=per_row.dtype, device=per_row.device)
    energy = energy.index_add(0, structure_of_row, per_row)  # [structure]
    d_positions: torch.Tensor | None = None
    d_strain: torch.Tensor | None = None
    if energy.requires_grad:  # else nothing depends on the geometry (e.g. isolated atoms)
        d_positions, d_strain = torch.autograd.grad(
            energy.sum(), [positions, strain], create_graph=create_graph, allow_unused=True
        )
    if d_positions is None:
        d_positions = torch.zeros_like(positions)
    if d_strain is None:
        d_strain = torch.zeros_like(strain)
    return energy, d_positions, d_strain


def _append(
    parts: dict,
    batch: Batch,
    energy: torch.Tensor,
    d_positions: torch.Tensor,
    d_strain: torch.Tensor,
    offset: int,
) -> None:
    """Add one batch's energies ``[structure]``, forces, virial and stress to ``parts``."""
    volume = torch.linalg.det(batch.cells.detach()).abs()  # [structure]
    periodic = batch.pbc.all(dim=1)
    safe = torch.where(periodic, volume, torch.ones_like(volume))
    stress = torch.where(
        periodic[:, None, None], d_strain / safe[:, None, None], torch.full_like(d_strain, math.nan)
    )  # [structure, 3, 3]
    parts["energy"].append(energy)
    parts["forces"].append(-d_positions)
    parts["virial"].append(-d_strain)
    parts["stress"].append(stress)
    parts["structure"].append(batch.structure + offset)


# ----------------------------------------------------------------------------- Jacobians


def _check_jacobian_memory(
    representation, batch: Batch, n_pairs: int, strain: bool, device: torch.device
) -> None:
    """Refuse a Jacobian whose output alone would not fit in the available memory.

    The output holds ``[entry, 3, F]`` position derivatives with at most one entry
    per centre and per neighbour pair, and ``[row, 3, 3, F]`` strain derivatives.
    """
    from ..kernels.budget import check_memory

    n_features = int(representation.n_features)
    n_rows = batch.n_atoms
    entries = n_rows + n_pairs
    itemsize = batch.positions.element_size()
    needed = (entries * 3 + (9 * n_rows if strain else 0)) * n_features * itemsize
    check_memory(
        needed,
        f"descriptor Jacobians of {batch.n_structures} structure(s): up to {entries} "
        f"entries x 3 x {n_features} features",
        "pass fewer structures per call, fewer features (smaller K), dtype=torch.float32, "
        "or compute forces of a model with energy_forces_stress, which never forms the Jacobian",
        device,
    )


def descriptor_gradients(
    representation,
    systems,
    *,
    strain: bool = True,
    images: bool = False,
    method: str = "auto",
    cutoff: float | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    chunk_bytes: int | None = None,
) -> DescriptorGradients:
    """Sparse Jacobians of the features with respect to positions and strain.

    Parameters
    ----------
    representation : torch.nn.Module
        :class:`~tradens.representations.soap.SOAP`, or any module with ``forward(batch,
        positions, cells) -> (values, rows)`` whose row for centre ``i`` depends
        only on atoms within ``cutoff`` of ``i`` (or, averaged, on its structure).
    systems : ase.Atoms, list of structures, or Batch
        The structures (one batch; never modified).
    strain : bool
        Also return ``d values / d eps [row, 3, 3, feature]``.
    images : bool
        Image-resolved entries (``d X_i / d r_ij`` per neighbour image and a
        leading centre entry per row, GAP's layout); ``method="pair"`` only.
    method : {"auto", "pair", "jvp"}
        ``"pair"``: analytic per-pair chain rule (SOAP, and ACE with
        channel-diagonal products: :mod:`tradens.gradients.ace_pairs`); ``"jvp"``:
        forward-mode autograd over an atom colouring (any module); ``"auto"``:
        ``"pair"`` when available.
    cutoff : float, optional
        Environment radius in Å for ``"jvp"`` (default: the representation's).
    dtype, device : optional
        Floating dtype (float64 default) and device.
    chunk_bytes : int, optional
        Working-memory target per chunk of pairs (the output is extra); default
        16 MiB on the CPU (cache-sized) and 256 MiB on a GPU (fewer launches).

    Returns
    -------
    DescriptorGradients
    """
    if method not in ("auto", "pair", "jvp"):
        raise ValueError(f"method must be 'auto', 'pair' or 'jvp', got {method!r}")
    batch = systems if isinstance(systems, Batch) else as_batch(systems, dtype=dtype, device=device)
    device = batch.positions.device
    path = jacobian_path(
        representation, images=images, method=method, dtype=batch.positions.dtype, device=device
    )
    if chunk_bytes is None:
        chunk_bytes = (16 if device.type == "cpu" else 256) * 2**20
    with deterministic(device):
        if path == "jvp":
            result = jvp_gradients(representation, batch, strain=strain, cutoff=cutoff)
        else:
            pairs = representation.expansion.pairs(batch)
            _check_jacobian_memory(representation, batch, int(pairs.i.shape[0]), strain, device)
            if path == "ace-pair":
                result = ace_pair_gradients(
                    representation, batch, strain=strain, chunk_bytes=chunk_bytes, pairs=pairs
                )
            else:
                result = soap_pair_gradients(
                    representation,
                    batch,
                    strain=strain,
                    images=images,
                    chunk_bytes=chunk_bytes,
                    fast=path == "soap-symmetric",
                    pairs=pairs,
                )
    record_path("jacobian", path)
    return result
