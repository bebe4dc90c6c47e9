"""The ``features``, ``info``, ``map`` and ``bench`` subcommands (see :mod:`tradens.cli`)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

from ..hypers import SoapHypers, from_dict
from ..io import (
    feature_format,
    read_hypers,
    write_features,
)
from .common import (
    CLIError,
    add_compute_arguments,
    add_feature_file_argument,
    add_hyper_arguments,
    add_input_arguments,
    add_level_arguments,
    build_calculator,
    bundled_path,
    compute,
    describe,
    features_for,
    full_soap_size,
    is_plain_soap,
    load_frames,
    per_level,
    soap_hypers,
    species_of,
    symbols,
    timed,
)

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
  .zarr       zarr directory (needs zarr): the same arrays, hypers and names as attributes

examples:
  tradens features --example                        # summary of TR-SOAP on bundled HEA data
  tradens features data.xyz -o features.npz         # default TR-SOAP (K=16), species from the data
  tradens features data.xyz -o f.npz --cutoff 4.5 --n-max 6 --l-max 4 --channels 8
  tradens features data.xyz -o full.npz --mixing none            # the full SOAP
  tradens features data.xyz -o f.npz --hypers hypers.yaml        # hypers from a file (SOAP or ACE)
  tradens features data.xyz -o f.h5 --gap "soap cutoff=5 n_max=8 l_max=6 atom_sigma=0.5 \\
      n_species=2 species_Z={28 29} R_mix=T Z_mix=T K=16 coupling=F"
  tradens features data.xyz -o pooled.npz --pool mean             # one row per structure

large data sets (docs/scaling.md):
  tradens features big.xyz -o f.h5 --chunk-size 1000 --species Ni,Cu   # streamed, resumable
  tradens features big.xyz -o f.zarr --workers 2                  # a local dask cluster
  tradens features big.db -o f.h5 --scheduler tcp://host:8786     # a running dask scheduler
  With --chunk-size, --workers, --scheduler or a .zarr output the structures are read and
  computed chunk by chunk and the rows streamed to the file; an interrupted run keeps its
  finished chunks in OUTPUT.partial/ and the same command resumes it (--restart: start over)."""


def add_features_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument(
        "-o",
        "--output",
        help="output file (.npz, .h5/.hdf5, .zarr or .mts); optional with --example",
    )
    parser.add_argument(
        "--pool", choices=["mean", "sum"], help="write per-structure pooled features"
    )
    add_hyper_arguments(parser)
    add_compute_arguments(parser)
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out structures that fail (bad cell, NaN, unknown element) and list them "
        "(their indices are missing from the output's structure column)",
    )
    group = parser.add_argument_group("streaming and dask (docs/scaling.md)")
    group.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="structures per chunk: stream the input and the output in chunks (resumable); "
        "default 1000 with --workers/--scheduler or a .zarr output",
    )
    group.add_argument(
        "--workers", type=int, default=None, help="compute the chunks on a local dask cluster"
    )
    group.add_argument(
        "--scheduler", default=None, help="address (or scheduler file) of a dask scheduler"
    )
    group.add_argument(
        "--restart", action="store_true", help="ignore the chunks of an interrupted run"
    )


def _streaming(args) -> bool:
    output = str(args.output or "").lower().rstrip("/")
    return (
        args.chunk_size is not None
        or args.workers is not None
        or args.scheduler is not None
        or output.endswith(".zarr")
    )


class _Scan:
    """The structures of a file, read again on every iteration (species from the data)."""

    def __init__(self, path: str, index: str, file_format: str | None):
        self.path, self.index, self.file_format = path, index, file_format

    def __iter__(self):
        from ..representations.stream import iter_structures

        return iter_structures(self.path, index=self.index, format=self.file_format)


def run_features_streamed(args, path: str) -> int:
    """``tradens features`` chunk by chunk (``--chunk-size``, ``--workers``, ``--scheduler``)."""
    import torch

    from ..parallel import make_client
    from ..representations.stream import compute_to_file

    if not args.output:
        raise CLIError("streaming (--chunk-size, --workers, --scheduler) needs -o/--output")
    feature_format(args.output)
    chunk_size = 1000 if args.chunk_size is None else args.chunk_size
    if chunk_size < 1:
        raise CLIError(f"--chunk-size must be >= 1, got {chunk_size}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.scheduler is not None:
        raise CLIError("give --workers or --scheduler, not both")
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    if not Path(path).is_file():
        raise CLIError(f"input file {path!r} does not exist")
    calculator, hypers = build_calculator(args, _Scan(path, args.index, args.file_format))
    client = None
    if args.workers is not None or args.scheduler is not None:
        client = make_client(scheduler=args.scheduler, workers=args.workers)
    try:
        result = compute_to_file(
            calculator,
            path,
            args.output,
            chunk_size=chunk_size,
            batch_size=args.batch_size,
            dtype=torch.float32 if args.dtype == "float32" else torch.float64,
            pool=args.pool,
            hypers=hypers,
            client=client,
            resume=not args.restart,
            threads=getattr(args, "threads", 0),
            skip_bad=bool(getattr(args, "skip_bad", False)),
            index=args.index,
            format=args.file_format,
            progress=not args.quiet,
        )
    finally:
        if client is not None:
            cluster = client.cluster if args.workers is not None else None
            client.close()
            if cluster is not None:
                cluster.close()
    where = f"{args.workers} local workers" if args.workers else args.scheduler or "this process"
    print(f"input      {Path(path).name}: {result.n_structures} structures, {result.n_atoms} atoms")
    print(f"hypers     {describe(calculator.hypers)}")
    print(
        f"features   {result.n_rows} rows x {result.n_features} features per "
        f"{'structure' if args.pool else 'atom'} ({args.dtype})"
    )
    print(
        f"chunks     {result.n_chunks} of {chunk_size} structures: {result.computed} computed "
        f"on {where}, {result.reused} reused from an interrupted run"
    )
    print(
        f"time       {result.seconds:.2f} s "
        f"({result.n_atoms / max(result.seconds, 1e-9):.0f} atoms/s, reading and writing included)"
    )
    for index, reason in result.skipped:
        print(f"skipped    structure {index}: {reason}")
    print(f"wrote      {args.output} ({result.format})")
    return 0


def run_features(args) -> int:
    if _streaming(args):
        if args.example and args.input:
            raise CLIError("give an input file or --example, not both")
        path = bundled_path(args.example) if args.example else args.input
        if path is None:
            raise CLIError("no input: give a structure file or --example")
        return run_features_streamed(args, path)
    frames, path = load_frames(args)
    if not args.output and not args.example:
        raise CLIError("give -o/--output FILE (.npz, .h5/.hdf5 or .mts)")
    if args.output:
        feature_format(args.output)  # a bad suffix fails before the computation
    calculator, hypers = build_calculator(args, frames)
    features, seconds = timed(compute, calculator, frames, args)
    if args.pool:
        from ..analysis.maps import pool_features

        features = pool_features(features, args.pool)
    n_atoms = sum(len(a) for a in frames)
    values = features.values
    full = full_soap_size(calculator.hypers)
    print(f"input      {Path(path).name}: {len(frames)} structures, {n_atoms} atoms")
    elements = species_of(frames)
    print(f"elements   {len(elements)}: {' '.join(symbols(elements))}")
    print(f"hypers     {describe(calculator.hypers)}")
    print(
        f"features   {values.shape[0]} rows x {values.shape[1]} features per "
        f"{'structure' if args.pool else 'atom'} ({values.dtype}, {values.nbytes / 2**20:.2f} MiB)"
    )
    if full is not None and calculator.hypers.mixing is not None:
        print(
            f"full SOAP  {full} features per atom: the tensor-reduced size is "
            f"{calculator.n_features / full:.2%} of it "
            f"({full / calculator.n_features:.1f}x smaller)"
        )
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
    parser.add_argument(
        "--atoms",
        type=int,
        help="number of atoms for the memory estimate (default: from the input, else 1000)",
    )
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    add_hyper_arguments(parser)


def run_info(args) -> int:
    import json

    from ..kernels.budget import available_memory
    from ..representations.soap import soap_size

    frames, _ = load_frames(args, required=False)
    n_atoms: int = (
        args.atoms if args.atoms is not None else (sum(len(a) for a in frames) if frames else 1000)
    )
    if n_atoms < 1:
        raise CLIError(f"--atoms must be >= 1, got {n_atoms}")
    if is_plain_soap(args):
        # counted from the hypers: nothing is allocated, however large the configuration
        h = soap_hypers(args, frames, base=read_hypers(args.hypers) if args.hypers else None)
        n = soap_size(h)[1]
    else:
        calculator, _ = build_calculator(args, frames)
        h = calculator.hypers
        n = calculator.n_features
    full = full_soap_size(h)
    bytes64, bytes32 = 8 * n * n_atoms, 4 * n * n_atoms
    info: dict[str, object] = {
        "hypers": describe(h),
        "species": list(h.species or []),
        "features_per_atom": n,
        "full_soap_features_per_atom": full,
        "atoms": n_atoms,
        "feature_bytes_float64": bytes64,
        "feature_bytes_float32": bytes32,
    }
    coefficients: int | None = None  # density coefficients per atom (SOAP only)
    if isinstance(h, SoapHypers) and full is not None:
        coefficients = h.n_species * h.radial.n_max * (h.l_max + 1) ** 2
        info["density_coefficients_per_atom"] = coefficients
        info["full_soap_bytes_float64"] = 8 * full * n_atoms
    available = available_memory()
    info["available_bytes"] = available
    fits = available is None or bytes32 <= available
    fits64 = available is None or bytes64 <= available
    info["fits_in_memory_float64"] = fits64
    info["fits_in_memory_float32"] = fits
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"hypers                 {info['hypers']}")
    species: list[int] = list(h.species or [])
    if species:
        print(f"elements               {len(species)}: {' '.join(symbols(species))}")
    print(f"features per atom      {n}")
    if full is not None:
        print(f"full SOAP per atom     {full}  ({full / n:.1f}x the features above)")
    print(f"{f'memory, {n_atoms} atoms':<23}{_size(bytes64)} (float64), {_size(bytes32)} (float32)")
    if full is not None and coefficients is not None:
        print(f"  full SOAP            {_size(8 * full * n_atoms)} (float64)")
        print(
            f"density coefficients   {coefficients} per atom "
            f"({_size(8 * coefficients)} per atom while computing, "
            "float64)"
        )
    if available is not None:
        print(f"available memory       {_size(available)}")
        if not fits64:
            print(
                f"does not fit           the features of {n_atoms} atoms need more than the "
                "available memory"
                + (" in float64 (float32 would fit: --dtype float32)" if fits else "")
                + "; compute fewer structures at a time"
                + ("" if fits else ", or use fewer channels K or a mixing instead of the full SOAP")
            )
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
    parser.add_argument(
        "--chemiscope", help="chemiscope file (.json or .json.gz; default: PNG name with .json.gz)"
    )
    parser.add_argument("--no-chemiscope", action="store_true", help="write only the PNG")
    add_level_arguments(parser, default="structure", points="one point")
    parser.add_argument("--method", choices=["pca", "kpca"], default="pca", help="projection")
    parser.add_argument(
        "--kernel",
        choices=["polynomial", "rbf", "linear"],
        default="polynomial",
        help="kernel of kpca (polynomial: (x.y)^degree)",
    )
    parser.add_argument("--degree", type=int, default=2, help="polynomial kernel exponent (zeta)")
    parser.add_argument("--color", help="property colouring the map (see below)")
    add_feature_file_argument(parser)
    add_hyper_arguments(parser)
    add_compute_arguments(parser)


def run_map(args) -> int:
    from ..analysis.maps import PCA, KernelPCA, map_properties, plot_map, write_chemiscope

    if not args.output.lower().endswith(".png"):
        raise CLIError(f"the map file must end with .png, got {args.output!r}")
    target = (
        None
        if args.no_chemiscope
        else (args.chemiscope or str(Path(args.output).with_suffix(".json.gz")))
    )
    if target is not None and not target.endswith((".json", ".json.gz")):
        raise CLIError(f"the chemiscope file must end with .json or .json.gz, got {target!r}")
    frames, _ = load_frames(args)
    features, hypers = features_for(args, frames)
    x = per_level(features, args.level, args.pool)
    atom_map = args.level == "atom"
    if not atom_map and len(x) != len(frames):
        raise CLIError(
            f"{len(x)} pooled rows but {len(frames)} structures (some have no centre atom)"
        )
    if len(x) < 3:
        raise CLIError(f"a map needs at least 3 points, got {len(x)}")
    structure = np.asarray(x.structure) if atom_map else None
    center = np.asarray(x.center) if atom_map else None
    props = map_properties(frames, structure, center)
    color = args.color or (
        "element" if atom_map else "energy_per_atom" if "energy_per_atom" in props else "n_atoms"
    )
    if color not in props:
        raise CLIError(f"unknown --color {color!r}; available: {', '.join(sorted(props))}")
    ratios = None  # explained variance ratio of the two components (PCA only)
    if args.method == "pca":
        pca = PCA(2).fit(x.values)
        coords, name, ratios = pca.transform(x.values), "PCA", pca.explained_variance_ratio_
        axes = (f"PC1 ({ratios[0]:.1%} of variance)", f"PC2 ({ratios[1]:.1%} of variance)")
    else:
        kpca = KernelPCA(2, kernel=args.kernel, degree=args.degree).fit(x.values)
        coords, name, axes = kpca.transform(x.values), "KPCA", ("KPCA 1", "KPCA 2")
    values = np.asarray(props[color]["values"])
    order = None
    if color == "element":
        from ase.data import atomic_numbers

        order = sorted(set(values.tolist()), key=lambda s: atomic_numbers.get(s, 0))
    title = f"{name} of {len(x)} {'atoms' if atom_map else 'structures'}: {_short(hypers)}"
    unit = props[color].get("units")
    label = f"{color} ({unit})" if unit else color
    if values.dtype.kind in "iuf":
        plot_map(
            args.output, coords, values=values, title=title, color_label=label, axis_labels=axes
        )
    else:
        plot_map(
            args.output,
            coords,
            categories=values,
            order=order,
            title=title,
            color_label=label,
            axis_labels=axes,
        )
    print(
        f"wrote {args.output}: {name} of {len(x)} {args.level} points, "
        f"{x.values.shape[1]} features, coloured by {color}"
    )
    if ratios is not None:
        print("explained variance ratio: " + ", ".join(f"{r:.3f}" for r in ratios))
    if target is not None:
        write_chemiscope(
            target,
            frames,
            {name: coords},
            structure=structure,
            center=center,
            color=color,
            name=Path(target).name.split(".")[0],
            description=title,
        )
        print(f"wrote {target} (chemiscope)")
    return 0


def _short(hypers: dict) -> str:
    try:
        return describe(from_dict({k: v for k, v in hypers.items() if k != "gap"}))
    except (TypeError, ValueError, KeyError):
        return "features from file"


# --------------------------------------------------------------------------- bench
BENCH_EPILOG = """\
Every other argument goes to benchmarks/bench_soap.py (run 'tradens bench -- --help' for them).
The script ships with the source checkout, not with the installed package.

examples:
  tradens bench --quick --output bench.json
  tradens bench --script path/to/bench_soap.py -- --elements 3,25 --channels 16"""


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--script", help="path of bench_soap.py (default: benchmarks/ of the checkout)"
    )


def run_bench(args) -> int:
    candidates = (
        [Path(args.script)]
        if args.script
        else [
            Path(__file__).resolve().parents[2] / "benchmarks" / "bench_soap.py",
            Path.cwd() / "benchmarks" / "bench_soap.py",
        ]
    )
    script = next((p for p in candidates if p.is_file()), None)
    if script is None:
        raise CLIError(
            f"benchmark script not found ({', '.join(str(p) for p in candidates)}); it ships "
            "with the source checkout: pass --script PATH"
        )
    spec = importlib.util.spec_from_file_location("tradens_bench_soap", script)
    if spec is None or spec.loader is None:
        raise CLIError(f"{script} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    if not hasattr(module, "main"):
        raise CLIError(f"{script} has no main(argv) function")
    code = module.main(list(args.extra_args))
    return 0 if code is None else int(code)
