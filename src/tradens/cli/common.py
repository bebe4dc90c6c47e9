"""Shared pieces of the command line: input files, hyper options, calculators."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from importlib.resources import files
from typing import Literal, overload

import numpy as np

from ..hypers import SoapHypers, from_dict, to_dict
from ..io import read_features, read_frames, read_hypers
from ..representations.ace import ACE
from ..representations.soap import SOAP


class CLIError(Exception):
    """An error reported to the user as ``tradens: error: <message>`` (exit code 1)."""


BUNDLED = {"hea25": "hea25_sample.xyz", "meam17": "meam17_sample.xyz"}

# flag name -> (path in the SOAP hypers dict, type); None path parts are handled specially
_SOAP_FLAGS = {
    "cutoff": ("cutoff", "radius"),
    "cutoff_width": ("cutoff", "width"),
    "sigma": ("density", "sigma"),
    "n_max": ("radial", "n_max"),
    "radial_basis": ("radial", "kind"),
    "l_max": ("l_max",),
    "channels": ("mixing", "channels"),
    "weights": ("mixing", "weights"),
    "seed": ("mixing", "seed"),
    "coupling": ("coupling",),
    "unknown_species": ("unknown_species",),
}
_DEFAULT_SOAP = {
    "cutoff": {"radius": 5.0},
    "density": {"sigma": 0.5},
    "radial": {"n_max": 8},
    "l_max": 6,
    "mixing": {"mode": "radial+element", "channels": 16, "weights": "random", "seed": 0},
}


def bundled_path(name: str = "hea25") -> str:
    """Path of a bundled sample file (``hea25`` or ``meam17``)."""
    return str(files("tradens") / "data" / BUNDLED[name])


# --------------------------------------------------------------------------- structures
def add_input_arguments(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """Positional structure file plus ``--example``, ``--index`` and ``--format``."""
    parser.add_argument(
        "input", nargs="?", help="structure file (extxyz or any ASE-readable format)"
    )
    parser.add_argument(
        "--example",
        nargs="?",
        const="hea25",
        choices=sorted(BUNDLED),
        default=None,
        help="use a bundled sample instead of INPUT (default hea25: 12 HEA structures, "
        "19 elements)",
    )
    parser.add_argument(
        "--index", default=":", help="ASE index of the structures to read (default ':')"
    )
    parser.add_argument(
        "--format", dest="file_format", default=None, help="ASE file format (default: guessed)"
    )


@overload
def load_frames(
    args: argparse.Namespace, *, required: Literal[True] = True
) -> tuple[list, str]: ...
@overload
def load_frames(args: argparse.Namespace, *, required: bool) -> tuple[list | None, str | None]: ...
def load_frames(
    args: argparse.Namespace, *, required: bool = True
) -> tuple[list | None, str | None]:
    """Structures named by ``args.input`` or ``args.example``, and their path.

    With ``required=True`` (the default) a missing input is a :class:`CLIError`, so both
    results are set; with ``required=False`` both are None when no input was given.
    """
    if args.example and args.input:
        raise CLIError("give an input file or --example, not both")
    path = bundled_path(args.example) if args.example else args.input
    if path is None:
        if required:
            raise CLIError("no input: give a structure file or --example")
        return None, None
    return read_frames(path, index=args.index, format=args.file_format), path


def species_of(frames) -> list[int]:
    """Sorted atomic numbers present in ``frames``."""
    return sorted({int(z) for atoms in frames for z in atoms.numbers})


def parse_species(text: str) -> list[int]:
    """``"Ni,Cu,46"`` or ``"Ni Cu Pd"`` -> atomic numbers."""
    from ase.data import atomic_numbers

    out = []
    for token in text.replace(",", " ").split():
        if token.isdigit():
            z = int(token)
            if not 1 <= z <= 118:
                raise CLIError(
                    f"unknown element {token!r} in --species (atomic numbers are 1..118)"
                )
        elif token.capitalize() in atomic_numbers and token.capitalize() != "X":
            z = atomic_numbers[token.capitalize()]
        else:
            raise CLIError(f"unknown element {token!r} in --species")
        out.append(z)
    if not out:
        raise CLIError("--species is empty")
    return out


def symbols(numbers) -> list[str]:
    """Element symbols of atomic numbers."""
    from ase.data import chemical_symbols

    return [
        chemical_symbols[int(z)] if 0 < int(z) < len(chemical_symbols) else str(z) for z in numbers
    ]


# --------------------------------------------------------------------------- hypers
def add_hyper_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that define the representation (hypers file, GAP string or flags)."""
    group = parser.add_argument_group(
        "representation",
        "A hypers file (YAML/JSON, SOAP or ACE), a GAP string, or flags; flags override\n"
        "the file. Default: tensor-reduced SOAP, cutoff 5 A, n_max 8, l_max 6, sigma 0.5 A,\n"
        "radial+element mixing with K=16 random channels, species from the data.",
    )
    group.add_argument("--hypers", metavar="FILE", help="hypers file (.yaml/.yml/.json)")
    group.add_argument(
        "--gap", metavar="STRING", help='GAP descriptor string, e.g. "soap cutoff=5 ..."'
    )
    group.add_argument("--cutoff", type=float, help="cutoff radius, A")
    group.add_argument("--cutoff-width", type=float, help="cosine taper width below the cutoff, A")
    group.add_argument("--sigma", type=float, help="Gaussian width of the atomic density, A")
    group.add_argument("--n-max", type=int, help="number of radial functions (a count)")
    group.add_argument("--l-max", type=int, help="largest angular degree (inclusive)")
    group.add_argument("--radial-basis", choices=["gaussian_grid", "gto"], help="radial basis")
    group.add_argument(
        "--species", help="elements, e.g. Ni,Cu,Pd or 28,29,46 (default: from the data)"
    )
    group.add_argument(
        "--mixing",
        choices=["radial+element", "element", "radial", "none"],
        help="tensor reduction mode; 'none' is the full SOAP",
    )
    group.add_argument("--channels", "-K", type=int, metavar="K", help="mixed channels K")
    group.add_argument("--weights", choices=["random", "gap", "onehot"], help="mixing weights")
    group.add_argument("--seed", type=int, help="seed of the random mixing weights")
    group.add_argument("--coupling", choices=["tensor", "elementwise"], help="channel coupling")
    group.add_argument(
        "--no-normalize", action="store_true", help="do not normalise feature vectors"
    )
    group.add_argument(
        "--unknown-species",
        choices=["error", "skip"],
        help="elements missing from --species: error (default) or ignore as neighbours",
    )


def _soap_flags_given(args) -> list[str]:
    given = [
        f"--{name.replace('_', '-')}"
        for name in _SOAP_FLAGS
        if getattr(args, name, None) is not None
    ]
    if getattr(args, "mixing", None) is not None:
        given.append("--mixing")
    if getattr(args, "no_normalize", False):
        given.append("--no-normalize")
    return given


def _soap_dict(data: dict) -> dict:
    """Accept ``cutoff: 5.0`` shorthand and drop a top-level ``type``."""
    data = {key: value for key, value in data.items() if key != "type"}
    if isinstance(data.get("cutoff"), (int, float)):
        data["cutoff"] = {"radius": float(data["cutoff"])}
    for key in ("cutoff", "density", "radial", "mixing"):
        if isinstance(data.get(key), dict):
            data[key] = {k: v for k, v in data[key].items() if k != "type"}
    return data


def hypers_dict(args, *, base: dict | None = None) -> dict:
    """The SOAP hypers (plain nested dict) from a file or defaults, with flags applied."""
    data = _soap_dict(base if base is not None else _DEFAULT_SOAP)
    data = json.loads(json.dumps(data))  # deep copy
    if getattr(args, "mixing", None) == "none":
        if args.channels is not None or args.weights is not None or args.seed is not None:
            raise CLIError(
                "--channels/--weights/--seed need a mixing; they conflict with --mixing none"
            )
        data["mixing"] = None
    elif getattr(args, "mixing", None) is not None:
        data["mixing"] = dict(data.get("mixing") or {}, mode=args.mixing)
    for name, path in _SOAP_FLAGS.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if path[0] == "mixing" and data.get("mixing") is None:
            data["mixing"] = {}
        if len(path) == 1:
            data[path[0]] = value
        else:
            data.setdefault(path[0], {})[path[1]] = value
    if getattr(args, "no_normalize", False):
        data["normalize"] = False
    if getattr(args, "species", None):
        data["species"] = parse_species(args.species)
    return data


def build_calculator(args, frames=None, *, base: dict | None = None):
    """The representation requested by ``args`` and its hypers as plain data.

    Returns
    -------
    calculator : SOAP or ACE
    hypers : dict
        ``to_dict`` of its hypers (JSON-safe), plus ``"gap"`` when
        built from a GAP string.
    """
    if getattr(args, "gap", None):
        if (
            getattr(args, "hypers", None)
            or _soap_flags_given(args)
            or getattr(args, "species", None)
        ):
            raise CLIError(
                "--gap defines all hypers; it cannot be combined with --hypers or "
                + ", ".join(_soap_flags_given(args) or ["--species"])
            )
        from ..interop.quip import soap_from_gap

        calculator = soap_from_gap(args.gap)
        return calculator, {**to_dict(calculator.hypers), "gap": args.gap}
    if base is None and getattr(args, "hypers", None):
        base = read_hypers(args.hypers)
    if base is not None and base.get("type", "SoapHypers") != "SoapHypers":
        return _other_calculator(args, base, frames)
    hypers = soap_hypers(args, frames, base=base)
    return SOAP(hypers), to_dict(hypers)


def soap_hypers(args, frames=None, *, base: dict | None = None):
    """The SOAP hypers requested by the flags (and ``base``), without building the calculator."""
    data = hypers_dict(args, base=base)
    if "species" not in data:
        if frames is None:
            raise CLIError("give --species (or structures to take the elements from)")
        data["species"] = species_of(frames)
    return from_dict(data, expected=SoapHypers)


def is_plain_soap(args) -> bool:
    """Whether ``args`` describe SOAP hypers by flags or a SoapHypers file (no GAP string)."""
    if getattr(args, "gap", None):
        return False
    if getattr(args, "hypers", None):
        return read_hypers(args.hypers).get("type", "SoapHypers") == "SoapHypers"
    return True


def _other_calculator(args, base: dict, frames):
    """Non-SOAP hypers (e.g. ``type: AceHypers``): the file defines everything but species."""
    given = _soap_flags_given(args)
    if given:
        raise CLIError(
            f"{', '.join(given)} apply to SOAP hypers only; set them in the "
            f"{base['type']} file instead"
        )
    representations = {"AceHypers": ACE}
    factory = representations.get(base["type"])
    if factory is None:
        raise CLIError(f"unknown hypers type {base['type']!r}; known: SoapHypers, AceHypers")
    data = dict(base)
    if getattr(args, "species", None):
        data["species"] = parse_species(args.species)
    elif "species" not in data:
        if frames is None:
            raise CLIError("give --species (or structures to take the elements from)")
        data["species"] = species_of(frames)
    hypers = from_dict(data)
    return factory(hypers), to_dict(hypers)


def full_soap_size(hypers) -> int | None:
    """Features per atom of the full (unmixed) SOAP with the same S, N, l_max; None for non-SOAP."""
    if not isinstance(hypers, SoapHypers):
        return None
    sn = hypers.n_species * hypers.radial.n_max
    pairs = sn * (sn + 1) // 2
    if hypers.diagonal_radial:
        pairs = hypers.n_species * (hypers.n_species + 1) // 2 * hypers.radial.n_max
    return pairs * (hypers.l_max + 1) + (0 if hypers.covariance_sigma0 is None else 1)


def describe(hypers) -> str:
    """A short human-readable summary of hypers."""
    if isinstance(hypers, SoapHypers):
        mix = (
            "full SOAP"
            if hypers.mixing is None
            else f"TR-SOAP {hypers.mixing.mode} K={hypers.mixing.channels} ({hypers.coupling})"
        )
        return (
            f"{mix}, S={hypers.n_species}, n_max={hypers.radial.n_max}, l_max={hypers.l_max}, "
            f"cutoff={hypers.cutoff.radius:g} A"
        )
    if type(hypers).__name__ == "AceHypers":
        return (
            f"ACE ({hypers.mode}), nu_max={hypers.nu_max}, K={hypers.channels}, "
            f"S={len(hypers.species)}, l_max={list(hypers.l_max)}, "
            f"cutoff={hypers.cutoff.radius:g} A"
        )
    return type(hypers).__name__


# --------------------------------------------------------------------------- features
def add_level_arguments(parser: argparse.ArgumentParser, *, default: str, points: str) -> None:
    """``--level {atom,structure}`` (``points``: what one point is) and ``--pool {mean,sum}``."""
    other = "structure" if default == "atom" else "atom"
    names = {"atom": "atom", "structure": "structure (pooled atoms)"}
    parser.add_argument(
        "--level",
        choices=[default, other],
        default=default,
        help=f"{points}: per {names[default]} (default) or per {names[other]}",
    )
    parser.add_argument("--pool", choices=["mean", "sum"], default="mean", help="pooling of atoms")


def add_feature_file_argument(parser: argparse.ArgumentParser) -> None:
    """``--features FILE``: precomputed features instead of computing them."""
    parser.add_argument(
        "--features", help="precomputed feature file (.npz/.h5/.mts) instead of computing"
    )


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    """dtype, batch size and progress options."""
    parser.add_argument(
        "--dtype", choices=["float64", "float32"], default="float64", help="feature dtype"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="structures per batch (default: packed by size, about 2048 atoms a batch)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: torch's own choice; 1 on a machine shared with other jobs)",
    )


def compute(calculator, frames, args):
    """Features of ``frames`` (numpy), with a progress bar unless ``--quiet``."""
    import torch

    if args.batch_size is not None and args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    threads = getattr(args, "threads", 0)
    if threads < 0:
        raise CLIError(f"--threads must be >= 1 (or 0 for torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    skip_bad = bool(getattr(args, "skip_bad", False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped structures are listed below instead
        features = calculator.compute(
            frames,
            output="numpy",
            dtype=dtype,
            batch_size=args.batch_size,
            progress=not args.quiet,
            skip_bad=skip_bad,
        )
    for index, reason in features.skipped:
        print(f"tradens: skipped structure {index}: {_one_line_reason(reason)}", file=sys.stderr)
    if features.skipped:
        print(f"tradens: skipped {len(features.skipped)} bad structure(s)", file=sys.stderr)
    return features


def _one_line_reason(reason: str) -> str:
    """The first line of an error message."""
    return reason.strip().splitlines()[0] if reason.strip() else reason


def features_for(args, frames, *, spec_features: str | None = None):
    """Features from ``--features FILE`` or computed from the hypers options; plus hypers dict."""
    path = spec_features if spec_features is not None else getattr(args, "features", None)
    if path:
        features, hypers = read_features(path)
        if frames is not None:
            n_struct = int(features.structure.max()) + 1 if len(features) else 0
            if n_struct > len(frames):
                raise CLIError(
                    f"feature file {path!r} has rows of {n_struct} structures but the input "
                    f"has {len(frames)}"
                )
        return features, hypers
    calculator, hypers = build_calculator(args, frames)
    return compute(calculator, frames, args), hypers


def timed(function, *arguments, **keywords):
    """``(result, seconds)``."""
    start = time.perf_counter()
    result = function(*arguments, **keywords)
    return result, time.perf_counter() - start


def per_level(features, level: str, pool: str):
    """Per-atom features, or per-structure pooled ones."""
    from ..analysis.maps import pool_features

    if level == "atom":
        if np.all(np.asarray(features.center) < 0):
            raise CLIError("these features are per structure (averaged); use --level structure")
        return features
    if np.all(np.asarray(features.center) < 0):
        return features
    return pool_features(features, pool)
