"""Benchmark: energy + forces per MD step of one fitted potential in three engines.

The same GAP-style sparse kernel potential (TR-SOAP R+Z, element-wise coupling,
GAP's mixing weights, K=16, cutoff 5 Å, l_max 6, n_max 8, zeta 2) is fitted once
per system and run through

* ``tradens``: :class:`tradens.calculator.TradensCalculator` (the library's native
  forces path: one vector-Jacobian product);
* ``metatomic``: the file written by ``tradens.models.export`` loaded by
  ``metatomic_ase.MetatomicCalculator`` (TorchScript; forces by autograd, as in
  LAMMPS / i-PI);
* ``quippy``: the GAP XML written by ``tradens.models.export(format="gap-xml")`` run
  by ``quippy.potential.Potential`` (GAP's own engine, as in LAMMPS ``pair_style quip``);

and, with ``--linear``, a ridge ``LinearPotential`` on the same features in the
first two engines. Systems: ``hea25-2000`` (2000-atom bcc cell of 25 elements,
``docs/peers.md`` section 4; model fitted on HEA25 DFT structures) and
``meam17-54`` (a 54-atom MEAM17 cell; model fitted on MEAM17 structures).

Protocol: every case in its own one-thread interpreter (peak RSS = that process's
``VmHWM``); one warm-up step, then ``--steps`` MD-like steps (positions displaced by
0.001 Å at random each step, so nothing is cached), median wall and CPU time per
step. Ratios are taken against the native tradens path in the same run. Targets
(issue #15): metatomic within 1.5x of the native path, and faster than GAP.

Usage::

    python benchmarks/bench_engines.py                         # both systems, 5 steps
    python benchmarks/bench_engines.py --systems meam17-54 --steps 20 --linear
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    available,
    machine_info,
    memory_status,
    require_data,
    run_worker,
    worker_main,
    write_json_atomically,
)

HEA25_ELEMENTS = [21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 39, 40, 41, 42, 44, 45, 46, 47, 48]
HEA25_ELEMENTS += [72, 73, 74, 75, 76, 77]


def make_system(name: str):
    import ase.build
    import ase.io
    import numpy as np

    if name == "hea25-2000":
        atoms = ase.build.bulk("Fe", "bcc", a=3.2, cubic=True) * 10
        atoms.numbers = np.random.default_rng(0).choice(HEA25_ELEMENTS, len(atoms))
        atoms.rattle(0.05, seed=0)
        return atoms
    if name == "meam17-54":
        frames = ase.io.read(require_data(args_data("meam17"), "meam17/meam17_dev.xyz"), ":")
        atoms = next(a for a in frames if len(a) == 54)
        atoms.calc = None
        return atoms
    raise ValueError(f"unknown system {name!r}")


def args_data(kind: str) -> str:
    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    return str(root / kind / f"{kind}_dev.xyz")


def fit_models(system: str, folder: Path, linear: bool) -> dict:
    """Fit, save and export the potentials of ``system``; returns the file paths."""
    import ase.io

    from tradens import SOAP
    from tradens.models import LinearPotential, SparseKernelPotential, export, save

    kind = "hea25" if system.startswith("hea25") else "meam17"
    path = require_data(args_data(kind), f"{kind}/{kind}_dev.xyz")
    frames = ase.io.read(path, ":40")
    species = sorted({int(z) for a in frames for z in a.numbers} | set(make_species(system)))
    soap = SOAP(
        cutoff=5.0,
        l_max=6,
        radial={"n_max": 8},
        species=species,
        mixing={"channels": 16, "weights": "gap"},
        coupling="elementwise",
    )
    files = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kernel = SparseKernelPotential(soap, n_sparse=200, zeta=2, cv=2, alphas=[1e-3]).fit(frames)
    files["kernel"] = str(save(kernel, folder / f"{system}-kernel.zip"))
    export(kernel, folder / f"{system}-kernel.pt")
    export(kernel, folder / f"{system}-kernel.xml", format="gap-xml")
    if linear:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ridge = LinearPotential(soap, cv=2, alphas=[1e-3]).fit(frames)
        files["linear"] = str(save(ridge, folder / f"{system}-linear.zip"))
        export(ridge, folder / f"{system}-linear.pt")
    return files


def make_species(system: str) -> list[int]:
    return HEA25_ELEMENTS if system.startswith("hea25") else []


def run_case(spec: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    atoms = make_system(spec["system"])
    stem = spec["model"]  # path without suffix
    engine = spec["engine"]
    before = memory_status()
    start = time.perf_counter()
    if engine == "tradens":
        from tradens.calculator import TradensCalculator

        atoms.calc = TradensCalculator(stem + ".zip")
    elif engine == "metatomic":
        from metatomic_ase import MetatomicCalculator

        atoms.calc = MetatomicCalculator(stem + ".pt", device="cpu")
    elif engine == "quippy":
        from quippy.potential import Potential

        atoms.calc = Potential(param_filename=stem + ".xml")
    else:
        raise ValueError(engine)
    setup = time.perf_counter() - start
    rng = np.random.default_rng(1)
    walls, cpus, energies = [], [], []
    for step in range(spec["steps"] + 1):
        atoms.positions = atoms.positions + rng.normal(scale=0.001, size=atoms.positions.shape)
        wall, cpu = time.perf_counter(), time.process_time()
        energies.append(float(atoms.get_potential_energy()))
        forces = atoms.get_forces()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if step > 0:  # the first step is the warm-up
            walls.append(wall)
            cpus.append(cpu)
    return {
        "setup_s": setup,
        "ms_per_step": 1000 * statistics.median(walls),
        "cpu_ms_per_step": 1000 * statistics.median(cpus),
        "energy": energies[-1],
        "force_norm": float(np.linalg.norm(forces)),
        "n_atoms": len(atoms),
        "rss_before_mb": before.get("VmRSS"),
        "peak_rss_mb": memory_status().get("VmHWM"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="meam17-54,hea25-2000")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--linear", action="store_true", help="also a LinearPotential")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--output", help="write the results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(run_case, args.worker)
    engines = ["tradens"]
    engines += ["metatomic"] if available("metatomic_ase") else []
    engines += ["quippy"] if available("quippy") else []
    records = []
    with tempfile.TemporaryDirectory() as folder:
        for system in args.systems.split(","):
            print(f"fitting and exporting the {system} models ...", flush=True)
            files = fit_models(system, Path(folder), args.linear)
            for model, zip_path in files.items():
                stem = zip_path[: -len(".zip")]
                for engine in engines:
                    if engine == "quippy" and model != "kernel":
                        continue
                    spec = {"system": system, "model": stem, "engine": engine}
                    spec["steps"] = args.steps
                    result = run_worker(__file__, spec, args.timeout)
                    record = {"system": system, "model": model, "engine": engine, **result}
                    records.append(record)
                    if result.get("ok"):
                        shown = (
                            f"{result['ms_per_step']:10.1f} ms/step "
                            f"(cpu {result['cpu_ms_per_step']:.1f})  "
                            f"peak {result['peak_rss_mb']:.0f} MB  E={result['energy']:.6f}"
                        )
                    else:
                        shown = "FAILED " + result.get("error", "")
                    print(f"  {system:11s} {model:7s} {engine:10s}{shown}", flush=True)
    print()
    print(
        f"{'system':11s} {'model':7s} {'engine':10s} {'ms/step':>9s} {'cpu ms':>9s} "
        f"{'peak MB':>8s} {'x native':>9s}  |E - E_native| eV"
    )
    for record in records:
        if not record.get("ok"):
            continue
        native = next(
            r
            for r in records
            if r["system"] == record["system"]
            and r["model"] == record["model"]
            and r["engine"] == "tradens"
            and r.get("ok")
        )
        ratio = record["cpu_ms_per_step"] / native["cpu_ms_per_step"]
        difference = abs(record["energy"] - native["energy"])
        print(
            f"{record['system']:11s} {record['model']:7s} {record['engine']:10s} "
            f"{record['ms_per_step']:9.1f} {record['cpu_ms_per_step']:9.1f} "
            f"{record['peak_rss_mb']:8.0f} {ratio:9.2f}  {difference:.2e}"
        )
    if args.output:
        write_json_atomically(
            args.output,
            {
                "benchmark": "engines",
                "machine": machine_info(),
                "argv": sys.argv,
                "records": records,
            },
        )
        print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
