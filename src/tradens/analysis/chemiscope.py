"""chemiscope export (used through :mod:`tradens.analysis.maps`).

A chemiscope dataset (https://chemiscope.org/docs/manual/input.html) is one
JSON document, gzip-compressed when the file name ends with ``.gz``::

    {"meta": {"name": ..., "description": ...},
     "structures": [{"size": n, "names": [...], "x": [...], "y": [...], "z": [...],
                     "cell": [9 floats, rows are lattice vectors]}, ...],
     "properties": {"PCA[1]": {"target": "atom" | "structure", "values": [...],
                               "units": ..., "description": ...}, ...},
     "environments": [{"structure": s, "center": i, "cutoff": r}, ...],   # atom maps only
     "settings": {"map": {"x": {"property": ...}, ...}, "target": ..., "structure": [...]}}

With the optional ``chemiscope`` package (>= 1.0) installed,
:func:`write_chemiscope` calls ``chemiscope.write_input``; otherwise it writes
the same document itself (the tests check that both agree).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

_UNITS = {"energy": "eV", "energy_per_atom": "eV/atom"}


def _energy(atoms) -> float | None:
    calc = getattr(atoms, "calc", None)
    if calc is not None and "energy" in getattr(calc, "results", {}):
        return float(calc.results["energy"])
    value = atoms.info.get("energy")
    return float(value) if isinstance(value, (int, float, np.number)) else None


def structure_properties(frames) -> dict[str, np.ndarray]:
    """Per-structure properties shared by all frames, ``{name: [structure]}``.

    Always ``n_atoms`` and ``elements`` (the sorted element symbols joined,
    e.g. ``"CoCrNi"``); ``energy`` and ``energy_per_atom`` (eV) when every
    frame has an energy; and every numeric scalar ``atoms.info`` key present
    in all frames. Frames are not modified.
    """
    frames = list(frames)
    out: dict[str, np.ndarray] = {
        "n_atoms": np.array([len(a) for a in frames], dtype=np.float64),
        "elements": np.array(["".join(sorted(set(a.get_chemical_symbols()))) for a in frames]),
    }
    energies = [_energy(a) for a in frames]
    if frames and all(e is not None for e in energies):
        out["energy"] = np.array(energies)
        out["energy_per_atom"] = out["energy"] / np.maximum(out["n_atoms"], 1)
    keys = set.intersection(*(set(a.info) for a in frames)) if frames else set()
    for key in sorted(keys):
        values = [a.info[key] for a in frames]
        if key in out or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in values
        ):
            continue
        array = np.asarray(values, dtype=np.float64)
        if np.isfinite(array).all():
            out[key] = array
    return out


def map_properties(frames, structure=None, center=None) -> dict[str, dict]:
    """chemiscope-style properties of the map's rows.

    Parameters
    ----------
    frames : list of ase.Atoms
        The structures.
    structure, center : array-like, optional
        ``[row]`` structure index and centre atom of each row of an atom map;
        omit both for a structure map (one row per frame).

    Returns
    -------
    dict
        ``{name: {"target": "atom" | "structure", "values": [row]}}``: for atom
        maps the centre ``element`` and every structure property broadcast to
        the rows; for structure maps the structure properties.
    """
    props = structure_properties(frames)
    if center is None:
        out = {name: {"target": "structure", "values": values} for name, values in props.items()}
    else:
        structure = np.asarray(structure, dtype=np.int64)
        center = np.asarray(center, dtype=np.int64)
        pairs = zip(structure, center, strict=True)
        symbols = [frames[s].get_chemical_symbols()[c] for s, c in pairs]
        out = {"element": {"target": "atom", "values": np.array(symbols)}}
        for name, values in props.items():
            out[name] = {"target": "atom", "values": values[structure]}
    for name, units in _UNITS.items():
        if name in out:
            out[name]["units"] = units
    return out


def _structure_json(atoms) -> dict:
    data = {
        "size": len(atoms),
        "names": list(atoms.get_chemical_symbols()),
        "x": atoms.positions[:, 0].tolist(),
        "y": atoms.positions[:, 1].tolist(),
        "z": atoms.positions[:, 2].tolist(),
    }
    if (atoms.cell.lengths() != [0.0, 0.0, 0.0]).all():
        data["cell"] = [float(v) for v in np.concatenate(atoms.cell[:])]
    return data


def _json_values(name: str, values) -> list:
    array = np.asarray(values)
    if array.dtype.kind in "iufb":
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"chemiscope property {name!r} contains NaN or inf")
        return array.tolist()
    return [str(v) for v in array.tolist()]


def _expand(properties: dict) -> dict:
    """Split ``[row, d]`` values into ``name[1] .. name[d]`` as chemiscope does."""
    out = {}
    for name, prop in properties.items():
        values = np.asarray(prop["values"])
        extra = {key: str(prop[key]) for key in ("units", "description") if key in prop}
        if values.ndim == 2 and values.shape[1] > 1:
            for j in range(values.shape[1]):
                item = {"target": prop["target"], "values": values[:, j], **extra}
                if "description" in extra:
                    item["description"] = extra["description"] + f" [component {j + 1}]"
                out[f"{name}[{j + 1}]"] = item
        else:
            out[name] = {"target": prop["target"], "values": values.reshape(-1), **extra}
    return out


def write_chemiscope(
    path,
    frames,
    projections: dict,
    *,
    structure=None,
    center=None,
    properties: dict | None = None,
    color: str | None = None,
    cutoff: float = 3.5,
    name: str | None = None,
    description: str | None = None,
    use_chemiscope: bool | None = None,
) -> None:
    """Write a chemiscope dataset of a map, atomically.

    Parameters
    ----------
    path : str or path-like
        Output file; must end with ``.json`` or ``.json.gz`` (gzip).
    frames : list of ase.Atoms
        The structures (not modified).
    projections : dict
        ``{name: [row, d]}`` map coordinates, e.g. ``{"PCA": coords}``; the
        first becomes the map's x and y axes (``name[1]``, ``name[2]``).
    structure, center : array-like, optional
        ``[row]`` structure and centre atom of each row for an atom map
        (chemiscope environments); omit both for a structure map.
    properties : dict, optional
        Extra ``{name: values [row]}`` or chemiscope-style property dicts.
    color : str, optional
        Property colouring the map (default ``element`` for atom maps,
        ``energy_per_atom`` or ``n_atoms`` for structure maps).
    cutoff : float
        Environment radius drawn around each centre, Å.
    name, description : str, optional
        Dataset metadata (default name: the file stem).
    use_chemiscope : bool, optional
        Force (True) or avoid (False) ``chemiscope.write_input``; default:
        use it when installed.
    """
    from ..io import atomic_path

    path = str(path)
    if not path.endswith((".json", ".json.gz")):
        raise ValueError(f"chemiscope file name must end with .json or .json.gz, got {path!r}")
    frames = list(frames)
    atom_map = center is not None
    n_rows = len(center) if atom_map else len(frames)
    target = "atom" if atom_map else "structure"
    props = _dataset_properties(frames, projections, structure, center, properties, n_rows, target)
    first = next(iter(projections))
    if color is None:
        color = (
            "element"
            if atom_map
            else ("energy_per_atom" if "energy_per_atom" in props else "n_atoms")
        )
    if color not in props:
        raise ValueError(f"unknown colour property {color!r}; available: {sorted(props)}")
    periodic = any(a.pbc.any() for a in frames)
    settings = {
        "map": {
            "x": {"property": f"{first}[1]"},
            "y": {"property": f"{first}[2]"},
            "color": {"property": color},
        },
        "target": target,
        "structure": [{"unitCell": bool(periodic)}],
    }
    metadata = {"name": name or Path(path).name.split(".")[0]}
    if description:
        metadata["description"] = description
    environments = None
    if atom_map:
        pairs = zip(structure, center, strict=True)
        environments = [(int(s), int(c), float(cutoff)) for s, c in pairs]
    if use_chemiscope is None:
        use_chemiscope = _modern_chemiscope()
    with atomic_path(path) as tmp:
        if use_chemiscope:
            import chemiscope

            chemiscope.write_input(
                tmp,
                structures=frames,
                properties=props,
                environments=environments,
                settings=settings,
                metadata=metadata,
            )
        else:
            _write_json(path, tmp, frames, props, environments, settings, metadata)


def _dataset_properties(
    frames: list,
    projections: dict,
    structure,
    center,
    properties: dict | None,
    n_rows: int,
    target: str,
) -> dict:
    """Map properties, projections and extra properties by name, each length-checked."""
    props = map_properties(frames, structure, center)
    if not projections:
        raise ValueError("projections must contain at least one {name: coordinates} entry")
    for key, coords in projections.items():
        coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[0] != n_rows or coords.shape[1] < 2:
            raise ValueError(
                f"projection {key!r} must have shape [{n_rows}, >=2], got {coords.shape}"
            )
        props[key] = {"target": target, "values": coords}
    for key, value in (properties or {}).items():
        props[key] = value if isinstance(value, dict) else {"target": target, "values": value}
    for key, prop in props.items():
        expected = n_rows if prop["target"] == target else len(frames)
        if len(prop["values"]) != expected:
            raise ValueError(
                f"property {key!r} has {len(prop['values'])} values, expected {expected}"
            )
    return props


def _write_json(
    path: str,
    tmp,
    frames: list,
    props: dict,
    environments: list | None,
    settings: dict,
    metadata: dict,
) -> None:
    """The dataset as chemiscope's JSON (gzip for ``.gz`` paths), written to ``tmp``."""
    json_properties: dict[str, dict] = {}  # filled below
    data = {
        "meta": metadata,
        "settings": settings,
        "structures": [_structure_json(a) for a in frames],
        "properties": json_properties,
    }
    if environments is not None:
        data["environments"] = [
            {"structure": s, "center": c, "cutoff": r} for s, c, r in environments
        ]
    for key, prop in _expand(props).items():
        item = {"target": prop["target"], "values": _json_values(key, prop["values"])}
        item.update({k: prop[k] for k in ("units", "description") if k in prop})
        json_properties[key] = item
    text = json.dumps(data)
    if path.endswith(".gz"):
        with gzip.open(tmp, "wt", encoding="utf8") as handle:
            handle.write(text)
    else:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def _modern_chemiscope() -> bool:
    """Whether chemiscope >= 1.0 (``write_input(path, structures=...)``) is installed."""
    try:
        import inspect

        import chemiscope
    except ImportError:
        return False
    return "structures" in inspect.signature(chemiscope.write_input).parameters


def read_chemiscope(path) -> dict:
    """Load a chemiscope JSON (``.json`` or ``.json.gz``) file as a dict."""
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf8") as handle:
        return json.load(handle)
