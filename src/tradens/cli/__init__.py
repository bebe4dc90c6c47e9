"""The ``tradens`` command line (:func:`main`); one module per group of subcommands."""

from .app import build_parser, main, register_subcommand, subcommands

__all__ = ["build_parser", "main", "register_subcommand", "subcommands"]
