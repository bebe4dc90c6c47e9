"""Export fitted potentials as metatomic models (LAMMPS, i-PI, ASE, TorchSim, ...).

:func:`export_metatomic` writes a TorchScript ``metatomic.torch.AtomisticModel``
(packages ``metatomic-torch`` and ``metatensor-torch``, extra ``tradens[engines]``).
The engine supplies a full neighbour list with the model's cutoff (requested
through :class:`metatomic.torch.NeighborListOptions`); the model computes
per-atom and total energies in pure torch (:mod:`tradens.models.scripted`) and
the engine takes forces and stress by autograd through the pair vectors.

Outputs: ``energy`` (per system or per atom; ``selected_atoms`` sums only those
atoms, as domain decomposition needs) and, for an
:class:`~tradens.models.EnsemblePotential`, ``energy_ensemble`` (one property per
member) and ``energy_uncertainty`` (the members' standard deviation, ddof 0).
Units: Å and eV.
"""

import os
from typing import Dict, List, Optional  # noqa: UP035 (metatomic checks these annotations)

import torch

from .._version import __version__
from .scripted import ScriptedPotential, scripted_potential

__all__ = ["export_metatomic", "MetatomicPotential"]

FORMAT_VERSION = 1  # of the exported module's metadata (checked by load_exported)

try:  # optional: the engines extra
    from metatensor.torch import Labels, TensorBlock, TensorMap
    from metatomic.torch import ModelOutput, NeighborListOptions, System

    _IMPORT_ERROR: ImportError | None = None
except ImportError as error:  # pragma: no cover - exercised without the extra
    _IMPORT_ERROR = error


def _require_metatomic() -> None:
    if _IMPORT_ERROR is not None:
        raise ImportError(
            "exporting to metatomic needs the packages metatomic-torch and metatensor-torch: "
            "pip install 'tradens[engines]'"
        ) from _IMPORT_ERROR


class MetatomicPotential(torch.nn.Module):
    """The metatomic interface around a :class:`~tradens.models.scripted.ScriptedPotential`."""

    def __init__(self, potential: ScriptedPotential, version: str):
        super().__init__()
        self.potential = potential
        self.n_members = potential.n_members
        self.neighbors = NeighborListOptions(
            cutoff=potential.cutoff, full_list=True, strict=True, requestor="tradens"
        )
        self.tradens_version = version
        self.format_version = FORMAT_VERSION

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:  # noqa: UP006
        return [self.neighbors]

    def forward(
        self,
        systems: List[System],  # noqa: UP006
        outputs: Dict[str, ModelOutput],  # noqa: UP006
        selected_atoms: Optional[Labels] = None,  # noqa: UP045
    ) -> Dict[str, TensorMap]:  # noqa: UP006
        if len(systems) == 0:
            raise ValueError("no systems given")
        device = systems[0].positions.device
        vectors_list: list[torch.Tensor] = []
        centers_list: list[torch.Tensor] = []
        neighbors_list: list[torch.Tensor] = []
        numbers_list: list[torch.Tensor] = []
        system_of_atom: list[torch.Tensor] = []
        atom_in_system: list[torch.Tensor] = []
        offset = 0
        for index, system in enumerate(systems):
            n_atoms = system.positions.shape[0]
            neighbors = system.get_neighbor_list(self.neighbors)
            samples = neighbors.samples.values  # [pair, 5]: i, j, shift a, b, c
            vectors_list.append(neighbors.values.reshape(-1, 3))  # [pair, 3]
            centers_list.append(samples[:, 0].to(torch.long) + offset)
            neighbors_list.append(samples[:, 1].to(torch.long) + offset)
            numbers_list.append(system.types.to(torch.long))
            system_of_atom.append(torch.full((n_atoms,), index, dtype=torch.long, device=device))
            atom_in_system.append(torch.arange(n_atoms, dtype=torch.long, device=device))
            offset += n_atoms
        atom_energies = self.potential(
            torch.cat(vectors_list),
            torch.cat(centers_list),
            torch.cat(neighbors_list),
            torch.cat(numbers_list),
        )  # [member, atom]
        system = torch.cat(system_of_atom)  # [atom]
        atom = torch.cat(atom_in_system)  # [atom]
        if selected_atoms is not None:
            chosen = selected_atoms.values.to(torch.long)  # [selected, 2]: system, atom
            starts = torch.zeros(len(systems), dtype=torch.long, device=device)
            for index in range(1, len(systems)):
                starts[index] = starts[index - 1] + systems[index - 1].positions.shape[0]
            keep = starts[chosen[:, 0]] + chosen[:, 1]
            atom_energies = atom_energies[:, keep]
            system, atom = system[keep], atom[keep]
        results: dict[str, TensorMap] = {}
        for name, request in outputs.items():
            if name == "energy":
                values = atom_energies.mean(0)[:, None]  # [atom, 1]
                results[name] = self._energy_map(values, system, atom, request, "energy", systems)
            elif name == "energy_ensemble":
                values = atom_energies.T  # [atom, member]
                results[name] = self._energy_map(values, system, atom, request, "energy", systems)
            elif name == "energy_uncertainty":
                values = atom_energies.std(0, unbiased=False)[:, None]  # [atom, 1]
                if request.sample_kind != "atom":  # the spread of the total energy
                    totals = torch.zeros(
                        self.n_members, len(systems), dtype=values.dtype, device=device
                    ).index_add(1, system, atom_energies)  # [member, system]
                    values = totals.std(0, unbiased=False)[:, None]  # [system, 1]
                    results[name] = self._system_map(values, "energy_uncertainty", len(systems))
                else:
                    results[name] = self._energy_map(
                        values, system, atom, request, "energy_uncertainty", systems
                    )
            else:
                raise ValueError("tradens models provide 'energy' (and ensembles their spread)")
        return results

    def _energy_map(
        self,
        values: torch.Tensor,
        system: torch.Tensor,
        atom: torch.Tensor,
        request: ModelOutput,
        name: str,
        systems: list[System],
    ) -> TensorMap:
        """``values [atom, P]`` as a TensorMap per atom or summed per system."""
        device = values.device
        n_properties = values.shape[1]
        if n_properties == 1:
            properties = Labels(name, torch.zeros(1, 1, dtype=torch.int32, device=device))
        else:
            properties = Labels(
                "member", torch.arange(n_properties, dtype=torch.int32, device=device)[:, None]
            )
        if request.sample_kind == "atom":
            samples = Labels(["system", "atom"], torch.stack([system, atom], dim=1).to(torch.int32))
            block = TensorBlock(values, samples, [], properties)
        else:
            totals = torch.zeros(
                len(systems), n_properties, dtype=values.dtype, device=device
            ).index_add(0, system, values)  # [system, P]
            samples = Labels(
                "system", torch.arange(len(systems), dtype=torch.int32, device=device)[:, None]
            )
            block = TensorBlock(totals, samples, [], properties)
        keys = Labels("_", torch.zeros(1, 1, dtype=torch.int32, device=device))
        return TensorMap(keys, [block])

    def _system_map(self, values: torch.Tensor, name: str, n_systems: int) -> TensorMap:
        device = values.device
        samples = Labels(
            "system", torch.arange(n_systems, dtype=torch.int32, device=device)[:, None]
        )
        properties = Labels(name, torch.zeros(1, 1, dtype=torch.int32, device=device))
        keys = Labels("_", torch.zeros(1, 1, dtype=torch.int32, device=device))
        return TensorMap(keys, [TensorBlock(values, samples, [], properties)])


def check_exported(path: str | os.PathLike) -> str:
    """The tradens version that wrote a metatomic file; refuses other format versions.

    Raises
    ------
    ValueError
        When the file was not written by tradens, or by a tradens whose export
        format differs from this one (the message names both versions).
    """
    _require_metatomic()
    from metatomic.torch import read_model_metadata

    extra = read_model_metadata(str(path)).extra
    if "tradens_version" not in extra:
        raise ValueError(f"{os.fspath(path)} was not exported by tradens")
    version, format_version = extra["tradens_version"], extra.get("tradens_format", "?")
    if format_version != str(FORMAT_VERSION):
        raise ValueError(
            f"{os.fspath(path)} was exported by tradens {version} (format {format_version}); "
            f"this is tradens {__version__} (format {FORMAT_VERSION}): export the model again "
            "with this version (tradens export MODEL.zip -o MODEL.pt)"
        )
    return version


def atomistic_model(model, dtype: torch.dtype = torch.float64):
    """The ``metatomic.torch.AtomisticModel`` of a fitted potential (not yet saved)."""
    _require_metatomic()
    from metatomic.torch import AtomisticModel, ModelCapabilities, ModelMetadata
    from metatomic.torch import ModelOutput as Output

    from .ensemble import EnsemblePotential

    potential = scripted_potential(model, dtype)
    module = MetatomicPotential(potential, __version__).eval()
    species = sorted(int(z) for z in torch.nonzero(potential.known.all(0)).flatten().tolist())
    members = list(model.members_) if isinstance(model, EnsemblePotential) else [model]
    fitted: set[int] = set()
    for member in members:
        representation = member._representation_for_prediction()
        listed = representation.hypers.species
        fitted.update(species if listed is None else (int(z) for z in listed))
    atomic_types = sorted(set(species) & fitted) if fitted else species
    outputs = {
        "energy": Output(unit="eV", sample_kind="atom"),
    }
    if isinstance(model, EnsemblePotential):
        outputs["energy_ensemble"] = Output(unit="eV", sample_kind="atom")
        outputs["energy_uncertainty"] = Output(unit="eV", sample_kind="atom")
    capabilities = ModelCapabilities(
        outputs=outputs,
        atomic_types=atomic_types,
        interaction_range=float(potential.cutoff),
        length_unit="angstrom",
        supported_devices=["cpu", "cuda"],
        dtype="float64" if dtype == torch.float64 else "float32",
    )
    metadata = ModelMetadata(
        name=f"tradens {type(model).__name__}",
        description=f"{type(model).__name__} fitted with tradens {__version__}",
        references={"architecture": ["https://doi.org/10.1103/PhysRevLett.131.028001"]},
        extra={"tradens_version": __version__, "tradens_format": str(FORMAT_VERSION)},
    )
    return AtomisticModel(module, metadata, capabilities)


def export_metatomic(model, path: str | os.PathLike, *, dtype: torch.dtype = torch.float64) -> None:
    """Write a fitted potential as a TorchScript metatomic model file.

    Parameters
    ----------
    model : LinearPotential, SparseKernelPotential, LearnedPotential or EnsemblePotential
        Fitted, on SOAP or tensor-reduced SOAP (any mixing and coupling).
    path : str or os.PathLike
        Output file (conventionally ``.pt``), written atomically.
    dtype : torch.dtype
        ``torch.float64`` (default) or ``torch.float32``.

    Examples
    --------
    The file runs in any metatomic engine, e.g. ASE::

        from metatomic_ase import MetatomicCalculator
        atoms.calc = MetatomicCalculator("model.pt")
    """
    from ..io import atomic_path

    exported = atomistic_model(model, dtype)
    with atomic_path(path) as tmp:
        exported.save(str(tmp))
