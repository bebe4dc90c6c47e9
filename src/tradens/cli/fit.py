"""``tradens fit`` and ``tradens eval``: fit a potential, evaluate a saved one."""

from __future__ import annotations

import argparse
import sys
import warnings

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
    parser.add_argument(
        "--preset",
        choices=sorted(_presets()),
        help="a named learned-embedding configuration (implies --model learned; its own "
        "representation unless SOAP/ACE flags are given): hea25 = the HEA25 benchmark's",
    )
    group = parser.add_argument_group("fit")
    for prop, unit in (("energy", "eV/atom"), ("forces", "eV/A"), ("stress", "eV/A^3")):
        group.add_argument(
            f"--{prop}-weight",
            type=float,
            default=None,
            help=f"per {unit}; default: from the data (1 / RMSE of the trivial predictor)",
        )
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
    group.add_argument("--energy-key", default="energy", help="label key of the energies (eV)")
    group.add_argument("--forces-key", default="forces", help="label key of the forces (eV/A)")
    group.add_argument("--stress-key", default="stress", help="label key of the stress (eV/A^3)")
    group.add_argument(
        "--label-share",
        type=float,
        default=1.0,
        help="smallest share of structures that must carry each fitted label (default 1)",
    )
    group.add_argument("--n-sparse", type=int, default=200, help="sparse points (kernel)")
    group.add_argument("--zeta", type=float, default=2.0, help="kernel exponent (kernel)")
    group.add_argument(
        "--epochs", type=int, default=None, help="epochs (learned; default 100 or the preset's)"
    )
    group.add_argument("--hidden", type=int, nargs="*", default=None, help="MLP widths (learned)")
    group.add_argument("--fit-seed", type=int, default=0, help="seed of folds / training")
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_hyper_arguments(parser)


def _presets() -> tuple[str, ...]:
    from ..models.learned import PRESETS

    return tuple(PRESETS)


def _hyper_flags_given(args) -> bool:
    from .common import _soap_flags_given

    return (
        bool(_soap_flags_given(args))
        or bool(getattr(args, "gap", None))
        or bool(getattr(args, "hypers", None))
    )


def _build_model(args, frames):
    from ..models import LearnedPotential, LinearPotential, SparseKernelPotential

    common = dict(
        energy_weight=args.energy_weight,
        forces_weight=args.forces_weight,
        stress_weight=args.stress_weight,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        stress_key=args.stress_key,
        seed=args.fit_seed,
    )
    if args.preset is not None or args.model == "learned":
        learned = {k: v for k, v in common.items() if v is not None}
        if args.hidden is not None:
            learned["hidden"] = tuple(args.hidden)
        if args.epochs is not None:
            learned["max_epochs"] = args.epochs
        learned["progress"] = not args.quiet
        if args.preset is not None:
            species = sorted({int(z) for f in frames for z in f.numbers})
            representation = build_calculator(args, frames)[0] if _hyper_flags_given(args) else None
            model = LearnedPotential.preset(
                args.preset, representation=representation, species=species, **learned
            )
            return model, model.representation
        representation, _ = build_calculator(args, frames)
        learned.setdefault("max_epochs", 100)
        return LearnedPotential(representation, **learned), representation
    representation, _ = build_calculator(args, frames)
    linear = dict(cv=None if args.cv <= 1 else args.cv, label_share=args.label_share)
    linear["progress"] = not args.quiet
    if args.baseline is not None:
        linear["baseline"] = args.baseline
    if args.alphas:
        linear["alphas"] = tuple(args.alphas)
    if args.model == "linear":
        model = LinearPotential(representation, per_element=args.per_element, **linear, **common)
    else:
        model = SparseKernelPotential(
            representation, n_sparse=args.n_sparse, zeta=args.zeta, **linear, **common
        )
    return model, representation


def run_fit(args) -> int:
    from ..models import FitWarning, save

    frames, path = load_frames(args)
    model, representation = _build_model(args, frames)
    print(f"input      {path}: {len(frames)} structures", flush=True)
    print(f"model      {type(model).__name__} on {describe(representation.hypers)}", flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitWarning)
        model.fit(frames)
    save(model, args.output)
    report = getattr(model, "fit_report_", None)
    if report is not None:
        print(report)
    if hasattr(model, "history_"):
        print(f"training   {len(model.history_)} epochs, best {model.best_epoch_}")
    print(f"wrote      {args.output}")
    for item in caught:
        if issubclass(item.category, FitWarning):
            print(f"tradens: warning: {item.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file written by tradens fit")
    add_input_arguments(parser)
    parser.add_argument(
        "--json", help="write the RMSEs (and the uncertainty calibration) to this JSON file"
    )
    parser.add_argument(
        "--output",
        help="write the structures with predicted labels (extxyz; info energy_std when the "
        "model has an uncertainty)",
    )
    parser.add_argument("--energy-key", default="energy")
    parser.add_argument("--forces-key", default="forces")
    parser.add_argument("--stress-key", default="stress")


def run_eval(args) -> int:
    from ..io import write_json
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
    trivial = _trivial_errors(model, frames, args)
    units = {"energy": "meV/atom", "forces": "meV/A", "stress": "meV/A^3"}
    names = {"energy": "baseline alone", "forces": "zero forces", "stress": "zero stress"}
    for key, value in errors.items():
        if np.isfinite(value):
            print(
                f"RMSE       {key:7s} {1000 * value:10.2f} {units[key]:9s} "
                f"({names[key]}: {1000 * trivial[key]:.2f})"
            )
    summary: dict = {key: float(value) for key, value in errors.items()}
    std = None
    if model.has_std():
        std, calibrated = _calibration(model, frames, args)
        if calibrated is not None:
            summary["calibration"] = {"energy": calibrated}
            print(
                f"energy_std within 1 sigma {calibrated['within_1_sigma']:.3f}, "
                f"2 sigma {calibrated['within_2_sigma']:.3f}; Spearman(std, |error|) "
                f"{calibrated['spearman']:.3f} (per atom, {calibrated['n']} structures; "
                f"mean std {1000 * calibrated['mean_std']:.2f} meV/atom)"
            )
    if args.json:
        write_json(args.json, summary)
    if args.output:
        from ase.calculators.singlepoint import SinglePointCalculator

        from ..io import write_frames

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
            if std is not None:
                copy.info["energy_std"] = float(std[s])
            copy.calc = SinglePointCalculator(copy, **results)
            out.append(copy)
            offset += n
        write_frames(args.output, out)
        print(f"wrote      {args.output}")
    return 0


def _calibration(model, frames, args) -> tuple[np.ndarray, dict | None]:
    """Predicted energy std ``[structure]`` (eV) and its calibration on the labelled ones."""
    from ..models._data import read_targets
    from ..models.uncertainty import calibration

    predicted = model.predict(frames, forces=False, stress=False, return_std=True)
    targets = read_targets(
        frames, energy_key=args.energy_key, forces_key=args.forces_key, stress_key=args.stress_key
    )
    errors = predicted["energy"] - targets.energy  # [structure] eV, NaN without a label
    if not np.isfinite(errors).any():
        return predicted["energy_std"], None
    return predicted["energy_std"], calibration(
        errors, predicted["energy_std"], n_atoms=targets.n_atoms
    )


def _trivial_errors(model, frames, args) -> dict:
    """RMSEs of the trivial predictor: the model's baseline energies, zero forces and stress."""
    from ..models._data import read_targets

    targets = read_targets(
        frames, energy_key=args.energy_key, forces_key=args.forces_key, stress_key=args.stress_key
    )
    baseline = model.baseline_.predict_energy(frames)
    out = {"energy": np.nan, "forces": np.nan, "stress": np.nan}
    per_atom = (baseline - targets.energy) / targets.n_atoms
    if np.isfinite(per_atom).any():
        out["energy"] = float(np.sqrt(np.nanmean(per_atom**2)))
    if np.isfinite(targets.forces).any():
        out["forces"] = float(np.sqrt(np.nanmean(targets.forces**2)))
    if np.isfinite(targets.stress).any():
        out["stress"] = float(np.sqrt(np.nanmean(targets.stress**2)))
    return out


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file written by tradens fit (or models.save)")
    parser.add_argument(
        "-o", "--output", required=True, help="output file (.pt for metatomic, .xml for GAP)"
    )
    parser.add_argument(
        "--format",
        choices=["metatomic", "gap-xml"],
        default="metatomic",
        help="metatomic (LAMMPS, i-PI, ASE, TorchSim; needs tradens[engines]) or GAP's XML "
        "(quippy, LAMMPS pair_style quip; sparse kernel models on SOAP)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default="float64",
        help="floating-point type of a metatomic export",
    )


def run_export(args) -> int:
    from ..models import export, load

    try:
        model = load(args.model)
    except FileNotFoundError:
        raise CLIError(f"model file {args.model!r} does not exist") from None
    export(model, args.output, format=args.format, dtype=args.dtype)
    print(f"model      {args.model} ({type(model).__name__})")
    dtype = args.dtype if args.format == "metatomic" else "float64"
    print(f"wrote      {args.output} ({args.format}, {dtype})")
    return 0
