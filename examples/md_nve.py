"""NVE molecular dynamics with a fitted tradens potential: energy conservation.

Fits a ridge potential (tensor-reduced SOAP, energies + forces + stress) on
MEAM17, saves and reloads it, runs velocity-Verlet NVE dynamics on a MEAM17
cell with :class:`tradens.calculator.TradensCalculator` and reports the drift
of the total energy per atom per ps (a linear fit of E_total(t)) and its
fluctuation.

Run::

    python examples/md_nve.py                  # 1000 steps of 1 fs, model fitted on 300 structures
    python examples/md_nve.py --steps 200 --train 40 --data src/tradens/data/meam17_sample.xyz

The test suite runs a 50-step version (``tests/test_calculator.py``).
"""

from __future__ import annotations

import argparse
import json
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
from tradens.models import LinearPotential, save

SHARED = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "meam17" / "meam17_dev.xyz"
)
SAMPLE = Path(tradens.__file__).parent / "data" / "meam17_sample.xyz"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED if SHARED.exists() else SAMPLE))
    parser.add_argument("--train", type=int, default=300, help="training structures")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--timestep", type=float, default=1.0, help="fs")
    parser.add_argument(
        "--temperature", type=float, default=300.0, help="K, initial Maxwell-Boltzmann"
    )
    parser.add_argument(
        "--cell", type=int, default=0, help="index of the MEAM17 structure to simulate"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
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
    start = time.perf_counter()
    model = LinearPotential(
        soap, alphas=(1e-5, 1e-4, 1e-3, 1e-2), cv=3, forces_weight=0.3, batch_size=16
    ).fit(frames[: args.train])
    fit_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        path = save(model, Path(folder) / "meam17.zip")
        calculator = TradensCalculator(path)  # reloaded from disk

    atoms = frames[args.cell].copy()
    atoms.calc = calculator
    rng = np.random.default_rng(args.seed)
    masses = atoms.get_masses()[:, None]
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * args.temperature)
    atoms.set_momenta(momenta - momenta.mean(axis=0))
    dynamics = VelocityVerlet(atoms, timestep=args.timestep * units.fs)
    times, totals, temperatures = [], [], []

    def record():
        times.append(dynamics.get_time() / (1000 * units.fs))  # ps
        totals.append(atoms.get_total_energy() / len(atoms))
        temperatures.append(atoms.get_temperature())

    dynamics.attach(record, interval=1)
    start = time.perf_counter()
    dynamics.run(args.steps)
    md_seconds = time.perf_counter() - start
    times, totals = np.array(times), np.array(totals)
    slope = float(np.polyfit(times, totals, 1)[0])
    result = {
        "atoms": len(atoms),
        "steps": args.steps,
        "timestep_fs": args.timestep,
        "fit_seconds": round(fit_seconds, 1),
        "md_seconds": round(md_seconds, 1),
        "alpha": model.alpha_,
        "cv_energy_rmse_meV_atom": float(1000 * np.nanmin(model.cv_results_["energy_rmse"])),
        "cv_forces_rmse_meV_A": float(1000 * np.nanmin(model.cv_results_["forces_rmse"])),
        "drift_meV_per_atom_per_ps": 1000 * slope,
        "fluctuation_meV_per_atom": 1000 * float(totals.std()),
        "max_excursion_meV_per_atom": 1000 * float(np.ptp(totals)),
        "mean_temperature_K": float(np.mean(temperatures)),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
