"""The typed seam shared by SOAP and ACE: what gradients and models may rely on.

:class:`Representation` is a structural :class:`typing.Protocol`: a class satisfies it by
having these members, without inheriting from it. ``isinstance(x, Representation)`` checks
that the members exist (not their signatures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from ..systems.batch import Batch
    from .features import Features

__all__ = ["Representation", "cutoff_radius"]


@runtime_checkable
class Representation(Protocol):
    """Per-atom features of atomic structures (:class:`tradens.SOAP`, :class:`tradens.ACE`).

    Attributes
    ----------
    hypers : SoapHypers or AceHypers
        Frozen hyper-parameters; ``hypers.cutoff.radius`` is the cutoff radius (Å) and
        :func:`tradens.to_dict` serialises them.
    """

    hypers: Any

    @property
    def n_features(self) -> int:
        """Number of feature columns ``F``."""
        ...

    def feature_names(self) -> list[str]:
        """Readable name of every column, ``[F]``."""
        ...

    def forward(
        self,
        batch: Batch,
        positions: torch.Tensor | None = None,
        cells: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable features ``[row, F]`` and the atom index of each row ``[row]``.

        ``positions [atom, 3]`` (Å) and ``cells [structure, 3, 3]`` (Å) replace the batch's
        own, so that gradients with respect to them can be taken by autograd.
        """
        ...

    def compute(
        self,
        systems: Any,
        *,
        output: str = "numpy",
        dtype: torch.dtype | None = None,
        device: Any = None,
        batch_size: int | None = None,
        progress: bool = False,
        min_distance: float | None = None,
        skip_bad: bool = False,
        client: Any = None,
    ) -> Features:
        """Features of one or many structures (numpy or torch output)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Tensors saved with a model (mixing matrices, learned embeddings)."""
        ...


def cutoff_radius(representation: Representation) -> float:
    """Cutoff radius (Å) of ``representation``.

    >>> from tradens import SOAP
    >>> cutoff_radius(SOAP(cutoff=4.5, species=[28, 29]))
    4.5
    """
    return float(representation.hypers.cutoff.radius)
