"""The ``tradens`` command line: a thin layer over the public API.

Subcommands live in a registry. Adding one is one function that declares its
arguments, one that runs it, and one registration::

    from tradens.cli import register_subcommand

    def add_fit_arguments(parser):          # an argparse.ArgumentParser
        parser.add_argument("input")

    def run_fit(args) -> int:               # an argparse.Namespace; returns the exit code
        ...
        return 0

    register_subcommand("fit", add_fit_arguments, run_fit, help="fit a linear potential",
                        epilog="examples:\\n  tradens fit train.xyz -o model.pt")

``add_arguments`` and ``run`` may also be ``"module:function"`` strings, imported
only when the subcommand is used. ``fit`` and ``eval`` are reserved: until a
module registers them they end with a clear error. Built-in subcommands are
registered at the bottom of this file; the regression module registers
``fit``/``eval`` by adding its own ``register_subcommand`` lines there (or by
calling it at import time of a module listed in ``EXTENSION_MODULES``).

Errors: a bad input (missing file, unreadable structure, unknown element,
bad hyper value) ends with one line ``tradens: error: ...`` on stderr and exit
code 1 (2 for command-line usage errors); Ctrl-C ends with exit code 130.
Outputs are written atomically, so neither leaves a partial file. Set
``TRADENS_TRACEBACK=1`` (or pass ``--traceback``) to see the full traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from ..density.expansion import UnknownSpeciesError
from .common import CLIError

__all__ = ["main", "register_subcommand", "subcommands", "CLIError", "EXTENSION_MODULES"]

#: Modules imported by :func:`main` before parsing, so that they can register subcommands.
EXTENSION_MODULES: list[str] = []

RESERVED = {
    "fit": "fitting a regression model (provided by the tradens.models module)",
    "eval": "evaluating a fitted model (provided by the tradens.models module)",
}


class _UsageError(Exception):
    """An argparse usage error (exit code 2)."""


@dataclass(frozen=True)
class Subcommand:
    """A registered subcommand (see :func:`register_subcommand`)."""

    name: str
    add_arguments: Callable | str
    run: Callable | str
    help: str
    description: str | None = None
    epilog: str | None = None
    extra_args: bool = False


_SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(
    name: str,
    add_arguments: Callable | str,
    run: Callable | str,
    *,
    help: str,
    description: str | None = None,
    epilog: str | None = None,
    extra_args: bool = False,
    replace: bool = False,
) -> None:
    """Register a ``tradens <name>`` subcommand.

    Parameters
    ----------
    name : str
        Subcommand name.
    add_arguments : callable or "module:function"
        ``add_arguments(parser)`` declares the arguments on an
        ``argparse.ArgumentParser``.
    run : callable or "module:function"
        ``run(args) -> int | None`` does the work (``None`` means 0). Raise
        :class:`CLIError`, ``ValueError``, ``TypeError``, ``OSError`` or
        ``ImportError`` for a bad input: the message is shown on one line.
    help : str
        One-line summary shown by ``tradens --help``.
    description, epilog : str, optional
        Shown by ``tradens <name> --help``; put usage examples in the epilog.
    extra_args : bool
        Pass unrecognised arguments on as ``args.extra_args`` (for wrappers).
    replace : bool
        Allow replacing an existing (non-reserved) registration.
    """
    if not name or not name.replace("-", "").isalnum():
        raise ValueError(f"subcommand name must be alphanumeric (dashes allowed), got {name!r}")
    if name in _SUBCOMMANDS and not replace:
        raise ValueError(f"subcommand {name!r} is already registered (pass replace=True)")
    _SUBCOMMANDS[name] = Subcommand(name, add_arguments, run, help, description, epilog, extra_args)


def subcommands() -> dict[str, Subcommand]:
    """The registered subcommands, by name (a copy)."""
    return dict(_SUBCOMMANDS)


def _resolve(target: Callable | str) -> Callable:
    if callable(target):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


class _ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``tradens: error: ...``; no abbreviations."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=32, width=100)


def build_parser() -> argparse.ArgumentParser:
    """The full ``tradens`` parser with every registered subcommand."""
    from .._version import __version__

    parser = _ArgumentParser(
        prog="tradens",
        formatter_class=_Formatter,
        description="Tensor-reduced atomic density representations: features, maps, "
        "information imbalance and selection.",
        epilog=textwrap.dedent("""\
            examples:
              tradens features --example
              tradens info --species Ni,Cu,Pd --channels 16
              tradens map --example -o hea25_map.png
              tradens imbalance --example --a full --b tr:8
              tradens select --example -n 4 -o subset.xyz
            Run 'tradens <command> --help' for the options and examples of each command."""),
    )
    parser.add_argument("--version", action="version", version=f"tradens {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback on errors"
    )
    commands = parser.add_subparsers(
        dest="command", metavar="<command>", parser_class=_ArgumentParser
    )
    for name in sorted(set(_SUBCOMMANDS) | set(RESERVED)):
        if name in _SUBCOMMANDS:
            spec = _SUBCOMMANDS[name]
            sub = commands.add_parser(
                name,
                help=spec.help,
                description=spec.description or spec.help,
                epilog=spec.epilog,
                formatter_class=_Formatter,
            )
            _resolve(spec.add_arguments)(sub)
        else:
            sub = commands.add_parser(name, help=f"(reserved) {RESERVED[name]}", add_help=True)
        sub.set_defaults(_command=name)
    return parser


def _load_extensions() -> None:
    for module in EXTENSION_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # an optional extension that is not available
            continue


def main(argv: list[str] | None = None) -> int:
    """Run ``tradens`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv or os.environ.get("TRADENS_TRACEBACK", "") not in (
        "",
        "0",
    )
    try:
        _load_extensions()
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        name = getattr(args, "_command", None)
        if name is None:
            parser.print_help(sys.stderr)
            return 2
        if name not in _SUBCOMMANDS:
            raise CLIError(f"'{name}' is reserved for {RESERVED[name]} and is not available yet")
        spec = _SUBCOMMANDS[name]
        if extra and not spec.extra_args:
            raise _UsageError(
                f"unrecognized arguments: {' '.join(extra)} (see 'tradens {name} --help')"
            )
        args.extra_args = [e for e in extra if e != "--"]
        _check_outputs(args)
        code = _resolve(spec.run)(args)
        return 0 if code is None else int(code)
    except KeyboardInterrupt:
        print("tradens: interrupted", file=sys.stderr)
        return 130
    except _UsageError as error:
        print(f"tradens: error: {error}", file=sys.stderr)
        return 2
    except UnknownSpeciesError as error:  # the library's advice, in command-line terms
        if show_traceback:
            raise
        where = "" if error.structure is None else f"structure {error.structure}: "
        print(
            f"tradens: error: {where}element(s) with atomic number {error.missing} not in the "
            f"species list {error.species}; add them with --species or pass --unknown-species skip",
            file=sys.stderr,
        )
        return 1
    except (CLIError, ValueError, TypeError, KeyError, OSError, ImportError, RuntimeError) as error:
        if isinstance(error, BrokenPipeError):  # e.g. `tradens info | head`
            return 1
        if show_traceback:
            raise
        print(f"tradens: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except Exception as error:  # a bug rather than a bad input: still one line, with a hint
        if show_traceback:
            raise
        print(
            f"tradens: error: internal error ({type(error).__name__}: {_one_line(error)}); "
            "rerun with --traceback and report it",
            file=sys.stderr,
        )
        return 1


# argparse destinations that name files a subcommand writes: checked before any work
OUTPUT_OPTIONS = {
    "output": "--output",
    "json": "--json",
    "json_out": "--json",
    "indices": "--indices",
    "chemiscope": "--chemiscope",
}


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail at once (not after the computation) when an output file cannot be written."""
    from ..io import check_output

    for dest, option in OUTPUT_OPTIONS.items():
        value = getattr(args, dest, None)
        if isinstance(value, str):
            try:
                check_output(value, f"{option} file")
            except OSError as error:
                raise CLIError(str(error)) from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError):
        text = f"missing key {text}"
    if isinstance(error, FileNotFoundError) and error.filename and error.strerror:
        text = f"{error.strerror}: {error.filename!r}"
    return " ".join(text.split()) or type(error).__name__


# --------------------------------------------------------------------------- built-in subcommands
from . import analysis as _analysis  # noqa: E402
from . import commands as _cmd  # noqa: E402

register_subcommand(
    "features",
    _cmd.add_features_arguments,
    _cmd.run_features,
    help="compute features of structures and write them (npz, HDF5, metatensor)",
    description=_cmd.FEATURES_DESCRIPTION,
    epilog=_cmd.FEATURES_EPILOG,
)
register_subcommand(
    "info",
    _cmd.add_info_arguments,
    _cmd.run_info,
    help="feature count and memory estimate for hypers, beside the full SOAP",
    epilog=_cmd.INFO_EPILOG,
)
register_subcommand(
    "map",
    _cmd.add_map_arguments,
    _cmd.run_map,
    help="PCA / kernel-PCA map as a PNG plot and a chemiscope file",
    epilog=_cmd.MAP_EPILOG,
)
register_subcommand(
    "imbalance",
    _analysis.add_imbalance_arguments,
    _analysis.run_imbalance,
    help="information imbalance between two representations",
    description=_analysis.IMBALANCE_DESCRIPTION,
    epilog=_analysis.IMBALANCE_EPILOG,
)
register_subcommand(
    "select",
    _analysis.add_select_arguments,
    _analysis.run_select,
    help="farthest point sampling or CUR selection, written as extxyz",
    epilog=_analysis.SELECT_EPILOG,
)
register_subcommand(
    "bench",
    _cmd.add_bench_arguments,
    _cmd.run_bench,
    help="run the SOAP benchmark (benchmarks/bench_soap.py)",
    epilog=_cmd.BENCH_EPILOG,
    extra_args=True,
)

register_subcommand(
    "fit",
    "tradens.cli.fit:add_fit_arguments",
    "tradens.cli.fit:run_fit",
    help="fit a potential (ridge, sparse kernel or learned embedding) and save it",
    epilog=(
        "examples:\n  tradens fit train.xyz -o model.zip\n"
        "  tradens fit train.xyz -o gap.zip --model kernel --n-sparse 500 --zeta 4\n"
        "  tradens fit train.xyz -o learned.zip --model learned -K 8 --epochs 100"
    ),
)
register_subcommand(
    "eval",
    "tradens.cli.fit:add_eval_arguments",
    "tradens.cli.fit:run_eval",
    help="RMSE of a saved potential on labelled structures (and predicted labels)",
    epilog="examples:\n  tradens eval model.zip test.xyz --json errors.json --output predicted.xyz",
)

register_subcommand(
    "export",
    "tradens.cli.fit:add_export_arguments",
    "tradens.cli.fit:run_export",
    help="write a saved potential for MD engines (metatomic .pt or GAP XML)",
    epilog=(
        "examples:\n  tradens export model.zip -o model.pt\n"
        "  tradens export model.zip -o model-f32.pt --dtype float32\n"
        "  tradens export gap.zip -o gap.xml --format gap-xml\n"
        "see docs/engines.md for LAMMPS, i-PI, ASE and quippy"
    ),
)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
