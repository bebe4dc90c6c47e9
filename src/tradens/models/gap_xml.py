"""GAP XML export of GAP-style kernel and ridge models (quippy, LAMMPS ``pair_style quip``).

A fitted :class:`~tradens.models.SparseKernelPotential` on a (tensor-reduced)
:class:`~tradens.SOAP` is the model that GAP itself evaluates,

.. math::

    E = \\sum_i \\Big( e_{Z_i} + \\sum_m \\alpha_m\\, \\delta^2 (X_i \\cdot X_m)^{\\zeta} \\Big),

with GAP's dot-product covariance (``covariance_type=2``), ``delta = 1``
(GAP's ``signal_variance`` attribute holds ``delta``; the kernel is
``delta^2 (x . x')^zeta``), ``alpha_m`` the fitted weights, ``X_m`` the sparse
points and ``e_Z`` the per-element reference energies. A
:class:`~tradens.models.LinearPotential` (ridge, ``theta . X``) is the same with
``zeta = 1`` and its weight vector as the one sparse point (per element: one
per element; with a random projection ``P``: ``P^T theta``). tradens' SOAP equals
GAP's ``soap`` descriptor to round-off (``docs/gap-compatibility.md``), so GAP
reproduces tradens' energies, forces and virials to round-off; the descriptor
string comes from :func:`tradens.interop.quip.gap_from_soap`.

Layout of the written file (facts about GAP's format, observed from
``gap_fit`` output and GAP's reader; no GAP code is used):

* one root element named by ``label`` holding ``<Potential label=...
  init_args="IP GAP label=..."/>`` (what ``quippy.potential.Potential(
  param_filename=...)`` reads) and ``<GAP_params>``;
* ``<GAP_data>`` with one ``<e0 Z= value=/>`` per element;
* ``<gpSparse>`` with one ``<gpCoordinates>`` per descriptor: one for the
  whole model, or one per centre element (descriptor ``Z=z``) with
  ``per_element=True``;
* the sparse points inline, one value per line inside ``<sparseX i= alpha=
  sparseCutoff="1.0">`` (one file, so LAMMPS can run from any directory), or
  with ``sparse_files=True`` in side files named by ``sparseX_filename`` with
  their ``sparseX_md5sum`` (``gap_fit``'s layout; GAP reads them faster).
  QUIP reads XML files in 1,024-character pieces and drops the trailing blank
  of each piece, so every line is kept far shorter than that.

``gap_version`` is 1426512068, the oldest GAP version whose ``soap`` defaults
and normalisation are those tradens reproduces; every keyword is written
explicitly anyway.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np

from .._version import __version__
from ..interop.quip import gap_from_soap
from ..io import atomic_path
from ..representations.soap import SOAP
from ._design import LinearBasis, ProjectionBasis
from .kernel import SparseKernelPotential
from .linear import LinearPotential

__all__ = ["write_gap_xml", "gap_xml_text", "GAP_VERSION"]

#: ``gap_version`` written into the file (see the module docstring).
GAP_VERSION = 1426512068

#: QUIP reads the file in pieces of this many characters and trims each piece.
_QUIP_LINE_PIECE = 1024

_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: One ``gpCoordinates``: centre element (``None``: all), points ``[M, F]``, ``alpha [M]``.
_Term = tuple[int | None, np.ndarray, np.ndarray]


def _number(value: float) -> str:
    return repr(float(value))


def _check_soap(model: LinearPotential) -> SOAP:
    """Raise unless GAP's ``soap`` can express ``model``'s representation; return it."""
    soap = model.representation_
    if not isinstance(soap, SOAP):
        raise ValueError(
            f"representation {type(soap).__name__} has no GAP equivalent: GAP XML export "
            "needs a tradens SOAP (full or tensor-reduced)"
        )
    h = soap.hypers
    if h.average:
        raise ValueError(
            "representation average=True (one structure-level vector) has no GAP potential "
            "equivalent: a GAP potential sums per-atom terms"
        )
    if h.center_species is not None:
        raise ValueError(
            "representation center_species is set: a potential needs every atom as a centre"
        )
    return soap


def _kernel_terms(model: SparseKernelPotential, soap: SOAP) -> tuple[float, list[_Term]]:
    """GAP's ``zeta`` and ``(centre element or None, points [M, F], alpha [M])`` groups."""
    zeta = float(model.zeta)
    if not math.isfinite(zeta) or zeta < 1:
        raise ValueError(f"zeta must be a finite number >= 1, got {model.zeta!r}")
    mixing = soap.hypers.mixing
    if zeta != int(zeta) and mixing is not None and not mixing.symmetric:
        raise ValueError(
            f"zeta={model.zeta!r} (not an integer) with mixing symmetric=False: tradens "
            "takes (x.x')^zeta as 0 where x.x' < 0, GAP gives NaN there; use an integer "
            "zeta or symmetric mixing"
        )
    points = np.asarray(model.sparse_points_, dtype=np.float64)  # [M, F]
    alpha = np.asarray(model.weights_, dtype=np.float64)  # [M]
    if points.ndim != 2 or points.shape[1] != soap.n_features:
        raise ValueError(
            f"sparse points have shape {points.shape}, expected [M, {soap.n_features}] "
            "(the representation's features)"
        )
    if alpha.shape != (points.shape[0],):
        raise ValueError(f"weights have shape {alpha.shape}, expected ({points.shape[0]},)")
    if model.sparse_numbers_ is None:
        return zeta, [(None, points, alpha)]
    numbers = np.asarray(model.sparse_numbers_, dtype=np.int64)
    return zeta, [
        (z, points[numbers == z], alpha[numbers == z]) for z in sorted(set(numbers.tolist()))
    ]


def _linear_terms(model: LinearPotential, soap: SOAP) -> tuple[float, list[_Term]]:
    """A ridge model ``theta . phi(X)`` as GAP's ``zeta = 1`` kernel: one point per element.

    ``theta . X = (X . theta)^1``: the weights are the single sparse point (with
    ``alpha = 1``); per element, each element's block; with a random projection
    ``P``, the point is ``P^T theta``.
    """
    theta = np.asarray(model.weights_, dtype=np.float64)  # [D]
    basis = model.basis_
    n_features = soap.n_features
    one = np.ones(1)
    if isinstance(basis, ProjectionBasis):
        matrix = basis.matrix.detach().cpu().numpy().astype(np.float64)  # [D, F]
        return 1.0, [(None, (theta @ matrix)[None, :], one)]
    if not isinstance(basis, LinearBasis) or basis.n_features != n_features:
        raise ValueError(f"unexpected basis {type(basis).__name__} of a LinearPotential")
    if basis.species is None:
        return 1.0, [(None, theta[None, :], one)]
    blocks = theta.reshape(len(basis.species), n_features)  # [element, F]
    return 1.0, [
        (int(z), blocks[s][None, :], one)
        for s, z in sorted(enumerate(basis.species), key=lambda pair: pair[1])
    ]


def _terms(model) -> tuple[SOAP, float, list[_Term]]:
    """Raise unless GAP can express ``model``; its SOAP, ``zeta`` and sparse groups."""
    if not isinstance(model, LinearPotential) or (
        type(model) is not LinearPotential and not isinstance(model, SparseKernelPotential)
    ):
        raise TypeError(
            "GAP XML export needs a fitted SparseKernelPotential (GAP's sparse GP) or "
            f"LinearPotential (GAP's zeta=1 dot-product kernel), got {type(model).__name__}"
        )
    model._check_fitted()
    soap = _check_soap(model)
    if isinstance(model, SparseKernelPotential):
        zeta, terms = _kernel_terms(model, soap)
    else:
        zeta, terms = _linear_terms(model, soap)
    for _, points, alpha in terms:
        if not (np.isfinite(points).all() and np.isfinite(alpha).all()):
            raise ValueError("the model's sparse points or weights are not finite")
    references = np.asarray(model.baseline_.reference_energies_, dtype=np.float64)
    if not np.isfinite(references).all():
        raise ValueError("the model's reference energies are not finite")
    return soap, zeta, terms


def _coordinates(
    label: str,
    index: int,
    descriptor: str,
    zeta: float,
    points: np.ndarray,
    alpha: np.ndarray,
    sparse_file: tuple[str, str] | None = None,
) -> list[str]:
    """``<gpCoordinates>`` lines: GAP's descriptor, kernel and sparse points ``[M, d]``.

    With ``sparse_file = (name, md5)`` the points are in that side file (GAP's
    ``sparseX_filename``), else inline.
    """
    side = (
        ""
        if sparse_file is None
        else (f' sparseX_filename="{sparse_file[0]}" sparseX_md5sum="{sparse_file[1]}"')
    )
    lines = [
        f'    <gpCoordinates label="{label}{index}" dimensions="{points.shape[1]}" '
        'signal_variance="1.0" signal_mean="0.0" sparsified="T" n_permutations="1" '
        f'covariance_type="2" zeta="{_number(zeta)}" n_sparseX="{points.shape[0]}"{side}>',
        f"      <descriptor>{descriptor}</descriptor>",
        '      <permutation i="1">1</permutation>',
    ]
    for i, (a, x) in enumerate(zip(alpha, points, strict=True), start=1):
        head = f'      <sparseX i="{i}" alpha="{_number(a)}" sparseCutoff="1.0"'
        if sparse_file is not None:
            lines.append(head + "/>")
            continue
        lines.append(head + ">")
        lines.extend(_number(v) for v in x)  # one value per line: QUIP's reader is safe
        lines.append("      </sparseX>")
    lines.append("    </gpCoordinates>")
    return lines


def _sparse_text(points: np.ndarray) -> str:
    """GAP's ``sparseX`` side file: the points ``[M, d]``, one value per line, point-major."""
    return "\n".join(_number(v) for v in points.reshape(-1)) + "\n"


def _render(
    model: LinearPotential, label: str, side_prefix: str | None
) -> tuple[str, dict[str, str]]:
    """``(XML text, {side file name: text})``; side files only when ``side_prefix`` is given."""
    if not isinstance(label, str) or not _LABEL.match(label):
        raise ValueError(
            f"label must be a name of letters, digits and '_' not starting with a digit, "
            f"got {label!r}"
        )
    soap, zeta, terms = _terms(model)
    blocks: list[str] = []
    sides: dict[str, str] = {}
    for index, (centre, points, alpha) in enumerate(terms, start=1):
        if soap.hypers.covariance_sigma0 is None:  # GAP's vectors end in the sigma0 slot (0)
            points = np.concatenate([points, np.zeros((points.shape[0], 1))], axis=1)
        descriptor = gap_from_soap(soap, centers=None if centre is None else (centre,))
        side = None
        if side_prefix is not None:
            name = f"{side_prefix}.sparseX.{label}{index}"
            sides[name] = _sparse_text(points)
            side = (name, hashlib.md5(sides[name].encode()).hexdigest())
        blocks += _coordinates(label, index, descriptor, zeta, points, alpha, side)
    species = model.baseline_.species_
    energies = np.asarray(model.baseline_.reference_energies_, dtype=np.float64)
    lines = [
        f"<{label}>",
        f"  <!-- tradens {__version__}: {type(model).__name__} exported by write_gap_xml -->",
        f'  <Potential label="{label}" init_args="IP GAP label={label}"/>',
        f'  <GAP_params label="{label}" gap_version="{GAP_VERSION}">',
        '  <GAP_data do_core="F">',
    ]
    for z, e in zip(species, energies, strict=True):
        lines.append(f'    <e0 Z="{int(z)}" value="{_number(e)}"/>')
    lines += [
        "  </GAP_data>",
        f'  <gpSparse label="{label}" n_coordinate="{len(terms)}" fitted="T">',
        *blocks,
        "  </gpSparse>",
        "  </GAP_params>",
        f"</{label}>",
    ]
    longest = max(len(line) for line in lines)
    if longest >= _QUIP_LINE_PIECE:
        raise ValueError(
            f"a line of the GAP XML has {longest} characters; QUIP reads at most "
            f"{_QUIP_LINE_PIECE - 1} safely (descriptor string too long?)"
        )
    return "\n".join(lines) + "\n", sides


def gap_xml_text(model: LinearPotential, *, label: str = "GAP_tradens") -> str:
    """The self-contained GAP XML of ``model`` as a string (see :func:`write_gap_xml`)."""
    return _render(model, label, None)[0]


def write_gap_xml(
    model: LinearPotential,
    path: str | os.PathLike,
    *,
    label: str = "GAP_tradens",
    sparse_files: bool = False,
) -> None:
    """Write a fitted sparse kernel (or ridge) potential as a GAP potential XML file.

    The file runs in GAP's own engine: ``quippy.potential.Potential(
    param_filename=path)`` (an ASE calculator) and LAMMPS ``pair_style quip``
    (``pair_coeff * * path "IP GAP label=<label>" Z1 Z2 ...``), and gives the
    same energies, forces and virials as ``model.predict`` to round-off.

    Parameters
    ----------
    model : SparseKernelPotential or LinearPotential
        Fitted, on a :class:`~tradens.SOAP` (full or tensor-reduced with GAP's
        mixing weights, ``weights="gap"``). Not modified. A ``LinearPotential``
        (plain, per element or on a random projection) is written as GAP's
        ``zeta = 1`` kernel with its weights as the sparse point(s).
    path : str or os.PathLike
        Output file, written atomically.
    label : str
        GAP label of the potential (letters, digits, ``_``).
    sparse_files : bool
        False (default): one self-contained file, the sparse points inline.
        True: the sparse points in side files ``<path>.sparseX.<label><i>``
        next to it (with their md5 sums, as ``gap_fit`` writes them), which
        GAP reads about 10x faster than inline points (inline: about 3 MB/s,
        i.e. seconds per 10^6 values); LAMMPS then needs them in its working
        directory, quippy finds them next to the XML.

    Raises
    ------
    TypeError
        For a model other than ``SparseKernelPotential`` / ``LinearPotential``.
    ValueError
        For a setting GAP cannot express, named in the message: a representation
        other than SOAP, ``average=True``, the ``"gto"`` radial basis, mixing
        weights other than GAP's (``"random"``, ``"given"``, ``"onehot"``,
        learnable or changed), a non-integer ``zeta`` with non-symmetric mixing;
        also for an unfitted model or an invalid ``label``.

    Notes
    -----
    Options that only shape the fit (``alphas``, ``cv``, property and
    configuration weights, ``selection``) do not enter the prediction and are
    not written. GAP treats elements outside ``species`` as neighbours it
    skips, where tradens' SOAP may raise (``unknown_species="error"``).

    Examples
    --------
    >>> from tradens.models.gap_xml import write_gap_xml
    >>> write_gap_xml(model, "model.xml")  # doctest: +SKIP
    """
    path = Path(path)
    text, sides = _render(model, label, path.name if sparse_files else None)
    for name, content in sides.items():  # side files first: the XML never names a missing one
        with atomic_path(path.parent / name) as tmp:
            Path(tmp).write_text(content)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
