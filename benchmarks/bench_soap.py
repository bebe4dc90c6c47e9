"""Benchmark: full and tensor-reduced SOAP in tradens against its peers.

The reference system and protocol are those of ``docs/peers.md`` (section 4):
a 2000-atom random bcc alloy (``bulk("Fe", "bcc", a=3.2, cubic=True) * 10``,
elements drawn by ``numpy.random.default_rng(0).choice``, ``rattle(0.05,
seed=0)``), with 3 (Cr Fe Ni) or 25 elements; cutoff 5 Å, 8 radial functions,
``l_max = 6``, Gaussian width 0.5 Å, float64, every atom a centre, one thread.

Cases (each in its own subprocess, so that its peak memory is its own):

* ``tradens``: :class:`tradens.SOAP` built from the same GAP descriptor strings
  as quippy-ase (``tradens.quip.soap_from_gap``), timed through
  ``SOAP.compute(atoms)`` (numpy output): the full SOAP, tensor-reduced SOAP
  (R+Z mixing, ``coupling=F``) with K = 8, 16, 32, and ``coupling=T`` with
  K = 16; the full SOAP also with the GTO basis (the peers' basis); float32
  variants; CUDA variants when a CUDA device is visible.
* ``quippy``: ``quippy.descriptors.Descriptor(string).calc(atoms)`` on the
  same strings (GAP's EQUISPACED_GAUSS radial basis).
* ``featomic``: ``SoapPowerSpectrum(...).compute(atoms)`` (GTO basis, native
  block-sparse output, not densified).
* ``dscribe``: ``SOAP(rbf="gto", ...).create(atoms, n_jobs=1)`` (dense numpy).

Outputs differ between libraries (radial bases, normalisation, smoothing); the
work (pairs, ``n``, ``l``, element pairs) is the same.

Protocol: one warm-up call, then the median of ``--repeats`` (3) timed calls;
``OMP/MKL/OPENBLAS/RAYON_NUM_THREADS=1`` and ``torch.set_num_threads(1)``. Peak
memory is the worker process's peak resident set (``VmHWM``: Python, libraries,
inputs and one output), plus its resident set before the first call. On a
shared machine compare ratios within one run, not absolute times across runs.

The peers are optional and not dependencies of tradens::

    pip install quippy-ase featomic dscribe

Usage::

    python benchmarks/bench_soap.py                  # all cases, S = 3 and 25
    python benchmarks/bench_soap.py --elements 25 --libs tradens,quippy
    python benchmarks/bench_soap.py --s-scan 1,3,10,25   # TR-SOAP time against S
    python benchmarks/bench_soap.py --quick          # tiny smoke run (seconds)

Results are printed as a table and written (atomically) as JSON with machine
information to ``--output`` (default ``benchmarks/results/bench_soap.json``).
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
    cuda_visible,
    machine_info,
    memory_status,
    run_worker,
    worker_main,
    write_json_atomically,
)

ELEMENTS_25 = ("Sc Ti V Cr Mn Fe Co Ni Cu Zn Y Zr Nb Mo Tc Ru Rh Pd Ag Cd Hf Ta W Re Os").split()
ELEMENTS_3 = ("Cr", "Fe", "Ni")
CUTOFF, N_MAX, L_MAX, SIGMA = 5.0, 8, 6, 0.5
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_soap.json"
PEERS = ("quippy", "featomic", "dscribe")


# ----------------------------------------------------------------------------- system


def elements_for(n_species: int, scan: bool = False) -> list[str]:
    """The element list of ``peers.md``: Cr Fe Ni for S = 3, else (and in S scans) the first S."""
    if n_species == 3 and not scan:
        return list(ELEMENTS_3)
    if not 1 <= n_species <= len(ELEMENTS_25):
        raise ValueError(f"S must be between 1 and {len(ELEMENTS_25)}, got {n_species}")
    return ELEMENTS_25[:n_species]


def make_system(elements, repeat: int = 10):
    """Random rattled bcc alloy of ``2 * repeat**3`` atoms (``peers.md`` section 4)."""
    import ase.build
    import numpy as np

    atoms = ase.build.bulk("Fe", "bcc", a=3.2, cubic=True) * (repeat, repeat, repeat)
    symbols = np.random.default_rng(0).choice(list(elements), size=len(atoms))
    atoms.set_chemical_symbols(list(symbols))
    atoms.rattle(stdev=0.05, seed=0)
    atoms.pbc = True
    return atoms


def gap_string(elements, variant: str, channels: int = 0) -> str:
    """GAP ``soap`` descriptor string of a variant (``full``, ``rz-el`` or ``rz-tensor``)."""
    from ase.data import atomic_numbers

    zs = " ".join(str(atomic_numbers[e]) for e in elements)
    base = (
        f"soap cutoff={CUTOFF} l_max={L_MAX} n_max={N_MAX} atom_sigma={SIGMA} "
        f"n_species={len(elements)} species_Z={{{zs}}}"
    )
    if variant == "full":
        return base
    coupling = {"rz-el": "F", "rz-tensor": "T"}[variant]
    return f"{base} R_mix=T Z_mix=T sym_mix=T coupling={coupling} K={channels}"


def variant_label(variant: str, channels: int) -> str:
    return {
        "full": "full SOAP",
        "rz-el": f"TR R+Z el K={channels}",
        "rz-tensor": f"TR R+Z tensor K={channels}",
    }[variant]


# ----------------------------------------------------------------------------- worker


def _build_case(spec: dict):
    """Set up one case; returns ``(run, n_features_of_result, synchronize)``."""
    elements = elements_for(spec["S"], spec.get("scan", False))
    atoms = make_system(elements, spec["repeat"])
    lib = spec["lib"]
    string = gap_string(elements, spec["variant"], spec.get("K", 0))
    sync = None
    if lib == "tradens":
        import torch

        from tradens.density.radial import make_radial_basis
        from tradens.quip import soap_from_gap

        torch.set_num_threads(1)
        soap = soap_from_gap(string)
        if spec.get("basis", "gaussian_grid") == "gto":
            h = soap.hypers
            soap.radial_basis = make_radial_basis(
                "gto",
                n_max=h.radial.n_max,
                l_max=h.l_max,
                cutoff=h.cutoff.radius,
                sigma=h.density.sigma,
            )
        dtype = getattr(torch, spec.get("dtype", "float64"))
        device = spec.get("device", "cpu")
        if device != "cpu":
            soap = soap.to(device)

            def sync():
                torch.cuda.synchronize()

        def run():
            if device == "cpu":
                return soap.compute(atoms, dtype=dtype).values
            return soap.compute(atoms, dtype=dtype, device=device, output="torch").values

        return run, lambda values: int(values.shape[1]), sync
    if lib == "quippy":
        from quippy.descriptors import Descriptor

        descriptor = Descriptor(string)
        return (lambda: descriptor.calc(atoms)["data"]), (lambda values: int(values.shape[1])), None
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

        def features_per_atom(tensor):
            # dense length per centre: properties of every block of one centre type
            center_types = {}
            for key, block in tensor.items():
                center = int(key["center_type"])
                center_types[center] = center_types.get(center, 0) + block.values.shape[-1]
            return max(center_types.values())

        return (lambda: calculator.compute(atoms)), features_per_atom, None
    if lib == "dscribe":
        from dscribe.descriptors import SOAP as DSOAP

        calculator = DSOAP(
            species=elements,
            r_cut=CUTOFF,
            n_max=N_MAX,
            l_max=L_MAX,
            sigma=SIGMA,
            rbf="gto",
            periodic=True,
            sparse=False,
            dtype="float64",
        )
        return (
            (lambda: calculator.create(atoms, n_jobs=1)),
            (lambda values: int(values.shape[1])),
            None,
        )
    raise ValueError(f"unknown library {lib!r}")


def run_case(spec: dict) -> dict:
    """Time one case in this process (the worker side)."""
    setup_start = time.perf_counter()
    run, n_features, sync = _build_case(spec)
    setup = time.perf_counter() - setup_start
    base = memory_status()
    times, cpu_times = [], []
    features = None
    for index in range(spec["warmup"] + spec["repeats"]):
        gc.collect()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = run()
        if sync is not None:
            sync()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if features is None:
            features = n_features(result)
        del result
        if index >= spec["warmup"]:
            times.append(elapsed)
            cpu_times.append(cpu)
    memory = memory_status()
    out = {
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_times_s": cpu_times,
        "median_cpu_s": statistics.median(cpu_times),
        "setup_s": setup,
        "features_per_atom": features,
        "n_atoms": 2 * spec["repeat"] ** 3,
        "rss_before_mb": base.get("VmRSS"),
        "peak_rss_mb": memory.get("VmHWM"),
    }
    if spec.get("device", "cpu") != "cpu":
        import torch

        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ----------------------------------------------------------------------------- parent


def build_cases(args) -> list[dict]:
    """The list of case specifications selected by the command line."""
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    unknown = set(libs) - {"tradens", *PEERS}
    if unknown:
        raise SystemExit(f"unknown --libs entries: {sorted(unknown)}")
    have = {
        "tradens": True,
        "quippy": available("quippy"),
        "featomic": available("featomic"),
        "dscribe": available("dscribe"),
    }
    cuda = (not args.no_cuda) and cuda_visible()
    common = {"repeat": args.repeat, "warmup": args.warmup, "repeats": args.repeats}
    channels = [int(k) for k in args.channels.split(",")]
    cases = []

    def add(**spec):
        if spec["lib"] in libs and have[spec["lib"]]:
            cases.append({**common, **spec})

    for S in [int(s) for s in args.elements.split(",")]:
        if args.s_scan_only:
            break
        add(lib="tradens", S=S, variant="full")
        add(lib="tradens", S=S, variant="full", basis="gto")
        for K in channels:
            add(lib="tradens", S=S, variant="rz-el", K=K)
        add(lib="tradens", S=S, variant="rz-tensor", K=args.tensor_channels)
        if not args.no_float32:
            add(lib="tradens", S=S, variant="full", dtype="float32")
            add(lib="tradens", S=S, variant="rz-el", K=16, dtype="float32")
        if cuda:
            add(lib="tradens", S=S, variant="full", device="cuda")
            add(lib="tradens", S=S, variant="rz-el", K=16, device="cuda")
            add(lib="tradens", S=S, variant="rz-el", K=16, device="cuda", dtype="float32")
        add(lib="quippy", S=S, variant="full")
        for K in channels:
            add(lib="quippy", S=S, variant="rz-el", K=K)
        add(lib="quippy", S=S, variant="rz-tensor", K=args.tensor_channels)
        add(lib="featomic", S=S, variant="full", basis="gto")
        add(lib="dscribe", S=S, variant="full", basis="gto")
    if args.s_scan:
        for S in [int(s) for s in args.s_scan.split(",")]:
            add(lib="tradens", S=S, variant="rz-el", K=16, scan=True)
            if args.s_scan_peers:
                add(lib="quippy", S=S, variant="rz-el", K=16, scan=True)
    for spec in cases:
        spec.setdefault("basis", "gaussian_grid" if spec["lib"] in ("tradens", "quippy") else "gto")
        spec.setdefault("dtype", "float64")
        spec.setdefault("device", "cpu")
        spec.setdefault("K", 0)
        spec.setdefault("scan", False)
    return cases


def add_ratios(rows: list[dict]) -> None:
    """Speed-ups of every row against quippy (same descriptor) and the best peer.

    ``speedup_*`` use wall-clock medians (the protocol of ``peers.md``),
    ``speedup_*_cpu`` CPU-time medians (steadier on a shared machine).
    """

    def key(row):
        return (row["S"], row["variant"], row["K"], row["scan"])

    for metric, suffix in (("median_s", ""), ("median_cpu_s", "_cpu")):
        peers: dict = {}
        for row in rows:
            if row["lib"] in PEERS and row.get("ok"):
                peers.setdefault(key(row), {})[row["lib"]] = row[metric]
        for row in rows:
            row["speedup_vs_quippy" + suffix] = None
            row["speedup_vs_best_peer" + suffix] = None
            row["best_peer" + suffix] = None
            if not row.get("ok"):
                continue
            times = peers.get(key(row), {})
            if "quippy" in times and row["lib"] != "quippy":
                row["speedup_vs_quippy" + suffix] = times["quippy"] / row[metric]
            others = {lib: t for lib, t in times.items() if lib != row["lib"]}
            if others:
                best = min(others, key=others.get)
                row["best_peer" + suffix] = best
                row["speedup_vs_best_peer" + suffix] = others[best] / row[metric]


def s_scan_summary(rows: list[dict]) -> dict:
    """TR-SOAP (K = 16) time against S, and the ratio of the largest to the smallest S."""
    summary = {}
    for lib in ("tradens", "quippy"):
        scan = sorted(
            (r["S"], r["median_s"], r["median_cpu_s"])
            for r in rows
            if r["scan"] and r["lib"] == lib and r.get("ok")
        )
        if scan:
            summary[lib] = {
                "S": [s for s, _, _ in scan],
                "median_s": [t for _, t, _ in scan],
                "median_cpu_s": [c for _, _, c in scan],
                "ratio_largest_to_smallest": scan[-1][1] / scan[0][1],
                "ratio_largest_to_smallest_cpu": scan[-1][2] / scan[0][2],
            }
    return summary


def _basis(name: str) -> str:
    return {"gaussian_grid": "GAP", "gto": "GTO"}.get(name, name)


def format_table(rows: list[dict]) -> str:
    """The results as a text table (ratios are speed-ups: wall-clock, then CPU time)."""
    header = (
        f"{'lib':9} {'S':>2} {'descriptor':22} {'basis':5} {'dtype':7} {'dev':4} "
        f"{'feat/atom':>9} {'wall s':>8} {'cpu s':>8} {'peak MB':>8} {'work MB':>8} "
        f"{'x quippy (cpu)':>15} {'x best peer (cpu)':>26}"
    )
    lines = [header, "-" * len(header)]

    def ratio(row, name):
        wall, cpu = row[name], row[name + "_cpu"]
        return "" if wall is None else f"{wall:.2f} ({cpu:.2f})"

    for r in rows:
        name = variant_label(r["variant"], r["K"]) + (" (scan)" if r["scan"] else "")
        head = (
            f"{r['lib']:9} {r['S']:>2} {name:22} {_basis(r['basis']):5} {r['dtype']:7} "
            f"{r['device'][:4]:4} "
        )
        if not r.get("ok"):
            lines.append(head + f"FAILED: {r.get('error')}")
            continue
        best = ratio(r, "speedup_vs_best_peer")
        if best:
            best += f" {r['best_peer']}"
        work = r["peak_rss_mb"] - r["rss_before_mb"] if r.get("rss_before_mb") else float("nan")
        lines.append(
            head + f"{r['features_per_atom']:>9} {r['median_s']:>8.4f} "
            f"{r['median_cpu_s']:>8.4f} "
            f"{r['peak_rss_mb']:>8.0f} {work:>8.0f} {ratio(r, 'speedup_vs_quippy'):>15} "
            f"{best:>26}"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_soap",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--elements", default="3,25", help="S values of the main table (default 3,25)"
    )
    parser.add_argument(
        "--libs",
        default="tradens,quippy,featomic,dscribe",
        help="libraries to run (missing peers are skipped)",
    )
    parser.add_argument("--channels", default="8,16,32", help="K of the element-wise TR cases")
    parser.add_argument("--tensor-channels", type=int, default=16, help="K of the coupling=T case")
    parser.add_argument(
        "--repeat",
        type=int,
        default=10,
        help="bcc supercell repeat (2 repeat^3 atoms; default 10: 2000 atoms)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument(
        "--s-scan", default="3,25", help="S values of the TR-SOAP (K=16) scan; empty string to skip"
    )
    parser.add_argument("--s-scan-peers", action="store_true", help="also run quippy in the scan")
    parser.add_argument("--s-scan-only", action="store_true", help="run only the S scan")
    parser.add_argument("--no-float32", action="store_true", help="skip the float32 cases")
    parser.add_argument("--no-cuda", action="store_true", help="skip CUDA cases even if visible")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results path")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run: 16 atoms, S=3, a few cases, one call each",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.repeats, args.warmup = 2, 1, 0
        args.elements, args.channels, args.s_scan = "3", "16", ""
        args.no_float32 = True
        args.libs = ",".join(lib for lib in args.libs.split(",") if lib in ("tradens", "quippy"))
    return args


def main(argv=None) -> int:
    """Run the benchmark; returns a process exit code (0 when every case ran)."""
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(run_case, args.worker)
    cases = build_cases(args)
    if args.quick:  # keep the smoke run short: full SOAP and one TR case per library
        cases = [c for c in cases if c["basis"] != "gto" or c["lib"] != "tradens"]
        cases = [c for c in cases if c["variant"] != "rz-tensor"]
    info = machine_info()
    print(
        f"# bench_soap: {len(cases)} cases, {2 * args.repeat**3} atoms, "
        f"{info.get('cpu_model')}, load {info.get('load_average')}",
        flush=True,
    )
    rows = []
    for spec in cases:
        start = time.perf_counter()
        result = run_worker(__file__, spec, args.timeout)
        row = {**spec, **result}
        rows.append(row)
        if result.get("ok"):
            status = f"{result['median_s']:.4f} s (cpu {result['median_cpu_s']:.4f} s)"
        else:
            status = f"FAILED {result.get('error')}"
        print(
            f"  {spec['lib']:9} S={spec['S']:<2} {variant_label(spec['variant'], spec['K']):22} "
            f"{_basis(spec['basis']):6} {spec['dtype']:7} {spec['device']:4} {status}  "
            f"[{time.perf_counter() - start:.1f} s wall]",
            flush=True,
        )
    add_ratios(rows)
    print()
    print(format_table(rows))
    scan = s_scan_summary(rows)
    for lib, values in scan.items():
        pairs = ", ".join(
            f"S={s}: {t:.4f} s (cpu {c:.4f} s)"
            for s, t, c in zip(values["S"], values["median_s"], values["median_cpu_s"], strict=True)
        )
        print(
            f"S scan ({lib}, TR R+Z el K=16): {pairs}; ratio largest/smallest S "
            f"{values['ratio_largest_to_smallest']:.2f} "
            f"(cpu {values['ratio_largest_to_smallest_cpu']:.2f})"
        )
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    data = {
        "benchmark": "bench_soap",
        "system": {
            "structure": "bulk('Fe', 'bcc', a=3.2, cubic=True) * repeat, random elements "
            "(default_rng(0).choice), rattle(0.05, seed=0), pbc",
            "repeat": args.repeat,
            "n_atoms": 2 * args.repeat**3,
            "cutoff": CUTOFF,
            "n_max": N_MAX,
            "l_max": L_MAX,
            "atom_sigma": SIGMA,
        },
        "protocol": {
            "warmup": args.warmup,
            "repeats": args.repeats,
            "statistic": "median",
            "threads": 1,
            "memory": "VmHWM of the worker process",
        },
        "machine": info,
        "argv": list(sys.argv[1:] if argv is None else argv),
        "cases": rows,
        "s_scan": scan,
    }
    write_json_atomically(Path(args.output), data)
    print(f"results written to {args.output}")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
