"""Benchmark: SOAP / TR-SOAP gradients in tradens against quippy-ase (and featomic).

Systems
-------
* ``fcc256``: random substitutional fcc, a = 3.6 Å, 4x4x4 cubic cells (256 atoms),
  rattled 0.05 Å (seed 0), with 5 elements (Cr Mn Fe Co Ni) or 25 (Z = 21-30,
  39-42, 44-48, 72-77): ``docs/peers.md`` section 5.4.
* ``bcc2000``: ``bulk("Fe", "bcc", a=3.2, cubic=True) * 10``, elements drawn by
  ``default_rng(0).choice``, ``rattle(0.05, seed=0)``: ``docs/peers.md`` section 4
  (25 elements Sc..Os).

Descriptors: GAP strings ``soap cutoff=5 l_max=6 n_max=8 atom_sigma=0.5``, full
(``full``) or tensor-reduced R+Z, ``sym_mix=T``, ``coupling=T`` with K = 8 or 16
(``tr8``, ``tr16``), or ``coupling=F`` K = 8 or 16 (``tr8-el``, ``tr16-el``, the PRL's p_kl).
tradens uses the identical descriptor (``tradens.quip.soap_from_gap``).

Tasks (each case in its own subprocess; peak RSS = that process's ``VmHWM``)
---------------------------------------------------------------------------
* ``tradens-jacobian``: ``descriptor_gradients(soap, atoms, strain=True)``: all
  position Jacobians ``[entry, 3, F]`` (one entry per centre and atom of its
  environment) plus strain derivatives ``[atom, 3, 3, F]``.
* ``tradens-quip``: ``tradens.quip.Descriptor(s).calc(atoms, grad=True)``: the
  same arrays as quippy-ase (one row per neighbour image, quippy's order).
* ``tradens-forces``: ``energy_forces_stress`` with a linear model ``E = sum w.X``:
  forces and stress by one vector-Jacobian product (the Jacobian is never formed).
* ``quippy-grad``: ``quippy.descriptors.Descriptor(s).calc(atoms, grad=True)``
  (positions only; GAP has no strain derivative).
* ``featomic-grad``: ``SoapPowerSpectrum.compute(atoms, gradients=["positions",
  "strain"])``, full SOAP with a GTO basis (not the same numbers; same work).

Protocol: one warm-up, then the median of ``--repeats`` (3) of wall and of CPU
time (single-threaded work: CPU time is less sensitive to other jobs on a shared
machine); one torch thread and ``*_NUM_THREADS=1``. Peak memory (MB = MiB) is
the whole worker process (Python, torch, inputs, one output). Targets: TR-SOAP
Jacobians >= 5x faster than quippy's gradients of the same descriptor; forces
through the model path >= 3x cheaper than the full Jacobian.

Usage::

    python benchmarks/bench_gradients.py                 # default matrix (several minutes)
    python benchmarks/bench_gradients.py --systems fcc256 --elements 5
    python benchmarks/bench_gradients.py --smoke         # seconds, for the test suite
    python benchmarks/bench_gradients.py --systems fcc256 --elements 5 --variants tr16-el \
        --tasks tradens-jacobian,tradens-forces         # one Jacobian/forces ratio

Results are printed with the ratios and written as JSON to ``--output``
(default ``benchmarks/results/bench_gradients.json``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import memory_status  # noqa: E402

ELEMENTS_5 = (24, 25, 26, 27, 28)
ELEMENTS_25_FCC = (
    tuple(range(21, 31)) + (39, 40, 41, 42) + (44, 45, 46, 47, 48) + tuple(range(72, 78))
)
ELEMENTS_25_BCC = (
    "Sc Ti V Cr Mn Fe Co Ni Cu Zn Y Zr Nb Mo Tc Ru Rh Pd Ag Cd Hf Ta W Re Os"
).split()
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "RAYON_NUM_THREADS",
)
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_gradients.json"
VARIANTS = {
    "tr8": ("T", 8),
    "tr16": ("T", 16),
    "tr8-el": ("F", 8),
    "tr16-el": ("F", 16),
    "full": (None, 0),
}


# ----------------------------------------------------------------------------- systems


def make_system(name: str, n_elements: int):
    import ase.build
    import numpy as np
    from ase.data import atomic_numbers

    if name == "fcc256":
        atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * (4, 4, 4)
        species = ELEMENTS_5 if n_elements == 5 else ELEMENTS_25_FCC[:n_elements]
        atoms.numbers = np.random.default_rng(0).choice(species, len(atoms))
    elif name == "bcc2000":
        atoms = ase.build.bulk("Fe", "bcc", a=3.2, cubic=True) * (10, 10, 10)
        symbols = ELEMENTS_25_BCC[:n_elements]
        atoms.set_chemical_symbols(list(np.random.default_rng(0).choice(symbols, size=len(atoms))))
        species = [atomic_numbers[s] for s in symbols]
    elif name == "smoke":  # 32 atoms, 3 elements
        atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
        species = (28, 29, 46)
        atoms.numbers = np.random.default_rng(0).choice(species, len(atoms))
    else:
        raise ValueError(f"unknown system {name!r}")
    atoms.rattle(stdev=0.05, seed=0)
    atoms.pbc = True
    return atoms, sorted(int(z) for z in species)


def gap_string(species, variant: str, smoke: bool = False) -> str:
    cutoff, l_max, n_max = (4.0, 3, 4) if smoke else (5.0, 6, 8)
    base = (
        f"soap cutoff={cutoff} l_max={l_max} n_max={n_max} atom_sigma=0.5 n_species={len(species)} "
        f"species_Z={{{' '.join(map(str, species))}}}"
    )
    coupling, channels = VARIANTS[variant]
    if coupling is None:
        return base
    return f"{base} R_mix=T Z_mix=T sym_mix=T coupling={coupling} K={channels}"


# ----------------------------------------------------------------------------- worker


def _build(spec: dict):
    atoms, species = make_system(spec["system"], spec["elements"])
    string = gap_string(species, spec["variant"], smoke=spec["system"] == "smoke")
    task = spec["task"]
    if task.startswith("tradens"):
        import torch

        from tradens.gradients import descriptor_gradients, energy_forces_stress
        from tradens.quip import Descriptor, soap_from_gap

        torch.set_num_threads(1)
        soap = soap_from_gap(string)
        if task == "tradens-jacobian":

            def run():
                g = descriptor_gradients(soap, atoms, strain=True)
                return int(g.positions.shape[0]), int(g.positions.shape[2])
        elif task == "tradens-quip":
            descriptor = Descriptor(string)

            def run():
                out = descriptor.calc(atoms, grad=True)
                return int(out["grad_data"].shape[0]), int(out["grad_data"].shape[2])
        elif task == "tradens-forces":
            w = torch.randn(
                soap.n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
            )

            def run():
                out = energy_forces_stress(soap, lambda x, z: x @ w, atoms)
                return int(out.forces.shape[0]), soap.n_features
        elif task == "tradens-values":

            def run():
                return len(atoms), int(soap.compute(atoms).values.shape[1])
        else:
            raise ValueError(f"unknown task {task!r}")
        return run
    if task == "quippy-grad":
        from quippy.descriptors import Descriptor as QuippyDescriptor

        descriptor = QuippyDescriptor(string)

        def run():
            out = descriptor.calc(atoms, grad=True)
            return int(out["grad_data"].shape[0]), int(out["grad_data"].shape[2])

        return run
    if task == "featomic-grad":
        from featomic import SoapPowerSpectrum

        cutoff, l_max, n_max = (4.0, 3, 4) if spec["system"] == "smoke" else (5.0, 6, 8)
        calculator = SoapPowerSpectrum(
            cutoff={"radius": cutoff, "smoothing": {"type": "ShiftedCosine", "width": 0.5}},
            density={"type": "Gaussian", "width": 0.5},
            basis={
                "type": "TensorProduct",
                "max_angular": l_max,
                "radial": {"type": "Gto", "max_radial": n_max - 1},
            },
        )

        def run():
            tensor = calculator.compute(atoms, gradients=["positions", "strain"])
            rows = sum(block.gradient("positions").values.shape[0] for block in tensor.blocks())
            return rows, -1

        return run
    raise ValueError(f"unknown task {task!r}")


def run_case(spec: dict) -> dict:
    start = time.perf_counter()
    run = _build(spec)
    setup = time.perf_counter() - start
    before = memory_status()
    times, cpu_times, shape = [], [], None
    for index in range(spec["warmup"] + spec["repeats"]):
        gc.collect()
        start, cpu_start = time.perf_counter(), time.process_time()
        shape = run()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if index >= spec["warmup"]:
            times.append(elapsed)
            cpu_times.append(cpu)
    memory = memory_status()
    return {
        "seconds": statistics.median(times),
        "cpu_seconds": statistics.median(cpu_times),
        "times": times,
        "cpu_times": cpu_times,
        "setup_s": setup,
        "rows": shape[0],
        "features": shape[1],
        "rss_before_mb": before.get("VmRSS"),
        "peak_rss_mb": memory.get("VmHWM"),
    }


def _worker(spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        result = {"ok": True, **run_case(spec)}
    except Exception as error:  # reported to the parent, which goes on
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def build_cases(args) -> list[dict]:
    common = {"warmup": args.warmup, "repeats": args.repeats}
    have_quippy, have_featomic = _available("quippy"), _available("featomic")
    cases = []

    variants = None if args.variants is None else set(args.variants.split(","))
    selected = None if args.tasks is None else set(args.tasks.split(","))

    def add(system, elements, variant, *tasks):
        if variants is not None and variant not in variants:
            return
        for task in tasks:
            if selected is not None and task not in selected:
                continue
            if task == "quippy-grad" and (not have_quippy or args.no_quippy):
                continue
            if task == "featomic-grad" and (not have_featomic or args.no_featomic):
                continue
            cases.append(
                {**common, "system": system, "elements": elements, "variant": variant, "task": task}
            )

    if args.smoke:
        add("smoke", 3, "tr8", "tradens-jacobian", "tradens-forces", "quippy-grad")
        return cases
    everything = (
        "tradens-values",
        "tradens-jacobian",
        "tradens-quip",
        "tradens-forces",
        "quippy-grad",
    )
    systems = args.systems.split(",")
    for n_elements in (int(e) for e in args.elements.split(",")):
        if "fcc256" in systems:
            for variant in ("tr8", "tr16", "tr8-el", "tr16-el"):
                add("fcc256", n_elements, variant, *everything)
            if n_elements <= 5:
                add("fcc256", n_elements, "full", *everything, "featomic-grad")
            else:  # Jacobians of 140k features: ~38 GB for quippy and for tradens; forces only
                add("fcc256", n_elements, "full", "tradens-values", "tradens-forces")
        if "bcc2000" in systems and n_elements == 25:
            add("bcc2000", 25, "tr16", *everything)
            add("bcc2000", 25, "tr8", "tradens-jacobian", "tradens-forces", "quippy-grad")
            if args.large:
                add("bcc2000", 25, "full", "tradens-values", "tradens-forces")
    return cases


def run_in_subprocess(spec: dict, timeout: float) -> dict:
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = "1"
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    return {"ok": False, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}


def ratios(records: list[dict]) -> list[dict]:
    table = {}
    for r in records:
        if r.get("ok"):
            table[(r["system"], r["elements"], r["variant"], r["task"])] = r
    out = []
    for (system, elements, variant, task), r in sorted(table.items()):
        if task != "tradens-jacobian":
            continue
        key = (system, elements, variant)
        entry = {"system": system, "elements": elements, "variant": variant}
        quippy = table.get(key + ("quippy-grad",))
        forces = table.get(key + ("tradens-forces",))
        quip = table.get(key + ("tradens-quip",))
        for clock, suffix in (("seconds", ""), ("cpu_seconds", "_cpu")):
            if quippy:
                entry["quippy_over_jacobian" + suffix] = quippy[clock] / r[clock]
                if quip:
                    entry["quippy_over_tradens_quip" + suffix] = quippy[clock] / quip[clock]
            if forces:
                entry["jacobian_over_forces" + suffix] = r[clock] / forces[clock]
        out.append(entry)
    return out


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("tradens", "torch", "numpy", "ase", "vesin", "quippy-ase", "featomic"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", default="fcc256,bcc2000", help="comma list: fcc256, bcc2000")
    parser.add_argument(
        "--elements", default="5,25", help="comma list of element counts (fcc256: 5 or 25)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument(
        "--variants",
        help="comma list of variants to run (tr8, tr16, tr8-el, tr16-el, full; default all)",
    )
    parser.add_argument(
        "--tasks",
        help="comma list of tasks to run (tradens-values, tradens-jacobian, tradens-quip, "
        "tradens-forces, quippy-grad, featomic-grad; default all)",
    )
    parser.add_argument(
        "--large", action="store_true", help="also full SOAP forces on bcc2000 (25 el)"
    )
    parser.add_argument("--no-quippy", action="store_true")
    parser.add_argument("--no-featomic", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny system, one repeat (seconds)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker)
    if args.smoke:
        args.repeats, args.warmup = 1, 0
    cases = build_cases(args)
    records = []
    print(
        f"{'system':8s} {'S':>3s} {'variant':8s} {'task':17s} "
        f"{'wall s':>9s} {'CPU s':>9s} {'peak MB':>8s} "
        f"{'rows':>8s} {'F':>6s}",
        flush=True,
    )
    for spec in cases:
        result = run_in_subprocess(spec, args.timeout)
        record = {**spec, **result}
        records.append(record)
        if result.get("ok"):
            print(
                f"{spec['system']:8s} {spec['elements']:3d} {spec['variant']:8s} "
                f"{spec['task']:17s} "
                f"{result['seconds']:9.3f} {result['cpu_seconds']:9.3f} "
                f"{result['peak_rss_mb']:8.0f} {result['rows']:8d} "
                f"{result['features']:6d}",
                flush=True,
            )
        else:
            print(
                f"{spec['system']:8s} {spec['elements']:3d} {spec['variant']:8s} "
                f"{spec['task']:17s} "
                f"FAILED: {result['error']}",
                flush=True,
            )
    summary = ratios(records)
    print(
        "\nratios (higher is better for tradens; "
        "_cpu: from CPU time, less sensitive to other load):"
    )
    for entry in summary:
        parts = [f"{k}={v:.2f}" for k, v in entry.items() if isinstance(v, float)]
        print(f"  {entry['system']} S={entry['elements']} {entry['variant']}: " + ", ".join(parts))
    payload = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "command": " ".join(
            [Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))
        ),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": _versions(),
        "records": records,
        "ratios": summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=1))
    temporary.replace(args.output)
    print(f"\nwritten {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
