"""Learned element embeddings: mixing weights and readout trained end to end.

.. math::

    E = \\sum_i \\big( f_\\vartheta(X_i(W)) + e_{Z_i} \\big)

where ``X_i(W)`` are tensor-reduced features whose mixing (embedding) ``W``
is a trainable parameter (:class:`tradens.SOAP` with ``mixing.learnable``, or
:class:`tradens.ACE` with ``learnable``) and ``f`` is a linear readout or a
small MLP (with a linear skip connection). The per-element reference
energies ``e_Z`` are fitted first on the training split and kept fixed. The
linear part starts from the ridge solution on the initial features, the MLP
part from zero, so training starts at the ridge model.

Training minimises ``w_E^2 MSE(E/N) + w_F^2 MSE(F) (+ w_S^2 MSE(sigma))``
with Adam on mini-batches of structures (forces by double backpropagation),
halves the learning rate when the validation loss stalls and stops early,
restoring the best epoch. Deterministic for a seed (CPU); runs on CUDA when
available (``device="auto"``) and ends on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..gradients import energy_forces_stress
from ..systems import _as_frames, as_batch
from ._base import PotentialBase
from ._data import read_targets, species_of, structure_weights
from ._readout import Readout, concat_targets, learnable_copy
from .baseline import ElementBaseline

__all__ = ["LearnedPotential", "Readout"]


class LearnedPotential(PotentialBase):
    """Potential with a trained element embedding and readout.

    Parameters
    ----------
    representation : SOAP or ACE
        Tensor-reduced representation; its embedding is copied and trained
        (the argument is not modified).
    hidden : tuple of int
        MLP hidden layer widths; ``()`` gives a linear readout.
    activation : {"silu", "tanh", "relu"}
        MLP non-linearity.
    energy_weight, forces_weight, stress_weight : float
        Loss weights of the mean squared errors of E/N (eV/atom), force
        components (eV/Å) and stress components (eV/Å^3).
    learning_rate : float
        Adam learning rate of the readout.
    embedding_learning_rate : float or None
        Adam learning rate of the embedding (default: ``learning_rate``).
    weight_decay : float
        L2 penalty on all trained parameters.
    ridge_alpha : float or None
        Relative ridge of the initial linear readout (energy-only ridge on the
        initial features); ``None`` starts the linear readout at zero (the
        baseline model).
    max_epochs, patience : int
        Epoch budget and early-stopping patience (epochs without a better
        validation loss).
    batch_size : int
        Structures per optimisation step.
    validation_fraction : float
        Share of the training structures held out for early stopping (when
        ``fit`` gets no explicit validation set).
    config_weights, config_key, energy_key, forces_key, stress_key
        As :class:`~tradens.models.LinearPotential`.
    device : {"auto", "cpu", "cuda"}
        Where to train.
    seed : int
        Seed of the split, the initialisation and the batch order.
    verbose : bool
        Print one line per epoch.

    Attributes
    ----------
    representation_ : torch.nn.Module
        The representation with the learned embedding.
    readout_ : Readout
        The trained readout.
    baseline_ : ElementBaseline
        Reference energies (fitted first, fixed).
    history_ : list of dict
        Per epoch: ``train_loss``, ``val_loss``, ``val_energy_rmse`` (eV/atom),
        ``val_forces_rmse`` (eV/Å), ``learning_rate``.
    best_epoch_ : int
        Epoch whose parameters were kept.
    """

    def __init__(
        self,
        representation,
        *,
        hidden=(),
        activation: str = "silu",
        energy_weight: float = 1.0,
        forces_weight: float = 0.1,
        stress_weight: float = 0.0,
        learning_rate: float = 5e-3,
        embedding_learning_rate=None,
        weight_decay: float = 0.0,
        ridge_alpha: float = 1e-4,
        max_epochs: int = 200,
        patience: int = 30,
        batch_size: int = 8,
        validation_fraction: float = 0.1,
        config_weights=None,
        config_key: str = "config_type",
        energy_key: str = "energy",
        forces_key: str = "forces",
        stress_key: str = "stress",
        device: str = "auto",
        seed: int = 0,
        verbose: bool = False,
    ):
        self.representation = representation
        self.hidden = hidden
        self.activation = activation
        self.energy_weight = energy_weight
        self.forces_weight = forces_weight
        self.stress_weight = stress_weight
        self.learning_rate = learning_rate
        self.embedding_learning_rate = embedding_learning_rate
        self.weight_decay = weight_decay
        self.ridge_alpha = ridge_alpha
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.config_weights = config_weights
        self.config_key = config_key
        self.energy_key = energy_key
        self.forces_key = forces_key
        self.stress_key = stress_key
        self.device = device
        self.seed = seed
        self.verbose = verbose

    # ------------------------------------------------------------------ helpers
    def _torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        return torch.device(self.device)

    def _atom_energy(self, values: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        reference = self.baseline_.atom_energies(numbers.cpu(), values.dtype).to(values.device)
        return self.readout_(values) + reference

    def _split(self, frames, validation):
        if validation is not None:
            return frames, _as_frames(validation)
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        order = np.random.default_rng(self.seed).permutation(len(frames))
        n_val = max(1, int(round(self.validation_fraction * len(frames))))
        if n_val >= len(frames):
            raise ValueError(
                f"need at least 2 structures to hold out a validation set, got {len(frames)}"
            )
        return [frames[i] for i in sorted(order[n_val:])], [
            frames[i] for i in sorted(order[:n_val])
        ]

    def _loss(self, frames, targets, weights, device, create_graph: bool):
        """Weighted loss of a list of structures and its parts (energy, forces, stress MSE)."""
        batch = as_batch(frames, device=device)
        want_grad = self.forces_weight > 0 or self.stress_weight > 0
        if want_grad:
            out = energy_forces_stress(
                self.representation_,
                self._atom_energy,
                batch,
                output="torch",
                create_graph=create_graph,
            )
            energy = out.energy
        else:
            values, rows = self.representation_(batch)
            per_row = self._atom_energy(values, batch.numbers[rows])
            energy = torch.zeros(batch.n_structures, dtype=per_row.dtype, device=device)
            energy = energy.index_add(0, batch.structure[rows], per_row)
        w = torch.as_tensor(weights, device=device)
        n_atoms = torch.as_tensor(targets.n_atoms, dtype=energy.dtype, device=device)
        label = torch.as_tensor(targets.energy, device=device)
        ok = torch.isfinite(label)
        parts = {}
        loss = torch.zeros((), dtype=energy.dtype, device=device)
        if bool(ok.any()):
            error = ((energy - label.nan_to_num()) / n_atoms)[ok]
            parts["energy"] = (w[ok] * error**2).sum() / w[ok].sum()
            loss = loss + self.energy_weight**2 * parts["energy"]
        if self.forces_weight > 0:
            label = torch.as_tensor(targets.forces, device=device)
            atom_w = w[batch.structure][:, None].expand_as(label)
            ok = torch.isfinite(label)
            if bool(ok.any()):
                error = (out.forces - label.nan_to_num())[ok]
                parts["forces"] = (atom_w[ok] * error**2).sum() / atom_w[ok].sum()
                loss = loss + self.forces_weight**2 * parts["forces"]
        if self.stress_weight > 0:
            label = torch.as_tensor(targets.stress, device=device)
            stress = out.stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            ok = torch.isfinite(label) & torch.isfinite(stress)
            if bool(ok.any()):
                error = (stress - label.nan_to_num())[ok]
                parts["stress"] = (w[:, None].expand_as(label)[ok] * error**2).sum() / w[
                    :, None
                ].expand_as(label)[ok].sum()
                loss = loss + self.stress_weight**2 * parts["stress"]
        return loss, parts

    def _evaluate(self, frames, targets_list, weights_list, device):
        """Loss and RMSEs over a list of mini-batches (no graph kept)."""
        total, sums, counts = 0.0, {}, {}
        for chunk, targets, weights in zip(frames, targets_list, weights_list, strict=True):
            loss, parts = self._loss(chunk, targets, weights, device, create_graph=False)
            size = len(chunk)
            total += float(loss.detach()) * size
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * size
                counts[key] = counts.get(key, 0) + size
        n = sum(len(c) for c in frames)
        rmse = {key: math.sqrt(sums[key] / counts[key]) for key in sums}
        return total / n, rmse

    # ------------------------------------------------------------------ fitting
    def fit(self, frames, validation=None, sample_weight=None):
        """Train on ``frames``, early stopping on ``validation`` (or a held-out share)."""
        for name in (
            "energy_weight",
            "forces_weight",
            "stress_weight",
            "learning_rate",
            "weight_decay",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.max_epochs, int) or self.max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer, got {self.max_epochs!r}")
        learnable_copy(self.representation)  # fails early without an embedding
        frames = _as_frames(frames)
        weights_all = structure_weights(frames, sample_weight, self.config_weights, self.config_key)
        torch.manual_seed(self.seed)
        generator = np.random.default_rng(self.seed)
        train, val = self._split(frames, validation)
        weight_of = {id(f): w for f, w in zip(frames, weights_all, strict=True)}
        train_w = np.array([weight_of.get(id(f), 1.0) for f in train])
        val_w = np.array([weight_of.get(id(f), 1.0) for f in val])
        species = species_of(train, self.representation)
        self.species_ = species
        self.baseline_ = ElementBaseline(species=species, energy_key=self.energy_key).fit(
            train, train_w
        )
        device = self._torch_device()
        self.representation_ = learnable_copy(self.representation).to(device)
        self.readout_ = self._initial_readout(train, train_w).to(device)
        keys = dict(
            energy_key=self.energy_key, forces_key=self.forces_key, stress_key=self.stress_key
        )
        val_chunks = [val[k : k + self.batch_size] for k in range(0, len(val), self.batch_size)]
        val_targets = [read_targets(c, **keys) for c in val_chunks]
        val_weights = [val_w[k : k + self.batch_size] for k in range(0, len(val), self.batch_size)]
        train_targets = {id(f): read_targets([f], **keys) for f in train}
        embedding_lr = (
            self.learning_rate
            if self.embedding_learning_rate is None
            else self.embedding_learning_rate
        )
        optimiser = torch.optim.Adam(
            [
                {"params": list(self.readout_.parameters()), "lr": self.learning_rate},
                {"params": list(self.representation_.parameters()), "lr": embedding_lr},
            ],
            weight_decay=self.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, factor=0.5, patience=max(1, self.patience // 3)
        )
        best = (math.inf, None, 0)
        self.history_ = []
        for epoch in range(self.max_epochs):
            order = generator.permutation(len(train))
            running = 0.0
            for k in range(0, len(train), self.batch_size):
                chunk = [train[i] for i in order[k : k + self.batch_size]]
                targets = concat_targets([train_targets[id(f)] for f in chunk])
                optimiser.zero_grad()
                loss, _ = self._loss(
                    chunk,
                    targets,
                    train_w[order[k : k + self.batch_size]],
                    device,
                    create_graph=True,
                )
                loss.backward()
                optimiser.step()
                running += float(loss.detach()) * len(chunk)
            val_loss, val_rmse = self._evaluate(val_chunks, val_targets, val_weights, device)
            scheduler.step(val_loss)
            record = {
                "epoch": epoch,
                "train_loss": running / len(train),
                "val_loss": val_loss,
                "val_energy_rmse": val_rmse.get("energy", math.nan),
                "val_forces_rmse": val_rmse.get("forces", math.nan),
                "learning_rate": optimiser.param_groups[0]["lr"],
            }
            self.history_.append(record)
            if self.verbose:
                print(
                    " ".join(
                        f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record.items()
                    )
                )
            if val_loss < best[0]:
                best = (val_loss, self._snapshot(), epoch)
            elif epoch - best[2] >= self.patience:
                break
        self._restore(best[1])
        self.best_epoch_ = best[2]
        self.representation_ = self.representation_.to("cpu")
        self.readout_ = self.readout_.to("cpu")
        return self

    def _initial_readout(self, train, weights) -> Readout:
        """Readout whose linear part is the energy-only ridge solution on the initial features."""
        from .linear import LinearPotential

        n_features = int(self.representation_.n_features)
        readout = Readout(n_features, tuple(self.hidden), self.activation)
        if self.ridge_alpha is None:
            with torch.no_grad():
                readout.linear.weight.zero_()
            return readout
        ridge = LinearPotential(
            self.representation_.to("cpu"),
            alphas=(self.ridge_alpha,),
            cv=None,
            forces_weight=0.0,
            stress_weight=0.0,
            energy_key=self.energy_key,
            batch_size=max(self.batch_size, 16),
        ).fit(train, sample_weight=weights)
        with torch.no_grad():
            readout.linear.weight.copy_(torch.as_tensor(ridge.weights_)[None, :])
        # the ridge's baseline and the kept baseline both come from the same composition fit
        return readout

    def _snapshot(self):
        return (
            {k: v.detach().clone() for k, v in self.representation_.state_dict().items()},
            {k: v.detach().clone() for k, v in self.readout_.state_dict().items()},
        )

    def _restore(self, snapshot) -> None:
        if snapshot is None:
            return
        self.representation_.load_state_dict(snapshot[0])
        self.readout_.load_state_dict(snapshot[1])

    # ------------------------------------------------------------------ io
    def _get_state(self):
        from .io import representation_state

        rep_meta, arrays = representation_state(self.representation_)
        arrays.update(
            {
                f"readout/{k}": v.detach().cpu().numpy()
                for k, v in self.readout_.state_dict().items()
            }
        )
        arrays["reference_energies"] = np.asarray(self.baseline_.reference_energies_)
        params = self._json_params(exclude=("representation",))
        fitted = {
            "species": list(self.species_),
            "best_epoch": self.best_epoch_,
            "history": self.history_,
        }
        return {"representation": rep_meta, "params": params, "fitted": fitted}, arrays

    @classmethod
    def _from_state(cls, meta, arrays):
        from .io import representation_from_state

        representation = representation_from_state(meta["representation"], arrays)
        params = dict(meta["params"])
        params["hidden"] = tuple(params.get("hidden") or ())
        model = cls(representation, **params)
        species = tuple(meta["fitted"]["species"])
        model.species_ = species
        model.baseline_ = ElementBaseline(species=species).set_reference(
            species, arrays["reference_energies"]
        )
        model.representation_ = representation
        readout = Readout(int(representation.n_features), model.hidden, model.activation)
        readout.load_state_dict(
            {
                k[len("readout/") :]: torch.as_tensor(v)
                for k, v in arrays.items()
                if k.startswith("readout/")
            }
        )
        model.readout_ = readout
        model.best_epoch_ = meta["fitted"]["best_epoch"]
        model.history_ = meta["fitted"]["history"]
        return model
