"""Learned element embeddings: mixing weights and readout trained end to end.

.. math::

    E = \\sum_i \\big( f_\\vartheta(X_i(W), Z_i) + e_{Z_i} \\big)

where ``X_i(W)`` are tensor-reduced features whose mixing (embedding) ``W``
is a trainable parameter (:class:`tradens.SOAP` with ``mixing.learnable``, or
:class:`tradens.ACE` with ``learnable``), optionally followed by learned pair
densities (``pair_channels``, an EAM-like radial term, see
:mod:`tradens.models._pair_density`), and ``f`` is a linear readout or a
small MLP (with a linear skip connection), optionally dependent on the
centre element through a learned element embedding (``element_features``).
The per-element reference energies ``e_Z`` are fitted first on the training
split; they stay fixed or are trained with the rest (``train_reference``).
With ``ridge_alpha`` the linear part starts from the energy-only ridge
solution on the initial features, otherwise at zero; the MLP's last layer
starts at zero, so training starts at the ridge (or the baseline) model.

Training minimises

``w_E^2 MSE(E/N) + w_F^2 L(F) (+ w_S^2 MSE(sigma))``

with Adam on mini-batches of structures (forces by double backpropagation);
``L`` is the mean squared force error or a Huber loss (``forces_loss``,
quadratic up to ``forces_delta`` eV/Å, linear beyond: strongly distorted
structures with huge forces do not dominate). The learning rate is halved
when the validation loss stalls; training stops early and restores the best
epoch. With ``ema`` the validation and the final model use an exponential
moving average of the parameters. Deterministic for a seed (CPU); runs on
CUDA when available (``device="auto"``) and ends on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from ..gradients.api import energy_forces_stress
from ..kernels.determinism import deterministic
from ..representations.base import Representation
from ..systems.batch import _as_frames, as_batch
from ._base import PotentialBase
from ._data import check_labels, periodic_3d, read_targets, species_of, structure_weights
from ._pair_density import Augmented, PairDensity, pair_from_state, pair_state
from ._readout import Readout, concat_targets, learnable_copy
from ._report import FitReport, PropertyErrors, warn_about
from .baseline import ElementBaseline
from .registry import register_model, representation_from_state, representation_state

__all__ = ["LearnedPotential", "Readout", "PRESETS"]

#: Named configurations for :meth:`LearnedPotential.preset`: ``"representation"`` (the
#: keyword arguments of :class:`tradens.ACE` or :class:`tradens.SOAP`, without ``species``)
#: and ``"model"`` (the settings that differ from the class defaults).
PRESETS: dict[str, dict] = {
    # the HEA25 benchmark's choice (benchmarks/bench_hea25_learned.py, docs/models.md): 5-fold CV
    # on 90 HEA25 structures, chosen on the inner validation splits
    "hea25": {
        "representation": {
            "type": "ACE",
            "cutoff": {"radius": 5.0, "width": 1.0},
            "nu_max": 3,
            "l_max": (0, 3, 2),
            "channels": 8,
            "radial": {"kind": "gto", "n_max": 6},
            "density": {"sigma": 0.5, "center_weight": 0.0},
            "normalize": False,
            "seed": 0,
        },
        "model": {
            "pair_channels": 4,
            "pair_basis": 16,
            "pair_r_min": 1.0,
            "scale_features": True,
            "train_reference": True,
            "forces_weight": 3.0,
            "stress_weight": 10.0,
            "forces_loss": "huber",
            "learning_rate": 1e-2,
            "weight_decay": 3e-3,
            "max_epochs": 80,
            "batch_size": 4,
            "validation_fraction": 0.15,
            "ema": 0.99,
            "ridge_alpha": None,
        },
    },
}


@register_model
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
    element_features : int
        Size of a learned embedding of the centre element that makes the
        readout element dependent (linear part and MLP input); 0: none.
    pair_channels : int
        Channels ``P`` of learned pair densities appended to the features
        (0: none); see :mod:`tradens.models._pair_density`.
    pair_basis : int
        Gaussians of the pair densities' radial grid.
    pair_cutoff : float or None
        Cutoff of the pair densities, Å (default: the representation's).
    pair_r_min : float
        First grid point of the pair densities, Å.
    scale_features : bool
        Divide every feature by its RMS over the training atoms (computed
        once, on the initial embedding); advisable for unnormalised features.
    train_reference : bool
        Train the per-element reference energies with the rest (they start
        at the composition fit).
    energy_weight, forces_weight, stress_weight : float
        Loss weights of the errors of E/N (eV/atom), force components (eV/Å)
        and stress components (eV/Å^3).
    forces_loss : {"mse", "huber"}
        Squared force errors, or a Huber loss that is quadratic up to
        ``forces_delta`` and linear beyond (scaled to equal the squared
        error below ``forces_delta``).
    forces_delta : float
        Huber threshold, eV/Å.
    learning_rate : float
        Adam learning rate of the readout.
    embedding_learning_rate : float or None
        Adam learning rate of the embedding(s) (default: ``learning_rate``).
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
    ema : float
        Decay of an exponential moving average of the parameters per step
        (e.g. 0.99); 0 disables it.
    config_weights, config_key, energy_key, forces_key, stress_key
        As :class:`~tradens.models.LinearPotential`.
    device : {"auto", "cpu", "cuda"}
        Where to train.
    seed : int
        Seed of the split, the initialisation and the batch order.
    verbose : bool
        Print one line per epoch.
    progress : bool
        Show a progress bar over the epochs (validation loss as postfix).

    Attributes
    ----------
    representation_ : torch.nn.Module
        The representation with the learned embedding (with pair densities:
        an ``Augmented`` wrapper whose ``inner`` is the SOAP/ACE).
    readout_ : Readout
        The trained readout.
    baseline_ : ElementBaseline
        Reference energies (the composition fit, or the trained values).
    history_ : list of dict
        Per epoch: ``train_loss``, ``train_energy_rmse``, ``train_forces_rmse``
        (running over the epoch's steps), ``val_loss``, ``val_energy_rmse``
        (eV/atom), ``val_forces_rmse`` (eV/Å), ``learning_rate``.
    best_epoch_ : int
        Epoch whose parameters were kept.
    fit_report_ : FitReport
        Training and validation RMSE of every trained property beside the
        trivial predictor's (baseline energies, zero forces and stress) for
        the kept parameters; a :class:`~tradens.models.FitWarning` is raised
        when the model is worse than the trivial predictor on one of them.

    Examples
    --------
    The HEA25 benchmark configuration (``PRESETS["hea25"]``)::

        model = LearnedPotential.preset("hea25", species=species).fit(frames)
    """

    def __init__(
        self,
        representation: Representation,
        *,
        hidden=(),
        activation: str = "silu",
        element_features: int = 0,
        pair_channels: int = 0,
        pair_basis: int = 12,
        pair_cutoff=None,
        pair_r_min: float = 1.5,
        scale_features: bool = False,
        train_reference: bool = False,
        energy_weight: float = 1.0,
        forces_weight: float = 0.1,
        stress_weight: float = 0.0,
        forces_loss: str = "mse",
        forces_delta: float = 2.0,
        learning_rate: float = 5e-3,
        embedding_learning_rate=None,
        weight_decay: float = 0.0,
        ridge_alpha: float | None = 1e-4,
        max_epochs: int = 200,
        patience: int = 30,
        batch_size: int = 8,
        validation_fraction: float = 0.1,
        ema: float = 0.0,
        config_weights=None,
        config_key: str = "config_type",
        energy_key: str = "energy",
        forces_key: str = "forces",
        stress_key: str = "stress",
        device: str = "auto",
        seed: int = 0,
        verbose: bool = False,
        progress: bool = False,
    ):
        self.representation = representation
        self.hidden = hidden
        self.activation = activation
        self.element_features = element_features
        self.pair_channels = pair_channels
        self.pair_basis = pair_basis
        self.pair_cutoff = pair_cutoff
        self.pair_r_min = pair_r_min
        self.scale_features = scale_features
        self.train_reference = train_reference
        self.energy_weight = energy_weight
        self.forces_weight = forces_weight
        self.stress_weight = stress_weight
        self.forces_loss = forces_loss
        self.forces_delta = forces_delta
        self.learning_rate = learning_rate
        self.embedding_learning_rate = embedding_learning_rate
        self.weight_decay = weight_decay
        self.ridge_alpha = ridge_alpha
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.ema = ema
        self.config_weights = config_weights
        self.config_key = config_key
        self.energy_key = energy_key
        self.forces_key = forces_key
        self.stress_key = stress_key
        self.device = device
        self.seed = seed
        self.verbose = verbose
        self.progress = progress

    @classmethod
    def preset(cls, name: str, representation=None, *, species=None, **overrides):
        """A model with a named configuration (``PRESETS``).

        Parameters
        ----------
        name : str
            ``"hea25"``: the HEA25 learned-embedding configuration of
            ``benchmarks/bench_hea25_learned.py`` (TR-ACE, K = 8, nu <= 3,
            cutoff 5 Å, GTO radial basis; 4 learned pair densities; Huber force
            loss, force weight 3 and stress weight 10; Adam 1e-2 with weight
            decay 3e-3, EMA 0.99; 80 epochs).
        representation : SOAP or ACE, optional
            Use this representation instead of the preset's.
        species : sequence of int
            Elements of the preset's representation (required without
            ``representation``).
        **overrides
            Constructor arguments that replace the preset's.

        Returns
        -------
        LearnedPotential
            Unfitted.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        config = PRESETS[name]
        if representation is None:
            if species is None:
                raise ValueError(
                    f"preset {name!r} builds its own representation: give species (atomic "
                    "numbers of the data) or a representation"
                )
            from ..representations.ace import ACE
            from ..representations.soap import SOAP

            options = dict(config["representation"])
            kind = {"ACE": ACE, "SOAP": SOAP}[options.pop("type")]
            representation = kind(species=[int(z) for z in species], **options)
        valid = set(cls._param_names()) - {"representation"}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown LearnedPotential parameter(s) {unknown}")
        return cls(representation, **{**config["model"], **overrides})

    # ------------------------------------------------------------------ helpers
    def _torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        return torch.device(self.device)

    def _species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Row of every atomic number in ``species_`` (``len(species_)`` if unknown) ``[row]``."""
        species = torch.as_tensor(self.species_, device=numbers.device)  # [S]
        match = numbers[:, None] == species[None, :]  # [row, S]
        found = match.any(1)
        return torch.where(found, match.to(torch.long).argmax(1), len(self.species_))

    def _atom_energy(self, values: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        index = self._species_index(numbers)
        energy = self.readout_(values, index)  # [row]
        if self.readout_.reference is not None:
            return energy
        reference = self.baseline_.atom_energies(numbers.cpu(), values.dtype).to(values.device)
        return energy + reference

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

    def _force_penalty(self, error: torch.Tensor) -> torch.Tensor:
        """Per-component force loss ``[n]`` (eV^2/Å^2): squared error or scaled Huber."""
        if self.forces_loss == "mse":
            return error**2
        return 2.0 * torch.nn.functional.huber_loss(
            error, torch.zeros_like(error), reduction="none", delta=float(self.forces_delta)
        )

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
            energy = out.energy  # [structure]
        else:
            values, rows = self.representation_(batch)
            per_row = self._atom_energy(values, batch.numbers[rows])
            energy = torch.zeros(batch.n_structures, dtype=per_row.dtype, device=device)
            energy = energy.index_add(0, batch.structure[rows], per_row)
        w = torch.as_tensor(weights, device=device)  # [structure]
        n_atoms = torch.as_tensor(targets.n_atoms, dtype=energy.dtype, device=device)
        label = torch.as_tensor(targets.energy, device=device)
        ok = torch.isfinite(label)
        parts = {}
        loss = torch.zeros((), dtype=energy.dtype, device=device)
        if bool(ok.any()):
            error = ((energy - label.nan_to_num()) / n_atoms)[ok]  # eV/atom
            parts["energy"] = (w[ok] * error**2).sum() / w[ok].sum()
            loss = loss + self.energy_weight**2 * parts["energy"]
        if self.forces_weight > 0:
            label = torch.as_tensor(targets.forces, device=device)  # [atom, 3]
            atom_w = w[batch.structure][:, None].expand_as(label)
            ok = torch.isfinite(label)
            if bool(ok.any()):
                error = (out.forces - label.nan_to_num())[ok]  # eV/Å
                norm = atom_w[ok].sum()
                parts["forces"] = (atom_w[ok] * error**2).sum() / norm
                penalty = (atom_w[ok] * self._force_penalty(error)).sum() / norm
                loss = loss + self.forces_weight**2 * penalty
        if self.stress_weight > 0:
            label = torch.as_tensor(targets.stress, device=device)  # [structure, 6]
            stress = out.stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            ok = torch.isfinite(label) & torch.isfinite(stress)
            if bool(ok.any()):
                error = (stress - label.nan_to_num())[ok]
                weight = w[:, None].expand_as(label)[ok]
                parts["stress"] = (weight * error**2).sum() / weight.sum()
                loss = loss + self.stress_weight**2 * parts["stress"]
        return loss, parts

    def _evaluate(self, frames, targets_list, weights_list, device):
        """Loss and RMSEs over a list of mini-batches (no graph kept)."""
        total = 0.0
        sums: dict[str, float] = {}  # sum over chunks of (mean squared error x structures)
        counts: dict[str, int] = {}  # structures per part
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

    def _check_params(self) -> None:
        for name in (
            "energy_weight",
            "forces_weight",
            "stress_weight",
            "learning_rate",
            "weight_decay",
            "forces_delta",
            "ema",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.max_epochs, int) or self.max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer, got {self.max_epochs!r}")
        if self.forces_loss not in ("mse", "huber"):
            raise ValueError(f"forces_loss must be 'mse' or 'huber', got {self.forces_loss!r}")
        if self.forces_loss == "huber" and self.forces_delta <= 0:
            raise ValueError(f"forces_delta must be > 0, got {self.forces_delta!r}")
        if not self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema!r}")
        for name in ("element_features", "pair_channels", "pair_basis"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    def _build_representation(self, species):
        """The trainable copy of the representation, with pair densities if asked for."""
        representation = learnable_copy(self.representation)
        if not self.pair_channels:
            return representation
        cutoff = self.pair_cutoff
        if cutoff is None:
            cutoff = float(representation.hypers.cutoff.radius)
        pair = PairDensity(
            species,
            channels=self.pair_channels,
            n_basis=max(self.pair_basis, 1),
            cutoff=float(cutoff),
            r_min=self.pair_r_min,
            seed=self.seed + 1,
        )
        return Augmented(representation, pair)

    # ------------------------------------------------------------------ fitting
    def fit(self, frames, validation=None, sample_weight=None):
        """Train on ``frames``, early stopping on ``validation`` (or a held-out share).

        Parameters
        ----------
        frames : list of ase.Atoms
            Training structures with energies (eV) and forces (eV/Å).
        validation : list of ase.Atoms, optional
            Structures for early stopping and model selection (default: a
            seeded ``validation_fraction`` of ``frames``).
        sample_weight : array_like, optional
            ``[structure]`` weights of ``frames``.

        Returns
        -------
        LearnedPotential
            ``self``.
        """
        with deterministic(self._torch_device()):  # bitwise-repeatable on CUDA too
            return self._fit(frames, validation, sample_weight)

    def _fit(self, frames, validation, sample_weight):
        self._check_params()
        learnable_copy(self.representation)  # fails early without an embedding
        frames = _as_frames(frames)
        self._check_labels(frames)
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
        self.representation_ = self._build_representation(species).to(device)
        self.readout_ = self._initial_readout(train, train_w).to(device)
        keys = dict(
            energy_key=self.energy_key, forces_key=self.forces_key, stress_key=self.stress_key
        )
        val_chunks = [val[k : k + self.batch_size] for k in range(0, len(val), self.batch_size)]
        val_targets = [read_targets(c, **keys) for c in val_chunks]
        val_weights = [val_w[k : k + self.batch_size] for k in range(0, len(val), self.batch_size)]
        train_targets = {id(f): read_targets([f], **keys) for f in train}
        optimiser, scheduler = self._optimiser()
        params = list(self.readout_.parameters()) + list(self.representation_.parameters())
        average = [p.detach().clone() for p in params] if self.ema > 0 else None
        best = (math.inf, None, 0)
        self.history_ = []
        epochs: Iterable[int] = range(self.max_epochs)
        bar = None  # the progress bar (progress=True)
        if self.progress:
            from tqdm.auto import tqdm

            epochs = bar = tqdm(epochs, desc="epochs", unit="epoch")
        for epoch in epochs:
            order = generator.permutation(len(train))
            running, train_sums = self._train_epoch(
                train, order, train_targets, train_w, optimiser, params, average, device
            )
            if average is not None:
                current = _swap(params, average)  # evaluate (and keep) the averaged parameters
            val_loss, val_rmse = self._evaluate(val_chunks, val_targets, val_weights, device)
            if val_loss < best[0]:
                best = (val_loss, self._snapshot(), epoch)
            if average is not None:
                _swap(params, current)
            scheduler.step(val_loss)
            record = {
                "epoch": epoch,
                "train_loss": running / len(train),
                "train_energy_rmse": math.sqrt(train_sums.get("energy", math.nan) / len(train)),
                "train_forces_rmse": math.sqrt(train_sums.get("forces", math.nan) / len(train)),
                "val_loss": val_loss,
                "val_energy_rmse": val_rmse.get("energy", math.nan),
                "val_forces_rmse": val_rmse.get("forces", math.nan),
                "learning_rate": optimiser.param_groups[0]["lr"],
            }
            self.history_.append(record)
            if bar is not None:
                bar.set_postfix(val_loss=f"{val_loss:.4g}", best=best[2])
            if self.verbose:
                print(
                    " ".join(
                        f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record.items()
                    ),
                    flush=True,
                )
            if epoch - best[2] >= self.patience:
                break
        self._restore(best[1])
        self.best_epoch_ = best[2]
        self.representation_ = self.representation_.to("cpu")
        self.readout_ = self.readout_.to("cpu")
        if self.readout_.reference is not None:
            self.baseline_.set_reference(
                species, self.readout_.reference.detach().cpu().numpy().copy()
            )
        self.fit_report_ = self._report(train, val, train_w, val_w, keys)
        warn_about(self.fit_report_, stacklevel=4)
        return self

    def _check_labels(self, frames: list) -> None:
        """Raise a ValueError when a label the fit uses is missing (see ``check_labels``)."""
        label_keys = {
            "energy": self.energy_key,
            "forces": self.forces_key,
            "stress": self.stress_key,
        }
        check_labels(
            frames,
            read_targets(frames, **{f"{p}_key": k for p, k in label_keys.items()}),
            label_keys,
            {p: getattr(self, f"{p}_weight") > 0 for p in label_keys},
            periodic=periodic_3d(frames),
        )

    def _optimiser(self):
        """Adam over the readout and the embedding (own learning rate) and its LR schedule."""
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
        return optimiser, scheduler

    def _train_epoch(
        self, train, order, train_targets, train_w, optimiser, params, average, device
    ) -> tuple[float, dict[str, float]]:
        """One pass over ``train`` in ``order``, one optimiser step per mini-batch.

        Updates the moving ``average`` of ``params`` (when given); returns the summed loss
        and the summed squared-error parts, each weighted by the mini-batch size.
        """
        running = 0.0
        train_sums: dict[str, float] = {}
        for k in range(0, len(train), self.batch_size):
            chunk = [train[i] for i in order[k : k + self.batch_size]]
            targets = concat_targets([train_targets[id(f)] for f in chunk])
            optimiser.zero_grad()
            loss, parts = self._loss(
                chunk,
                targets,
                train_w[order[k : k + self.batch_size]],
                device,
                create_graph=True,
            )
            loss.backward()
            optimiser.step()
            if average is not None:
                with torch.no_grad():
                    for mean, p in zip(average, params, strict=True):
                        mean.lerp_(p.detach(), 1.0 - self.ema)
            running += float(loss.detach()) * len(chunk)
            for key, value in parts.items():
                train_sums[key] = train_sums.get(key, 0.0) + float(value.detach()) * len(chunk)
        return running, train_sums

    def _report(self, train, val, train_w, val_w, keys) -> FitReport:
        """Training and validation RMSEs of the kept model beside the trivial predictor's."""
        weights = {
            "energy": self.energy_weight,
            "forces": self.forces_weight,
            "stress": self.stress_weight,
        }
        rows = []
        split = {}
        for name, frames, w in (("train", train, train_w), ("validation", val, val_w)):
            targets = read_targets(frames, **keys)
            want = {p: weights[p] > 0 for p in weights}
            predicted = self.predict(frames, forces=want["forces"], stress=want["stress"])
            trivial = {
                "energy": self.baseline_.predict_energy(frames),
                "forces": np.zeros_like(targets.forces),
                "stress": np.zeros_like(targets.stress),
            }
            split[name] = (targets, predicted, trivial, w)
        for p in ("energy", "forces", "stress"):
            if weights[p] <= 0:
                continue
            values = {}
            for name, (targets, predicted, trivial, w) in split.items():
                values[name] = (
                    _weighted_rmse(predicted.get(p), targets, p, w),
                    _weighted_rmse(trivial[p], targets, p, w),
                )
            labelled = _count_labelled(split["train"][0], p) + _count_labelled(
                split["validation"][0], p
            )
            if labelled == 0:
                continue
            rows.append(
                PropertyErrors(
                    name=p,
                    key=str(keys[f"{p}_key"]),
                    n_labels=labelled,
                    weight=float(weights[p]),
                    train_rmse=values["train"][0],
                    validation_rmse=values["validation"][0],
                    trivial_train_rmse=values["train"][1],
                    trivial_validation_rmse=values["validation"][1],
                )
            )
        return FitReport(
            model=type(self).__name__,
            validation=f"held-out ({len(val)})",
            properties=tuple(rows),
        )

    def _initial_readout(self, train, weights) -> Readout:
        """Readout whose linear part is the energy-only ridge solution on the initial features."""
        from .linear import LinearPotential

        n_features = int(self.representation_.n_features)
        readout = Readout(
            n_features,
            tuple(self.hidden),
            self.activation,
            n_species=len(self.species_),
            element_features=self.element_features,
            reference=self.baseline_.reference_energies_ if self.train_reference else None,
            seed=self.seed,
        )
        if self.scale_features:
            readout.set_feature_scale(self._training_features(train))
        if self.ridge_alpha is None:
            with torch.no_grad():
                readout.linear.weight.zero_()
            return readout
        if self.pair_channels or self.scale_features:
            raise ValueError(
                "ridge_alpha (ridge start) works without pair densities and feature scaling; "
                "use ridge_alpha=None"
            )
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

    def _training_features(self, train) -> torch.Tensor:
        """Initial features of all training atoms ``[row, F]`` (no graph)."""
        device = next(iter(self.representation_.parameters())).device
        out = []
        with torch.no_grad():
            for k in range(0, len(train), 16):
                values, _ = self.representation_(as_batch(train[k : k + 16], device=device))
                out.append(values)
        return torch.cat(out)

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

        inner = self.representation_
        pair = None
        if isinstance(inner, Augmented):
            inner, pair = inner.inner, inner.pair
        rep_meta, arrays = representation_state(inner)
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
        if getattr(self, "fit_report_", None) is not None:
            fitted["fit_report"] = self.fit_report_.to_dict()
        if pair is not None:
            fitted["pair"], pair_arrays = pair_state(pair)
            arrays.update(pair_arrays)
        return {"representation": rep_meta, "params": params, "fitted": fitted}, arrays

    @classmethod
    def _from_state(cls, meta, arrays):

        representation = representation_from_state(meta["representation"], arrays)
        params = dict(meta["params"])
        params["hidden"] = tuple(params.get("hidden") or ())
        model = cls(representation, **params)
        species = tuple(meta["fitted"]["species"])
        model.species_ = species
        model.baseline_ = ElementBaseline(species=species).set_reference(
            species, arrays["reference_energies"]
        )
        pair = meta["fitted"].get("pair")
        fitted = (
            representation
            if pair is None
            else Augmented(representation, pair_from_state(pair, arrays))
        )
        model.representation_ = fitted
        readout = Readout(
            int(fitted.n_features),
            model.hidden,
            model.activation,
            n_species=len(species),
            element_features=model.element_features,
            reference=np.asarray(arrays["reference_energies"]) if model.train_reference else None,
        )
        state = {
            k[len("readout/") :]: torch.as_tensor(v)
            for k, v in arrays.items()
            if k.startswith("readout/")
        }
        missing, unexpected = readout.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"inv_scale", "scaled"}:  # files before feature scaling
            raise ValueError(
                f"readout state does not match: missing {missing}, unexpected {unexpected}"
            )
        model.readout_ = readout
        model.best_epoch_ = meta["fitted"]["best_epoch"]
        model.history_ = meta["fitted"]["history"]
        if meta["fitted"].get("fit_report") is not None:
            model.fit_report_ = FitReport.from_dict(meta["fitted"]["fit_report"])
        return model


def _count_labelled(targets, prop: str) -> int:
    n = len(targets.n_atoms)
    if prop == "energy":
        return int(np.isfinite(targets.energy).sum())
    check = targets.has_forces if prop == "forces" else targets.has_stress
    return sum(1 for s in range(n) if check(s))


def _weighted_rmse(predicted, targets, prop: str, weights) -> float:
    """Structure-weighted RMSE of ``predicted`` against the labels of ``prop`` (NaN if none)."""
    if predicted is None:
        return math.nan
    w = np.asarray(weights, dtype=np.float64)
    if prop == "energy":
        error = (np.asarray(predicted) - targets.energy) / targets.n_atoms  # [structure]
        row_w = w
    elif prop == "forces":
        error = np.asarray(predicted) - targets.forces  # [atom, 3]
        row_w = np.repeat(w, targets.n_atoms)[:, None] * np.ones((1, 3))
    else:
        error = np.asarray(predicted) - targets.stress  # [structure, 6]
        row_w = w[:, None] * np.ones((1, 6))
    ok = np.isfinite(error)
    if not ok.any() or row_w[ok].sum() <= 0:
        return math.nan
    return float(np.sqrt((row_w[ok] * error[ok] ** 2).sum() / row_w[ok].sum()))


def _swap(params, values):
    """Copy ``values`` into ``params`` in place and return the previous values."""
    previous = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
    return previous
