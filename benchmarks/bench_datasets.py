"""Benchmark: throughput on data sets of many small structures, tradens against its peers.

Data sets (each case loads or builds the same structures):

* ``meam17``: the first 500 structures of ``shared/data/meam17/meam17_dev.xyz``
  (17 elements, ~40 atoms each, periodic);
* ``tiny``: 1000 periodic cells of 1-3 atoms drawn from 40 elements (Ca..Nd),
  random small triclinic cells (:func:`tiny_cells`, seeded);
* ``aspirin``: 1000 molecules of ``shared/data/rmd17_aspirin_1000.xyz``
  (21 atoms, 3 elements, not periodic);
* ``batio3``: 500 cells of ``shared/data/batio3_500.xyz`` (40 atoms, 3 elements);
* ``large``: one 2000-atom rattled bcc cell of 25 elements (``bench_soap.py``),
  the reference for the cost per atom.

Descriptors (cutoff 5 Å, ``l_max`` 6, ``n_max`` 8, Gaussian width 0.5 Å, float64):
``rz-el`` is TR-SOAP with R+Z mixing, element-wise coupling and K = 16 (GAP
weights), run by tradens and quippy (the peers have no tensor reduction);
``full`` is the full SOAP, run by tradens, quippy, dscribe and featomic (the
latter two with their GTO basis). tradens is built from the GAP string that
quippy gets (``tradens.quip.soap_from_gap``) and timed through
``SOAP.compute(frames)``; quippy through ``Descriptor.calc`` on each structure,
dscribe through ``SOAP.create(frames, n_jobs=1)``, featomic through
``SoapPowerSpectrum.compute(frames)``.

Protocol: every case in a fresh one-thread worker process (``_common.py``), one
warm-up call, the median of ``--repeats`` timed calls, the worker's peak
resident set. Printed per case: us per atom, the speed-up against quippy and the
best peer on the same structures and descriptor, and ``tiny/large``: the cost
per atom on the tiny cells over that on the 2000-atom cell (same library and
descriptor). ``--baseline-src DIR`` adds a ``tradens@base`` row per case with
``PYTHONPATH=DIR`` (another checkout's ``src``: before/after in one run).

Usage::

    python benchmarks/bench_datasets.py
    python benchmarks/bench_datasets.py --libs tradens,quippy --datasets meam17,tiny,large
    python benchmarks/bench_datasets.py --baseline-src /path/to/main/src
    python benchmarks/bench_datasets.py --quick        # smoke run (seconds)

Results go (atomically) to ``--output`` as JSON with machine information
(default ``benchmarks/results/bench_datasets.json``).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    available,
    machine_info,
    memory_status,
    require_data,
    run_worker,
    shared_data,
    worker_main,
    write_json_atomically,
)

CUTOFF, N_MAX, L_MAX, SIGMA, CHANNELS = 5.0, 8, 6, 0.5, 16
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_datasets.json"
PEERS = ("quippy", "featomic", "dscribe")
DATASETS = ("meam17", "tiny", "aspirin", "batio3", "large")
FILES = {
    "meam17": "meam17/meam17_dev.xyz",
    "aspirin": "rmd17_aspirin_1000.xyz",
    "batio3": "batio3_500.xyz",
}
SIZES = {"meam17": 500, "tiny": 1000, "aspirin": 1000, "batio3": 500, "large": 10}
QUICK_SIZES = {"meam17": 8, "tiny": 24, "aspirin": 8, "batio3": 4, "large": 2}
# descriptors run on each data set: TR-SOAP where many elements, full SOAP where three
VARIANTS = {
    "meam17": ("rz-el",),
    "tiny": ("rz-el",),
    "aspirin": ("full",),
    "batio3": ("full",),
    "large": ("rz-el",),
}
TINY_ELEMENTS = tuple(range(20, 60))  # Ca .. Nd: 40 elements


# ----------------------------------------------------------------------------- structures


def tiny_cells(count: int, seed: int = 0) -> list:
    """``count`` periodic cells of 1-3 atoms of random elements, random small triclinic cells."""
    import ase
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        n = int(rng.integers(1, 4))
        edge = rng.uniform(2.6, 4.0) * n ** (1.0 / 3.0)  # Å
        cell = np.eye(3) * edge + rng.uniform(-0.4, 0.4, (3, 3))  # [3, 3] triclinic
        frames.append(
            ase.Atoms(
                numbers=rng.choice(TINY_ELEMENTS, n),
                scaled_positions=rng.uniform(0.0, 1.0, (n, 3)),
                cell=cell,
                pbc=True,
            )
        )
    return frames


def load_frames(dataset: str, size: int, data: dict) -> list:
    """The structures of ``dataset``: ``size`` structures (``large``: cell repeat)."""
    if dataset == "tiny":
        return tiny_cells(size)
    if dataset == "large":
        from bench_soap import ELEMENTS_25, make_system

        return [make_system(ELEMENTS_25, size)]
    import ase.io

    path = require_data(data.get(dataset) or shared_data(FILES[dataset]), FILES[dataset])
    return ase.io.read(path, index=f":{size}")


def species_of(frames: list) -> list[int]:
    """Sorted atomic numbers present in ``frames``."""
    return sorted({int(z) for frame in frames for z in frame.numbers})


def gap_string(species: list[int], variant: str) -> str:
    """GAP ``soap`` string of ``variant`` (``full`` or ``rz-el``) for ``species``."""
    zs = " ".join(str(z) for z in species)
    base = (
        f"soap cutoff={CUTOFF} l_max={L_MAX} n_max={N_MAX} atom_sigma={SIGMA} "
        f"n_species={len(species)} species_Z={{{zs}}}"
    )
    if variant == "full":
        return base
    return f"{base} R_mix=T Z_mix=T sym_mix=T coupling=F K={CHANNELS}"


# ----------------------------------------------------------------------------- worker


def _build_case(spec: dict):
    """``(run, frames)`` of one case: ``run()`` computes the features of every structure."""
    frames = load_frames(spec["dataset"], spec["size"], spec.get("data", {}))
    species = species_of(frames)
    string = gap_string(species, spec["variant"])
    lib = spec["lib"]
    if lib == "tradens":
        import torch

        from tradens.quip import soap_from_gap

        torch.set_num_threads(1)
        soap = soap_from_gap(string)
        return (lambda: soap.compute(frames).values), frames
    if lib == "quippy":
        from quippy.descriptors import Descriptor

        descriptor = Descriptor(string)
        return (lambda: [descriptor.calc(frame)["data"] for frame in frames]), frames
    if lib == "featomic":
        from featomic import SoapPowerSpectrum

        calculator = SoapPowerSpectrum(
            cutoff={"radius": CUTOFF, "smoothing": {"type": "ShiftedCosine", "width": 0.5}},
            density={"type": "Gaussian", "width": SIGMA},
            basis={
                "type": "TensorProduct",
                "max_angular": L_MAX,
                "radial": {"type": "Gto", "max_radial": N_MAX - 1},
            },
        )
        return (lambda: calculator.compute(frames)), frames
    if lib == "dscribe":
        from ase.data import chemical_symbols
        from dscribe.descriptors import SOAP as DSOAP

        calculator = DSOAP(
            species=[chemical_symbols[z] for z in species],
            r_cut=CUTOFF,
            n_max=N_MAX,
            l_max=L_MAX,
            sigma=SIGMA,
            rbf="gto",
            periodic=bool(frames[0].pbc.any()),
            sparse=False,
            dtype="float64",
        )
        return (lambda: calculator.create(frames, n_jobs=1)), frames
    raise ValueError(f"unknown library {lib!r}")


def run_case(spec: dict) -> dict:
    """Time one case in this process (the worker side)."""
    setup_start = time.perf_counter()
    run, frames = _build_case(spec)
    setup = time.perf_counter() - setup_start
    n_atoms = sum(len(frame) for frame in frames)
    base = memory_status()
    times, cpu_times = [], []
    for index in range(spec["warmup"] + spec["repeats"]):
        gc.collect()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = run()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        del result
        if index >= spec["warmup"]:
            times.append(elapsed)
            cpu_times.append(cpu)
    memory = memory_status()
    median = statistics.median(times)
    return {
        "times_s": times,
        "median_s": median,
        "median_cpu_s": statistics.median(cpu_times),
        "us_per_atom": median / n_atoms * 1e6,
        "setup_s": setup,
        "n_atoms": n_atoms,
        "n_structures": len(frames),
        "n_species": len(species_of(frames)),
        "rss_before_mb": base.get("VmRSS"),
        "peak_rss_mb": memory.get("VmHWM"),
    }


# ----------------------------------------------------------------------------- parent


def build_cases(args) -> list[dict]:
    """The case specifications selected by the command line."""
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = (set(libs) - {"tradens", *PEERS}) | (set(datasets) - set(DATASETS))
    if unknown:
        raise SystemExit(f"unknown --libs/--datasets entries: {sorted(unknown)}")
    have = {lib: lib == "tradens" or available(lib) for lib in ("tradens", *PEERS)}
    sizes = QUICK_SIZES if args.quick else SIZES
    data = {name: getattr(args, name) for name in FILES if getattr(args, name)}
    cases = []
    for dataset in datasets:
        for variant in VARIANTS[dataset]:
            for lib in libs:
                if not have[lib] or (variant != "full" and lib in ("featomic", "dscribe")):
                    continue
                spec = {
                    "lib": lib,
                    "dataset": dataset,
                    "variant": variant,
                    "size": sizes[dataset],
                    "warmup": 0 if args.quick else 1,
                    "repeats": args.repeats,
                    "data": data,
                }
                cases.append(spec)
                if lib == "tradens" and args.baseline_src:
                    cases.append({**spec, "lib": "tradens@base", "src": args.baseline_src})
    return cases


def add_ratios(rows: list[dict]) -> None:
    """Speed-ups against quippy and the best peer, and the tiny-to-large cost per atom."""
    by_case: dict = {}
    for row in rows:
        if row.get("ok"):
            by_case.setdefault((row["dataset"], row["variant"]), {})[row["lib"]] = row
    for row in rows:
        row["x_quippy"] = row["x_best_peer"] = row["best_peer"] = row["tiny_over_large"] = None
        if not row.get("ok"):
            continue
        same = by_case[(row["dataset"], row["variant"])]
        if "quippy" in same and row["lib"] != "quippy":
            row["x_quippy"] = same["quippy"]["us_per_atom"] / row["us_per_atom"]
        peers = {lib: r["us_per_atom"] for lib, r in same.items() if lib in PEERS}
        peers.pop(row["lib"], None)
        if peers:
            row["best_peer"] = min(peers, key=peers.get)
            row["x_best_peer"] = peers[row["best_peer"]] / row["us_per_atom"]
        if row["dataset"] == "tiny":
            large = by_case.get(("large", row["variant"]), {}).get(row["lib"])
            if large is not None:
                row["tiny_over_large"] = row["us_per_atom"] / large["us_per_atom"]


def format_table(rows: list[dict]) -> str:
    """The results as one text table."""
    header = (
        f"{'data set':8} {'descriptor':14} {'lib':13} {'structs':>7} {'atoms':>6} {'S':>3} "
        f"{'us/atom':>9} {'peak MB':>8} {'x quippy':>9} {'x best peer':>20} {'tiny/large':>10}"
    )
    lines = [header, "-" * len(header)]

    def number(value, width, spec=".2f"):
        return f"{'' if value is None else format(value, spec):>{width}}"

    for r in rows:
        name = "full SOAP" if r["variant"] == "full" else f"TR R+Z el K={CHANNELS}"
        head = f"{r['dataset']:8} {name:14} {r['lib']:13} "
        if not r.get("ok"):
            lines.append(head + f"FAILED: {r.get('error')}")
            continue
        best = "" if r["x_best_peer"] is None else f"{r['x_best_peer']:.2f} {r['best_peer']}"
        lines.append(
            head + f"{r['n_structures']:>7} {r['n_atoms']:>6} {r['n_species']:>3} "
            f"{r['us_per_atom']:>9.1f} {r['peak_rss_mb']:>8.0f} {number(r['x_quippy'], 9)} "
            f"{best:>20} {number(r['tiny_over_large'], 10)}"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--libs", default="tradens,quippy,dscribe,featomic")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    parser.add_argument(
        "--baseline-src", default=None, help="also run tradens from this src folder"
    )
    for name, relative in FILES.items():
        parser.add_argument(f"--{name}", default=None, help=f"path of {relative}")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and args.repeats == 3:
        args.repeats = 1
    return args


def _run(spec: dict, timeout: float) -> dict:
    """One case in a worker; ``tradens@base`` with ``PYTHONPATH`` set to its ``src``."""
    worker_spec = {**spec, "lib": "tradens" if spec["lib"] == "tradens@base" else spec["lib"]}
    if "src" not in spec:
        return run_worker(__file__, worker_spec, timeout)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = spec["src"]
    try:
        return run_worker(__file__, worker_spec, timeout)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(run_case, args.worker)
    cases = build_cases(args)
    rows = []
    for spec in cases:
        result = _run(spec, args.timeout)
        row = {key: value for key, value in spec.items() if key != "data"}
        rows.append({**row, **result})
        status = f"{result['us_per_atom']:.1f} us/atom" if result.get("ok") else result["error"]
        print(f"  {spec['dataset']:8} {spec['variant']:6} {spec['lib']:13} {status}", flush=True)
    add_ratios(rows)
    print(format_table(rows))
    write_json_atomically(args.output, {"machine": machine_info(), "cases": rows})
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
