"""The built-in ``tradens`` subcommands (registered in :mod:`tradens.cli`)."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np

import tradens

from ._cli_common import (
    CLIError,
    add_compute_arguments,
    add_hyper_arguments,
    add_input_arguments,
    build_calculator,
    compute,
    describe,
    features_for,
    full_soap_size,
    hypers_dict,
    load_frames,
    per_level,
    species_of,
    symbols,
    timed,
)
from ._io import feature_format, read_features, read_hypers, write_features, write_frames, write_json

# --------------------------------------------------------------------------- features
FEATURES_DESCRIPTION = """\
Compute per-atom (or per-structure) features of every structure in a file and
write them with their row bookkeeping (structure, center, numbers), the column
names and the hypers (as JSON)."""
FEATURES_EPILOG = """\
output formats (by suffix):
  .npz        numpy: values [row, feature], structure, center, numbers, names, hypers (JSON)
  .h5/.hdf5   HDF5 (needs h5py): the same datasets, hypers as a file attribute
  .mts        metatensor TensorMap (needs metatensor), hypers in <file>.hypers.json

examples:
  tradens features --example                        # summary of TR-SOAP on bundled HEA data
  tradens features data.xyz -o features.npz         # default TR-SOAP (K=16), species from the data
  tradens features data.xyz -o f.npz --cutoff 4.5 --n-max 6 --l-max 4 --channels 8
  tradens features data.xyz -o full.npz --mixing none            # the full SOAP
  tradens features data.xyz -o f.npz --hypers hypers.yaml        # hypers from a file (SOAP or ACE)
  tradens features data.xyz -o f.h5 --gap "soap cutoff=5 n_max=8 l_max=6 atom_sigma=0.5 \\
      n_species=2 species_Z={28 29} R_mix=T Z_mix=T K=16 coupling=F"
  tradens features data.xyz -o pooled.npz --pool mean             # one row per structure"""


def add_features_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", help="output file (.npz, .h5/.hdf5 or .mts); "
                                               "optional with --example")
    parser.add_argument("--pool", choices=["mean", "sum"], help="write per-structure pooled features")
    add_hyper_arguments(parser)
    add_compute_arguments(parser)


def run_features(args) -> int:
    frames, path = load_frames(args)
    if not args.output and not args.example:
        raise CLIError("give -o/--output FILE (.npz, .h5/.hdf5 or .mts)")
    if args.output:
        feature_format(args.output)  # a bad suffix fails before the computation
    calculator, hypers = build_calculator(args, frames)
    features, seconds = timed(compute, calculator, frames, args)
    if args.pool:
        from .maps import pool_features

        features = pool_features(features, args.pool)
    n_atoms = sum(len(a) for a in frames)
    values = features.values
    full = full_soap_size(calculator.hypers)
    print(f"input      {Path(path).name}: {len(frames)} structures, {n_atoms} atoms")
    elements = species_of(frames)
    print(f"elements   {len(elements)}: {' '.join(symbols(elements))}")
    print(f"hypers     {describe(calculator.hypers)}")
    print(f"features   {values.shape[0]} rows x {values.shape[1]} features per "
          f"{'structure' if args.pool else 'atom'} ({values.dtype}, {values.nbytes / 2**20:.2f} MiB)")
    if full is not None and calculator.hypers.mixing is not None:
        print(f"full SOAP  {full} features per atom: the tensor-reduced size is "
              f"{calculator.n_features / full:.2%} of it ({full / calculator.n_features:.1f}x smaller)")
    print(f"time       {seconds:.2f} s ({1e3 * seconds / max(n_atoms, 1):.3f} ms per atom)")
    if args.output:
        kind = write_features(args.output, features, hypers)
        print(f"wrote      {args.output} ({kind})")
    return 0


# --------------------------------------------------------------------------- info
INFO_EPILOG = """\
examples:
  tradens info --species Ni,Cu,Pd                       # default TR-SOAP, K=16
  tradens info --example --channels 32 --l-max 4        # elements and atom count from the data
  tradens info --species Ni,Cu,Pd --mixing none --atoms 100000    # the full SOAP
  tradens info --hypers hypers.yaml --species Ni,Cu --json"""


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--atoms", type=int, help="number of atoms for the memory estimate "
                                                   "(default: from the input, else 1000)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    add_hyper_arguments(parser)


def run_info(args) -> int:
    import json

    frames, _ = load_frames(args, required=False)
    calculator, _ = build_calculator(args, frames)
    h = calculator.hypers
    n_atoms = args.atoms if args.atoms is not None else (sum(len(a) for a in frames) if frames else 1000)
    if n_atoms < 1:
        raise CLIError(f"--atoms must be >= 1, got {n_atoms}")
    n = calculator.n_features
    full = full_soap_size(h)
    info = {"hypers": describe(h), "species": list(h.species or []), "features_per_atom": n,
            "full_soap_features_per_atom": full, "atoms": n_atoms,
            "feature_bytes_float64": 8 * n * n_atoms, "feature_bytes_float32": 4 * n * n_atoms}
    if isinstance(h, tradens.SoapHypers):
        coefficients = h.n_species * h.radial.n_max * (h.l_max + 1) ** 2
        info["density_coefficients_per_atom"] = coefficients
        info["full_soap_bytes_float64"] = 8 * full * n_atoms
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"hypers                 {info['hypers']}")
    if info["species"]:
        print(f"elements               {len(info['species'])}: {' '.join(symbols(info['species']))}")
    print(f"features per atom      {n}")
    if full is not None:
        print(f"full SOAP per atom     {full}  ({full / n:.1f}x the features above)")
    print(f"memory for {n_atoms} atoms  {_size(info['feature_bytes_float64'])} (float64), "
          f"{_size(info['feature_bytes_float32'])} (float32)")
    if full is not None:
        print(f"  full SOAP            {_size(info['full_soap_bytes_float64'])} (float64)")
        print(f"density coefficients   {info['density_coefficients_per_atom']} per atom "
              f"({_size(8 * info['density_coefficients_per_atom'])} per atom while computing, float64)")
    return 0


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return ""  # pragma: no cover


# --------------------------------------------------------------------------- map
MAP_EPILOG = """\
The PNG is coloured by --color: 'element' (atom maps), 'energy', 'energy_per_atom',
'n_atoms', 'elements' (composition) or any numeric atoms.info key shared by all structures.
The chemiscope file (default: the PNG name with .json.gz) opens at https://chemiscope.org.

examples:
  tradens map --example -o hea25_map.png                       # structures, PCA, energy per atom
  tradens map --example --level atom -o atoms.png              # atoms, coloured by element
  tradens map data.xyz --method kpca --kernel polynomial -o kpca.png --chemiscope kpca.json
  tradens map data.xyz --features f.npz -o map.png --color class # precomputed features"""


def add_map_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="PNG file")
    parser.add_argument("--chemiscope", help="chemiscope file (.json or .json.gz; default: PNG name "
                                             "with .json.gz)")
    parser.add_argument("--no-chemiscope", action="store_true", help="write only the PNG")
    parser.add_argument("--level", choices=["structure", "atom"], default="structure",
                        help="one point per structure (pooled, default) or per atom")
    parser.add_argument("--pool", choices=["mean", "sum"], default="mean", help="pooling of atoms")
    parser.add_argument("--method", choices=["pca", "kpca"], default="pca", help="projection")
    parser.add_argument("--kernel", choices=["polynomial", "rbf", "linear"], default="polynomial",
                        help="kernel of kpca (polynomial: (x.y)^degree)")
    parser.add_argument("--degree", type=int, default=2, help="polynomial kernel exponent (zeta)")
    parser.add_argument("--color", help="property colouring the map (see below)")
    parser.add_argument("--features", help="precomputed feature file (.npz/.h5) instead of computing")
    add_hyper_arguments(parser)
    add_compute_arguments(parser)


def run_map(args) -> int:
    from .maps import PCA, KernelPCA, map_properties, plot_map, write_chemiscope

    if not args.output.lower().endswith(".png"):
        raise CLIError(f"the map file must end with .png, got {args.output!r}")
    target = None if args.no_chemiscope else (args.chemiscope or str(Path(args.output).with_suffix(".json.gz")))
    if target is not None and not target.endswith((".json", ".json.gz")):
        raise CLIError(f"the chemiscope file must end with .json or .json.gz, got {target!r}")
    frames, _ = load_frames(args)
    features, hypers = features_for(args, frames)
    x = per_level(features, args.level, args.pool)
    atom_map = args.level == "atom"
    if not atom_map and len(x) != len(frames):
        raise CLIError(f"{len(x)} pooled rows but {len(frames)} structures (some have no centre atom)")
    if len(x) < 3:
        raise CLIError(f"a map needs at least 3 points, got {len(x)}")
    structure = np.asarray(x.structure) if atom_map else None
    center = np.asarray(x.center) if atom_map else None
    props = map_properties(frames, structure, center)
    color = args.color or ("element" if atom_map else
                           "energy_per_atom" if "energy_per_atom" in props else "n_atoms")
    if color not in props:
        raise CLIError(f"unknown --color {color!r}; available: {', '.join(sorted(props))}")
    if args.method == "pca":
        model = PCA(2).fit(x.values)
        coords, name = model.transform(x.values), "PCA"
        axes = tuple(f"PC{i + 1} ({r:.1%} of variance)" for i, r in enumerate(model.explained_variance_ratio_))
    else:
        model = KernelPCA(2, kernel=args.kernel, degree=args.degree).fit(x.values)
        coords, name, axes = model.transform(x.values), "KPCA", ("KPCA 1", "KPCA 2")
    values = np.asarray(props[color]["values"])
    order = None
    if color == "element":
        from ase.data import atomic_numbers
        order = sorted(set(values.tolist()), key=lambda s: atomic_numbers.get(s, 0))
    title = f"{name} of {len(x)} {'atoms' if atom_map else 'structures'}: {_short(hypers)}"
    unit = props[color].get("units")
    label = f"{color} ({unit})" if unit else color
    if values.dtype.kind in "iuf":
        plot_map(args.output, coords, values=values, title=title, color_label=label, axis_labels=axes)
    else:
        plot_map(args.output, coords, categories=values, order=order, title=title, color_label=label,
                 axis_labels=axes)
    print(f"wrote {args.output}: {name} of {len(x)} {args.level} points, {x.values.shape[1]} features, "
          f"coloured by {color}")
    if args.method == "pca":
        print("explained variance ratio: " + ", ".join(f"{r:.3f}" for r in model.explained_variance_ratio_))
    if target is not None:
        write_chemiscope(target, frames, {name: coords}, structure=structure, center=center, color=color,
                         name=Path(target).name.split(".")[0], description=title)
        print(f"wrote {target} (chemiscope)")
    return 0


def _short(hypers: dict) -> str:
    try:
        return describe(tradens.from_dict({k: v for k, v in hypers.items() if k != "gap"}))
    except (TypeError, ValueError, KeyError):
        return "features from file"


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
  FILE.npz|.h5       precomputed features (see 'tradens features')
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
    parser.add_argument("--level", choices=["atom", "structure"], default="atom",
                        help="one point per atom (default) or per pooled structure")
    parser.add_argument("--pool", choices=["mean", "sum"], default="mean", help="pooling of atoms")
    parser.add_argument("--max-points", type=int, default=20000,
                        help="exact up to this many points, subsampled beyond (default 20000)")
    parser.add_argument("--repeats", type=int, default=5, help="random subsets when subsampling")
    parser.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    add_hyper_arguments(parser)
    add_compute_arguments(parser)


def _spec_features(spec: str, args, frames):
    """Features and a label for one representation SPEC."""
    from .analysis import random_projection

    lower = spec.lower()
    if lower.endswith((".npz", ".h5", ".hdf5")):
        features, _ = read_features(spec)
        return features, f"{spec} ({features.values.shape[1]} features)"
    if frames is None:
        raise CLIError(f"representation {spec!r} needs structures: give an input file or --example")
    file_base = read_hypers(args.hypers) if args.hypers else None
    flags = argparse.Namespace(**{**vars(args), "gap": None, "hypers": None, "mixing": None, "channels": None})
    if lower.endswith((".yaml", ".yml", ".json")):
        blank = argparse.Namespace(gap=None, hypers=None, species=None, no_normalize=False)
        calculator, _ = build_calculator(blank, frames, base=read_hypers(spec))
    elif lower.startswith("soap"):
        calculator, _ = build_calculator(argparse.Namespace(gap=spec, hypers=None, species=None), frames)
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
        raise CLIError(f"unknown representation {spec!r}: use full, tr:K, rp:F, a hypers file, "
                       "a feature file or a GAP string")
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
    from .analysis import information_imbalance

    needs_frames = not all(s.lower().endswith((".npz", ".h5", ".hdf5")) for s in (args.a, args.b))
    frames, _ = load_frames(args, required=needs_frames)
    fa, label_a = _spec_features(args.a, args, frames)
    fb, label_b = _spec_features(args.b, args, frames)
    xa, xb = per_level(fa, args.level, args.pool), per_level(fb, args.level, args.pool)
    result = information_imbalance(xa, xb, k=args.k, max_points=args.max_points, n_repeats=args.repeats,
                                   seed=args.seed or 0, progress=not args.quiet)
    mode = "exact" if result.exact else \
        f"subsampled: {result.n_repeats} random subsets of {result.n_used}"
    print(f"A: {label_a}")
    print(f"B: {label_b}")
    print(f"points: {result.n_points} {args.level}s ({mode}), k = {result.k}")
    print(f"Delta(A -> B) = {result.a_to_b:.4f} +- {result.a_to_b_error:.4f}")
    print(f"Delta(B -> A) = {result.b_to_a:.4f} +- {result.b_to_a_error:.4f}")
    if args.json_out:
        write_json(args.json_out, {**result.as_dict(), "a": args.a, "b": args.b, "level": args.level,
                                   "label_a": label_a, "label_b": label_b})
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
    parser.add_argument("-n", "--n-select", type=int, required=True, help="number of points to select")
    parser.add_argument("-o", "--output", required=True, help="extxyz file of the selection")
    parser.add_argument("--method", choices=["fps", "cur"], default="fps", help="selection method")
    parser.add_argument("--level", choices=["structure", "atom"], default="structure",
                        help="select structures (pooled features, default) or atoms")
    parser.add_argument("--pool", choices=["mean", "sum"], default="mean", help="pooling of atoms")
    parser.add_argument("--initial", default="0", help="FPS start: an index, 'random' or 'farthest'")
    parser.add_argument("--indices", help="also write the selected indices to this JSON file")
    parser.add_argument("--features", help="precomputed feature file (.npz/.h5) instead of computing")
    add_hyper_arguments(parser)
    add_compute_arguments(parser)


def run_select(args) -> int:
    from .selection import cur_selection, farthest_point_sampling

    if not args.output.lower().endswith((".xyz", ".extxyz")):
        raise CLIError(f"the selection is written as extxyz: the file must end with .xyz, got {args.output!r}")
    frames, _ = load_frames(args)
    features, _ = features_for(args, frames)
    x = per_level(features, args.level, args.pool)
    if args.method == "fps":
        initial = int(args.initial) if args.initial.lstrip("-").isdigit() else args.initial
        index, score = farthest_point_sampling(x.values, args.n_select, initial=initial, seed=args.seed or 0,
                                               return_distances=True)
    else:
        index, score = cur_selection(x.values, args.n_select, return_scores=True)
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
        write_json(args.indices, {"method": args.method, "level": args.level, "selected": chosen,
                                  key: [None if not np.isfinite(v) else float(v) for v in score]})
        print(f"wrote {args.indices}")
    return 0


def _copy_atoms(atoms):
    """A copy that keeps the single-point results (energy, forces, stress)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    out = atoms.copy()
    if atoms.calc is not None and getattr(atoms.calc, "results", None):
        out.calc = SinglePointCalculator(out, **copy.deepcopy(atoms.calc.results))
    return out


# --------------------------------------------------------------------------- bench
BENCH_EPILOG = """\
Every other argument goes to benchmarks/bench_soap.py (run 'tradens bench -- --help' for them).
The script ships with the source checkout, not with the installed package.

examples:
  tradens bench --quick --output bench.json
  tradens bench --script path/to/bench_soap.py -- --elements 3,25 --channels 16"""


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--script", help="path of bench_soap.py (default: benchmarks/ of the checkout)")


def run_bench(args) -> int:
    candidates = [Path(args.script)] if args.script else [
        Path(__file__).resolve().parents[2] / "benchmarks" / "bench_soap.py",
        Path.cwd() / "benchmarks" / "bench_soap.py",
    ]
    script = next((p for p in candidates if p.is_file()), None)
    if script is None:
        raise CLIError(f"benchmark script not found ({', '.join(str(p) for p in candidates)}); it ships "
                       "with the source checkout: pass --script PATH")
    spec = importlib.util.spec_from_file_location("tradens_bench_soap", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    if not hasattr(module, "main"):
        raise CLIError(f"{script} has no main(argv) function")
    code = module.main(list(args.extra_args))
    return 0 if code is None else int(code)
