"""File helpers shared by the command line and the analysis tools.

* Atomic writes: every output goes to a temporary file in the destination
  directory and is moved into place with :func:`os.replace` only once it is
  complete, so an error or Ctrl-C never leaves a partial file behind (and an
  existing file is untouched until the new one is whole).
* Hypers from YAML or JSON files.
* Structures from any ASE-readable file, with one-line error messages.
* Feature files (``.npz``, HDF5, metatensor) written and read back.

This module is private: its names may change without notice.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

FEATURE_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- atomic writes
def check_output(path: str | os.PathLike, what: str = "output file") -> None:
    """Raise unless a file can be written at ``path`` (checked before any work is done).

    Raises
    ------
    FileNotFoundError
        If the directory of ``path`` does not exist.
    IsADirectoryError
        If ``path`` is a directory.
    PermissionError
        If the directory (or an existing file) is not writable.
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise FileNotFoundError(f"{what}: empty file name")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a directory; give a file name")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(
            f"cannot write {what} {str(path)!r}: directory {str(directory)!r} does not exist"
        )
    if not os.access(directory, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        raise PermissionError(f"cannot write {what} {str(path)!r}: permission denied")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; move it onto ``path`` on success.

    The temporary name ends with the destination's file name, so writers that
    look at the suffix (``.json.gz``, ``.png``, ``.xyz``) behave as for the
    real name. On any exception, ``KeyboardInterrupt`` included, the temporary
    file is removed and the destination is left as it was.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = pathlib.Path(tmp).write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    check_output(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tradens-tmp-", suffix="-" + path.name)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file for writing that replaces ``path`` when closed without error."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open is for writing ('w' or 'wb'), got mode {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


# --------------------------------------------------------------------------- hypers
def read_hypers(path: str | os.PathLike) -> dict:
    """Read a hypers dict from a YAML (``.yaml``/``.yml``) or JSON file.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it cannot be parsed or does not contain a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hypers file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()[0]
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None)  # YAML marked errors only
        if problem and mark is not None:
            first = f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
        raise ValueError(f"cannot parse hypers file {str(path)!r}: {first}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"hypers file {str(path)!r} must contain a mapping, got {type(data).__name__}"
        )
    return data


# --------------------------------------------------------------------------- structures
def read_frames(path: str | os.PathLike, index: str = ":", format: str | None = None) -> list:
    """Read structures with :func:`ase.io.read`; errors become one-line ``ValueError``.

    Parameters
    ----------
    path : str or path-like
        Any ASE-readable file (extended XYZ, POSCAR, CIF, ...).
    index : str
        ASE index string, e.g. ``":"`` (all), ``"0:10"``, ``"-1"``.
    format : str, optional
        ASE format name; guessed from the file name by default.
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    position = _integer_index(index)
    if position is not None and position < 0:
        # ASE reads a negative index past the start as the first structure: check it here
        count = _count_frames(path, format)
        if count is not None and -position > count:
            raise ValueError(
                f"index {index!r} is out of range: {str(path)!r} has {count} structures "
                f"(valid: {-count}..{count - 1})"
            )
    try:
        frames = ase.io.read(str(path), index=index, format=format)
    except (StopIteration, IndexError) as error:
        if position is None:
            raise ValueError(
                f"cannot read structures from {str(path)!r} (index {index!r})"
            ) from None
        count = _count_frames(path, format)
        known = f"has {count} structures (valid: {-count}..{count - 1})" if count else "is shorter"
        raise ValueError(
            f"index {index!r} is past the end of {str(path)!r}, which {known}"
        ) from error
    except Exception as error:  # ASE raises many exception types for bad files
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot read structures from {str(path)!r} (index {index!r}): {message}"
        ) from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"no structures in {str(path)!r} (index {index!r})")
    return frames


def _integer_index(index) -> int | None:
    """The integer of an ASE index given as an int or an integer string, else None."""
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return int(index)
    if isinstance(index, str):
        try:
            return int(index.strip())
        except ValueError:
            return None
    return None


def _count_frames(path: Path, format: str | None) -> int | None:
    """Number of structures in a file (reads it all), or None if it cannot be read."""
    import ase.io

    try:
        return sum(1 for _ in ase.io.iread(str(path), index=":", format=format))
    except Exception:  # the read itself reports the real error
        return None


def write_frames(path: str | os.PathLike, frames: list) -> None:
    """Write structures as extended XYZ, atomically."""
    import ase.io

    with atomic_path(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")


# --------------------------------------------------------------------------- features
FEATURE_SUFFIXES = (".npz", ".h5", ".hdf5", ".mts")


def is_feature_file(path: str | os.PathLike) -> bool:
    """Whether the name of ``path`` is that of a feature file (any of :data:`FEATURE_SUFFIXES`)."""
    return str(path).lower().endswith(FEATURE_SUFFIXES)


def feature_format(path: str | os.PathLike) -> str:
    """``"npz"``, ``"hdf5"`` or ``"metatensor"`` from a file name."""
    name = str(path).lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".h5", ".hdf5")):
        return "hdf5"
    if name.endswith(".mts"):
        return "metatensor"
    raise ValueError(
        f"unknown feature file type {str(path)!r}: use .npz, .h5/.hdf5 or .mts (metatensor)"
    )


def write_features(path: str | os.PathLike, features, hypers: dict | None = None) -> str:
    """Write :class:`~tradens.Features` atomically; the format follows the suffix.

    ``.npz`` holds ``values [row, feature]``, ``structure``, ``center``,
    ``numbers`` ``[row]``, ``names [feature]``, ``labels_<key> [feature]``
    and ``hypers`` (a JSON string). ``.h5``/``.hdf5`` (h5py) holds the same
    datasets with ``hypers`` as a file attribute. ``.mts`` is a metatensor
    ``TensorMap`` with one block: samples ``(system, atom, center_type)``,
    properties ``(feature,)``; the hypers, feature names and labels go beside
    it to ``<name>.hypers.json`` (``{"hypers", "names", "labels",
    "format_version"}``).

    Returns
    -------
    str
        The format written.
    """
    kind = feature_format(path)
    features = features.numpy()
    hypers_json = json.dumps(hypers if hypers is not None else {})
    arrays = {
        "values": features.values,
        "structure": features.structure.astype(np.int64),
        "center": features.center.astype(np.int64),
        "numbers": features.numbers.astype(np.int64),
        "names": np.asarray(features.names, dtype=str),
    }
    for key, value in features.labels.items():
        arrays[f"labels_{key}"] = np.asarray(value)
    if kind == "npz":
        with atomic_open(path, "wb") as handle:
            np.savez(
                handle,
                hypers=np.asarray(hypers_json),
                format_version=np.asarray(FEATURE_FORMAT_VERSION),
                **arrays,
            )
    elif kind == "hdf5":
        h5py = _optional("h5py", "HDF5 output", "pip install h5py")
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as handle:
                for key, value in arrays.items():
                    data = value.astype("S") if value.dtype.kind == "U" else value
                    handle.create_dataset(key, data=data)
                handle.attrs["hypers"] = hypers_json
                handle.attrs["format_version"] = FEATURE_FORMAT_VERSION
    else:
        _write_tensormap(path, features, hypers_json)
    return kind


def _write_tensormap(path, features, hypers_json: str) -> None:
    metatensor = _optional("metatensor", "metatensor output", "pip install metatensor")
    samples = metatensor.Labels(
        ["system", "atom", "center_type"],
        np.stack([features.structure, features.center, features.numbers], axis=1).astype(np.int32),
    )
    properties = metatensor.Labels(
        ["feature"], np.arange(features.values.shape[1], dtype=np.int32)[:, None]
    )
    block = metatensor.TensorBlock(
        values=np.ascontiguousarray(features.values),
        samples=samples,
        components=[],
        properties=properties,
    )
    tensor = metatensor.TensorMap(metatensor.Labels.single(), [block])
    with atomic_path(path) as tmp:
        metatensor.save(tmp, tensor)
    sidecar = {
        "hypers": json.loads(hypers_json),
        "names": list(features.names),
        "labels": {key: np.asarray(value).tolist() for key, value in features.labels.items()},
        "format_version": FEATURE_FORMAT_VERSION,
    }
    write_json(str(path) + ".hypers.json", sidecar)


def _read_tensormap(path: Path) -> tuple[dict, dict]:
    """Arrays and hypers of a ``.mts`` file written by :func:`_write_tensormap`."""
    metatensor = _optional("metatensor", "metatensor input", "pip install metatensor")
    try:
        tensor = metatensor.load(str(path))
    except metatensor.MetatensorError as error:  # not an OSError/ValueError: say it plainly
        raise ValueError(str(error)) from None
    if len(tensor.keys) != 1:
        raise ValueError(f"expected a TensorMap with one block, found {len(tensor.keys)} blocks")
    block = tensor.block(0)
    names = list(block.samples.names)
    if names[:2] != ["system", "atom"]:
        raise ValueError(f"expected samples (system, atom, ...), found {tuple(names)}")
    samples = np.asarray(block.samples.values)
    arrays = {
        "values": np.asarray(block.values),
        "structure": samples[:, 0].astype(np.int64),
        "center": samples[:, 1].astype(np.int64),
    }
    if "center_type" in names:
        arrays["numbers"] = samples[:, names.index("center_type")].astype(np.int64)
    sidecar_path = Path(str(path) + ".hypers.json")
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
    if "hypers" not in sidecar:  # no sidecar, or an older one that held the hypers only
        sidecar = {"hypers": sidecar}
    if sidecar.get("names"):
        arrays["names"] = np.asarray(sidecar["names"], dtype=str)
    for key, value in sidecar.get("labels", {}).items():
        arrays[f"labels_{key}"] = np.asarray(value)
    return arrays, sidecar["hypers"]


def read_features(path: str | os.PathLike):
    """Read a ``.npz``, HDF5 or metatensor feature file written by :func:`write_features`.

    Returns
    -------
    features : tradens.Features
        Per-row values with ``structure``, ``center``, ``numbers``.
    hypers : dict
        The hypers stored with them (empty if none).
    """
    from .representations.features import Features

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file {str(path)!r} does not exist")
    kind = feature_format(path)
    try:
        if kind == "metatensor":
            arrays, hypers = _read_tensormap(path)
        elif kind == "npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            hypers = json.loads(str(arrays.pop("hypers", "{}")))
        else:
            h5py = _optional("h5py", "HDF5 input", "pip install h5py")
            with h5py.File(path, "r") as handle:
                arrays = {key: handle[key][()] for key in handle.keys()}
                hypers = json.loads(handle.attrs.get("hypers", "{}"))
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"cannot read feature file {str(path)!r}: {error}") from None
    missing = {"values", "structure", "center", "numbers"} - set(arrays)
    if missing:
        raise ValueError(f"feature file {str(path)!r} lacks {sorted(missing)}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in arrays.get("names", [])]
    labels = {
        key[len("labels_") :]: value for key, value in arrays.items() if key.startswith("labels_")
    }
    features = Features(
        np.asarray(arrays["values"]),
        np.asarray(arrays["structure"]),
        np.asarray(arrays["center"]),
        np.asarray(arrays["numbers"]),
        labels,
        names,
    )
    return features, hypers


def _optional(module: str, what: str, hint: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the optional package {module!r} ({hint})") from None


#: Bundled example files (``tradens/data``): name -> file.
EXAMPLES = {"hea25": "hea25_sample.xyz", "meam17": "meam17_sample.xyz"}


def example_path(name: str = "hea25") -> str:
    """Path of a bundled, labelled example file.

    Parameters
    ----------
    name : {"hea25", "meam17"}
        ``"hea25"``: 12 high-entropy-alloy structures with 19 elements (of
        HEA25's 25), DFT energies (eV), forces (eV/Å) and stress (eV/Å^3)
        under the keys ``energy``, ``forces``, ``stress``; ``"meam17"``: 40
        structures of the synthetic MEAM17 set (17 elements), same keys.

    Examples
    --------
    >>> import ase.io
    >>> from tradens.io import example_path
    >>> len(ase.io.read(example_path("hea25"), ":"))
    12
    """
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; known: {sorted(EXAMPLES)}")
    from importlib.resources import files

    return str(files("tradens") / "data" / EXAMPLES[name])
