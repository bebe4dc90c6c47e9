"""Data-driven (PCA) embeddings against random ones: held-out energy errors and seed spread.

For TR-SOAP (R+Z mixing, K channels, element-wise and tensor coupling) the embedding
``W`` is either drawn at random (``--seeds`` seeds), GAP's draw, or the leading
components of the training set's density covariance
(:func:`tradens.representations.compression.pca_mixing`, fitted on the training
structures only). Each representation is scored the same way: ridge regression of
the energies on the per-structure sums of the features plus per-element counts
(the baseline), alpha chosen by 5-fold CV on the training structures, RMSE in
meV/atom on held-out structures. Also reported: the full SOAP and the per-element
baseline alone.

Run::

    python examples/data_driven_embedding.py                      # MEAM17: 300 train, 300 test
    python examples/data_driven_embedding.py --train 40 --test 20 \
        --data src/tradens/data/meam17_sample.xyz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np

import tradens
from tradens import SOAP
from tradens.representations.compression import pca_mixing

SHARED = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "meam17" / "meam17_dev.xyz"
)
SAMPLE = Path(tradens.__file__).parent / "data" / "meam17_sample.xyz"
ALPHAS = 10.0 ** np.arange(-10, 4)


def design(soap: SOAP, frames, species) -> np.ndarray:
    """``[structure, F + S]``: summed features and element counts."""
    features = soap.compute(frames)
    values = np.asarray(features.values)
    index = np.repeat(np.arange(len(frames)), [len(a) for a in frames])
    sums = np.zeros((len(frames), values.shape[1]))
    np.add.at(sums, index, values)
    counts = np.array([[np.sum(a.numbers == z) for z in species] for a in frames], float)
    return np.hstack([sums, counts])


def ridge(x, y, alpha, n_free):
    """Ridge with the element counts (last ``n_free`` columns) unpenalised.

    The counts are projected out exactly (their least-squares fit on the residual),
    and the penalised part is solved in the dual when it has more columns than rows.
    """
    features, counts = x[:, : x.shape[1] - n_free], x[:, x.shape[1] - n_free :]
    scale = np.sqrt((features**2).mean(0)) + 1e-12
    features = features / scale
    pinv = np.linalg.pinv(counts)  # [S, n]

    def project(m):
        return m - counts @ (pinv @ m)

    fp, yp = project(features), project(y)
    n = len(y)
    if fp.shape[1] > n:  # dual: w = F^T (F F^T + n alpha)^-1 y
        w = fp.T @ np.linalg.solve(fp @ fp.T + n * alpha * np.eye(n), yp)
    else:
        w = np.linalg.solve(fp.T @ fp + n * alpha * np.eye(fp.shape[1]), fp.T @ yp)
    w_counts = pinv @ (y - features @ w)
    return np.concatenate([w / scale, w_counts])


def score(x_train, y_train, n_train, x_test, y_test, n_test, n_species, seed=0):
    """Held-out RMSE (eV/atom) with alpha by 5-fold CV on train."""
    folds = np.random.default_rng(seed).permutation(len(y_train)) % 5
    cv = []
    for alpha in ALPHAS:
        errors = []
        for f in range(5):
            w = ridge(x_train[folds != f], y_train[folds != f], alpha, n_species)
            errors.append((x_train[folds == f] @ w - y_train[folds == f]) / n_train[folds == f])
        cv.append(np.sqrt(np.mean(np.concatenate(errors) ** 2)))
    alpha = ALPHAS[int(np.argmin(cv))]
    w = ridge(x_train, y_train, alpha, n_species)
    return float(np.sqrt(np.mean(((x_test @ w - y_test) / n_test) ** 2))), float(alpha)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED if SHARED.exists() else SAMPLE))
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args(argv)

    frames = ase.io.read(args.data, ":")
    order = np.random.default_rng(args.split_seed).permutation(len(frames))
    train = [frames[i] for i in order[: args.train]]
    test = [frames[i] for i in order[args.train : args.train + args.test]]
    species = sorted({int(z) for a in frames for z in a.numbers})
    y_train = np.array([a.get_potential_energy() for a in train])
    y_test = np.array([a.get_potential_energy() for a in test])
    n_train = np.array([len(a) for a in train], float)
    n_test = np.array([len(a) for a in test], float)
    common = dict(cutoff=5.0, l_max=6, radial={"n_max": 8}, species=species)
    full = SOAP(**common)

    def evaluate(soap):
        x_train, x_test = design(soap, train, species), design(soap, test, species)
        rmse, alpha = score(x_train, y_train, n_train, x_test, y_test, n_test, len(species))
        return {"features": int(soap.n_features), "rmse_meV_atom": 1000 * rmse, "alpha": alpha}

    results: dict = {"data": args.data, "train": len(train), "test": len(test)}
    counts_only = np.array([[np.sum(a.numbers == z) for z in species] for a in train], float)
    counts_test = np.array([[np.sum(a.numbers == z) for z in species] for a in test], float)
    rmse, _ = score(counts_only, y_train, n_train, counts_test, y_test, n_test, len(species))
    results["baseline_meV_atom"] = 1000 * rmse
    results["full SOAP"] = evaluate(full)
    for coupling in ("elementwise", "tensor"):
        block: dict = {}
        pca = pca_mixing(full, train, args.channels)
        block["pca"] = evaluate(SOAP(**common, mixing=pca, coupling=coupling))
        block["gap"] = evaluate(
            SOAP(**common, mixing={"channels": args.channels, "weights": "gap"}, coupling=coupling)
        )
        randoms = [
            evaluate(
                SOAP(**common, mixing={"channels": args.channels, "seed": s}, coupling=coupling)
            )["rmse_meV_atom"]
            for s in range(args.seeds)
        ]
        block["random"] = {
            "rmse_meV_atom": randoms,
            "mean": float(np.mean(randoms)),
            "spread_percent": float(100 * (max(randoms) - min(randoms)) / np.mean(randoms)),
        }
        results[f"K={args.channels} {coupling}"] = block
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
