"""Which implementation served each derivative product: recorded, queryable.

Every derivative product has one dispatcher, and the dispatcher records the
path it took (``"analytic"``, ``"compiled"``, ``"autograd"``, ...) under the
product's name, so that tests and benchmarks can assert that the fast path ran:

>>> from tradens.gradients import paths
>>> paths.record("forces", "analytic")
>>> paths.last("forces")
'analytic'
>>> with paths.recording() as seen:
...     paths.record("jacobian", "compiled")
>>> seen
[('jacobian', 'compiled')]

The products are ``"forces"`` (the forces/stress vector-Jacobian product of a
model), ``"jacobian"`` (per-centre descriptor Jacobians) and ``"summed"``
(structure-summed Jacobians used to fit linear models).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["PRODUCTS", "last", "record", "recording"]

PRODUCTS = ("forces", "jacobian", "summed")

_state = threading.local()


def _log() -> dict[str, str]:
    if not hasattr(_state, "last"):
        _state.last = {}
        _state.listeners = []
    return _state.last


def record(product: str, path: str) -> None:
    """Note that ``path`` served ``product`` (called by the dispatchers)."""
    if product not in PRODUCTS:
        raise ValueError(f"unknown derivative product {product!r}; expected one of {PRODUCTS}")
    _log()[product] = path
    for listener in _state.listeners:
        listener.append((product, path))


def last(product: str) -> str | None:
    """The path that last served ``product`` in this thread, or None."""
    if product not in PRODUCTS:
        raise ValueError(f"unknown derivative product {product!r}; expected one of {PRODUCTS}")
    return _log().get(product)


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[str, str]]]:
    """Collect every ``(product, path)`` recorded inside the block, in order."""
    _log()
    seen: list[tuple[str, str]] = []
    _state.listeners.append(seen)
    try:
        yield seen
    finally:
        _state.listeners.remove(seen)
