"""Timing of a streamed ridge fit with forces on MEAM17 (target: 1500 structures < 2 min, 1 core).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_fit.py --all   # every structure, K=16, E+F+S
    python benchmarks/bench_fit.py --structures 200 --channels 32 --cv 5

TR-SOAP (``radial+element`` mixing, GAP weights, tensor coupling), l_max 6,
n_max 8, cutoff 5 Å. Prints the CPU time, wall time, peak RSS and minor page
faults of the fit (design accumulation: features, force and virial rows, Gram
updates; and the solve; numbers in docs/models.md), the path that served the
structure-summed Jacobian, and held-out errors when ``--test`` structures are
kept out. Needs ``../shared/data/meam17``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

from tradens import SOAP
from tradens.gradients import paths
from tradens.models import ElementBaseline, LinearPotential

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import require_data, shared_data  # noqa: E402

DATA = shared_data("meam17/meam17_dev.xyz")  # $TRADENS_DATA, ../shared/data or shared/data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=1500)
    parser.add_argument("--all", action="store_true", help="fit every structure of the file")
    parser.add_argument("--test", type=int, default=0, help="structures held out for errors")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--l-max", type=int, default=6)
    parser.add_argument("--n-max", type=int, default=8)
    parser.add_argument("--cv", type=int, default=0, help="folds (0: one alpha, no CV)")
    parser.add_argument("--forces-weight", type=float, default=0.1)
    parser.add_argument("--stress-weight", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = ase.io.read(require_data(args.data, "meam17/meam17_dev.xyz"), ":")
    if args.all:
        args.structures, args.test = len(frames), 0
    order = np.random.default_rng(0).permutation(len(frames))
    train = [frames[i] for i in order[: args.structures]]
    test = [frames[i] for i in order[args.structures : args.structures + args.test]]
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    soap = SOAP(
        cutoff=5.0,
        l_max=args.l_max,
        radial={"n_max": args.n_max},
        species=species,
        mixing={"channels": args.channels, "weights": "gap"},
    )
    model = LinearPotential(
        soap,
        alphas=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2) if args.cv else (1e-4,),
        cv=args.cv or None,
        forces_weight=args.forces_weight,
        stress_weight=args.stress_weight,
        batch_size=args.batch_size,
    )
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(train)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "structures": len(train),
        "atoms": int(sum(len(a) for a in train)),
        "features": soap.n_features,
        "threads": args.threads,
        "cv": args.cv,
        "fit_seconds": round(elapsed, 1),
        "fit_cpu_seconds": round(cpu, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # whole process, Linux reports KiB
        "fit_minor_page_faults": usage.ru_minflt - faults,
        "summed_jacobian_path": paths.last("summed"),
        "alpha": model.alpha_,
        "training_rmse": model.training_rmse_,
        "condition_number": model.condition_number_,
    }
    if test:
        result["test_rmse"] = model.score(test)
        result["baseline_test_rmse"] = ElementBaseline().fit(train).score(test)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
