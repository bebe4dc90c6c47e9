"""Public entry point of the GAP ``soap`` drop-in (implemented in :mod:`tradens.interop.quip`)."""

from .interop.quip import Descriptor, gap_from_soap, parse_args_str, soap_from_gap

__all__ = ["Descriptor", "gap_from_soap", "parse_args_str", "soap_from_gap"]
