"""NVE molecular dynamics in i-PI with an exported tradens potential (metatomic).

Fits a ridge potential (tensor-reduced SOAP, energies + forces + stress) on
MEAM17, exports it with ``tradens.models.export`` (a TorchScript metatomic model),
runs velocity-Verlet NVE dynamics of a MEAM17 cell in i-PI (its ``metatomic``
driver, in process) and reports the drift of i-PI's conserved energy per atom per
ps (a linear fit over time) and its fluctuation. With ``--compare`` the same run
is repeated in ASE with :class:`tradens.calculator.TradensCalculator` and the
largest difference of the positions and of the total energy is reported.

Run::

    python examples/md_ipi.py                  # 1000 steps of 1 fs, model fitted on 300 structures
    python examples/md_ipi.py --steps 50 --train 20 --data src/tradens/data/meam17_sample.xyz

The test suite runs a short version (``tests/test_engines.py``). LAMMPS runs the same
file with ``pair_style metatomic`` (``examples/lammps_metatomic.in``, ``docs/engines.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import units
from ase.md.verlet import VelocityVerlet

import tradens
from tradens import SOAP
from tradens.calculator import TradensCalculator
from tradens.models import LinearPotential, export

SHARED = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "meam17" / "meam17_dev.xyz"
)
SAMPLE = Path(tradens.__file__).parent / "data" / "meam17_sample.xyz"


def run_ipi(atoms: ase.Atoms, model_path: str, steps: int, timestep_fs: float, workdir: str):
    """NVE in i-PI from ``atoms`` (positions, momenta); returns final atoms and the conserved
    energy (eV) after every step."""
    from ipi.scripting import InteractiveSimulation
    from ipi.scripting.templates import forcefield_xml, simulation_xml

    template = os.path.join(workdir, "template.xyz")
    ase.io.write(template, atoms)
    forcefield = forcefield_xml(
        "tradens",
        mode="direct",
        pes="metatomic",
        parameters={"template": template, "model": model_path},
    )
    motion = (
        "<motion mode='dynamics'><dynamics mode='nve'>"
        f"<timestep units='femtosecond'> {timestep_fs} </timestep></dynamics></motion>"
    )
    xml = simulation_xml(
        atoms, forcefield, motion, output=f"<output prefix='{workdir}/ipi'></output>"
    )
    simulation = InteractiveSimulation(xml)
    simulation.set_structures(atoms)  # the same momenta as ASE
    conserved = []
    for _ in range(steps):
        simulation.run(1)
        conserved.append(float(simulation.properties("conserved")))
    return simulation.get_structures(), np.array(conserved)


def run_ase(atoms: ase.Atoms, calculator, steps: int, timestep_fs: float):
    atoms = atoms.copy()
    atoms.calc = calculator
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    totals = []
    for _ in range(steps):
        dynamics.run(1)
        totals.append(atoms.get_total_energy())
    return atoms, np.array(totals)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED if SHARED.exists() else SAMPLE))
    parser.add_argument("--train", type=int, default=300, help="training structures")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--timestep", type=float, default=1.0, help="fs")
    parser.add_argument("--temperature", type=float, default=300.0, help="K, initial")
    parser.add_argument("--cell", type=int, default=0, help="MEAM17 structure to simulate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare", action="store_true", help="repeat the run in ASE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    frames = ase.io.read(args.data, ":")
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    soap = SOAP(
        cutoff=5.0,
        l_max=4,
        radial={"n_max": 6},
        species=species,
        mixing={"channels": args.channels, "weights": "gap"},
    )
    # default alpha grid and property weights (chosen from the label spread)
    model = LinearPotential(soap, cv=3, batch_size=16).fit(frames[: args.train])

    atoms = frames[args.cell].copy()
    atoms.calc = None
    # i-PI needs the cell in standard (lower-triangular in ASE's rows) form: rotate it there
    cell, rotation = atoms.cell.standard_form()
    fractional = atoms.get_scaled_positions(wrap=False)
    atoms.set_cell(cell)
    atoms.set_scaled_positions(fractional)
    assert np.allclose(np.asarray(cell), np.asarray(frames[args.cell].cell) @ rotation.T)
    atoms.arrays["mass"] = atoms.get_masses()  # i-PI takes the masses from here
    rng = np.random.default_rng(args.seed)
    masses = atoms.get_masses()[:, None]
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * args.temperature)
    atoms.set_momenta(momenta - momenta.mean(axis=0))

    with tempfile.TemporaryDirectory() as workdir:
        model_path = os.path.join(workdir, "meam17.pt")
        export(model, model_path)
        here = os.getcwd()
        os.chdir(workdir)  # i-PI writes RESTART files into the working directory
        try:
            start = time.perf_counter()
            final, conserved = run_ipi(atoms, model_path, args.steps, args.timestep, workdir)
            ipi_seconds = time.perf_counter() - start
        finally:
            os.chdir(here)
    times = np.arange(1, args.steps + 1) * args.timestep / 1000.0  # ps
    per_atom = conserved / len(atoms)
    slope = float(np.polyfit(times, per_atom, 1)[0]) if args.steps > 1 else 0.0
    result = {
        "atoms": len(atoms),
        "steps": args.steps,
        "timestep_fs": args.timestep,
        "cv_forces_rmse_meV_A": float(1000 * model.fit_report_["forces"].validation_rmse),
        "zero_forces_rmse_meV_A": float(1000 * model.fit_report_["forces"].trivial_validation_rmse),
        "ipi_seconds": round(ipi_seconds, 2),
        "ipi_ms_per_step": round(1000 * ipi_seconds / args.steps, 2),
        "drift_meV_per_atom_per_ps": 1000 * slope,
        "fluctuation_meV_per_atom": 1000 * float(per_atom.std()),
        "max_excursion_meV_per_atom": 1000 * float(np.ptp(per_atom)),
    }
    if args.compare:
        start = time.perf_counter()
        reference, totals = run_ase(atoms, TradensCalculator(model), args.steps, args.timestep)
        result["ase_seconds"] = round(time.perf_counter() - start, 2)
        result["max_position_difference_A"] = float(
            np.abs(final.positions - reference.positions).max()
        )
        result["max_total_energy_difference_eV"] = float(np.abs(conserved - totals).max())
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
