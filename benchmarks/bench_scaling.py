"""Streaming and dask scaling: peak memory of `tradens features`, speed-up from 1 to 2 workers.

Usage::

    python benchmarks/bench_scaling.py memory --structures 1000 10000 100000
    python benchmarks/bench_scaling.py workers --structures 4000
    python benchmarks/bench_scaling.py all --json scaling.json

Both modes make their input in a temporary directory: small periodic cells of 1-4 atoms of
10 elements (random positions in cubes of 3-5 Å, seeded), the kind of structures of MAD,
OMat or MPtrj. Default hypers: TR-SOAP K=16 radial+element (cutoff 5 Å, n_max 8, l_max 6)
in float64, written to HDF5.

``memory`` runs ``tradens features IN.xyz -o OUT.h5 --chunk-size C`` in a child process per
size and prints its peak RSS (``ru_maxrss``), wall time, atoms/s and bytes per atom on disk;
the growth of peak RSS with the number of structures is what ``docs/scaling.md`` reports.

``workers`` computes the same file with ``compute_to_file`` on a ``LocalCluster`` of 1 and
then 2 worker processes (one thread each; cluster start-up not timed, one warm-up chunk
per worker first) and prints atoms/s and the speed-up. On a machine whose cores are busy
with other work the speed-up is below 2 by that much.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ELEMENTS = [3, 8, 12, 13, 14, 22, 26, 28, 29, 79]  # Li O Mg Al Si Ti Fe Ni Cu Au


def make_structures(path: Path, n: int, seed: int = 0) -> int:
    """Write ``n`` small random periodic cells to ``path`` (extxyz); return the atom count."""
    import ase
    import ase.io

    rng = np.random.default_rng(seed)
    atoms_total = 0
    with open(path, "w") as handle:
        for _ in range(n):
            count = int(rng.integers(1, 5))
            side = float(rng.uniform(3.0, 5.0))
            atoms = ase.Atoms(
                numbers=rng.choice(ELEMENTS, size=count),
                positions=rng.uniform(0.0, side, size=(count, 3)),
                cell=np.eye(3) * side,
                pbc=True,
            )
            ase.io.write(handle, atoms, format="extxyz")
            atoms_total += count
    return atoms_total


def memory(sizes: list[int], chunk_size: int, workdir: Path) -> list[dict]:
    """Peak RSS of ``tradens features`` (a child process per size)."""
    out = []
    species = ",".join(str(z) for z in ELEMENTS)
    for n in sizes:
        source = workdir / f"small_{n}.xyz"
        n_atoms = make_structures(source, n)
        target = workdir / f"features_{n}.h5"
        code = (
            "import resource, sys, time; from tradens.cli import main; t = time.perf_counter(); "
            "code = main(sys.argv[1:]); "
            "print('RESULT', time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
        )
        argv = [sys.executable, "-c", code, "features", str(source), "-o", str(target)]
        argv += ["--chunk-size", str(chunk_size), "--species", species, "-q", "--threads", "1"]
        run = subprocess.run(argv, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise RuntimeError(run.stderr)
        line = [x for x in run.stdout.splitlines() if x.startswith("RESULT")][0].split()
        seconds, peak_kib = float(line[1]), int(line[2])
        row = {
            "structures": n,
            "atoms": n_atoms,
            "peak_rss_mib": peak_kib / 1024,
            "seconds": seconds,
            "atoms_per_s": n_atoms / seconds,
            "bytes_per_atom": target.stat().st_size / n_atoms,
        }
        print(
            f"memory  {n:>8} structures {n_atoms:>8} atoms  peak RSS {row['peak_rss_mib']:7.1f} MiB"
            f"  {seconds:7.1f} s  {row['atoms_per_s']:8.0f} atoms/s  "
            f"{row['bytes_per_atom']:7.1f} bytes/atom on disk",
            flush=True,
        )
        out.append(row)
        target.unlink()
    return out


def workers(n: int, chunk_size: int, workdir: Path) -> dict:
    """atoms/s of ``compute_to_file`` on 1 and 2 local worker processes."""
    from tradens import SOAP
    from tradens.parallel import make_client
    from tradens.representations.stream import compute_to_file

    source = workdir / f"workers_{n}.xyz"
    n_atoms = make_structures(source, n, seed=1)
    soap = SOAP(cutoff=5.0, l_max=6, radial={"n_max": 8}, species=ELEMENTS, mixing={"channels": 16})
    out: dict = {"structures": n, "atoms": n_atoms, "chunk_size": chunk_size}
    began = time.perf_counter()  # reference: the same run in this process, no dask
    compute_to_file(soap, source, workdir / "serial.h5", chunk_size=chunk_size, threads=1)
    out["seconds_serial"] = time.perf_counter() - began
    print(
        f"serial (no dask, 1 thread): {out['seconds_serial']:7.1f} s  "
        f"{n_atoms / out['seconds_serial']:8.0f} atoms/s",
        flush=True,
    )
    for count in (1, 2):
        client = make_client(workers=count)
        try:
            client.wait_for_workers(count)
            warm = workdir / f"warm_{count}.xyz"
            make_structures(warm, 2 * count * 8, seed=2)
            compute_to_file(soap, warm, workdir / "warm.h5", chunk_size=8, client=client)
            began = time.perf_counter()
            target = workdir / f"workers_{count}.h5"
            compute_to_file(soap, source, target, chunk_size=chunk_size, client=client)
            seconds = time.perf_counter() - began
        finally:
            cluster = client.cluster
            client.close()
            cluster.close()
        out[f"seconds_{count}"] = seconds
        out[f"atoms_per_s_{count}"] = n_atoms / seconds
        print(
            f"workers {count}: {n} structures {n_atoms} atoms  {seconds:7.1f} s  "
            f"{n_atoms / seconds:8.0f} atoms/s",
            flush=True,
        )
    out["speedup"] = out["seconds_1"] / out["seconds_2"]
    print(f"speed-up 1 -> 2 workers: {out['speedup']:.2f}x (cores: {os.cpu_count()})", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["memory", "workers", "all"])
    parser.add_argument("--structures", type=int, nargs="+", default=None)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="tradens-scaling-") as tmp:
        workdir = Path(tmp)
        if args.mode in ("memory", "all"):
            sizes = args.structures or [1000, 10000, 100000]
            results["memory"] = memory(sizes, args.chunk_size, workdir)
        if args.mode in ("workers", "all"):
            n = (args.structures or [4000])[-1] if args.mode == "workers" else 4000
            results["workers"] = workers(n, min(args.chunk_size, max(1, n // 16)), workdir)
    results["maxrss_parent_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
