"""Write fitted potentials for MD engines: :func:`export`.

Formats (``docs/engines.md``):

* ``"metatomic"`` (default): a TorchScript ``metatomic.torch.AtomisticModel`` for
  LAMMPS (``pair_style metatomic``), i-PI, ASE (``metatomic-ase``), TorchSim and
  every other metatomic engine (:mod:`tradens.models.metatomic`);
* ``"gap-xml"``: GAP's potential XML for a :class:`~tradens.models.SparseKernelPotential`
  on SOAP / TR-SOAP, for quippy and LAMMPS ``pair_style quip``
  (:mod:`tradens.models.gap_xml`).
"""

from __future__ import annotations

import os

import torch

__all__ = ["export", "FORMATS"]

FORMATS = ("metatomic", "gap-xml")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def export(
    model,
    path: str | os.PathLike,
    *,
    format: str = "metatomic",
    dtype: str | torch.dtype = "float64",
) -> None:
    """Write a fitted potential to ``path`` in an MD engine's format (atomically).

    Parameters
    ----------
    model : potential
        A fitted tradens potential (see the format for which ones).
    path : str or os.PathLike
        Output file (``.pt`` for metatomic, ``.xml`` for GAP).
    format : {"metatomic", "gap-xml"}
        Target format.
    dtype : {"float64", "float32"} or torch.dtype
        Floating-point type of a metatomic export (GAP XML is always float64).

    Raises
    ------
    ValueError
        For an unknown format or dtype, an unfitted model, or an option the format
        cannot express (named in the message).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {list(FORMATS)}")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    if not hasattr(model, "_check_fitted"):
        raise ValueError(f"{type(model).__name__} is not a tradens potential")
    model._check_fitted()
    if format == "metatomic":
        from .metatomic import export_metatomic

        export_metatomic(model, path, dtype=dtype)
        return
    if dtype != torch.float64:
        raise ValueError("GAP XML is written in float64 only (dtype='float64')")
    from .gap_xml import write_gap_xml

    write_gap_xml(model, path)
