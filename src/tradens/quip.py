"""Public entry point of the GAP ``soap`` drop-in (implemented in :mod:`tradens.interop.quip`)."""

from .interop.quip import Descriptor, parse_args_str, soap_from_gap

__all__ = ["Descriptor", "parse_args_str", "soap_from_gap"]
