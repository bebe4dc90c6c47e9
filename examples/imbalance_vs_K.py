"""Information imbalance between the full SOAP and tensor-reduced SOAP as K grows.

For each number of mixed channels ``K`` this prints

* ``Delta(full -> TR)`` and ``Delta(TR -> full)`` between the full
  species-resolved SOAP and the tensor-reduced SOAP (radial+element mixing,
  random weights, ``K(K+1)/2 (l_max+1)`` features), and
* the same for two baselines of the same size built from the full SOAP
  (both need the full SOAP first; the tensor-reduced features do not):
  ``RP``, a Gaussian random projection (the Johnson-Lindenstrauss
  near-isometry), and ``RS``, a random subset of the full SOAP's columns.

Both go to 0 when the compressed space keeps all the neighbourhood information
of the full one. Values are means over ``--seeds`` mixing/projection seeds,
with the standard error over points (or over seeds, whichever is larger).

Quick run (bundled 12-structure HEA sample, about 20 s)::

    python examples/imbalance_vs_K.py

Full study on ../shared/data/hea25/hea25_dev.xyz (90 structures, 3576 atoms,
25 elements; 16 minutes on 2 CPU cores, a few GB of memory at K = 64, where the
random projection matrix alone is 25 250 x 10 400)::

    python examples/imbalance_vs_K.py --full

See ``docs/analysis.md`` for the definition and a table of results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ase.io
import numpy as np

import tradens
from tradens.analysis import information_imbalance, random_projection
from tradens.analysis.maps import pool_features

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(tradens.__file__).parent / "data" / "hea25_sample.xyz"
FULL_DATA = REPO.parent / "shared" / "data" / "hea25" / "hea25_dev.xyz"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"full-size study: {FULL_DATA.name}, n_max 4, l_max 4, K up to 64, 3 seeds",
    )
    parser.add_argument("--data", type=Path, help="structure file (default: the bundled sample)")
    parser.add_argument("--structures", type=int, help="use only the first N structures")
    parser.add_argument("--K", type=int, nargs="+", help="channel counts (default 1 2 4 8 16)")
    parser.add_argument("--cutoff", type=float, default=5.0, help="cutoff, A")
    parser.add_argument("--sigma", type=float, default=0.5, help="Gaussian width, A")
    parser.add_argument("--n-max", type=int, help="radial functions (default 4)")
    parser.add_argument("--l-max", type=int, help="largest degree (default 3; --full: 4)")
    parser.add_argument("--k", type=int, default=1, help="nearest neighbours of the imbalance")
    parser.add_argument(
        "--level",
        choices=["atom", "structure"],
        default="atom",
        help="points are atoms (default) or mean-pooled structures",
    )
    parser.add_argument(
        "--seeds", type=int, help="mixing/projection seeds averaged (default 2; --full: 3)"
    )
    parser.add_argument(
        "--max-points", type=int, default=20000, help="exact below this many points"
    )
    parser.add_argument("--json", type=Path, help="write the table as JSON")
    args = parser.parse_args(argv)
    if args.full:
        args.data = args.data or FULL_DATA
        args.K = args.K or [1, 2, 4, 8, 16, 32, 64]
        args.l_max = 4 if args.l_max is None else args.l_max
        args.seeds = args.seeds or 3
    args.data = args.data or SAMPLE
    args.K = args.K or [1, 2, 4, 8, 16]
    args.n_max = 4 if args.n_max is None else args.n_max
    args.l_max = 3 if args.l_max is None else args.l_max
    args.seeds = args.seeds or 2
    return args


def isometric(values: np.ndarray) -> np.ndarray:
    """Rows with the same pairwise distances in ``min(point, feature)`` dimensions.

    With more features than points, ``X X^T = U L U^T`` gives ``U sqrt(L)``, whose
    pairwise distances equal those of ``X``: the imbalance is unchanged and every
    later distance computation is cheaper.
    """
    if values.shape[1] <= values.shape[0]:
        return values
    gram = values @ values.T  # [point, point]
    eigenvalues, vectors = np.linalg.eigh(gram)
    keep = eigenvalues > 1e-12 * eigenvalues[-1]
    return vectors[:, keep] * np.sqrt(eigenvalues[keep])  # [point, rank]


def points(soap, frames, level: str) -> np.ndarray:
    features = soap.compute(frames)
    if level == "structure":
        features = pool_features(features, "mean")
    return np.asarray(features.values)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        print(f"error: {args.data} not found", file=sys.stderr)
        return 1
    frames = ase.io.read(args.data, ":" if args.structures is None else f":{args.structures}")
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    base = dict(
        cutoff=args.cutoff,
        l_max=args.l_max,
        radial={"n_max": args.n_max},
        density={"sigma": args.sigma},
        species=species,
    )
    start = time.perf_counter()
    full_soap = tradens.SOAP(**base)
    full = points(full_soap, frames, args.level)
    full_iso = isometric(full)
    print(
        f"# {args.data.name}: {len(frames)} structures, {sum(len(a) for a in frames)} atoms, "
        f"{len(species)} elements; {len(full)} {args.level} points; k = {args.k}"
    )
    print(
        f"# full SOAP: n_max={args.n_max}, l_max={args.l_max}, cutoff={args.cutoff} A: "
        f"{full_soap.n_features} features ({time.perf_counter() - start:.1f} s)"
    )
    kinds = ("tr", "rp", "rs")
    header = " ".join(f"{f'full->{k.upper()}':>13} {f'{k.upper()}->full':>13}" for k in kinds)
    print(f"# {'K':>3} {'F':>6} {header}")
    table = []
    for channels in args.K:
        rows = {kind: [] for kind in kinds}
        for seed in range(args.seeds):
            tr_soap = tradens.SOAP(
                **base, mixing={"mode": "radial+element", "channels": channels, "seed": seed}
            )
            tr = points(tr_soap, frames, args.level)
            rp = random_projection(full, tr.shape[1], seed=seed)
            columns = np.random.default_rng(seed).choice(
                full.shape[1], size=min(tr.shape[1], full.shape[1]), replace=False
            )
            rs = full[:, np.sort(columns)]
            for key, x in (("tr", tr), ("rp", rp), ("rs", rs)):
                result = information_imbalance(
                    full_iso, x, k=args.k, max_points=args.max_points, seed=seed
                )
                rows[key].append(
                    (result.a_to_b, result.b_to_a, result.a_to_b_error, result.b_to_a_error)
                )
        entry = {"K": channels, "n_features": int(tr.shape[1])}
        cells = []
        for key in kinds:
            values = np.array(rows[key])  # [seed, 4]
            for direction, column in (("full_to", 0), ("to_full", 1)):
                mean = float(values[:, column].mean())
                spread = (
                    values[:, column].std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
                )
                error = float(max(spread, values[:, column + 2].mean()))
                entry[f"{direction}_{key}"] = [mean, error]
                cells.append(f"{mean:.4f}±{error:.4f}")
        table.append(entry)
        print(
            f"  {channels:>3} {entry['n_features']:>6} " + " ".join(f"{c:>13}" for c in cells),
            flush=True,
        )
    print(f"# total {time.perf_counter() - start:.1f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "data": str(args.data),
                    "level": args.level,
                    "k": args.k,
                    "n_max": args.n_max,
                    "l_max": args.l_max,
                    "cutoff": args.cutoff,
                    "seeds": args.seeds,
                    "full_features": full_soap.n_features,
                    "rows": table,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
