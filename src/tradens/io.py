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
    if path.is_dir() and not str(path).lower().rstrip("/").endswith(".zarr"):
        # a zarr store is a directory, replaced as a whole (atomic_directory)
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
FEATURE_SUFFIXES = (".npz", ".h5", ".hdf5", ".mts", ".zarr")


def is_feature_file(path: str | os.PathLike) -> bool:
    """Whether the name of ``path`` is that of a feature file (any of :data:`FEATURE_SUFFIXES`)."""
    return str(path).lower().endswith(FEATURE_SUFFIXES)


def feature_format(path: str | os.PathLike) -> str:
    """``"npz"``, ``"hdf5"``, ``"metatensor"`` or ``"zarr"`` from a file name."""
    name = str(path).lower().rstrip("/")
    if name.endswith(".zarr"):
        return "zarr"
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".h5", ".hdf5")):
        return "hdf5"
    if name.endswith(".mts"):
        return "metatensor"
    raise ValueError(
        f"unknown feature file type {str(path)!r}: use .npz, .h5/.hdf5, .zarr or .mts (metatensor)"
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
    elif kind == "zarr":
        with FeatureWriter(
            path,
            n_features=features.values.shape[1],
            dtype=features.values.dtype,
            names=list(features.names),
            labels=features.labels,
            hypers=json.loads(hypers_json),
        ) as writer:
            writer.append(features.values, features.structure, features.center, features.numbers)
    else:
        _write_tensormap(path, features, hypers_json)
    return kind


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary directory next to ``path``; move it onto ``path`` on success.

    For outputs that are directories (a zarr store): on success an existing
    ``path`` is moved aside, the new directory renamed into place (one
    :func:`os.replace`) and the old one removed; on any exception the temporary
    directory is removed and ``path`` is left as it was.
    """
    import shutil

    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(
            f"cannot write {str(path)!r}: directory {str(directory)!r} does not exist"
        )
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is not a directory")
    tmp = tempfile.mkdtemp(dir=directory, prefix=".tradens-tmp-", suffix="-" + path.name)
    try:
        yield tmp
        old = None
        if path.exists():
            old = tempfile.mkdtemp(dir=directory, prefix=".tradens-old-", suffix="-" + path.name)
            os.replace(path, Path(old) / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_ROW_ARRAYS = ("values", "structure", "center", "numbers")

#: Target size of one HDF5 / zarr storage chunk of ``values`` (bytes).
STORAGE_CHUNK_BYTES = 2**22


class FeatureWriter:
    """Append feature rows to a file that appears, complete, only when the writer is closed.

    Memory stays bounded by one appended block: HDF5 (``.h5``/``.hdf5``) and zarr
    (``.zarr``, a directory) datasets grow by resizing and are chunked by rows
    (about :data:`STORAGE_CHUNK_BYTES` per storage chunk); ``.npz`` rows go to raw
    temporary files that are copied into the zip archive at the end. The
    metatensor format (``.mts``) has no append: its rows are kept in memory until
    the end. Files have the layout of :func:`write_features` and read back with
    :func:`read_features`.

    Use as a context manager: leaving the block without an error commits the file
    atomically (:func:`atomic_path` / :func:`atomic_directory`); an error (or
    Ctrl-C) removes the temporary output and leaves ``path`` as it was.

    Parameters
    ----------
    path : str or path-like
        Output file; the format follows the suffix (:func:`feature_format`).
    n_features : int
        Columns ``F``.
    dtype : numpy dtype
        Of the values (float64 or float32).
    names : list of str
        ``[F]`` column names.
    labels : dict
        ``{key: array [F]}`` column labels.
    hypers : dict
        Stored beside the values (JSON).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_features: int,
        dtype,
        names: list,
        labels: dict,
        hypers: dict,
    ):
        self.path = Path(path)
        self.kind = feature_format(path)
        self.n_features = int(n_features)
        self.dtype = np.dtype(dtype)
        self.names = [str(n) for n in names]
        self.labels = {key: np.asarray(value) for key, value in labels.items()}
        self.hypers = hypers
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._parts: list[tuple[np.ndarray, ...]] = []
        rows = max(1, STORAGE_CHUNK_BYTES // max(1, self.n_features * self.dtype.itemsize))
        if self.kind == "zarr":
            zarr = _optional("zarr", "zarr output", "pip install 'tradens[zarr]'")
            self._tmp = self._stack.enter_context(atomic_directory(self.path))
            group = zarr.open_group(self._tmp, mode="w")
            self._arrays = {
                "values": group.create_array(
                    "values",
                    shape=(0, self.n_features),
                    chunks=(rows, self.n_features),
                    dtype=self.dtype,
                ),
                **{
                    key: group.create_array(key, shape=(0,), chunks=(rows,), dtype=np.int64)
                    for key in ("structure", "center", "numbers")
                },
            }
            self._group = group
        elif self.kind == "hdf5":
            h5py = _optional("h5py", "HDF5 output", "pip install h5py")
            self._tmp = self._stack.enter_context(atomic_path(self.path))
            handle = self._stack.enter_context(h5py.File(self._tmp, "w"))
            self._arrays = {
                "values": handle.create_dataset(
                    "values",
                    shape=(0, self.n_features),
                    maxshape=(None, self.n_features),
                    chunks=(rows, max(1, self.n_features)),
                    dtype=self.dtype,
                    track_times=False,
                ),
                **{
                    key: handle.create_dataset(
                        key,
                        shape=(0,),
                        maxshape=(None,),
                        chunks=(rows,),
                        dtype=np.int64,
                        track_times=False,
                    )
                    for key in ("structure", "center", "numbers")
                },
            }
            self._handle = handle
        elif self.kind == "npz":
            self._tmp = self._stack.enter_context(atomic_path(self.path))
            self._scratch = Path(tempfile.mkdtemp(dir=self.path.parent or ".", prefix=".tradens-"))
            self._raw = {
                key: self._stack.enter_context(open(self._scratch / key, "wb"))
                for key in ("values", "structure", "center", "numbers")
            }

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort(kind, error, traceback)

    def append(self, values, structure, center, numbers) -> None:
        """Append rows: ``values [row, F]``, ``structure``, ``center``, ``numbers`` ``[row]``."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.ndim != 2 or values.shape[1] != self.n_features:
            raise ValueError(f"values must have shape [row, {self.n_features}], got {values.shape}")
        ints = [np.ascontiguousarray(x, dtype=np.int64) for x in (structure, center, numbers)]
        if any(x.shape != (values.shape[0],) for x in ints):
            raise ValueError("structure, center and numbers need one entry per row of values")
        stop = self.rows + values.shape[0]
        if self.kind in ("hdf5", "zarr"):
            for key, data in zip(_ROW_ARRAYS, [values, *ints], strict=True):
                array = self._arrays[key]
                array.resize((stop, *array.shape[1:]))
                array[self.rows : stop] = data
        elif self.kind == "npz":
            for key, data in zip(_ROW_ARRAYS, [values, *ints], strict=True):
                self._raw[key].write(data.tobytes())
        else:
            self._parts.append((values, *ints))
        self.rows = stop

    def close(self) -> None:
        """Write the column names, labels and hypers and move the file into place."""
        hypers_json = json.dumps(self.hypers)
        if self.kind == "zarr":
            for key, value in self.labels.items():
                self._group.create_array(f"labels_{key}", data=np.asarray(value))
            self._group.attrs.update(
                {
                    "hypers": hypers_json,
                    "names": self.names,
                    "format_version": FEATURE_FORMAT_VERSION,
                }
            )
        elif self.kind == "hdf5":
            self._handle.create_dataset("names", data=np.asarray(self.names, dtype="S"))
            for key, value in self.labels.items():
                data = value.astype("S") if value.dtype.kind == "U" else value
                self._handle.create_dataset(f"labels_{key}", data=data)
            self._handle.attrs["hypers"] = hypers_json
            self._handle.attrs["format_version"] = FEATURE_FORMAT_VERSION
        elif self.kind == "npz":
            for handle in self._raw.values():
                handle.flush()
            self._write_npz(hypers_json)
        else:
            from .representations.features import Features

            parts = list(zip(*self._parts, strict=True)) if self._parts else [[]] * 4
            values = np.concatenate(parts[0]) if self._parts else np.zeros((0, self.n_features))
            ints = [np.concatenate(p) if self._parts else np.zeros(0, np.int64) for p in parts[1:]]
            self._parts = []
            self._tmp = self._stack.enter_context(atomic_path(self.path))
            _write_tensormap(
                self._tmp,
                Features(values, ints[0], ints[1], ints[2], labels=self.labels, names=self.names),
                hypers_json,
                sidecar=str(self.path) + ".hypers.json",
            )
        self._stack.close()
        self._cleanup()

    def abort(self, kind=None, error=None, traceback=None) -> None:
        """Remove the temporary output; ``path`` is left as it was."""
        self._stack.__exit__(kind or RuntimeError, error or RuntimeError("aborted"), traceback)
        self._cleanup()

    def _cleanup(self) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)

    def _write_npz(self, hypers_json: str) -> None:
        """Copy the raw row files into a ``.npz`` archive (as :func:`numpy.savez` lays it out)."""
        import zipfile

        shapes = {
            "values": (self.rows, self.n_features),
            "structure": (self.rows,),
            "center": (self.rows,),
            "numbers": (self.rows,),
        }
        dtypes = {"values": self.dtype}
        small = {
            "hypers": np.asarray(hypers_json),
            "format_version": np.asarray(FEATURE_FORMAT_VERSION),
            "names": np.asarray(self.names, dtype=str),
            **{f"labels_{key}": value for key, value in self.labels.items()},
        }
        with zipfile.ZipFile(self._tmp, "w", allowZip64=True) as archive:
            for key, shape in shapes.items():
                header = {
                    "descr": np.lib.format.dtype_to_descr(dtypes.get(key, np.dtype(np.int64))),
                    "fortran_order": False,
                    "shape": shape,
                }
                with archive.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_2_0(member, header)
                    with open(self._scratch / key, "rb") as raw:
                        while block := raw.read(2**24):
                            member.write(block)
            for key, value in small.items():
                with archive.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, value, allow_pickle=False)


def _write_tensormap(path, features, hypers_json: str, sidecar: str | None = None) -> None:
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
    if sidecar is not None:  # ``path`` is already a temporary file
        metatensor.save(path, tensor)
    else:
        with atomic_path(path) as tmp:
            metatensor.save(tmp, tensor)
    content = {
        "hypers": json.loads(hypers_json),
        "names": list(features.names),
        "labels": {key: np.asarray(value).tolist() for key, value in features.labels.items()},
        "format_version": FEATURE_FORMAT_VERSION,
    }
    write_json(sidecar if sidecar is not None else str(path) + ".hypers.json", content)


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
    kind = feature_format(path)
    if not (path.is_dir() if kind == "zarr" else path.is_file()):
        raise FileNotFoundError(f"feature file {str(path)!r} does not exist")
    try:
        if kind == "zarr":
            arrays, hypers = _read_zarr(path)
        elif kind == "metatensor":
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


def _read_zarr(path: Path) -> tuple[dict, dict]:
    """Arrays and hypers of a ``.zarr`` store written by :class:`FeatureWriter`."""
    zarr = _optional("zarr", "zarr input", "pip install 'tradens[zarr]'")
    group = zarr.open_group(str(path), mode="r")
    arrays = {key: np.asarray(group[key][...]) for key in group.array_keys()}
    attrs = dict(group.attrs)
    arrays["names"] = np.asarray(attrs.get("names", []), dtype=str)
    return arrays, json.loads(attrs.get("hypers", "{}"))


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
