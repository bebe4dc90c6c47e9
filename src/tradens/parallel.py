"""Work split over the workers of a dask.distributed cluster (optional extra ``tradens[dask]``).

Feature files (:func:`tradens.representations.stream.compute_to_file`) and linear fits
(:meth:`tradens.models.LinearPotential.fit` with ``client=``) hand out *chunks* of
structures as tasks and gather what comes back on the client, with a bounded number of
tasks in flight, so the client's memory does not grow with the data set. A worker that
dies takes its running tasks with it; the scheduler runs them again elsewhere (their
inputs are part of the task), so every chunk comes back exactly once.

This module imports nothing from tradens and nothing from dask at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["require_dask", "make_client", "map_bounded"]

DASK_HINT = "pip install 'tradens[dask]' (dask and distributed)"


def require_dask() -> Any:
    """The ``distributed`` module, or an ImportError naming the ``dask`` extra."""
    try:
        return importlib.import_module("distributed")
    except ImportError:
        raise ImportError(
            f"running on a dask cluster needs the optional packages dask and distributed "
            f"({DASK_HINT})"
        ) from None


def make_client(
    scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1
) -> Any:
    """A ``distributed.Client``: of the scheduler at ``scheduler``, or of a new LocalCluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) or a scheduler file
        (``*.json``, as written by ``dask scheduler --scheduler-file``).
    workers : int, optional
        Number of worker processes of a new ``LocalCluster`` (when no ``scheduler``).
    threads_per_worker : int
        Threads of each local worker (1: one structure chunk per core).

    The caller closes the client (and its local cluster) with ``client.close()``;
    ``client.cluster`` is the local cluster, or None.
    """
    distributed = require_dask()
    if (scheduler is None) == (workers is None):
        raise ValueError("give either a scheduler address or a number of workers, not both")
    if scheduler is not None:
        if str(scheduler).endswith(".json"):
            return distributed.Client(scheduler_file=str(scheduler))
        return distributed.Client(str(scheduler))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    import dask

    # dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers; any such setting turns off
    # glibc's adaptive mmap threshold, so every large tensor is mapped and faulted in afresh:
    # tradens' feature chunks ran 2x slower in a worker than in the main process
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=":0",  # any free port: 8787 may be taken by another cluster
        )
    return distributed.Client(cluster)


def n_workers(client: Any) -> int:
    """Workers currently known to the scheduler of ``client`` (at least 1)."""
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


def map_bounded(
    client: Any,
    function: Callable[..., Any],
    items: Iterable[tuple[int, Any]],
    *,
    shared: Any = None,
    max_in_flight: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """``(key, function(shared, item))`` for every ``(key, item)``, in order of completion.

    At most ``max_in_flight`` tasks (default: twice the number of workers) are
    submitted at once; the next item is drawn from ``items`` only when a task has
    finished, so a lazy ``items`` is read as the workers consume it. ``shared``
    (e.g. a representation) is sent to the workers once (``scatter``, to every
    worker) and passed as the first argument of every call.

    Raises
    ------
    Exception
        The first task's exception, after cancelling the tasks still running.
    """
    distributed = require_dask()
    limit = max_in_flight if max_in_flight is not None else 2 * n_workers(client)
    if limit < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {limit}")
    handle = client.scatter(shared, broadcast=True, hash=False) if shared is not None else None
    source = iter(items)
    pending = distributed.as_completed()
    keys: dict[str, int] = {}
    running: dict[str, Any] = {}

    def submit_next() -> bool:
        try:
            key, item = next(source)
        except StopIteration:
            return False
        # pure=False: two chunks with equal content are still two tasks
        future = client.submit(function, handle, item, pure=False)
        keys[future.key] = key
        running[future.key] = future
        pending.add(future)
        return True

    for _ in range(limit):
        if not submit_next():
            break
    try:
        for future in pending:
            result = future.result()
            key = keys.pop(future.key)
            running.pop(future.key)
            future.release()
            submit_next()
            yield key, result
    except BaseException:
        pending.clear()
        client.cancel(list(running.values()))
        raise
