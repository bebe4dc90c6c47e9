"""Features of data sets larger than memory: chunks of structures in, rows streamed out.

:func:`compute_to_file` reads structures lazily (a file through :func:`ase.io.iread`, an
ASE database, or any iterable), computes them in *chunks* of ``chunk_size`` structures
(serially, or as tasks on a dask.distributed cluster with ``client=``), and keeps every
finished chunk in a work directory ``<output>.partial/`` (one ``.npz`` per chunk, each
written atomically, with a ``manifest.json`` of the hypers and options). When every chunk
is there they are copied, in order, into the output file (HDF5, zarr, ``.npz`` or
metatensor, see :class:`tradens.io.FeatureWriter`), which appears atomically; then the
work directory is removed. A run that stops (error, Ctrl-C, a killed job) leaves its
finished chunks behind: the same call again computes only the missing ones. Chunk ``c``
always holds structures ``c * chunk_size ...`` of the input, wherever it was computed, so a
resumed or distributed run writes the same rows as one uninterrupted serial run.

Memory: one chunk's structures and rows per chunk in flight (``max_in_flight`` on a
cluster, 1 serially), plus the output writer's buffer (bounded, except for ``.mts``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..hypers import to_dict
from ..io import FeatureWriter, atomic_open, check_output, feature_format
from .features import Features

__all__ = [
    "compute_to_file",
    "compute_chunked",
    "iter_structures",
    "iter_chunks",
    "chunk_features",
    "StreamResult",
    "is_lazy",
]

#: Version of the work directory layout (``manifest.json``).
PARTIAL_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- input
def _is_path(systems: object) -> bool:
    return isinstance(systems, (str, os.PathLike))


def _is_database(systems: object) -> bool:
    return hasattr(systems, "select") and hasattr(systems, "get_atoms")


def is_lazy(systems: object) -> bool:
    """Whether ``systems`` is read lazily: a path, an ASE database, or an iterator.

    Lists and tuples (and single structures) are not, unless they hold ASE database rows.
    """
    if _is_path(systems) or _is_database(systems):
        return True
    if isinstance(systems, Sequence) and len(systems) and hasattr(systems[0], "toatoms"):
        return True
    if isinstance(systems, (Sequence, dict)) or hasattr(systems, "positions"):
        return False
    return hasattr(systems, "__iter__")


def iter_structures(systems: Any, *, index: str = ":", format: str | None = None) -> Iterator:
    """Structures of ``systems`` one at a time, read lazily.

    Parameters
    ----------
    systems : path, ASE database, iterable, or one structure
        A file name (``*.db``, ``*.json`` databases through :func:`ase.db.connect` when
        ``format`` is ``"db"`` or the suffix is ``.db``; anything else through
        :func:`ase.io.iread`), an ASE database connection (every row), an iterable of
        ``ase.Atoms`` / :class:`~tradens.System` / dicts / database rows, or one structure.
    index : str
        ASE index of a file (``":"`` all, ``"100:200"``).
    format : str, optional
        ASE format of a file.
    """
    if _is_path(systems):
        path = Path(systems)
        if not path.is_file():
            raise FileNotFoundError(f"input file {str(path)!r} does not exist")
        if format == "db" or (format is None and path.suffix.lower() == ".db"):
            import ase.db

            with ase.db.connect(str(path)) as database:
                for row in database.select():
                    yield row.toatoms(add_additional_information=True)
            return
        import ase.io

        yield from ase.io.iread(str(path), index=index, format=format)
        return
    if _is_database(systems):
        for row in systems.select():
            yield row.toatoms(add_additional_information=True)
        return
    if isinstance(systems, dict) or hasattr(systems, "positions"):
        yield systems
        return
    if not hasattr(systems, "__iter__"):
        raise TypeError(
            f"expected a path, an ASE database, or structures, got {type(systems).__name__}"
        )
    for item in systems:
        yield item.toatoms(add_additional_information=True) if hasattr(item, "toatoms") else item


def iter_chunks(structures: Iterable, chunk_size: int) -> Iterator[tuple[int, list]]:
    """``(chunk index, list of up to chunk_size structures)`` of an iterable, in order."""
    _check_positive("chunk_size", chunk_size)
    chunk: list = []
    index = 0
    for item in structures:
        chunk.append(item)
        if len(chunk) == chunk_size:
            yield index, chunk
            index, chunk = index + 1, []
    if chunk:
        yield index, chunk


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


# --------------------------------------------------------------------------- one chunk
@dataclass(frozen=True)
class ChunkOptions:
    """How every chunk is computed (the same on the client and on every worker)."""

    chunk_size: int
    batch_size: int | None  # None: batches packed by atom count (compute's default)
    dtype: str  # "float64" or "float32"
    device: str | None
    pool: str | None  # None, "mean" or "sum"
    min_distance: float | None
    threads: int  # torch threads inside a chunk (0: leave as is)
    skip_bad: bool = False  # leave out structures that fail, listed in "skipped"


@dataclass(frozen=True)
class XyzSlice:
    """Structures ``count`` of an extended-XYZ file, in bytes ``start .. stop``.

    Sent to a worker instead of the parsed structures when the file is on a file system
    the workers see (a LocalCluster, a cluster's shared disk): the workers parse, so the
    client, which only finds the frame boundaries, is not the bottleneck.
    """

    path: str
    start: int
    stop: int
    count: int

    def __len__(self) -> int:
        return self.count

    def read(self) -> list:
        """The structures, parsed with ASE."""
        import io

        import ase.io

        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            text = handle.read(self.stop - self.start).decode()
        read = ase.io.read(io.StringIO(text), index=":", format="extxyz")
        frames = read if isinstance(read, list) else [read]
        if len(frames) != self.count:
            raise ValueError(
                f"{self.path!r}, bytes {self.start}..{self.stop}: expected {self.count} "
                f"structures, read {len(frames)}"
            )
        return frames


def xyz_slices(path: str | os.PathLike, chunk_size: int) -> Iterator[tuple[int, XyzSlice]]:
    """``(chunk index, XyzSlice)`` of an extended-XYZ file: frame boundaries only, not parsed.

    Raises
    ------
    ValueError
        Where a frame does not start with its atom count.
    """
    _check_positive("chunk_size", chunk_size)
    path = str(Path(path).resolve())
    with open(path, "rb") as handle:
        c, start, count, line_number = 0, 0, 0, 0
        while True:
            line = handle.readline()
            line_number += 1
            if not line.strip():
                if not line or not handle.peek(1):  # end of file (or trailing blank lines)
                    break
                raise ValueError(f"{path!r}, line {line_number}: blank line inside the file")
            try:
                n_atoms = int(line)
            except ValueError:
                raise ValueError(
                    f"{path!r}, line {line_number}: expected the atom count of a frame, got "
                    f"{line[:40]!r}"
                ) from None
            for _ in range(n_atoms + 1):  # comment line and atoms
                handle.readline()
            line_number += n_atoms + 1
            count += 1
            if count == chunk_size:
                yield c, XyzSlice(path, start, handle.tell(), count)
                c, start, count = c + 1, handle.tell(), 0
        if count:
            yield c, XyzSlice(path, start, handle.tell(), count)


def _chunk_source(
    systems: Any, client: Any, index: str, format: str | None, chunk_size: int
) -> Iterator[tuple[int, Any]]:
    """Chunks of ``systems``: parsed lists, or slices of an XYZ file the workers parse."""
    if _workers_parse(systems, client, index, format):
        return xyz_slices(systems, chunk_size)
    return iter_chunks(iter_structures(systems, index=index, format=format), chunk_size)


def _workers_parse(systems: Any, client: Any, index: str, format: str | None) -> bool:
    """Whether the workers can read ``systems`` themselves (an extended-XYZ file, every frame)."""
    if client is None or not _is_path(systems) or index != ":":
        return False
    suffix = Path(systems).suffix.lower()
    return format in ("extxyz", "xyz") or (format is None and suffix in (".xyz", ".extxyz"))


def chunk_features(representation: Any, task: tuple[int, Any, ChunkOptions]) -> dict:
    """Rows of one chunk of structures as numpy arrays (runs on a worker or locally).

    ``task`` is ``(chunk index, structures, options)``. Returns ``values [row, F]``,
    ``structure [row]`` (index in the whole input), ``center``, ``numbers`` ``[row]``,
    ``n_structures`` and ``n_atoms`` of the chunk.
    """
    index, frames, options = task
    if isinstance(frames, XyzSlice):
        frames = frames.read()
    if options.threads:
        torch.set_num_threads(options.threads)
    start = index * options.chunk_size
    dtype = torch.float32 if options.dtype == "float32" else torch.float64
    try:
        features = representation.compute(
            frames,
            output="numpy",
            dtype=dtype,
            device=options.device,
            batch_size=options.batch_size,
            min_distance=options.min_distance,
            skip_bad=options.skip_bad,
        )
    except ValueError as error:
        raise ValueError(
            f"chunk {index} (structures {start}..{start + len(frames) - 1}; 'structure' below "
            f"counts from {start}): {error}"
        ) from None
    values = np.asarray(features.values)
    structure = np.asarray(features.structure, dtype=np.int64)
    center = np.asarray(features.center, dtype=np.int64)
    numbers = np.asarray(features.numbers, dtype=np.int64)
    n = len(frames)
    if options.pool is not None:
        pooled = np.zeros((n, values.shape[1]), dtype=values.dtype)  # [structure, F]
        np.add.at(pooled, structure, values)
        if options.pool == "mean":
            counts = np.bincount(structure, minlength=n).clip(min=1).astype(values.dtype)
            pooled /= counts[:, None]
        values, structure = pooled, np.arange(n, dtype=np.int64)
        center, numbers = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
    n_atoms = sum(len(np.asarray(_positions(f))) for f in frames)
    skipped = list(getattr(features, "skipped", []) or [])
    return {
        "skipped_index": np.asarray([start + int(i) for i, _ in skipped], dtype=np.int64),
        "skipped_reason": np.asarray([str(r) for _, r in skipped], dtype=str),
        "values": values,
        "structure": structure + start,
        "center": center,
        "numbers": numbers,
        "n_structures": np.asarray(n),
        "n_atoms": np.asarray(n_atoms),
    }


def _positions(frame: Any) -> Any:
    return frame["positions"] if isinstance(frame, dict) else frame.positions


# --------------------------------------------------------------------------- work directory
class ChunkStore:
    """The work directory ``<output>.partial/``: a manifest and one ``.npz`` per finished chunk."""

    def __init__(self, output: Path, manifest: dict, resume: bool):
        import shutil

        self.directory = Path(str(output).rstrip("/") + ".partial")
        self.manifest = manifest
        manifest_path = self.directory / "manifest.json"
        if self.directory.exists() and not resume:
            shutil.rmtree(self.directory)
        if self.directory.exists():
            if not manifest_path.is_file():
                raise ValueError(
                    f"{str(self.directory)!r} exists but is not a tradens work directory "
                    "(no manifest.json); remove it"
                )
            previous = json.loads(manifest_path.read_text())
            if previous != json.loads(json.dumps(manifest)):
                changed = sorted(
                    key
                    for key in set(previous) | set(manifest)
                    if previous.get(key) != json.loads(json.dumps(manifest.get(key)))
                )
                raise ValueError(
                    f"cannot resume from {str(self.directory)!r}: it was started with other "
                    f"settings ({', '.join(changed)} differ); remove it or pass resume=False "
                    "(command line: --restart)"
                )
        else:
            self.directory.mkdir()
            with atomic_open(manifest_path, "w") as handle:
                json.dump(manifest, handle, indent=2)

    def path(self, index: int) -> Path:
        return self.directory / f"chunk-{index:08d}.npz"

    def done(self) -> set[int]:
        """Indices of the finished chunks."""
        out = set()
        for entry in self.directory.glob("chunk-*.npz"):
            out.add(int(entry.stem.split("-")[1]))
        return out

    def write(self, index: int, arrays: dict) -> None:
        with atomic_open(self.path(index), "wb") as handle:
            np.savez(handle, **arrays)

    def read(self, index: int) -> dict:
        with np.load(self.path(index), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------- the run
@dataclass
class StreamResult:
    """What :func:`compute_to_file` wrote.

    Attributes
    ----------
    path : str
        The output file.
    format : str
        ``"hdf5"``, ``"zarr"``, ``"npz"`` or ``"metatensor"``.
    n_structures, n_atoms, n_rows, n_features : int
        Input structures and atoms, rows and columns written.
    n_chunks, computed, reused : int
        Chunks in all, computed by this call, and taken from an earlier interrupted run.
    seconds : float
        Wall time of the call (s).
    skipped : list of (int, str)
        Structures left out with ``skip_bad``: index in the input and reason.
    """

    path: str
    format: str
    n_structures: int
    n_atoms: int
    n_rows: int
    n_features: int
    n_chunks: int
    computed: int
    reused: int
    seconds: float
    skipped: list = field(default_factory=list)


def _input_description(systems: Any, index: str, format: str | None) -> Any:
    """What identifies the input in the manifest (file name, size and time for a path)."""
    if _is_path(systems):
        if not Path(systems).is_file():
            raise FileNotFoundError(f"input file {str(systems)!r} does not exist")
        stat = Path(systems).stat()
        return {
            "path": str(Path(systems).resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "index": index,
            "format": format,
        }
    return None  # an iterable: the caller promises the same structures in the same order


def compute_to_file(
    representation: Any,
    systems: Any,
    path: str | os.PathLike,
    *,
    chunk_size: int = 1000,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | None = None,
    pool: str | None = None,
    hypers: dict | None = None,
    client: Any = None,
    max_in_flight: int | None = None,
    resume: bool = True,
    threads: int = 0,
    min_distance: float | None = None,
    skip_bad: bool = False,
    index: str = ":",
    format: str | None = None,
    progress: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> StreamResult:
    """Compute features chunk by chunk and write them to one file; resumable.

    Parameters
    ----------
    representation : SOAP or ACE
        Sent to the workers once.
    systems : path, ASE database, or iterable of structures
        Read lazily (:func:`iter_structures`); a resumed run must get the same
        structures in the same order.
    path : str or path-like
        Output: ``.h5``/``.hdf5``, ``.zarr`` (a directory), ``.npz`` or ``.mts``.
    chunk_size, batch_size : int
        Structures per chunk (the unit of work, resumption and memory) and per batch
        (``None``: ``compute``'s batches packed by atom count).
    skip_bad : bool
        Leave out structures that fail and list them in ``StreamResult.skipped``.
    dtype, device : optional
        float64 (default) or float32; where each chunk is computed.
    pool : {None, "mean", "sum"}
        One row per structure (mean or sum over its centres).
    hypers : dict, optional
        Stored with the features (default: ``to_dict(representation.hypers)``).
    client : distributed.Client, optional
        Compute the chunks on this dask cluster (``tradens[dask]``); this process
        reads the input and writes the output, with at most ``max_in_flight``
        chunks submitted at once (default: twice the workers).
    resume : bool
        Reuse the finished chunks of an earlier run with the same settings.
    threads : int
        Torch threads per chunk computation (0: unchanged).
    min_distance, index, format : optional
        As in ``compute`` (Å); ASE index and format of a file input.
    progress, on_chunk : optional
        Progress bar over structures (atoms/s); called with each stored chunk's index.

    Returns
    -------
    StreamResult
    """
    began = time.perf_counter()
    kind = feature_format(path)
    output = Path(path)
    _check_destination(output, kind)
    options = _chunk_options(
        chunk_size, batch_size, dtype, device, pool, min_distance, threads, skip_bad
    )
    hypers = to_dict(representation.hypers) if hypers is None else hypers
    manifest = {
        "format_version": PARTIAL_FORMAT_VERSION,
        "hypers": hypers,
        "n_features": int(representation.n_features),
        "options": {k: v for k, v in options.__dict__.items() if k not in ("device", "threads")},
        "input": _input_description(systems, index, format),
    }
    store = ChunkStore(output, manifest, resume)
    n_chunks, computed = _fill_store(
        store,
        representation,
        _chunk_source(systems, client, index, format, chunk_size),
        options,
        client=client,
        max_in_flight=max_in_flight,
        progress=progress,
        on_chunk=on_chunk,
    )
    _check_complete(store, n_chunks)
    totals = _assemble(store, n_chunks, output, representation, hypers, options)
    store.remove()
    return StreamResult(
        path=str(output),
        format=kind,
        n_chunks=n_chunks,
        computed=computed,
        reused=n_chunks - computed,
        n_features=int(representation.n_features),
        seconds=time.perf_counter() - began,
        **totals,
    )


def _fill_store(
    store: ChunkStore,
    representation: Any,
    chunks: Iterator[tuple[int, Any]],
    options: ChunkOptions,
    *,
    client: Any,
    max_in_flight: int | None,
    progress: bool,
    on_chunk: Callable[[int], None] | None,
) -> tuple[int, int]:
    """Compute the chunks missing from ``store``; return (chunks in the input, computed)."""
    bar = _progress_bar(progress)
    try:
        limit = max_in_flight
        return _fill(store, representation, chunks, options, client, limit, bar, on_chunk)
    finally:
        if bar is not None:
            bar.close()


def _fill(
    store: ChunkStore,
    representation: Any,
    chunks: Iterator[tuple[int, Any]],
    options: ChunkOptions,
    client: Any,
    max_in_flight: int | None,
    bar: Any,
    on_chunk: Callable[[int], None] | None,
) -> tuple[int, int]:
    began = time.perf_counter()
    done = store.done()
    counts = {"n_chunks": 0, "computed": 0, "atoms": 0}

    def todo() -> Iterator[tuple[int, tuple[int, Any, ChunkOptions]]]:
        for c, frames in chunks:
            counts["n_chunks"] = c + 1
            if c not in done:
                yield c, (c, frames, options)
            elif bar is not None:
                bar.update(len(frames))

    results: Iterator[tuple[int, dict]]
    if client is None:
        results = ((c, chunk_features(representation, task)) for c, task in todo())
    else:
        from ..parallel import map_bounded

        results = map_bounded(
            client, chunk_features, todo(), shared=representation, max_in_flight=max_in_flight
        )
    for c, arrays in results:
        store.write(c, arrays)
        counts["computed"] += 1
        if bar is not None:
            bar.update(int(arrays["n_structures"]))
            counts["atoms"] += int(arrays["n_atoms"])
            rate = counts["atoms"] / max(time.perf_counter() - began, 1e-9)
            bar.set_postfix_str(f"{rate:.0f} atoms/s", refresh=False)
        if on_chunk is not None:
            on_chunk(c)
    return counts["n_chunks"], counts["computed"]


def _check_complete(store: ChunkStore, n_chunks: int) -> None:
    """Raise unless the store holds chunks ``0 .. n_chunks - 1`` and no others."""
    extra = sorted(c for c in store.done() if c >= n_chunks)
    if extra:
        raise ValueError(
            f"{str(store.directory)!r} holds chunk(s) {extra[:5]} past the end of the input "
            f"({n_chunks} chunks): the input changed since the run began; remove the directory"
        )
    if n_chunks == 0:
        store.remove()
        raise ValueError("empty input: no structures to compute")


def _chunk_options(
    chunk_size: int,
    batch_size: int | None,
    dtype: torch.dtype | None,
    device: Any,
    pool: str | None,
    min_distance: float | None,
    threads: int,
    skip_bad: bool,
) -> ChunkOptions:
    """Checked :class:`ChunkOptions` of :func:`compute_to_file`'s arguments."""
    _check_positive("chunk_size", chunk_size)
    if batch_size is not None:
        _check_positive("batch_size", batch_size)
    if pool not in (None, "mean", "sum"):
        raise ValueError(f"pool must be None, 'mean' or 'sum', got {pool!r}")
    if dtype not in (None, torch.float64, torch.float32):
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")
    return ChunkOptions(
        chunk_size=int(chunk_size),
        batch_size=None if batch_size is None else int(batch_size),
        dtype="float32" if dtype == torch.float32 else "float64",
        device=None if device is None else str(device),
        pool=pool,
        min_distance=min_distance,
        threads=int(threads),
        skip_bad=bool(skip_bad),
    )


def _progress_bar(progress: bool) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="features", unit="structure")


def _check_destination(output: Path, kind: str) -> None:
    if kind == "zarr":
        parent = output.parent if str(output.parent) else Path(".")
        if not parent.is_dir():
            raise FileNotFoundError(
                f"cannot write {str(output)!r}: directory {str(parent)!r} does not exist"
            )
        if output.exists() and not output.is_dir():
            raise FileExistsError(f"{str(output)!r} exists and is not a directory")
    else:
        check_output(output)


def _assemble(
    store: ChunkStore,
    n_chunks: int,
    output: Path,
    representation: Any,
    hypers: dict,
    options: ChunkOptions,
) -> dict:
    """Copy the chunks, in order, into the output file; return the totals."""
    totals: dict[str, Any] = {"n_structures": 0, "n_atoms": 0, "n_rows": 0, "skipped": []}
    missing = sorted(set(range(n_chunks)) - store.done())
    if missing:
        raise RuntimeError(f"chunks {missing[:5]} are missing from {str(store.directory)!r}")
    with FeatureWriter(
        output,
        n_features=int(representation.n_features),
        dtype=np.float32 if options.dtype == "float32" else np.float64,
        names=list(representation.feature_names()),
        labels=representation.feature_labels(),
        hypers=hypers,
    ) as writer:
        for c in range(n_chunks):
            arrays = store.read(c)
            writer.append(
                arrays["values"], arrays["structure"], arrays["center"], arrays["numbers"]
            )
            totals["n_structures"] += int(arrays["n_structures"])
            totals["n_atoms"] += int(arrays["n_atoms"])
            totals["n_rows"] += int(arrays["values"].shape[0])
            totals["skipped"] += [
                (int(i), str(r))
                for i, r in zip(arrays["skipped_index"], arrays["skipped_reason"], strict=True)
            ]
    return totals


#: Batches per chunk when ``compute`` reads its input lazily or runs on a cluster.
BATCHES_PER_CHUNK = 16


def compute_chunked(
    representation: Any,
    systems: Any,
    *,
    output: str,
    dtype: torch.dtype | None,
    device: Any,
    batch_size: int | None,
    progress: bool,
    min_distance: float | None,
    client: Any,
    skip_bad: bool = False,
) -> Features:
    """``compute`` of a lazily read input (or on a cluster): chunk by chunk, rows in input order.

    Chunks of ``batch_size * BATCHES_PER_CHUNK`` structures (``batch_size`` None: 64 *
    BATCHES_PER_CHUNK, in batches packed by atom count); with a dask ``client`` they
    are computed on its workers. The rows equal those of ``compute`` on a list.
    """
    from tqdm.auto import tqdm

    from .features import check_batch_size

    chunk_size = (batch_size or 64) * BATCHES_PER_CHUNK
    if output not in ("numpy", "torch"):
        raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
    check_batch_size(batch_size)
    options = ChunkOptions(
        chunk_size=chunk_size,
        batch_size=batch_size,
        dtype="float32" if dtype == torch.float32 else "float64",
        device=None if device is None else str(device),
        pool=None,
        min_distance=min_distance,
        threads=0,
        skip_bad=skip_bad,
    )
    tasks = (
        (c, (c, frames, options))
        for c, frames in iter_chunks(iter_structures(systems), options.chunk_size)
    )
    results: Iterator[tuple[int, dict]]
    if client is None:
        results = ((c, chunk_features(representation, task)) for c, task in tasks)
    else:
        from ..parallel import map_bounded

        results = map_bounded(client, chunk_features, tasks, shared=representation)
    parts: dict[int, dict] = {}
    bar = tqdm(desc="features", unit="chunk", disable=not progress)
    for c, arrays in results:
        parts[c] = arrays
        bar.update(1)
    bar.close()
    if not parts:
        raise ValueError("empty list of structures: nothing to compute")
    ordered = [parts[c] for c in range(len(parts))]
    result = Features(
        np.concatenate([p["values"] for p in ordered]),
        np.concatenate([p["structure"] for p in ordered]),
        np.concatenate([p["center"] for p in ordered]),
        np.concatenate([p["numbers"] for p in ordered]),
        labels=representation.feature_labels(),
        names=representation.feature_names(),
        skipped=[
            (int(i), str(r))
            for p in ordered
            for i, r in zip(p["skipped_index"], p["skipped_reason"], strict=True)
        ],
    )
    return result if output == "numpy" else _as_torch(result, device)


def _as_torch(features: Features, device) -> Features:
    """``features`` with torch tensors (on ``device``)."""

    def conv(x):
        return torch.as_tensor(x, device=device)

    return Features(
        conv(features.values),
        conv(features.structure),
        conv(features.center),
        conv(features.numbers),
        dict(features.labels),
        list(features.names),
        list(features.skipped),
    )
