"""Learning curves: full SOAP, tensor-reduced SOAP and ACE, random projections, learned embeddings.

Every model is fitted the same way: the per-element baseline first (inside
every CV fold), then ridge regression with the regularisation chosen by K-fold
cross-validation (:class:`tradens.models.LinearPotential`), on energies only
(default) or on energies, forces and stress (``--forces``). Test errors are
energy RMSE in meV/atom and force RMSE in meV/Å (forces predicted by autograd,
also for energy-only fits). Curves: error against the number of features (at
the largest training set) and against the number of training structures.

Run::

    python examples/learning_curves.py            # bundled 40-structure sample, < 1 min
    python examples/learning_curves.py --full     # MEAM17 (1500 structures), the real study
    python examples/learning_curves.py --full --sizes 100 300 1000 --channels 8 16 32
    python examples/learning_curves.py --full --held-out-pairs 6   # element-pair generalisation

Outputs ``learning_curves.json`` and ``learning_curves.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

import tradens
from tradens import SOAP
from tradens.models import ElementBaseline, LearnedPotential, LinearPotential, RandomProjection

SAMPLE = Path(tradens.__file__).parent / "data" / "meam17_sample.xyz"
SHARED = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "meam17" / "meam17_dev.xyz"
)
ALPHAS = tuple(float(a) for a in np.logspace(-8, 0, 9))
# TR-ACE l_max per order for --full (nu_max = 3): see docs/models.md, "Recommended settings"
ACE_L_FULL = (0, 8, 6)


def settings(args) -> dict:
    if args.full:
        return dict(
            data=args.data or str(SHARED),
            sizes=args.sizes or [100, 200, 400, 800, 1200],
            test=args.test or 300,
            channels=args.channels or [8, 16, 32, 64],
            cutoff=5.0,
            l_max=6,
            n_max=8,
            cv=5,
            epochs=args.epochs or 60,
            force_test=args.force_test or 100,
            ace_l=ACE_L_FULL,
        )
    return dict(
        data=args.data or str(SAMPLE),
        sizes=args.sizes or [10, 20, 30],
        test=args.test or 10,
        channels=args.channels or [2, 4, 8],
        cutoff=4.5,
        l_max=3,
        n_max=4,
        cv=3,
        epochs=args.epochs or 4,
        force_test=args.force_test or 10,
        ace_l=(0, 4, 2),
    )


def representations(species, s: dict, args) -> dict:
    """Name -> (representation factory, family, projection size)."""
    hypers = dict(
        cutoff=s["cutoff"],
        l_max=s["l_max"],
        radial={"n_max": s["n_max"]},
        species=species,
        normalize=not args.unnormalized,
    )
    out = {"full SOAP": (lambda: SOAP(**hypers), "full SOAP", None)}
    for k in s["channels"]:

        def tr(k=k):
            return SOAP(**hypers, mixing={"channels": k, "weights": "gap"})

        out[f"TR-SOAP K={k}"] = (tr, "TR-SOAP (tensor)", None)
        out[f"RP(full SOAP) D={tr().n_features}"] = (
            lambda: SOAP(**hypers),
            "random projection",
            tr().n_features,
        )
    k = s["channels"][-1]
    out[f"TR-SOAP elementwise K={k}"] = (
        lambda: SOAP(**hypers, mixing={"channels": k, "weights": "gap"}, coupling="elementwise"),
        "TR-SOAP (element-wise)",
        None,
    )
    if not args.no_ace:
        ace_l = tuple(args.ace_l or s["ace_l"])
        for k in args.ace_channels or s["channels"]:
            out[f"TR-ACE K={k} l={'/'.join(map(str, ace_l))}"] = (
                lambda k=k: tradens.ACE(
                    cutoff=s["cutoff"],
                    species=species,
                    nu_max=len(ace_l),
                    l_max=ace_l,
                    channels=k,
                    radial={"n_max": s["n_max"]},
                    normalize=not args.unnormalized,
                ),
                "TR-ACE",
                None,
            )
        if args.ace_projection:
            # random projection of the full SOAP to the size of the (largest) TR-ACE
            k = max(args.ace_channels or s["channels"])
            size = tradens.ACE(
                cutoff=s["cutoff"],
                species=species,
                nu_max=len(ace_l),
                l_max=ace_l,
                channels=k,
                radial={"n_max": s["n_max"]},
            ).n_features
            out[f"RP(full SOAP) D={size}"] = (lambda: SOAP(**hypers), "random projection", size)
    return out


def fit_linear(factory, projection, train, s, args):
    representation = factory()
    model = LinearPotential(
        representation,
        alphas=ALPHAS,
        cv=s["cv"],
        forces_weight=0.1 if args.forces else 0.0,
        stress_weight=1.0 if args.forces else 0.0,
        projection=None if projection is None else RandomProjection(projection, seed=args.seed),
        baseline=args.baseline,
        batch_size=16,
        seed=args.seed,
    )
    model.fit(train)
    cv = None if model.cv_results_ is None else float(np.nanmin(model.cv_results_["energy_rmse"]))
    return model, model.n_features_in_, cv


def score(model, test, force_test) -> dict:
    energy = model.predict(test, forces=False, stress=False)["energy"]
    n_atoms = np.array([len(a) for a in test])
    reference = np.array([a.get_potential_energy() for a in test])
    out = {"energy": float(np.sqrt(np.mean(((energy - reference) / n_atoms) ** 2)))}
    subset = test[:force_test]
    forces = model.predict(subset, forces=True, stress=False, batch_size=4)["forces"]
    labels = np.concatenate([a.get_forces() for a in subset])
    out["forces"] = float(np.sqrt(np.mean((forces - labels) ** 2)))
    return out


def learning_curves(frames, s, args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(frames))
    test = [frames[i] for i in order[: s["test"]]]
    pool = [frames[i] for i in order[s["test"] :]]
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    reps = representations(species, s, args)
    results = []
    for n_train in s["sizes"]:
        train = pool[:n_train]
        t0 = time.perf_counter()
        baseline = ElementBaseline(species=species).fit(train)
        results.append(
            {
                "model": "baseline",
                "family": "baseline",
                "n_train": n_train,
                "features": 0,
                "cv_energy": None,
                **score(baseline, test, s["force_test"]),
                "seconds": time.perf_counter() - t0,
            }
        )
        report(results[-1])
        for name, (factory, family, projection) in reps.items():
            if args.only and not any(o in name for o in args.only):
                continue
            if projection is not None and n_train != max(s["sizes"]) and not args.all_sizes:
                continue  # random projections: only at the largest training set (error vs features)
            t0 = time.perf_counter()
            model, n_features, cv = fit_linear(factory, projection, train, s, args)
            results.append(
                {
                    "model": name,
                    "family": family,
                    "n_train": n_train,
                    "features": n_features,
                    "cv_energy": cv,
                    **score(model, test, s["force_test"]),
                    "seconds": time.perf_counter() - t0,
                }
            )
            report(results[-1])
        if not args.no_learned:
            t0 = time.perf_counter()
            results.append(
                {
                    **fit_learned(species, s, args, train, test),
                    "n_train": n_train,
                    "cv_energy": None,
                    "seconds": time.perf_counter() - t0,
                }
            )
            report(results[-1])
    return results


def fit_learned(species, s, args, train, test) -> dict:
    """A learned-embedding TR-SOAP (the middle K of ``s["channels"]``), fitted and scored."""
    k = s["channels"][len(s["channels"]) // 2]
    representation = SOAP(
        cutoff=s["cutoff"],
        l_max=s["l_max"],
        radial={"n_max": s["n_max"]},
        species=species,
        mixing={"channels": k, "weights": "gap"},
    )
    model = LearnedPotential(
        representation,
        forces_weight=0.1,
        max_epochs=s["epochs"],
        batch_size=8,
        learning_rate=5e-3,
        embedding_learning_rate=2e-2,
        patience=max(5, s["epochs"] // 4),
        seed=args.seed,
    ).fit(train)
    return {
        "model": f"learned TR-SOAP K={k}",
        "family": "learned embedding",
        "features": representation.n_features,
        **score(model, test, s["force_test"]),
    }


def held_out_pairs(frames, s, args) -> list[dict]:
    """Train without the structures containing any of ``n`` element pairs; test on those."""
    rng = np.random.default_rng(args.seed)
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    pairs = list(itertools.combinations(species, 2))
    chosen = [pairs[i] for i in rng.choice(len(pairs), args.held_out_pairs, replace=False)]

    def has_pair(atoms):
        present = set(atoms.numbers.tolist())
        return any(a in present and b in present for a, b in chosen)

    test = [a for a in frames if has_pair(a)]
    train = [a for a in frames if not has_pair(a)]
    print(f"held-out pairs {chosen}: {len(train)} training, {len(test)} test structures")
    reps = representations(species, s, args)
    results = [
        {
            "model": "baseline",
            "family": "baseline",
            "n_train": len(train),
            "features": 0,
            **score(ElementBaseline(species=species).fit(train), test, s["force_test"]),
        }
    ]
    report(results[-1])
    for name, (factory, family, projection) in reps.items():
        if args.only and not any(o in name for o in args.only):
            continue
        model, n_features, cv = fit_linear(factory, projection, train, s, args)
        results.append(
            {
                "model": name,
                "family": family,
                "n_train": len(train),
                "features": n_features,
                "cv_energy": cv,
                **score(model, test, s["force_test"]),
            }
        )
        report(results[-1])
    if not args.no_learned:
        results.append({**fit_learned(species, s, args, train, test), "n_train": len(train)})
        report(results[-1])
    for r in results:
        r["held_out_pairs"] = [list(p) for p in chosen]
    return results


def report(r: dict) -> None:
    cv = "" if r.get("cv_energy") is None else f"  CV {1000 * r['cv_energy']:7.1f}"
    print(
        f"{r['model']:32s} n={r['n_train']:5d} F={r['features']:6d}  "
        f"E {1000 * r['energy']:7.1f} meV/atom"
        f"{cv}  F {1000 * r['forces']:7.1f} meV/Å",
        flush=True,
    )


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    largest = max(r["n_train"] for r in results)
    families = sorted({r["family"] for r in results})
    for family in families:
        rows = [
            r
            for r in results
            if r["family"] == family and r["n_train"] == largest and r["features"]
        ]
        rows.sort(key=lambda r: r["features"])
        if rows:
            x = [r["features"] for r in rows]
            axes[0, 0].plot(x, [1000 * r["energy"] for r in rows], "o-", label=family)
            axes[0, 1].plot(x, [1000 * r["forces"] for r in rows], "o-", label=family)
        for model in sorted({r["model"] for r in results if r["family"] == family}):
            curve = sorted((r for r in results if r["model"] == model), key=lambda r: r["n_train"])
            if len(curve) > 1:
                x = [r["n_train"] for r in curve]
                axes[1, 0].plot(x, [1000 * r["energy"] for r in curve], "o-", label=model)
                axes[1, 1].plot(x, [1000 * r["forces"] for r in curve], "o-", label=model)
    base = [r for r in results if r["family"] == "baseline" and r["n_train"] == largest]
    if base:
        axes[0, 0].axhline(1000 * base[0]["energy"], color="k", ls="--", label="baseline")
        axes[0, 1].axhline(1000 * base[0]["forces"], color="k", ls="--", label="baseline")
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlabel(f"features per atom (n_train = {largest})")
    for ax in axes[1]:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training structures")
    for ax in axes[:, 0]:
        ax.set_ylabel("energy RMSE (meV/atom)")
    for ax in axes[:, 1]:
        ax.set_ylabel("force RMSE (meV/Å)")
    for ax, size, columns in ((axes[0, 0], 7, 1), (axes[1, 0], 6, 2)):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=size, ncol=columns)
    fig.tight_layout()
    handle, temporary = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(handle)
    fig.savefig(temporary, dpi=120)
    os.replace(temporary, path)


def write_json(data, path: Path) -> None:
    handle, temporary = tempfile.mkstemp(suffix=".json", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(data, stream, indent=1)
    os.replace(temporary, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full", action="store_true", help="MEAM17, 1500 structures, GAP-size hypers"
    )
    parser.add_argument(
        "--data", help="extxyz file (default: bundled sample, or MEAM17 with --full)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="training-set sizes")
    parser.add_argument("--test", type=int, help="test structures")
    parser.add_argument("--force-test", type=int, help="test structures used for the force RMSE")
    parser.add_argument(
        "--channels", type=int, nargs="+", help="K values of the tensor-reduced models"
    )
    parser.add_argument("--epochs", type=int, help="epochs of the learned-embedding model")
    parser.add_argument("--forces", action="store_true", help="fit on energies, forces and stress")
    parser.add_argument(
        "--held-out-pairs",
        type=int,
        default=0,
        help="instead of learning curves: hold out structures containing N element pairs",
    )
    parser.add_argument("--only", nargs="+", help="only models whose name contains one of these")
    parser.add_argument("--no-ace", action="store_true")
    parser.add_argument(
        "--ace-l",
        type=int,
        nargs="+",
        help="TR-ACE l_max per order nu = 1..nu_max (the count sets nu_max); "
        "default with --full: the recommended MEAM17 setting of docs/models.md",
    )
    parser.add_argument(
        "--ace-channels", type=int, nargs="+", help="K of the TR-ACE models (default: --channels)"
    )
    parser.add_argument(
        "--ace-projection",
        action="store_true",
        help="also a random projection of the full SOAP to the TR-ACE size",
    )
    parser.add_argument(
        "--all-sizes",
        action="store_true",
        help="random projections at every size, not just the largest",
    )
    parser.add_argument("--no-learned", action="store_true")
    parser.add_argument(
        "--unnormalized",
        action="store_true",
        help="features not divided by their norm (keeps the density amplitude; better on MEAM17)",
    )
    parser.add_argument(
        "--baseline",
        choices=["joint", "first"],
        default="joint",
        help="per-element energies fitted with the weights (joint) or before them (first)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=".", help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = settings(args)
    frames = ase.io.read(s["data"], ":")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.held_out_pairs:
        results = held_out_pairs(frames, s, args)
        write_json({"settings": s, "results": results}, out / "held_out_pairs.json")
        return
    results = learning_curves(frames, s, args)
    write_json(
        {"settings": s, "forces_fitted": args.forces, "results": results},
        out / "learning_curves.json",
    )
    plot(results, out / "learning_curves.png")
    print(f"wrote {out / 'learning_curves.json'} and {out / 'learning_curves.png'}")


if __name__ == "__main__":
    main()
