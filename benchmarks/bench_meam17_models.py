r"""MEAM17 model study (issue #7): full SOAP vs TR-SOAP vs TR-ACE vs random projections.

Energy-only ridge exactly as :class:`tradens.models.LinearPotential` with
``baseline="joint"`` and ``solver="dual"`` (the library's own
``_dual.dual_cross_validate`` / ``dual_final_fit``), on cached per-structure
feature sums, so that every fit costs seconds and the representation is
computed once:

* split: ``numpy.random.default_rng(0).permutation(1500)``; the first 200
  structures are the test set, the next 1000 the training set (the split of
  ``examples/learning_curves.py --full``);
* 5-fold CV over ``alpha`` (``fold_ids(1000, 5, None, 0)``, the folds of
  ``LinearPotential(cv=5, seed=0)``), ``DEFAULT_ALPHAS``; the test error is
  reported for the CV-chosen ``alpha`` only.

Features (``features`` command) are cached as ``<cache>/f_<name>_{raw,norm}.npy``
(``[structure, F]`` float64 sums over the atoms of a structure of the
unnormalised and of the normalised per-atom features; one thread; the CPU time
of the representation's forward pass is appended to ``<cache>/feats.jsonl``).
A random projection of the full SOAP is applied to the cached sums (the map is
linear, so this equals projecting every atom); its per-atom cost is timed by
``projtime``.

Run (one thread)::

    python benchmarks/bench_meam17_models.py features full soap '{}'
    python benchmarks/bench_meam17_models.py features tr32 soap \
        '{"mixing": {"channels": 32, "weights": "gap"}}'
    python benchmarks/bench_meam17_models.py features ace64 ace \
        '{"nu_max": 3, "l_max": [0, 4, 3], "channels": 64}'
    python benchmarks/bench_meam17_models.py fit full tr32 ace64    # CV and test, raw, normalised
    python benchmarks/bench_meam17_models.py rp 252 952 3696        # projections of the full SOAP
    python benchmarks/bench_meam17_models.py projtime 252 952 3696  # per-atom projection cost
    # E+F ridge, CV + test
    python benchmarks/bench_meam17_models.py ef ace64 ace '{...}' --forces-weight 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import require_data, shared_data  # noqa: E402

DATA = shared_data("meam17/meam17_dev.xyz")  # $TRADENS_DATA, ../shared/data or shared/data


def load_frames(path):
    import ase.io

    return ase.io.read(str(require_data(path, "meam17/meam17_dev.xyz")), ":")


def build(kind: str, spec: dict, species):
    """Representation with the full SOAP's cutoff (5 Å), unnormalised.

    Sums of both kinds are cached.
    """
    import tradens
    from tradens import SOAP

    spec = dict(spec)
    if kind == "soap":
        return SOAP(
            cutoff=5.0,
            l_max=6,
            radial={"n_max": spec.pop("n_max", 8)},
            species=species,
            normalize=False,
            **spec,
        )
    if kind == "ace":
        for key in ("l_max", "channels"):
            if isinstance(spec.get(key), list):
                spec[key] = tuple(spec[key])
        return tradens.ACE(
            cutoff=5.0,
            species=species,
            radial={"n_max": spec.pop("n_max", 8)},
            normalize=False,
            **spec,
        )
    raise ValueError(f"unknown kind {kind!r}")


def cmd_features(args):
    from tradens.systems import as_batch

    frames = load_frames(args.data)
    species = sorted({int(z) for a in frames for z in a.numbers})
    rep = build(args.kind, json.loads(args.spec), species)
    F = rep.n_features
    raw, nrm = np.zeros((len(frames), F)), np.zeros((len(frames), F))
    forward, wall = 0.0, time.perf_counter()
    bs = 4 if F > 20000 else 16
    with torch.no_grad():
        for s0 in range(0, len(frames), bs):
            batch = as_batch(frames[s0 : s0 + bs])
            t = time.process_time()
            x, rows = rep.forward(batch)
            forward += time.process_time() - t
            st = batch.structure[rows]
            xn = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-300)
            zero = torch.zeros(batch.n_structures, F, dtype=x.dtype)
            raw[s0 : s0 + bs] = zero.clone().index_add_(0, st, x).numpy()
            nrm[s0 : s0 + bs] = zero.index_add_(0, st, xn).numpy()
    cache = Path(args.cache)
    np.save(cache / f"f_{args.name}_raw.npy", raw)
    np.save(cache / f"f_{args.name}_norm.npy", nrm)
    info = dict(
        name=args.name,
        kind=args.kind,
        spec=json.loads(args.spec),
        features=F,
        forward_cpu_s=forward,
        wall_s=time.perf_counter() - wall,
        structures=len(frames),
    )
    print(json.dumps(info), flush=True)
    with open(cache / "feats.jsonl", "a") as stream:
        stream.write(json.dumps(info) + "\n")


def labels(args):
    cache = Path(args.cache) / "labels.npz"
    if not cache.exists():
        frames = load_frames(args.data)
        species = sorted({int(z) for a in frames for z in a.numbers})
        comp = np.array([[np.sum(a.numbers == z) for z in species] for a in frames], float)
        energy = np.array([a.get_potential_energy() for a in frames])
        np.savez(cache, comp=comp, energy=energy)
    data = np.load(cache)
    return data["comp"], data["energy"]


def split(n_structures: int, n_test: int = 200, n_train: int = 1000):
    order = np.random.default_rng(0).permutation(n_structures)
    return order[n_test : n_test + n_train], order[:n_test]


def ridge(sums, comp, energy, train, test, alphas=None, cv=5):
    """CV energy RMSE per alpha, chosen alpha, test RMSE (eV/atom), fit seconds."""
    from tradens.models._data import fold_ids
    from tradens.models._dual import EnergyRows, dual_cross_validate, dual_final_fit
    from tradens.models.linear import DEFAULT_ALPHAS

    alphas = np.asarray(DEFAULT_ALPHAS if alphas is None else alphas)
    n_atoms = comp.sum(1)
    t = time.process_time()
    store = EnergyRows(len(train))
    for i, s in enumerate(train):
        store.add(
            i,
            torch.as_tensor(sums[s] / n_atoms[s]),
            energy[s] / n_atoms[s],
            comp[s] / n_atoms[s],
            1.0,
        )
    folds, n_folds = fold_ids(len(train), cv, None, 0)
    res = dual_cross_validate(store, folds, n_folds, alphas, joint=True)
    best = int(np.nanargmin(res["energy_rmse"]))
    e0, theta, _, _ = dual_final_fit(store, float(alphas[best]), joint=True)
    seconds = time.process_time() - t
    pred = (sums[test] / n_atoms[test, None]) @ theta.numpy() + (
        comp[test] / n_atoms[test, None]
    ) @ e0
    test_rmse = float(np.sqrt(np.mean((pred - energy[test] / n_atoms[test]) ** 2)))
    return dict(
        cv=float(res["energy_rmse"][best]),
        alpha=float(alphas[best]),
        test=test_rmse,
        edge=best in (0, len(alphas) - 1),
        fit_cpu_s=seconds,
    ), theta


def baseline_rmse(comp, energy, train, test):
    n = comp.sum(1)
    frac, y = comp / n[:, None], energy / n
    e0 = np.linalg.lstsq(frac[train], y[train], rcond=None)[0]
    return float(np.sqrt(np.mean((frac[test] @ e0 - y[test]) ** 2)))


def report(row):
    forces = f"  F test {1000 * row['forces_test']:6.0f} meV/Å" if "forces_test" in row else ""
    print(
        f"{row['model']:34s} F={row['features']:6d}  CV {1000 * row['cv']:6.1f}  "
        f"test {1000 * row['test']:6.1f}"
        f"  alpha {row['alpha']:.0e}{' (grid edge)' if row['edge'] else ''}  "
        f"fit {row['fit_cpu_s']:.1f} CPU s{forces}",
        flush=True,
    )
    with open(Path(row.pop("cache")) / "fits.jsonl", "a") as stream:
        stream.write(json.dumps(row) + "\n")


def cmd_fit(args):
    comp, energy = labels(args)
    train, test = split(len(energy))
    print(f"baseline test {1000 * baseline_rmse(comp, energy, train, test):.1f} meV/atom")
    for name in args.names:
        for variant in args.variants:
            sums = np.load(Path(args.cache) / f"f_{name}_{variant}.npy")
            row, theta = ridge(sums, comp, energy, train, test)
            if args.forces:
                row["forces_test"] = test_force_rmse(
                    args, name, variant, theta, test[: args.forces]
                )
            report(dict(model=f"{name} {variant}", features=sums.shape[1], cache=args.cache, **row))


def test_force_rmse(args, name: str, variant: str, theta, structures) -> float:
    """Force RMSE (eV/Å) of the energy-only fit on ``structures`` (forces by one VJP per structure).

    The per-element reference energies carry no force, so the forces are those of
    ``E = sum_i theta . x_i`` with ``x_i`` the raw or normalised per-atom features.
    """
    from tradens.gradients import energy_forces_stress

    spec = None
    with open(Path(args.cache) / "feats.jsonl") as stream:
        for line in stream:
            info = json.loads(line)
            if info.get("name") == name:
                spec = info
    if spec is None:
        raise SystemExit(f"no features named {name!r} in {args.cache}/feats.jsonl")
    frames = load_frames(args.data)
    species = sorted({int(z) for a in frames for z in a.numbers})
    rep = build(spec["kind"], spec["spec"], species)
    weights = torch.as_tensor(np.asarray(theta), dtype=torch.float64)

    def model(values, numbers):
        if variant == "norm":
            values = values / torch.linalg.vector_norm(values, dim=1, keepdim=True).clamp_min(
                1e-300
            )
        return values @ weights

    squared, count = 0.0, 0
    for s in structures:
        out = energy_forces_stress(rep, model, frames[int(s)])
        error = np.asarray(out.forces) - frames[int(s)].get_forces()
        squared += float((error**2).sum())
        count += error.size
    return float(np.sqrt(squared / count))


def cmd_rp(args):
    from tradens.models import RandomProjection

    comp, energy = labels(args)
    train, test = split(len(energy))
    for variant in args.variants:
        full = np.load(Path(args.cache) / f"f_full_{variant}.npy")
        for d in args.sizes:
            for seed in range(args.seeds):
                p = RandomProjection(d, seed=seed).fit(full.shape[1]).components_
                row, _ = ridge(full @ p.T, comp, energy, train, test)
                report(
                    dict(
                        model=f"RP(full) D={d} seed {seed} {variant}",
                        features=d,
                        cache=args.cache,
                        **row,
                    )
                )


def cmd_projtime(args):
    """CPU time of projecting every atom's full SOAP.

    Timed on the first structures, scaled to 1500.
    """
    from tradens import SOAP
    from tradens.models import RandomProjection
    from tradens.systems import as_batch

    frames = load_frames(args.data)
    species = sorted({int(z) for a in frames for z in a.numbers})
    soap = SOAP(cutoff=5.0, l_max=6, radial={"n_max": 8}, species=species, normalize=False)
    sub = frames[: args.structures]
    scale = sum(len(a) for a in frames) / sum(len(a) for a in sub)
    with torch.no_grad():
        xs = [soap.forward(as_batch(sub[s : s + 4]))[0] for s in range(0, len(sub), 4)]
    for d in args.sizes:
        p = torch.as_tensor(RandomProjection(d, seed=0).fit(soap.n_features).components_.T.copy())
        t = time.process_time()
        for x in xs:
            x @ p
        seconds = time.process_time() - t
        info = dict(projection=d, structures=len(sub), cpu_s=seconds, cpu_s_1500=seconds * scale)
        print(json.dumps(info), flush=True)
        with open(Path(args.cache) / "feats.jsonl", "a") as stream:
            stream.write(json.dumps(info) + "\n")


def cmd_ef(args):
    """Energy + force ridge (``LinearPotential``, streamed normal equations) on the same split.

    5-fold CV over ``alpha`` on the 1000 training structures (selected by the
    weighted validation loss), then the test RMSEs on the 200 test structures
    (energies meV/atom, force components meV/Å) and the CPU time.
    """
    from tradens.models import LinearPotential

    frames = load_frames(args.data)
    species = sorted({int(z) for a in frames for z in a.numbers})
    rep = build(args.kind, json.loads(args.spec), species)
    train, test = split(len(frames))
    train = train[: args.train]
    start = time.process_time()
    model = LinearPotential(
        rep,
        forces_weight=args.forces_weight,
        stress_weight=0.0,
        cv=5,
        cv_metric=args.cv_metric,
        batch_size=8,
        progress=True,
    )
    model.fit([frames[int(s)] for s in train])
    fit_cpu = time.process_time() - start
    best = int(np.flatnonzero(np.isclose(model.cv_results_["alphas"], model.alpha_))[0])
    scores = model.score([frames[int(s)] for s in test[: args.test]])
    row = dict(
        name=args.name,
        features=rep.n_features,
        train=len(train),
        forces_weight=args.forces_weight,
        alpha=model.alpha_,
        cv_energy=1e3 * model.cv_results_["energy_rmse"][best],
        cv_forces=1e3 * model.cv_results_["forces_rmse"][best],
        test_energy=1e3 * scores["energy"],
        test_forces=1e3 * scores["forces"],
        fit_cpu_s=fit_cpu,
    )
    print(json.dumps(row), flush=True)
    with open(Path(args.cache) / "ef.jsonl", "a") as stream:
        stream.write(json.dumps(row) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="/tmp/m17")
    parser.add_argument("--data", default=str(DATA))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("features")
    p.add_argument("name")
    p.add_argument("kind", choices=["soap", "ace"])
    p.add_argument("spec", help="JSON keywords of SOAP or ACE")
    p = sub.add_parser("fit")
    p.add_argument("names", nargs="+")
    p.add_argument("--variants", nargs="+", default=["raw", "norm"])
    p.add_argument(
        "--forces",
        type=int,
        default=0,
        help="also the force RMSE of each energy-only fit on this many test structures",
    )
    p = sub.add_parser("ef")
    p.add_argument("name")
    p.add_argument("kind", choices=["soap", "ace"])
    p.add_argument("spec", help="JSON keywords of SOAP or ACE")
    p.add_argument("--forces-weight", type=float, default=0.1)
    p.add_argument("--cv-metric", default="loss", choices=["loss", "energy", "forces"])
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=200)
    p = sub.add_parser("rp")
    p.add_argument("sizes", type=int, nargs="+")
    p.add_argument("--variants", nargs="+", default=["raw"])
    p.add_argument("--seeds", type=int, default=1)
    p = sub.add_parser("projtime")
    p.add_argument("sizes", type=int, nargs="+")
    p.add_argument("--structures", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    {
        "features": cmd_features,
        "fit": cmd_fit,
        "ef": cmd_ef,
        "rp": cmd_rp,
        "projtime": cmd_projtime,
    }[args.command](args)


if __name__ == "__main__":
    main()
