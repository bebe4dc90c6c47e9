"""HEA25: k-fold cross-validation of the per-element baseline against LearnedPotential.

Folds are over structures (seeded permutation, the same folds for both
models). Inside every training fold the learned model holds out its own
validation share for early stopping and model selection; the test fold is
only used for the reported errors. Prints, per fold and as the RMS over all
test structures / atoms, the energy RMSE (meV/atom), the force RMSE (meV/Å;
all atoms, without class 4, per class) and the CPU time of each fit (one
thread, ``time.process_time``).

Examples
--------
Full 5-fold run with the chosen options as defaults (a committee of five
learned models per fold, about 8 CPU minutes per fold)::

    python benchmarks/bench_hea25_learned.py --folds 5

The same, folds split over two processes and pooled afterwards::

    python benchmarks/bench_hea25_learned.py --only-folds 0 1 2 --json a.json &
    python benchmarks/bench_hea25_learned.py --only-folds 3 4 --json b.json
    python benchmarks/bench_hea25_learned.py --pool a.json b.json

Quick check on one fold with a short budget::

    python benchmarks/bench_hea25_learned.py --only-folds 0 --max-epochs 20
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

from tradens.models import ElementBaseline, EnsemblePotential, LearnedPotential
from tradens.models.learned import PRESETS

# the defaults below are the public preset LearnedPotential.preset("hea25") (docs/models.md)
PRESET = PRESETS["hea25"]["model"]
PRESET_REP = PRESETS["hea25"]["representation"]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import require_data, shared_data  # noqa: E402

DATA = shared_data("hea25/hea25_dev.xyz")  # $TRADENS_DATA, ../shared/data or shared/data


def species(frames) -> list[int]:
    return sorted({int(z) for f in frames for z in f.numbers})


def make_representation(name: str, all_species, args):
    """The representation of a named configuration (embedding learned by the model)."""
    from tradens import ACE, SOAP

    if name == "ace":
        return ACE(
            cutoff={"radius": args.cutoff, "width": 1.0},
            species=all_species,
            nu_max=3,
            l_max=(0, args.l_max, min(args.l_max, 2)),
            channels=args.channels,
            radial={"kind": "gto", "n_max": args.n_max},
            density={"sigma": 0.5, "center_weight": 0.0},
            normalize=False,
            seed=args.seed,
        )
    if name == "soap":
        return SOAP(
            cutoff={"radius": args.cutoff, "width": 1.0},
            l_max=args.l_max,
            radial={"kind": "gto", "n_max": args.n_max},
            species=all_species,
            mixing={"channels": args.channels, "seed": args.seed},
            normalize=False,
        )
    raise ValueError(f"unknown representation {name!r}")


def model_options(args) -> dict:
    return dict(
        hidden=tuple(args.hidden),
        element_features=args.element_features,
        pair_channels=args.pair_channels,
        pair_basis=args.pair_basis,
        pair_cutoff=args.pair_cutoff,
        pair_r_min=args.pair_r_min,
        scale_features=not args.no_scale_features,
        train_reference=not args.fixed_reference,
        energy_weight=args.energy_weight,
        forces_weight=args.forces_weight,
        stress_weight=args.stress_weight,
        forces_loss=args.forces_loss,
        forces_delta=args.forces_delta,
        learning_rate=args.learning_rate,
        embedding_learning_rate=args.embedding_learning_rate,
        weight_decay=args.weight_decay,
        max_epochs=args.max_epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        validation_fraction=args.validation_fraction,
        ema=args.ema,
        ridge_alpha=None,
        device=args.device,
        seed=args.seed,
        verbose=args.verbose,
    )


def force_errors(predicted, frames) -> dict:
    """Squared force errors summed per class (``"all"``, ``"no4"``, ``"c2"`` ...) and counts."""
    out: dict[str, list[float]] = {}
    offset = 0
    for frame in frames:
        n = len(frame)
        error = predicted[offset : offset + n] - frame.get_forces()
        offset += n
        cls = frame.info.get("class", "none")
        for key in ("all", f"c{cls}") + (() if cls == 4 else ("no4",)):
            total = out.setdefault(key, [0.0, 0])
            total[0] += float((error**2).sum())
            total[1] += error.size
    return out


def merge(a: dict, b: dict) -> dict:
    for key, (s, n) in b.items():
        total = a.setdefault(key, [0.0, 0])
        total[0] += s
        total[1] += n
    return a


def rms(total) -> float:
    return math.sqrt(total[0] / total[1]) if total[1] else math.nan


def build_parser() -> argparse.ArgumentParser:
    """The options; their defaults are the ``hea25`` preset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=int, nargs="*", default=None)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--representation", choices=("ace", "soap"), default="ace")
    parser.add_argument("--cutoff", type=float, default=PRESET_REP["cutoff"]["radius"])
    parser.add_argument("--channels", type=int, default=PRESET_REP["channels"])
    parser.add_argument("--n-max", type=int, default=PRESET_REP["radial"]["n_max"])
    parser.add_argument("--l-max", type=int, default=PRESET_REP["l_max"][1])
    parser.add_argument("--hidden", type=int, nargs="*", default=[])
    parser.add_argument("--element-features", type=int, default=0)
    parser.add_argument("--pair-channels", type=int, default=PRESET["pair_channels"])
    parser.add_argument("--pair-basis", type=int, default=PRESET["pair_basis"])
    parser.add_argument("--pair-cutoff", type=float, default=None)
    parser.add_argument("--pair-r-min", type=float, default=PRESET["pair_r_min"])
    parser.add_argument("--no-scale-features", action="store_true")
    parser.add_argument("--fixed-reference", action="store_true")
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="fit the learned model only and print its internal validation errors "
        "(for choosing options without looking at the test folds)",
    )
    parser.add_argument("--energy-weight", type=float, default=1.0)
    parser.add_argument("--forces-weight", type=float, default=PRESET["forces_weight"])
    parser.add_argument("--stress-weight", type=float, default=PRESET["stress_weight"])
    parser.add_argument("--forces-loss", choices=("mse", "huber"), default=PRESET["forces_loss"])
    parser.add_argument("--forces-delta", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=PRESET["learning_rate"])
    parser.add_argument("--embedding-learning-rate", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=PRESET["weight_decay"])
    parser.add_argument("--max-epochs", type=int, default=PRESET["max_epochs"])
    parser.add_argument("--patience", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=PRESET["batch_size"])
    parser.add_argument("--validation-fraction", type=float, default=PRESET["validation_fraction"])
    parser.add_argument("--ema", type=float, default=PRESET["ema"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ensemble",
        type=int,
        default=5,
        help="committee size: mean of this many models trained with seeds seed, seed+1, ...",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="where the learned models train (CPU times are the reported ones)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)

    frames = ase.io.read(require_data(args.data, "hea25/hea25_dev.xyz"), index=":")
    all_species = species(frames)
    order = np.random.default_rng(args.fold_seed).permutation(len(frames))
    fold_of = np.empty(len(frames), dtype=int)
    fold_of[order] = np.arange(len(frames)) % args.folds
    folds = range(args.folds) if args.only_folds is None else args.only_folds
    print(
        f"HEA25: {len(frames)} structures, {sum(map(len, frames))} atoms, "
        f"{len(all_species)} elements; {args.folds}-fold CV (seed {args.fold_seed})"
    )
    print(
        "options:",
        json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}),
    )
    totals = {
        "baseline": {"energy": [0.0, 0], "forces": {}},
        "learned": {"energy": [0.0, 0], "forces": {}},
    }
    rows = []
    header = (
        f"{'fold':>4} {'model':>8} {'E meV/at':>9} {'F meV/A':>8} {'F no c4':>8} "
        f"{'F c2':>7} {'F c3':>7} {'F c4':>7} {'CPU s':>7} {'epoch':>5}"
    )
    print(header)
    for fold in folds:
        train = [f for f, k in zip(frames, fold_of, strict=True) if k != fold]
        test = [f for f, k in zip(frames, fold_of, strict=True) if k == fold]
        n_atoms = np.array([len(f) for f in test])
        energy = np.array([f.get_potential_energy() for f in test])
        fits = {}
        if args.validate_only:
            rep = make_representation(args.representation, all_species, args)
            start = time.process_time()
            model = LearnedPotential.preset("hea25", rep, **model_options(args)).fit(train)
            best = model.history_[model.best_epoch_]
            print(
                f"fold {fold}: validation E {1e3 * best['val_energy_rmse']:.1f} meV/atom, "
                f"F {1e3 * best['val_forces_rmse']:.0f} meV/A at epoch {model.best_epoch_} "
                f"of {len(model.history_)}; CPU {time.process_time() - start:.1f} s",
                flush=True,
            )
            _, val = model._split(train, None)
            f_err = force_errors(model.predict(val, stress=False)["forces"], val)
            print(
                "  validation forces by class (meV/A):",
                {k: round(1e3 * rms(v)) for k, v in sorted(f_err.items())},
                flush=True,
            )
            continue
        start = time.process_time()
        fits["baseline"] = ElementBaseline(species=all_species).fit(train)
        cpu = {"baseline": time.process_time() - start}
        rep = make_representation(args.representation, all_species, args)
        start, wall_start = time.process_time(), time.perf_counter()
        learned = LearnedPotential.preset("hea25", rep, **model_options(args))
        if args.ensemble > 1:  # committee of seeds seed .. seed + M - 1, mean prediction
            learned = EnsemblePotential(learned, n_members=args.ensemble, seed=args.seed)
        fits["learned"] = learned.fit(train)
        cpu["learned"] = time.process_time() - start
        wall = time.perf_counter() - wall_start
        if args.device != "cpu":
            print(
                f"  fold {fold}: learned fit {wall:.1f} s wall, "
                f"{cpu['learned']:.1f} s CPU on {args.device}",
                flush=True,
            )
        for name, model in fits.items():
            if name == "baseline":
                predicted = {
                    "energy": model.predict_energy(test),
                    "forces": np.zeros((int(n_atoms.sum()), 3)),
                }
            else:
                predicted = model.predict(test, stress=False)
            e_err = (predicted["energy"] - energy) / n_atoms
            f_err = force_errors(predicted["forces"], test)
            totals[name]["energy"][0] += float((e_err**2).sum())
            totals[name]["energy"][1] += e_err.size
            e_class = {}
            for error, frame in zip(e_err, test, strict=True):
                total = e_class.setdefault(f"c{frame.info.get('class', 'none')}", [0.0, 0])
                total[0] += float(error**2)
                total[1] += 1
            merge(totals[name].setdefault("energy_by_class", {}), e_class)
            merge(totals[name]["forces"], f_err)
            row = {
                "fold": fold,
                "model": name,
                "energy": 1e3 * math.sqrt(np.mean(e_err**2)),
                "totals": {
                    "energy": [float((e_err**2).sum()), int(e_err.size)],
                    "forces": f_err,
                    "energy_by_class": e_class,
                },  # sums of squares and counts, for --pool
                **{f"forces_{k}": 1e3 * rms(v) for k, v in f_err.items()},
                "cpu_s": cpu[name],
                "best_epoch": getattr(model, "best_epoch_", -1),
            }
            if name == "learned" and hasattr(model, "history_"):  # the inner validation split
                best = model.history_[model.best_epoch_]
                row["val_energy"] = 1e3 * best["val_energy_rmse"]
                row["val_forces"] = 1e3 * best["val_forces_rmse"]
            rows.append(row)
            print(
                f"{fold:>4} {name:>8} {row['energy']:9.1f} {row['forces_all']:8.0f} "
                f"{row.get('forces_no4', math.nan):8.0f} {row.get('forces_c2', math.nan):7.0f} "
                f"{row.get('forces_c3', math.nan):7.0f} {row.get('forces_c4', math.nan):7.0f} "
                f"{row['cpu_s']:7.1f} {row['best_epoch']:5d}"
                + (
                    f"  (validation: {row['val_energy']:.1f} meV/atom, "
                    f"{row['val_forces']:.0f} meV/A)"
                    if "val_energy" in row
                    else ""
                ),
                flush=True,
            )
            print(
                f"{'':>4} {'':>8} energy by class (meV/atom):",
                {k: round(1e3 * rms(v)) for k, v in sorted(e_class.items())},
                flush=True,
            )
    if args.validate_only:
        return
    summarise(totals, rows, args.json, {k: str(v) for k, v in vars(args).items()})


def pool(paths) -> None:
    """Pooled summary of several ``--json`` files (e.g. folds run in parallel processes)."""
    totals = {
        "baseline": {"energy": [0.0, 0], "forces": {}},
        "learned": {"energy": [0.0, 0], "forces": {}},
    }
    rows = []
    for path in paths:
        for row in json.loads(Path(path).read_text())["rows"]:
            rows.append(row)
            total = totals[row["model"]]
            merge(total, {"energy": row["totals"]["energy"]})
            merge(total["forces"], row["totals"]["forces"])
            merge(total.setdefault("energy_by_class", {}), row["totals"]["energy_by_class"])
    print("folds:", sorted({r["fold"] for r in rows}))
    summarise(totals, rows, None, {"pooled": [str(p) for p in paths]})


def summarise(totals, rows, json_path, options) -> None:
    print("RMS over all test structures / atoms of the folds run:")
    summary = {}
    for name, total in totals.items():
        f = total["forces"]
        summary[name] = {
            "energy": 1e3 * rms(total["energy"]),
            **{f"forces_{k}": 1e3 * rms(v) for k, v in f.items()},
            **{f"energy_{k}": 1e3 * rms(v) for k, v in total.get("energy_by_class", {}).items()},
        }
        mean_cpu = np.mean([r["cpu_s"] for r in rows if r["model"] == name])
        entry = summary[name]
        print(
            f"{'all':>4} {name:>8} {entry['energy']:9.1f} {entry['forces_all']:8.0f} "
            f"{entry.get('forces_no4', math.nan):8.0f} {entry.get('forces_c2', math.nan):7.0f} "
            f"{entry.get('forces_c3', math.nan):7.0f} {entry.get('forces_c4', math.nan):7.0f} "
            f"{mean_cpu:7.1f}"
        )
        print(
            f"{'':>4} {'':>8} energy by class (meV/atom):",
            {k[7:]: round(v) for k, v in sorted(summary[name].items()) if k.startswith("energy_")},
        )
    learned_cpu = sum(r["cpu_s"] for r in rows if r["model"] == "learned")
    print(f"total CPU of the learned fits: {learned_cpu:.0f} s")
    if json_path is not None:
        json_path.write_text(
            json.dumps({"options": options, "rows": rows, "summary": summary}, indent=1)
        )


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 2 and sys.argv[1] == "--pool":  # --pool a.json b.json ...
        pool(sys.argv[2:])
    else:
        main()
