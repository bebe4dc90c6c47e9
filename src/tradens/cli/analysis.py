"""The ``imbalance`` and ``select`` subcommands (registered in :mod:`tradens.cli`)."""

from __future__ import annotations

import argparse
import copy

import numpy as np

from ..io import is_feature_file, read_features, read_hypers, write_frames, write_json
from .common import (
    CLIError,
    add_compute_arguments,
    add_feature_file_argument,
    add_hyper_arguments,
    add_input_arguments,
    add_level_arguments,
    build_calculator,
    compute,
    describe,
    features_for,
    hypers_dict,
    load_frames,
    per_level,
)

# --------------------------------------------------------------------------- imbalance
IMBALANCE_DESCRIPTION = """\
Information imbalance Delta(A -> B) and Delta(B -> A) (Glielmo et al., PNAS Nexus 2022)
between two representations of the same atoms or structures. Delta near 0: the
first space predicts the neighbourhoods of the second; near 1: no information.

A representation SPEC is one of:
  full               the full SOAP with the hyper options below
  tr:K               tensor-reduced SOAP (radial+element mixing) with K channels
  rp:F               a Gaussian random projection of the full SOAP onto F features
  FILE.yaml|.json    a hypers file (SOAP or ACE; the options below do not apply)
  FILE.npz|.h5|.mts  precomputed features (see 'tradens features')
  "soap ..."         a GAP descriptor string"""
IMBALANCE_EPILOG = """\
examples:
  tradens imbalance --example --a full --b tr:8
  tradens imbalance --example --level structure --a full --b rp:64 --k 3
  tradens imbalance data.xyz --a full.yaml --b reduced.yaml --json result.json
  tradens imbalance --a full.npz --b reduced.npz      # feature files: no structures needed"""


def add_imbalance_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--a", required=True, metavar="SPEC", help="first representation")
    parser.add_argument("--b", required=True, metavar="SPEC", help="second representation")
    parser.add_argument("--k", type=int, default=1, help="nearest neighbours (default 1)")
    add_level_arguments(parser, default="atom", points="one point")
    parser.add_argument(
        "--max-points",
        type=int,
        default=20000,
        help="exact up to this many points, subsampled beyond (default 20000)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="random subsets when subsampling")
    parser.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    add_hyper_arguments(parser)
    add_compute_arguments(parser)


def _spec_features(spec: str, args, frames):
    """Features and a label for one representation SPEC."""
    from ..analysis.imbalance import random_projection

    lower = spec.lower()
    if is_feature_file(lower):
        features, _ = read_features(spec)
        return features, f"{spec} ({features.values.shape[1]} features)"
    if frames is None:
        raise CLIError(f"representation {spec!r} needs structures: give an input file or --example")
    file_base = read_hypers(args.hypers) if args.hypers else None
    flags = argparse.Namespace(
        **{**vars(args), "gap": None, "hypers": None, "mixing": None, "channels": None}
    )
    if lower.endswith((".yaml", ".yml", ".json")):
        blank = argparse.Namespace(gap=None, hypers=None, species=None, no_normalize=False)
        calculator, _ = build_calculator(blank, frames, base=read_hypers(spec))
    elif lower.startswith("soap"):
        calculator, _ = build_calculator(
            argparse.Namespace(gap=spec, hypers=None, species=None), frames
        )
    elif lower == "full" or lower.startswith("rp:"):
        flags.weights = flags.seed = None
        base = hypers_dict(flags, base=file_base)
        base["mixing"] = None
        calculator, _ = build_calculator(flags, frames, base=base)
    elif lower.startswith("tr:"):
        base = hypers_dict(flags, base=file_base)
        base["mixing"] = dict(base.get("mixing") or {}, mode="radial+element", channels=_int(spec))
        calculator, _ = build_calculator(flags, frames, base=base)
    else:
        raise CLIError(
            f"unknown representation {spec!r}: use full, tr:K, rp:F, a hypers file, "
            "a feature file or a GAP string"
        )
    features = compute(calculator, frames, args)
    label = f"{describe(calculator.hypers)} ({calculator.n_features} features)"
    if lower.startswith("rp:"):
        size = _int(spec)
        seed = args.seed if args.seed is not None else 0
        features = copy.copy(features)
        features.values = random_projection(features.values, size, seed=seed)
        features.names, features.labels = [f"rp{i}" for i in range(size)], {}
        label = f"random projection of the {label} onto {size} features"
    return features, label


def _int(spec: str) -> int:
    text = spec.split(":", 1)[1]
    if not text.isdigit() or int(text) < 1:
        raise CLIError(f"{spec!r}: expected a positive integer after ':'")
    return int(text)


def run_imbalance(args) -> int:
    from ..analysis.imbalance import information_imbalance

    needs_frames = not all(is_feature_file(s) for s in (args.a, args.b))
    frames, _ = load_frames(args, required=needs_frames)
    fa, label_a = _spec_features(args.a, args, frames)
    fb, label_b = _spec_features(args.b, args, frames)
    xa, xb = per_level(fa, args.level, args.pool), per_level(fb, args.level, args.pool)
    result = information_imbalance(
        xa,
        xb,
        k=args.k,
        max_points=args.max_points,
        n_repeats=args.repeats,
        seed=args.seed or 0,
        progress=not args.quiet,
    )
    mode = (
        "exact"
        if result.exact
        else f"subsampled: {result.n_repeats} random subsets of {result.n_used}"
    )
    print(f"A: {label_a}")
    print(f"B: {label_b}")
    print(f"points: {result.n_points} {args.level}s ({mode}), k = {result.k}")
    print(f"Delta(A -> B) = {result.a_to_b:.4f} +- {result.a_to_b_error:.4f}")
    print(f"Delta(B -> A) = {result.b_to_a:.4f} +- {result.b_to_a_error:.4f}")
    if args.json_out:
        write_json(
            args.json_out,
            {
                **result.as_dict(),
                "a": args.a,
                "b": args.b,
                "level": args.level,
                "label_a": label_a,
                "label_b": label_b,
            },
        )
        print(f"wrote {args.json_out}")
    return 0


# --------------------------------------------------------------------------- select
SELECT_EPILOG = """\
Structure selection writes the chosen structures (in selection order) with
info['selection_rank'] and info['selection_index']; atom selection writes every
structure that holds a chosen atom, with a per-atom array 'selection_rank'
(-1: not chosen).

examples:
  tradens select --example -n 4 -o subset.xyz                   # FPS of structures
  tradens select data.xyz -n 100 --method cur -o cur.xyz --indices cur.json
  tradens select data.xyz -n 50 --level atom -o environments.xyz"""


def add_select_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument(
        "-n", "--n-select", type=int, required=True, help="number of points to select"
    )
    parser.add_argument("-o", "--output", required=True, help="extxyz file of the selection")
    parser.add_argument("--method", choices=["fps", "cur"], default="fps", help="selection method")
    add_level_arguments(parser, default="structure", points="what is selected")
    parser.add_argument(
        "--initial", default="0", help="FPS start: an index, 'random' or 'farthest'"
    )
    parser.add_argument("--indices", help="also write the selected indices to this JSON file")
    add_feature_file_argument(parser)
    add_hyper_arguments(parser)
    add_compute_arguments(parser)


def run_select(args) -> int:
    from ..analysis.selection import cur_selection, farthest_point_sampling

    if not args.output.lower().endswith((".xyz", ".extxyz")):
        raise CLIError(
            f"the selection is written as extxyz: the file must end with .xyz, got {args.output!r}"
        )
    frames, _ = load_frames(args)
    features, _ = features_for(args, frames)
    x = per_level(features, args.level, args.pool)
    if args.method == "fps":
        initial = int(args.initial) if args.initial.lstrip("-").isdigit() else args.initial
        index, score = farthest_point_sampling(
            x.values, args.n_select, initial=initial, seed=args.seed or 0, return_distances=True
        )
    else:
        index, score = cur_selection(x.values, args.n_select, return_scores=True)
    chosen: list[int] | list[list[int]]  # structure indices, or [structure, center] pairs
    if args.level == "structure":
        subset = []
        for rank, i in enumerate(index):
            atoms = _copy_atoms(frames[int(x.structure[i])])
            atoms.info["selection_rank"], atoms.info["selection_index"] = rank, int(x.structure[i])
            subset.append(atoms)
        chosen = [int(x.structure[i]) for i in index]
    else:
        ranks: dict[int, np.ndarray] = {}
        for rank, i in enumerate(index):
            s, c = int(x.structure[i]), int(x.center[i])
            ranks.setdefault(s, np.full(len(frames[s]), -1, dtype=np.int64))[c] = rank
        subset = []
        for s, array in ranks.items():
            atoms = _copy_atoms(frames[s])
            atoms.arrays["selection_rank"] = array
            atoms.info["selection_index"] = s
            subset.append(atoms)
        chosen = [[int(x.structure[i]), int(x.center[i])] for i in index]
    write_frames(args.output, subset)
    what = "structures" if args.level == "structure" else "atoms [structure, center]"
    shown = ", ".join(str(c) for c in chosen[:20]) + (" ..." if len(chosen) > 20 else "")
    print(f"selected {len(index)} {what} by {args.method.upper()}: {shown}")
    print(f"wrote {args.output} ({len(subset)} structures)")
    if args.indices:
        key = "hausdorff_distances" if args.method == "fps" else "leverage_scores"
        write_json(
            args.indices,
            {
                "method": args.method,
                "level": args.level,
                "selected": chosen,
                key: [None if not np.isfinite(v) else float(v) for v in score],
            },
        )
        print(f"wrote {args.indices}")
    return 0


def _copy_atoms(atoms):
    """A copy that keeps the single-point results (energy, forces, stress)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    out = atoms.copy()
    if atoms.calc is not None and getattr(atoms.calc, "results", None):
        out.calc = SinglePointCalculator(out, **copy.deepcopy(atoms.calc.results))
    return out
