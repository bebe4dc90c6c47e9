"""Pieces of :class:`~tradens.models.LearnedPotential`: the readout and the trainable copy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

__all__ = ["Readout", "learnable_copy", "concat_targets"]


class Readout(torch.nn.Module):
    """Per-atom energy ``w . X + MLP(sqrt(F) X)`` (MLP optional, its last layer starts at 0)."""

    def __init__(self, n_features: int, hidden: tuple[int, ...] = (), activation: str = "silu"):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, 1, bias=False, dtype=torch.float64)
        self.scale = math.sqrt(n_features)
        layers: list[torch.nn.Module] = []
        width = n_features
        act = {"silu": torch.nn.SiLU, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[activation]
        for size in hidden:
            layers += [torch.nn.Linear(width, size, dtype=torch.float64), act()]
            width = size
        self.mlp = None
        if hidden:
            last = torch.nn.Linear(width, 1, dtype=torch.float64)
            torch.nn.init.zeros_(last.weight)
            torch.nn.init.zeros_(last.bias)
            self.mlp = torch.nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)[:, 0]  # [row]
        if self.mlp is not None:
            out = out + self.mlp(x * self.scale)[:, 0]
        return out


def learnable_copy(representation):
    """A copy of ``representation`` whose embedding is a trainable parameter."""
    hypers = representation.hypers
    if getattr(hypers, "mixing", None) is not None:
        new = dataclasses.replace(hypers, mixing=dataclasses.replace(hypers.mixing, learnable=True))
    elif hasattr(hypers, "learnable") and getattr(hypers, "weights", None) != "onehot":
        new = dataclasses.replace(hypers, learnable=True)
    else:
        raise ValueError(
            f"{type(representation).__name__} has no embedding to learn; "
            "use a SOAP with mixing=... "
            "or an ACE with weights='random'/'given'"
        )
    out = type(representation)(new)
    with torch.no_grad():
        for key, value in representation.state_dict().items():
            out.state_dict()[key].copy_(value)
    return out


def concat_targets(parts):
    from ._data import Targets

    n_atoms = np.concatenate([t.n_atoms for t in parts])
    return Targets(
        energy=np.concatenate([t.energy for t in parts]),
        forces=np.concatenate([t.forces for t in parts]),
        stress=np.concatenate([t.stress for t in parts]),
        n_atoms=n_atoms,
        offsets=np.concatenate([[0], np.cumsum(n_atoms)]),
    )
