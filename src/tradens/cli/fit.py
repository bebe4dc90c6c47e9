"""``tradens fit`` and ``tradens eval``: fit a potential, evaluate a saved one."""

from __future__ import annotations

import argparse

import numpy as np

from .common import (
    CLIError,
    add_hyper_arguments,
    add_input_arguments,
    build_calculator,
    describe,
    load_frames,
)


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="model file to write (.zip)")
    parser.add_argument("--model", choices=["linear", "kernel", "learned"], default="linear")
    group = parser.add_argument_group("fit")
    group.add_argument("--energy-weight", type=float, default=1.0, help="per eV/atom")
    group.add_argument("--forces-weight", type=float, default=0.1, help="per eV/A")
    group.add_argument("--stress-weight", type=float, default=1.0, help="per eV/A^3")
    group.add_argument("--cv", type=int, default=5, help="folds (1: no cross-validation)")
    group.add_argument(
        "--alphas", type=float, nargs="+", help="relative regularisations to cross-validate"
    )
    group.add_argument("--per-element", action="store_true", help="per-element weights (linear)")
    group.add_argument(
        "--baseline",
        choices=["first", "joint"],
        help="reference energies fitted before the model (first) or with it (joint); "
        "default: the model's own (linear: joint, kernel: first)",
    )
    group.add_argument("--energy-key", default="energy")
    group.add_argument("--forces-key", default="forces")
    group.add_argument("--stress-key", default="stress")
    group.add_argument("--n-sparse", type=int, default=200, help="sparse points (kernel)")
    group.add_argument("--zeta", type=float, default=2.0, help="kernel exponent (kernel)")
    group.add_argument("--epochs", type=int, default=100, help="epochs (learned)")
    group.add_argument("--hidden", type=int, nargs="*", default=[], help="MLP widths (learned)")
    group.add_argument("--fit-seed", type=int, default=0, help="seed of folds / training")
    add_hyper_arguments(parser)


def run_fit(args) -> int:
    from ..models import LearnedPotential, LinearPotential, SparseKernelPotential, save

    frames, path = load_frames(args)
    representation, _ = build_calculator(args, frames)
    common = dict(
        energy_weight=args.energy_weight,
        forces_weight=args.forces_weight,
        stress_weight=args.stress_weight,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        stress_key=args.stress_key,
        seed=args.fit_seed,
    )
    linear = dict(cv=None if args.cv <= 1 else args.cv)
    if args.baseline is not None:
        linear["baseline"] = args.baseline
    if args.alphas:
        linear["alphas"] = tuple(args.alphas)
    if args.model == "linear":
        model = LinearPotential(representation, per_element=args.per_element, **linear, **common)
    elif args.model == "kernel":
        model = SparseKernelPotential(
            representation, n_sparse=args.n_sparse, zeta=args.zeta, **linear, **common
        )
    else:
        model = LearnedPotential(
            representation, hidden=tuple(args.hidden), max_epochs=args.epochs, **common
        )
    model.fit(frames)
    save(model, args.output)
    print(f"input      {path}: {len(frames)} structures")
    print(f"model      {type(model).__name__} on {describe(representation.hypers)}")
    if getattr(model, "cv_results_", None) is not None:
        best = int(np.nanargmin(np.abs(model.cv_results_["alphas"] - model.alpha_)))
        parts = [
            f"{key} {1000 * model.cv_results_[f'{key}_rmse'][best]:.1f}"
            for key in ("energy", "forces", "stress")
            if np.isfinite(model.cv_results_[f"{key}_rmse"][best])
        ]
        print(f"CV RMSE    {', '.join(parts)} (meV/atom, meV/A, meV/A^3); alpha {model.alpha_:g}")
    if hasattr(model, "history_"):
        print(f"training   {len(model.history_)} epochs, best {model.best_epoch_}")
    print(f"wrote      {args.output}")
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file written by tradens fit")
    add_input_arguments(parser)
    parser.add_argument("--json", help="write the RMSEs to this JSON file")
    parser.add_argument("--output", help="write the structures with predicted labels (extxyz)")
    parser.add_argument("--energy-key", default="energy")
    parser.add_argument("--forces-key", default="forces")
    parser.add_argument("--stress-key", default="stress")


def run_eval(args) -> int:
    from ..io import write_frames, write_json
    from ..models import load

    try:
        model = load(args.model)
    except FileNotFoundError:
        raise CLIError(f"model file {args.model!r} does not exist") from None
    frames, path = load_frames(args)
    errors = model.score(
        frames, energy_key=args.energy_key, forces_key=args.forces_key, stress_key=args.stress_key
    )
    print(f"model      {args.model} ({type(model).__name__})")
    print(f"input      {path}: {len(frames)} structures")
    units = {"energy": "meV/atom", "forces": "meV/A", "stress": "meV/A^3"}
    for key, value in errors.items():
        if np.isfinite(value):
            print(f"RMSE       {key:7s} {1000 * value:10.2f} {units[key]}")
    if args.json:
        write_json(args.json, {key: float(value) for key, value in errors.items()})
    if args.output:
        from ase.calculators.singlepoint import SinglePointCalculator

        predicted = model.predict(frames)
        out, offset = [], 0
        for s, atoms in enumerate(frames):
            copy = atoms.copy()
            n = len(copy)
            results = {
                "energy": float(predicted["energy"][s]),
                "forces": predicted["forces"][offset : offset + n],
            }
            if np.isfinite(predicted["stress"][s]).all():
                results["stress"] = predicted["stress"][s]
            copy.calc = SinglePointCalculator(copy, **results)
            out.append(copy)
            offset += n
        write_frames(args.output, out)
        print(f"wrote      {args.output}")
    return 0
