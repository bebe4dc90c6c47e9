"""Pieces of :class:`~tradens.models.LearnedPotential`: the readout and the trainable copy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

__all__ = ["Readout", "learnable_copy", "concat_targets"]


class Readout(torch.nn.Module):
    """Per-atom energy of (scaled) features and, optionally, the centre element.

    .. math::

        \\varepsilon_i = w \\cdot \\tilde x_i + (U^T e_{Z_i}) \\cdot \\tilde x_i
                         + \\mathrm{MLP}([s\\,\\tilde x_i, e_{Z_i}]) + \\varepsilon^0_{Z_i}

    with ``x~ = x * inv_scale`` (fixed per-feature scales, 1 by default), a
    learned element embedding ``e_Z`` (``element_features`` numbers per
    element, random start), an element-dependent linear part ``U`` (zero
    start), an optional MLP whose last layer starts at zero, and optional
    per-element reference energies ``eps0`` (eV; ``None`` leaves them to the
    caller). ``s`` is ``sqrt(F)`` for unscaled (norm-1) features, as before,
    and 1 once ``inv_scale`` is set.

    Parameters
    ----------
    n_features : int
        ``F``, the feature count.
    hidden : tuple of int
        MLP widths; ``()`` for none.
    activation : {"silu", "tanh", "relu"}
        MLP non-linearity.
    n_species : int
        Number of elements ``S`` (rows of the element tables); element index
        ``S`` is "unknown" and gets the mean embedding / mean reference.
    element_features : int
        Size of the learned element embedding of the centre atom (0: none).
    reference : numpy.ndarray or None
        ``[S]`` initial per-element energies (eV) to own as a parameter.
    seed : int
        Seed of the random initialisation (a local generator, so creating a
        readout does not touch torch's global state).
    """

    def __init__(
        self,
        n_features: int,
        hidden: tuple[int, ...] = (),
        activation: str = "silu",
        *,
        n_species: int = 0,
        element_features: int = 0,
        reference=None,
        seed: int = 0,
    ):
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed))
        self.n_features = int(n_features)
        self.linear = torch.nn.Linear(n_features, 1, bias=False, dtype=torch.float64)
        self.register_buffer("inv_scale", torch.ones(n_features, dtype=torch.float64))
        self.register_buffer("scaled", torch.zeros((), dtype=torch.bool))
        # buffers, declared for the type checker (in __init__: TorchScript reads the class's
        # annotations and cannot resolve them here)
        self.inv_scale: torch.Tensor  # [F]
        self.scaled: torch.Tensor  # [], bool: whether inv_scale was set
        self.element_features = int(element_features)
        if element_features > 0:
            if n_species < 1:
                raise ValueError("element_features > 0 needs n_species >= 1")
            self.element_embedding: torch.nn.Parameter | None = torch.nn.Parameter(
                torch.randn(n_species, element_features, dtype=torch.float64, generator=generator)
            )  # [S, d]
            self.element_linear: torch.nn.Parameter | None = torch.nn.Parameter(
                torch.zeros(element_features, n_features, dtype=torch.float64)
            )  # [d, F]
        else:
            self.element_embedding = None
            self.element_linear = None
        if reference is not None:
            self.reference: torch.nn.Parameter | None = torch.nn.Parameter(
                torch.as_tensor(np.asarray(reference), dtype=torch.float64)
            )
        else:
            self.reference = None
        act = {"silu": torch.nn.SiLU, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[activation]
        layers: list[torch.nn.Module] = []
        width = n_features + self.element_features
        for size in hidden:
            layer = torch.nn.Linear(width, size, dtype=torch.float64)
            bound = 1.0 / math.sqrt(width)
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
            layers += [layer, act()]
            width = size
        self.mlp: torch.nn.Sequential | None = None
        if hidden:
            last = torch.nn.Linear(width, 1, dtype=torch.float64)
            torch.nn.init.zeros_(last.weight)
            torch.nn.init.zeros_(last.bias)
            self.mlp = torch.nn.Sequential(*layers, last)

    @property
    def mlp_input_scale(self) -> float:
        return 1.0 if bool(self.scaled) else math.sqrt(self.n_features)

    def set_feature_scale(self, values: torch.Tensor) -> None:
        """Scale every feature by ``1 / RMS`` over ``values [row, F]`` (constant columns: 1)."""
        rms = values.detach().pow(2).mean(0).sqrt()  # [F]
        positive = rms > 1e-12 * max(float(rms.max()), 1e-300)
        with torch.no_grad():
            self.inv_scale.copy_(torch.where(positive, 1.0 / torch.where(positive, rms, 1.0), 1.0))
            self.scaled.fill_(True)

    def _element_table(self, table: torch.Tensor) -> torch.Tensor:
        """``[S + 1, ...]``: the rows and their mean for unknown elements."""
        return torch.cat([table, table.mean(0, keepdim=True)], dim=0)

    def forward(self, x: torch.Tensor, species_index: torch.Tensor | None = None) -> torch.Tensor:
        """Energy of every row ``[row]`` (eV) from ``x [row, F]`` and ``species_index [row]``."""
        x = x * self.inv_scale  # [row, F]
        out = self.linear(x)[:, 0]  # [row]
        needs_species = self.element_embedding is not None or self.reference is not None
        if needs_species and species_index is None:
            raise ValueError("this readout needs the species index of every row")
        embedding = None
        if self.element_embedding is not None and self.element_linear is not None:
            embedding = self._element_table(self.element_embedding)[species_index]  # [row, d]
            out = out + ((embedding @ self.element_linear) * x).sum(1)
        if self.mlp is not None:
            inputs = x * self.mlp_input_scale
            if embedding is not None:
                inputs = torch.cat([inputs, embedding], dim=1)  # [row, F + d]
            out = out + self.mlp(inputs)[:, 0]
        if self.reference is not None:
            out = out + self._element_table(self.reference[:, None])[species_index, 0]
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
