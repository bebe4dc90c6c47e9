r"""Calibration of the posterior uncertainty of ridge and sparse-kernel potentials (issue #17).

Energy-only fits on TR-SOAP (element-wise coupling, ``K`` channels, GAP weights,
cutoff 5 Å, ``l_max`` 6, ``n_max`` 8, normalised), ``alpha`` by 5-fold CV on the
training set, primal solver: :class:`~tradens.models.LinearPotential` (ridge,
joint baseline) and :class:`~tradens.models.SparseKernelPotential` (``zeta`` 2,
CUR sparse points, baseline first). On held-out structures it reports, per model,
the energy RMSE (meV/atom), the Spearman rank correlation between the predicted
standard deviation and the absolute error (per atom), and the share of errors
inside 1 and 2 predicted sigma, both for the posterior std alone
(``energy_std``) and with the estimated label noise added
(``sqrt(std^2 + N^2 energy_noise)``).

Splits:

* ``random``: ``--n-train`` / ``--n-test`` structures of a seeded permutation
  (MEAM17);
* ``cv``: 5-fold CV by structure, every structure predicted once by the fit on
  the other folds (HEA25, 90 structures);
* ``pairs``: element pairs drawn (seeded) until the structures containing any
  of them make up ``--pair-share`` of the data; those are the test set (at most
  ``--n-test``), the training set is drawn from the others (at most
  ``--n-train``): every test structure contains a pair of elements never seen
  together in training.

Run (a few minutes each on one core)::

    python examples/uncertainty_calibration.py meam17 --splits random pairs
    python examples/uncertainty_calibration.py hea25 --splits cv pairs
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import require_data, shared_data  # noqa: E402

FILES = {"meam17": "meam17/meam17_dev.xyz", "hea25": "hea25/hea25_dev.xyz"}


def representation(species, channels: int):
    from tradens import SOAP

    return SOAP(
        cutoff=5.0,
        l_max=6,
        radial={"n_max": 8},
        species=species,
        mixing={"channels": channels, "weights": "gap"},
        coupling="elementwise",
        normalize=True,
    )


def model(name: str, species, args):
    from tradens.models import LinearPotential, SparseKernelPotential

    common = dict(cv=5, energy_weight=1.0, forces_weight=0.0, stress_weight=0.0)
    if name == "ridge":
        return LinearPotential(representation(species, args.channels), solver="primal", **common)
    return SparseKernelPotential(
        representation(species, args.channels), n_sparse=args.n_sparse, zeta=2.0, **common
    )


def pair_split(frames, args, rng):
    """Indices ``(train, test)``: test structures contain a held-out element pair."""
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    pairs = [pairs for pairs in itertools.combinations(species, 2)]
    order = rng.permutation(len(pairs))
    present = [set(atoms.numbers.tolist()) for atoms in frames]
    chosen: list = []
    held = np.zeros(len(frames), dtype=bool)
    for i in order:
        a, b = pairs[i]
        chosen.append((int(a), int(b)))
        held |= np.array([a in p and b in p for p in present])
        if held.mean() >= args.pair_share:
            break
    test = rng.permutation(np.nonzero(held)[0])[: args.n_test]
    train = rng.permutation(np.nonzero(~held)[0])[: args.n_train]
    return [(train, test)], chosen


def splits(frames, kind: str, args):
    rng = np.random.default_rng(args.seed)
    if kind == "random":
        order = rng.permutation(len(frames))
        return [(order[: args.n_train], order[args.n_train : args.n_train + args.n_test])], None
    if kind == "cv":
        from tradens.models._data import fold_ids

        folds, n = fold_ids(len(frames), 5, None, args.seed)
        return [(np.nonzero(folds != k)[0], np.nonzero(folds == k)[0]) for k in range(n)], None
    return pair_split(frames, args, rng)


def evaluate(frames, kind: str, name: str, args) -> dict:
    import warnings

    from tradens.models.uncertainty import calibration

    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    errors, std, noise_std, n_atoms, alphas = [], [], [], [], []
    start = time.process_time()
    parts, pairs = splits(frames, kind, args)
    n_train = 0
    for train, test in parts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = model(name, species, args).fit([frames[i] for i in train])
        held = [frames[i] for i in test]
        out = fitted.predict(held, forces=False, stress=False, return_std=True)
        sizes = np.array([len(a) for a in held], dtype=np.float64)
        errors.append(out["energy"] - np.array([a.get_potential_energy() for a in held]))
        std.append(out["energy_std"])
        noise_std.append(
            np.sqrt(out["energy_std"] ** 2 + sizes**2 * fitted.posterior_["energy_noise"])
        )
        n_atoms.append(sizes)
        alphas.append(fitted.alpha_)
        n_train = len(train)
    errors_a, n_atoms_a = np.concatenate(errors), np.concatenate(n_atoms)
    posterior = calibration(errors_a, np.concatenate(std), n_atoms=n_atoms_a)
    total = calibration(errors_a, np.concatenate(noise_std), n_atoms=n_atoms_a)
    result = {
        "split": kind,
        "model": name,
        "n_train": n_train,
        "n_test": int(errors_a.size),
        "alphas": alphas,
        "held_out_pairs": pairs,
        "posterior": posterior,
        "with_noise": total,
        "cpu_s": time.process_time() - start,
    }
    print(
        f"{kind:6s} {name:6s} train {n_train:4d} test {errors_a.size:4d}  RMSE "
        f"{1000 * posterior['rmse']:7.1f} meV/atom  mean std {1000 * posterior['mean_std']:7.1f}  "
        f"Spearman {posterior['spearman']:6.3f}  within 1/2 sigma "
        f"{posterior['within_1_sigma']:.2f}/{posterior['within_2_sigma']:.2f}  "
        f"+noise {total['within_1_sigma']:.2f}/{total['within_2_sigma']:.2f}  "
        f"({result['cpu_s']:.0f} CPU s)",
        flush=True,
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=sorted(FILES))
    parser.add_argument("--splits", nargs="+", choices=["random", "cv", "pairs"], default=None)
    parser.add_argument("--models", nargs="+", choices=["ridge", "kernel"], default=None)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--pair-share", type=float, default=0.2)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--n-sparse", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="the data set's .xyz (default: the shared data)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    import ase.io

    path = args.data or require_data(shared_data(FILES[args.dataset]), FILES[args.dataset])
    frames = ase.io.read(str(path), ":")
    default = ["random", "pairs"] if args.dataset == "meam17" else ["cv", "pairs"]
    results = [
        evaluate(frames, kind, name, args)
        for kind in args.splits or default
        for name in args.models or ["ridge", "kernel"]
    ]
    if args.json:
        from tradens.io import write_json

        write_json(args.json, {"settings": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
