"""Safe, versioned saving and loading of fitted models.

A model file is a zip archive with two members:

* ``metadata.json``: ``{"format": "tradens-model", "format_version": 1,
  "class": ..., "tradens_version": ..., "representation": {...}, "params":
  {...}, "fitted": {...}}`` (plain JSON: hypers, species, reference energies,
  scalars);
* ``arrays.npz``: every array (weights, mixing matrices, sparse points),
  read with ``allow_pickle=False``.

No code is pickled: classes are looked up in a closed registry and rebuilt
from their constructor parameters, representations from their hypers
(:func:`tradens.hypers.from_dict`) plus their ``state_dict`` arrays (mixing
weights, learned embeddings). Files are written atomically (temporary file,
then ``os.replace``). Reading a file of another ``format_version`` raises a
``ValueError`` that names both versions.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

import numpy as np

from .._version import __version__
from .registry import model_classes

__all__ = ["save", "load", "FORMAT", "FORMAT_VERSION"]

FORMAT = "tradens-model"
FORMAT_VERSION = 1


# ------------------------------------------------------------------ files
def save(model, path: str | os.PathLike) -> str:
    """Write a fitted model to ``path`` (atomically); returns the path.

    Raises
    ------
    ValueError
        If the model is not fitted or of an unknown class.
    FileNotFoundError, IsADirectoryError, PermissionError
        If ``path`` cannot be written (missing directory, a directory, no permission).
    """
    from ..io import check_output

    name = type(model).__name__
    if name not in model_classes():
        raise ValueError(f"cannot save a {name}; known models: {sorted(model_classes())}")
    check_output(path, "model file")
    model._check_fitted()
    meta, arrays = model._get_state()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": name,
        "tradens_version": __version__,
        **meta,
    }
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype == object:
            raise TypeError(f"array {key!r} must be a numeric numpy array")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tradens-", suffix=".tmp", dir=directory)
    try:
        with (
            os.fdopen(handle, "wb") as stream,
            zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive,
        ):
            archive.writestr("metadata.json", json.dumps(metadata, indent=1, sort_keys=True))
            archive.writestr("arrays.npz", buffer.getvalue())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of a model file (checked for format and version)."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"model file {name!r} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read("metadata.json")
    except zipfile.BadZipFile as error:
        raise ValueError(
            f"{name!r} is not a tradens model file (not a zip archive: {error})"
        ) from None
    except KeyError:
        raise ValueError(
            f"{name!r} is not a tradens model file (no metadata.json member)"
        ) from None
    except (zipfile.LargeZipFile, OSError, EOFError, RuntimeError) as error:
        raise ValueError(
            f"model file {name!r}: member 'metadata.json' is unreadable ({error})"
        ) from None
    try:
        metadata = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"model file {name!r}: member 'metadata.json' is not valid JSON ({error})"
        ) from None
    if not isinstance(metadata, dict):
        raise ValueError(
            f"model file {name!r}: member 'metadata.json' must hold a JSON object, "
            f"got {type(metadata).__name__}"
        )
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{name!r} is not a tradens model file (format {metadata.get('format')!r})"
        )
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(
            f"model file {name!r}: 'format_version' must be an integer, got {version!r} "
            f"({type(version).__name__}); the file is damaged or was not written by tradens"
        )
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{name!r} uses model format version {version}, but this tradens "
            f"({__version__}) reads version {FORMAT_VERSION}; load it with the tradens version "
            f"that wrote it "
            f"({metadata.get('tradens_version', 'unknown')}) and refit or re-save"
        )
    return metadata


def _read_arrays(path: str | os.PathLike) -> dict:
    """The arrays of a model file's ``arrays.npz`` member, with a clear error if damaged."""
    name = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read("arrays.npz")
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except KeyError:
        raise ValueError(f"model file {name!r} has no 'arrays.npz' member") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as error:
        raise ValueError(
            f"model file {name!r}: member 'arrays.npz' is damaged ({type(error).__name__}: {error})"
        ) from None


def load(path: str | os.PathLike):
    """Read a model written by :func:`save`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not a tradens model file, a member is damaged, or it has
        another format version (the message names the file and the member).
    """
    metadata = read_metadata(path)
    arrays = _read_arrays(path)
    classes = model_classes()
    if metadata.get("class") not in classes:
        raise ValueError(f"unknown model class {metadata.get('class')!r}; known: {sorted(classes)}")
    return classes[metadata["class"]]._from_state(metadata, arrays)
