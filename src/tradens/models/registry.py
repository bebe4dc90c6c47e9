"""Closed registry of the classes a model file may name.

Estimators register their class with :func:`register_model` where they are defined;
:mod:`tradens.models.io` looks classes up here by name and so imports no estimator
(the import graph stays acyclic: estimators -> registry <- io). Importing any module
of :mod:`tradens.models` runs the package ``__init__``, which imports every estimator,
so the registry is complete before a file can be loaded.

Representations are rebuilt from a fixed table (:class:`~tradens.SOAP`,
:class:`~tradens.ACE`); no code is ever imported from a dotted path in a file.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from ..hypers import from_dict, to_dict
from ..representations.ace import ACE
from ..representations.base import Representation
from ..representations.soap import SOAP

__all__ = [
    "model_classes",
    "register_model",
    "representation_classes",
    "representation_from_state",
    "representation_state",
]


class SavedModel(Protocol):
    """What a registered model class provides to :mod:`tradens.models.io`."""

    def _get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON metadata and named arrays of the fitted model."""
        ...

    @classmethod
    def _from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> Any:
        """The model (an instance of ``cls``) rebuilt from what :meth:`_get_state` returned."""
        ...


_MODELS: dict[str, type[SavedModel]] = {}

M = TypeVar("M", bound=SavedModel)


def register_model(cls: type[M]) -> type[M]:
    """Class decorator: make ``cls`` loadable by its ``__name__``.

    Raises
    ------
    ValueError
        If another class already holds that name.
    """
    name = cls.__name__
    if _MODELS.get(name, cls) is not cls:
        raise ValueError(f"a model class named {name!r} is already registered")
    _MODELS[name] = cls
    return cls


def model_classes() -> dict[str, type[SavedModel]]:
    """Registered model classes by name (a copy)."""
    return dict(_MODELS)


def representation_classes() -> dict[str, type]:
    """Representation classes a model file may name."""
    return {"SOAP": SOAP, "ACE": ACE}


def representation_state(
    representation: Representation, prefix: str = "representation"
) -> tuple[dict, dict[str, np.ndarray]]:
    """JSON metadata and arrays of a representation (hypers + tensors)."""
    name = type(representation).__name__
    if name not in representation_classes():
        raise ValueError(
            f"cannot save a representation of type {name}; "
            f"known: {sorted(representation_classes())}"
        )
    arrays = {
        f"{prefix}/{key}": value.detach().cpu().numpy()
        for key, value in representation.state_dict().items()
        if value is not None
    }
    fixed = getattr(representation, "fixed_matrices", None)
    if fixed is not None:
        arrays.update(
            {f"{prefix}.fixed/{k}": np.asarray(m.detach().cpu()) for k, m in enumerate(fixed)}
        )
    return {"class": name, "hypers": to_dict(representation.hypers)}, arrays


def representation_from_state(
    meta: dict, arrays: dict[str, np.ndarray], prefix: str = "representation"
) -> Representation:
    """Rebuild a representation saved by :func:`representation_state`."""
    classes = representation_classes()
    if meta.get("class") not in classes:
        raise ValueError(f"unknown representation class {meta.get('class')!r} in model file")
    representation = classes[meta["class"]](from_dict(meta["hypers"]))
    state = {
        key[len(prefix) + 1 :]: torch.as_tensor(value)
        for key, value in arrays.items()
        if key.startswith(prefix + "/")
    }
    current = representation.state_dict()
    missing = set(current) - set(state)
    if missing:
        raise ValueError(f"model file lacks representation arrays {sorted(missing)}")
    with torch.no_grad():
        for key, value in state.items():
            if key not in current:
                raise ValueError(f"model file has an unknown representation array {key!r}")
            current[key].copy_(value.to(current[key].dtype))
    fixed = sorted(key for key in arrays if key.startswith(prefix + ".fixed/"))
    if fixed:
        representation.fixed_matrices = tuple(torch.as_tensor(arrays[key]) for key in fixed)
    return representation
