"""Stage 1: structures in, a validated :class:`Batch` and its neighbour pairs out.

* :mod:`.batch` — ``ase.Atoms`` / :class:`System` / dicts -> :class:`Batch` (validated once).
* :mod:`.neighbors` — the vesin neighbour list and differentiable pair vectors ``r_ij``.
"""

from .batch import Batch, System, as_batch
from .neighbors import Pairs, neighbor_list, pair_vectors

__all__ = ["Batch", "Pairs", "System", "as_batch", "neighbor_list", "pair_vectors"]
