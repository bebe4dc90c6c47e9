"""Drop-in replacement for ``quippy.descriptors.Descriptor`` (the ``soap`` descriptor).

``Descriptor(args_str)`` parses a GAP descriptor string and ``calc(atoms)``
returns a dict laid out as quippy-ase 0.10.3's: ``"data" [centre, d]``,
``"ci"`` (1-based centre atom indices), ``"has_data"`` and
``"covariance_cutoff"``. Values agree with GAP to round-off; the conventions
are documented in ``docs/gap-compatibility.md``. This module contains no GAP
code: it is written from the published maths and the observable behaviour.

Examples
--------
>>> import ase.build
>>> from tradens.quip import Descriptor
>>> d = Descriptor("soap cutoff=4.0 l_max=3 n_max=4 atom_sigma=0.5 n_species=2 species_Z={28 29} "
...                "R_mix=T Z_mix=T K=4 coupling=F")
>>> d.dimensions()
17
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from ..density.embeddings import gap_weights
from ..hypers import Cutoff, Density, Mixing, RadialBasis, SoapHypers
from ..representations.soap import SOAP, _plan, pair_plan
from ..systems.batch import as_batch

__all__ = ["Descriptor", "gap_from_soap", "parse_args_str", "soap_from_gap"]

_ALIASES = {"atom_gaussian_width": "atom_sigma", "normalize": "normalise"}
_DEFAULTS = {
    "cutoff": None,
    "cutoff_transition_width": 0.5,
    "n_max": None,
    "l_max": None,
    "atom_sigma": None,
    "n_species": 1,
    "species_z": [0],
    "central_weight": 1.0,
    "central_reference_all_species": None,
    "average": False,
    "diagonal_radial": False,
    "covariance_sigma0": 0.0,
    "normalise": True,
    "basis_error_exponent": 10.0,
    "n_z": 1,
    "z": [0],
    "radial_basis": "",
    "cutoff_dexp": 0,
    "cutoff_scale": 1.0,
    "cutoff_rate": 1.0,
    "nu_r": 2,
    "nu_s": 2,
    "r_mix": False,
    "z_mix": False,
    "sym_mix": False,
    "coupling": True,
    "k": 0,
    "mix_shift": 0,
    "z_map": "",
}
_MANDATORY = ("cutoff", "n_max", "l_max", "atom_sigma")
_BOOLS = {
    "average",
    "diagonal_radial",
    "normalise",
    "r_mix",
    "z_mix",
    "sym_mix",
    "coupling",
    "central_reference_all_species",
}
_INTS = {"n_max", "l_max", "n_species", "n_z", "nu_r", "nu_s", "k", "mix_shift", "cutoff_dexp"}
_LISTS = {"species_z", "z"}


def _bool(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("t", "true", "1"):
        return True
    if lowered in ("f", "false", "0"):
        return False
    raise ValueError(f"keyword {key!r} expects T or F, got {value!r}")


def _check_balanced(text: str) -> None:
    """Raise a ValueError naming the position of an unbalanced brace or quote."""
    depth, opened, quote = 0, -1, -1
    for position, char in enumerate(text):
        if quote >= 0:
            if char == '"':
                quote = -1
            continue
        if char == '"':
            quote = position
        elif char == "{":
            if depth:
                raise ValueError(f"nested '{{' at position {position} of the descriptor string")
            depth, opened = 1, position
        elif char == "}":
            if not depth:
                raise ValueError(
                    f"unbalanced '}}' at position {position} of the descriptor string: {text!r}"
                )
            depth = 0
    if quote >= 0:
        raise ValueError(f"unclosed '\"' at position {quote} of the descriptor string: {text!r}")
    if depth:
        raise ValueError(f"unclosed '{{' at position {opened} of the descriptor string: {text!r}")


def parse_args_str(args_str: str) -> dict:
    """Parse a GAP ``soap`` descriptor string into a dict (lower-case keys).

    Raises
    ------
    ValueError
        For a descriptor other than ``soap``, an unknown or misspelled keyword
        (named in the message), a malformed value, unbalanced braces or quotes,
        or a missing mandatory keyword.
    TypeError
        If ``args_str`` is not a string.

    Notes
    -----
    A keyword given twice (also through an alias such as
    ``atom_gaussian_width``) takes its last value, as in GAP.
    """
    if not isinstance(args_str, str):
        raise TypeError(f"the descriptor must be a string, got {type(args_str).__name__}")
    _check_balanced(args_str)
    matches = list(
        re.finditer(r"(\S+?)=\{([^}]*)\}|(\S+?)=(\"[^\"]*\"|\S+)|(\S+)", args_str.strip())
    )
    if not matches:
        raise ValueError("empty descriptor string")
    first = matches[0].group(5)
    if first is None or first.lower() != "soap":
        raise ValueError(f"only the 'soap' descriptor is supported, got {args_str.split()[0]!r}")
    parsed: dict = {}
    spelled: dict[str, str] = {}  # keyword as the user wrote it
    for match in matches[1:]:
        brace_key, brace_value, key, value, bare = match.groups()
        token = match.group(0)
        if bare:
            key, value = bare, None
        elif brace_key:
            key, value = brace_key, brace_value
        if "=" in key or not key:
            raise ValueError(f"malformed token {token!r} in the descriptor string")
        name = _ALIASES.get(key.lower(), key.lower())
        if name not in _DEFAULTS:
            raise ValueError(f"unsupported or misspelled soap keyword {key!r} (in {token!r})")
        if value is None:
            if name not in _BOOLS:
                raise ValueError(f"soap keyword {key!r} needs a value ({key}=...)")
            value = "T"
        spelled[name] = key
        value = value.strip('"')
        try:
            if name in _BOOLS:
                parsed[name] = _bool(key, value)
            elif name in _INTS:
                parsed[name] = int(value)
            elif name in _LISTS:
                parsed[name] = [int(v) for v in value.replace(",", " ").split()]
            elif name in ("radial_basis", "z_map"):
                parsed[name] = value
            else:
                parsed[name] = float(value)
                if not math.isfinite(parsed[name]):
                    raise ValueError(f"bad value {value!r} for soap keyword {key!r} (not finite)")
        except ValueError as error:
            if "keyword" in str(error):
                raise
            raise ValueError(f"bad value {value!r} for soap keyword {key!r}") from None
    for name in _MANDATORY:
        if name not in parsed:
            raise ValueError(f"missing mandatory soap keyword {name!r}")
    for name in _LISTS:
        if name in parsed and not parsed[name]:
            raise ValueError(
                f"soap keyword {spelled[name]!r} needs at least one atomic number, got {{}}"
            )
    for name in ("n_species", "n_z"):
        if parsed.get(name, 1) < 1:
            raise ValueError(f"soap keyword {spelled[name]!r} must be >= 1, got {parsed[name]}")
    for name in ("nu_r", "nu_s"):
        if not 0 <= parsed.get(name, 2) <= 2:
            raise ValueError(
                f"soap keyword {spelled[name]!r} must be 0, 1 or 2, got {parsed[name]}"
            )
    if parsed.get("n_species", 1) > 1 and "species_z" not in parsed:
        raise ValueError("missing mandatory parameter species_Z (needed when n_species > 1)")
    return {**_DEFAULTS, **parsed}


def _mix_mode(args: dict) -> str | None:
    if args["r_mix"] and args["z_mix"]:
        return "radial+element"
    if args["z_mix"]:
        return "element"
    if args["r_mix"]:
        return "radial"
    return None


def soap_from_gap(args_str: str) -> SOAP:
    """A :class:`~tradens.representations.soap.SOAP` equivalent to a GAP ``soap`` string."""
    args = parse_args_str(args_str)
    species = args["species_z"]
    if len(species) != args["n_species"]:
        raise ValueError(f"n_species={args['n_species']} but species_Z has {len(species)} entries")
    if args["radial_basis"].upper() not in ("", "EQUISPACED_GAUSS"):
        raise ValueError(
            f"radial_basis={args['radial_basis']!r} is not supported (only EQUISPACED_GAUSS)"
        )
    if args["cutoff_dexp"] != 0:
        raise ValueError("cutoff_dexp != 0 is not supported")
    mode = _mix_mode(args)
    if args["sym_mix"] and mode is None:
        raise ValueError("form_mix_W: not mixing anything (sym_mix needs R_mix or Z_mix)")
    compress = mode is not None or args["nu_r"] != 2 or args["nu_s"] != 2 or args["z_map"]
    if args["diagonal_radial"] and compress:
        raise ValueError("can't combine diagonal_radial with any other compression strategies")
    if mode is not None and args["nu_r"] != 2:
        raise ValueError("(nu_R, nu_S) = (2, 2) required to use channel mixing")
    if mode is not None and args["z_map"]:
        raise ValueError("mixing and Z_map cannot be used together")
    if mode is not None and args["k"] < 1:
        raise ValueError(f"K must be >= 1 with mixing, got {args['k']}")
    wildcard = species == [0]
    centers = None if args["z"] == [0] else tuple(args["z"])
    central_all = args["central_reference_all_species"]
    hypers = SoapHypers(
        cutoff=Cutoff(radius=args["cutoff"], width=args["cutoff_transition_width"]),
        density=Density(
            sigma=args["atom_sigma"],
            center_weight=args["central_weight"],
            center_all_species=central_all,
        ),
        radial=RadialBasis(
            kind="gaussian_grid", n_max=args["n_max"], error_exponent=args["basis_error_exponent"]
        ),
        l_max=args["l_max"],
        species=None if wildcard else tuple(species),
        mixing=None
        if mode is None
        else Mixing(
            mode=mode,
            channels=args["k"],
            weights="gap",
            seed=args["mix_shift"],
            symmetric=args["sym_mix"],
        ),
        coupling="tensor" if args["coupling"] or mode is None else "elementwise",
        normalize=args["normalise"],
        average=args["average"],
        diagonal_radial=args["diagonal_radial"],
        covariance_sigma0=args["covariance_sigma0"],
        center_species=centers,
        unknown_species="skip",
    )
    soap = SOAP(hypers)
    if mode is None and (args["nu_r"] != 2 or args["nu_s"] != 2 or args["z_map"]):
        _install_compression(soap, args)
    return soap


_GAP_MIX_FLAGS = {
    "radial+element": "R_mix=T Z_mix=T",
    "element": "R_mix=F Z_mix=T",
    "radial": "R_mix=T Z_mix=F",
}


def _gap_number(value: float) -> str:
    """A float as GAP reads it back exactly (shortest round-trip form)."""
    return repr(float(value))


def _gap_bool(value: bool) -> str:
    return "T" if value else "F"


def _gap_list(values) -> str:
    return "{" + " ".join(str(int(v)) for v in values) + "}"


def gap_from_soap(soap: SOAP, centers: tuple[int, ...] | list[int] | None = None) -> str:
    """The GAP ``soap`` descriptor string of a :class:`~tradens.representations.soap.SOAP`.

    The inverse of :func:`soap_from_gap`: GAP (quippy's ``Descriptor``, GAP
    potentials) computes from the returned string the same vectors as ``soap``
    (to round-off), with GAP's trailing ``covariance_sigma0`` element, which
    ``soap`` has only when ``covariance_sigma0`` is set. Every keyword is written
    explicitly, so GAP's version-dependent defaults do not matter.

    Parameters
    ----------
    soap : SOAP
        Full or tensor-reduced SOAP (not modified).
    centers : sequence of int, optional
        Atomic numbers of the centres (GAP ``n_Z``/``Z``), overriding
        ``soap.hypers.center_species`` (a GAP potential uses one descriptor per
        centre element).

    Returns
    -------
    str
        ``"soap cutoff=... l_max=... ..."``.

    Raises
    ------
    TypeError
        If ``soap`` is not a ``SOAP``.
    ValueError
        For settings GAP's ``soap`` cannot express, named in the message: the
        ``"gto"`` radial basis, mixing weights other than GAP's
        (``weights="gap"``), learnable or changed weights, and the fixed
        ``nu_R``/``nu_S``/``Z_map`` matrices that :func:`soap_from_gap` installs.

    Examples
    --------
    >>> from tradens import SOAP
    >>> soap = SOAP(cutoff=4.0, l_max=3, radial={"n_max": 4}, species=[28, 29],
    ...             mixing={"channels": 4, "weights": "gap", "symmetric": False})
    >>> gap_from_soap(soap).split()[:3]
    ['soap', 'cutoff=4.0', 'cutoff_transition_width=0.5']
    """
    if not isinstance(soap, SOAP):
        raise TypeError(f"expected a tradens SOAP, got {type(soap).__name__}")
    h = soap.hypers
    if h.radial.kind != "gaussian_grid":
        raise ValueError(
            f"radial basis kind={h.radial.kind!r} has no GAP equivalent "
            "(GAP's soap uses EQUISPACED_GAUSS, tradens' 'gaussian_grid')"
        )
    if soap.fixed_matrices is not None:
        raise ValueError(
            "this SOAP carries fixed channel matrices (GAP's nu_R/nu_S/Z_map compression, "
            "installed by soap_from_gap); they are not recorded in its hypers and cannot be "
            "written back as a descriptor string"
        )
    center_all = soap.center_all_species
    words = [
        "soap",
        f"cutoff={_gap_number(h.cutoff.radius)}",
        f"cutoff_transition_width={_gap_number(h.cutoff.width)}",
        f"n_max={h.radial.n_max}",
        f"l_max={h.l_max}",
        f"atom_sigma={_gap_number(h.density.sigma)}",
        f"central_weight={_gap_number(h.density.center_weight)}",
        f"central_reference_all_species={_gap_bool(center_all)}",
        f"basis_error_exponent={_gap_number(h.radial.error_exponent)}",
    ]
    if h.species is not None:
        words += [f"n_species={len(h.species)}", f"species_Z={_gap_list(h.species)}"]
    words += [
        f"normalise={_gap_bool(h.normalize)}",
        f"covariance_sigma0={_gap_number(h.covariance_sigma0 or 0.0)}",
    ]
    if h.average:
        words.append("average=T")
    if h.diagonal_radial:
        words.append("diagonal_radial=T")
    chosen = h.center_species if centers is None else tuple(int(z) for z in centers)
    if chosen is not None:
        words += [f"n_Z={len(chosen)}", f"Z={_gap_list(chosen)}"]
    mix = h.mixing
    if mix is not None:
        _check_gap_weights(soap)
        words += [
            _GAP_MIX_FLAGS[mix.mode],
            f"K={mix.channels}",
            f"sym_mix={_gap_bool(mix.symmetric)}",
            f"coupling={_gap_bool(h.coupling == 'tensor')}",
            f"mix_shift={mix.seed}",
        ]
    return " ".join(words)


def _check_gap_weights(soap: SOAP) -> None:
    """Raise unless ``soap``'s mixing weights are exactly those GAP draws."""
    h = soap.hypers
    mix = h.mixing
    if mix is None:
        return
    if mix.weights != "gap":
        raise ValueError(
            f"mixing weights={mix.weights!r} have no GAP equivalent: GAP draws its own "
            "weights (tradens weights='gap', seed = GAP's mix_shift) and cannot read others"
        )
    if mix.learnable:
        raise ValueError(
            "mixing learnable=True: trained weights have no GAP equivalent (GAP only draws "
            "its fixed random weights)"
        )
    species = [0] if h.species is None else list(h.species)
    stored = [soap.weights1, soap.weights2]
    for density in (1, 2):
        current = stored[density - 1]
        if current is None:
            if density == 2 and mix.symmetric:
                continue
            raise ValueError(f"mixing weights{density} are missing")
        expected = gap_weights(
            mix.mode, species, h.radial.n_max, mix.channels, mix_shift=mix.seed, density=density
        )
        values = torch.as_tensor(current).detach().cpu().numpy()  # a buffer or a Parameter
        if not np.array_equal(values, expected):
            raise ValueError(
                f"mixing weights{density} differ from GAP's (weights='gap', mix_shift="
                f"{mix.seed}): changed weights have no GAP equivalent"
            )


def _install_compression(soap: SOAP, args: dict) -> None:
    """GAP's ``nu_R``/``nu_S`` and ``Z_map`` compressions as fixed mixing matrices."""
    h = soap.hypers
    S, N = h.n_species, h.radial.n_max
    species = list(h.species) if h.species is not None else [0]
    if args["z_map"]:
        groupings = [g for g in args["z_map"].split(":")]
        matrices = [_group_matrix(g, species, N) for g in groupings]
        if len(matrices) == 1:
            matrices.append(matrices[0])
        symmetric = len(groupings) == 1
    else:
        matrices = []
        for density in (1, 2):
            radial = np.eye(N) if args["nu_r"] >= density else np.ones((N, 1))
            element = np.eye(S) if args["nu_s"] >= density else np.ones((S, 1))
            matrices.append(np.kron(element, radial))  # [S*N, K_i]
        symmetric = args["nu_r"] != 1 and args["nu_s"] != 1
    k1, k2 = matrices[0].shape[1], matrices[1].shape[1]
    if symmetric:
        plan = pair_plan(
            mode="radial+element",
            coupling="tensor",
            symmetric=True,
            n_species=S,
            n_max=N,
            channels=k1,
        )
    else:
        plan = _plan([(a, b, 1.0) for a in range(k1) for b in range(k2)], k1, k2)
    soap.plan = plan
    soap.fixed_matrices = (torch.as_tensor(matrices[0]), torch.as_tensor(matrices[1]))


def _group_matrix(grouping: str, species: list[int], n_max: int) -> np.ndarray:
    try:
        groups = [[int(z) for z in g.split()] for g in grouping.split(",")]
    except ValueError:
        raise ValueError(f"Z_map groups must be atomic numbers, got {grouping!r}") from None
    if any(not g for g in groups):
        raise ValueError(f"Z_map has an empty group: {grouping!r}")
    matrix = np.zeros((len(species), len(groups)))
    for g, members in enumerate(groups):
        for z in members:
            if z not in species:
                raise ValueError(f"Z_map element {z} is not in species_Z {species}")
            matrix[species.index(z), g] = 1.0
    return np.kron(matrix, np.eye(n_max))


class Descriptor:
    """GAP-compatible ``soap`` descriptor (see module docstring).

    Parameters
    ----------
    args_str : str
        A GAP descriptor string starting with ``soap``.
    """

    def __init__(self, args_str: str):
        self.args_str = args_str
        self.soap = soap_from_gap(args_str)

    def dimensions(self) -> int:
        """Length of each descriptor vector (including the ``covariance_sigma0`` slot)."""
        return self.soap.n_features

    def calc(self, atoms, grad: bool = False) -> dict:
        """Descriptor of one ``ase.Atoms`` in quippy's layout.

        Parameters
        ----------
        atoms : ase.Atoms
            Periodic or not; not modified.
        grad : bool
            Also return ``"grad_data" [row, 3, d]`` and ``"grad_index_0based"
            [row, 2]`` in quippy's layout (see :meth:`_gradients`).
        """
        if grad:
            return self._gradients(atoms)
        batch = as_batch(atoms)
        with torch.no_grad():
            values, rows = self.soap.forward(batch)
        data = values.numpy()
        centers = self.soap.center_rows(batch).numpy()
        return {
            "data": data,
            "ci": (centers + 1).astype(np.int32),
            "has_data": np.ones(data.shape[0], dtype=np.int64),
            "covariance_cutoff": np.ones(data.shape[0]),
        }

    def _gradients(self, atoms) -> dict:
        """``calc(atoms, grad=True)``: quippy-ase 0.10.3's gradient layout.

        Rows are grouped by centre (in atom order); each group is the centre row
        (``j = i``, minus the sum of the others) followed by one row per
        neighbour image within the cutoff, in quippy's neighbour order
        (:mod:`tradens.interop.quip_order`). Row ``(i, j)`` holds ``d X_i / d r_ij`` of
        the normalised vector; ``j = -1`` marks a neighbour whose element is not
        in ``species_Z`` (zero here; quippy leaves those rows uninitialised).
        ``average=T`` is not supported.
        """
        from ..gradients.soap_pairs import soap_pair_gradients
        from .quip_order import quip_pair_order

        if self.soap.hypers.average:
            raise NotImplementedError("grad=True with average=T is not supported by tradens.quip")
        batch = as_batch(atoms)
        positions, cell = atoms.get_positions(), np.asarray(atoms.get_cell()[:])
        pairs = self.soap.expansion.pairs(batch)  # the pairs the gradients use
        i, j, shifts = pairs.i.numpy(), pairs.j.numpy(), pairs.shifts.numpy()
        order = quip_pair_order(
            positions, cell, atoms.get_pbc(), i, j, shifts, self.soap.hypers.cutoff.radius
        )
        first_of_centre = np.searchsorted(i[order], i[order], side="left")
        image_rank = np.empty(len(i), dtype=np.int64)
        image_rank[order] = (
            np.arange(len(i)) - first_of_centre
        )  # position within the centre's images
        with torch.no_grad():
            result = soap_pair_gradients(
                self.soap,
                batch,
                strain=False,
                images=True,
                image_rank=torch.from_numpy(image_rank),
                pairs=pairs,
            )
        if result.shifts is None:  # images=True always sets them
            raise RuntimeError("soap_pair_gradients(images=True) returned no cell shifts")
        rows = result.rows.numpy()  # centre atom of each row
        entry_row, entry_atom = result.index[:, 0].numpy(), result.index[:, 1].numpy()
        centre = rows[entry_row]  # [entry]
        is_image = np.ones(entry_row.shape[0], dtype=bool)
        is_image[np.searchsorted(entry_row, np.arange(rows.shape[0]))] = (
            False  # first entry: the centre
        )
        known = self.soap.species_map(batch.numbers).numpy()[entry_atom] >= 0
        neighbour = np.where(known | ~is_image, entry_atom, -1)
        if result.shifts is None:  # images=True always returns them
            raise RuntimeError("per-image gradients came without their cell shifts")
        image_positions = positions[entry_atom] + result.shifts.numpy() @ cell  # [entry, 3]
        image_positions[is_image & ~known] = 0.0
        data = result.values.numpy()
        counts = np.bincount(entry_row, minlength=rows.shape[0])
        split = np.cumsum(counts)[:-1]
        return {
            "data": data,
            "ci": (rows + 1).astype(np.int32),
            "has_data": np.ones(data.shape[0], dtype=np.int64),
            "covariance_cutoff": np.ones(data.shape[0]),
            "grad_data": result.positions.numpy(),
            "grad_index_0based": np.stack([centre, neighbour], axis=1).astype(np.int32),
            "pos": image_positions,
            "grad_covariance_cutoff": np.zeros((entry_row.shape[0], 3)),
            "ii": [(part + 1).astype(np.int32) for part in np.split(neighbour, split)],
            "has_grad_data": [np.ones(n, dtype=np.int32) for n in counts],
        }
