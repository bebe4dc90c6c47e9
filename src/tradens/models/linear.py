"""Linear (ridge) potentials on per-atom features.

.. math::

    E = \\sum_i \\left( \\theta \\cdot \\phi(X_i) + e_{Z_i} \\right), \\qquad
    \\mathbf F_a = -\\partial E / \\partial \\mathbf x_a, \\qquad
    \\sigma = \\frac{1}{V} \\frac{\\partial E}{\\partial \\epsilon}

with ``phi(X) = X`` (or per element, or a random projection), fitted jointly on
energies, forces and stress by ridge regression streamed over structures (see
:mod:`tradens.models._solve` for the objective, the per-fold baseline and the
conditioning check). The force rows come from
:mod:`tradens.gradients.summed` (per-pair SOAP derivatives; any other
representation falls back to autograd).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..representations.base import Representation
from ..representations.stream import is_lazy, iter_structures
from ..systems.batch import _as_frames
from ._base import PotentialBase
from ._cache import CACHE_PARAMS, DesignCache
from ._data import (
    check_labels,
    composition,
    fold_ids,
    periodic_3d,
    read_targets,
    species_of,
    structure_weights,
)
from ._design import LinearBasis, ProjectionBasis, design_batches
from ._report import TOLERANCE, FitReport, PropertyErrors, warn_about
from ._solve import PROPERTIES, FoldStatistics, cross_validate, final_fit, trivial_errors
from .baseline import ElementBaseline
from .random_projection import RandomProjection
from .registry import register_model, representation_from_state, representation_state

__all__ = ["LinearPotential", "DEFAULT_ALPHAS", "DesignCache"]

#: Relative regularisations cross-validated by default: 1e-9 .. 10, four per decade.
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-9, 1, 41))

#: How often a default (data-derived) property weight is raised when the fit is worse than the
#: trivial predictor on that property, and by which factor each time.
RECOVERY_ROUNDS, RECOVERY_FACTOR = 4, 3.0


@register_model
class LinearPotential(PotentialBase):
    """Ridge-regression potential, linear in (a basis of) per-atom features.

    Parameters
    ----------
    representation : torch.nn.Module
        Per-atom features with ``forward(batch, positions, cells) -> (values
        [row, F], rows)``, e.g. :class:`tradens.SOAP` (every atom a centre).
        Not modified; the fitted model keeps a copy in ``representation_``.
    alphas : sequence of float
        Relative regularisation strengths to cross-validate (one value skips CV).
    cv : int or None
        Number of folds (seeded shuffled K-fold over structures); ``None``
        fits once with ``alphas[0]``.
    energy_weight, forces_weight, stress_weight : float or None
        Weights ``w_p`` of the mean squared errors of energies (per eV/atom),
        force components (per eV/Å) and stress components (per eV/Å^3); 0
        ignores a property. ``None`` (default): from the data,
        ``w_p = 1 / RMSE_p^0`` with ``RMSE_p^0`` the training RMSE of the
        trivial predictor (per-element baseline energies, zero forces and
        stress), so every property's term is its MSE relative to the trivial
        predictor's; when the cross-validated error of such a property is
        still worse than the trivial predictor's, its weight is raised
        (x3, up to 4 times; ``fit_report_.notes`` says so).
    per_element : bool
        Separate weights for every centre element (``D = S F``).
    projection : RandomProjection, optional
        Project the features to fewer columns first (baselines).
    config_weights : dict, optional
        Per-structure weights by ``atoms.info[config_key]`` (key ``"default"``
        for the others).
    config_key : str
        Info key for ``config_weights``.
    energy_key, forces_key, stress_key : str
        Where the labels are (``atoms.info`` / ``atoms.arrays``, then the
        attached calculator's results). A label the fit uses must be found
        in every structure (see ``label_share``), else ``fit`` raises a
        ValueError naming the key, the keys present and the closest one.
        Default forces/stress keys found in no structure are skipped.
    label_share : float
        Smallest share (0 < share <= 1) of the structures (for stress: of
        those periodic in 3D) that must carry every label the fit uses.
    baseline : {"joint", "first"}
        ``"joint"`` (default): per-element reference energies fitted together
        with the weights, unregularised (the Schur complement of the
        composition block), so the ridge penalty does not shrink the
        composition-correlated part of the features towards a baseline fitted
        without them, and a model of exactly this form is recovered exactly.
        ``"first"``: reference energies by least squares on composition,
        fitted before (and inside every CV fold, independently of) the weights
        and kept fixed. On MEAM17 (energy-only ridge, 5-fold CV) ``"joint"``
        was never worse and up to 20 meV/atom better (``docs/models.md``).
    standardize : bool
        Penalise ``sum_f d_f theta_f^2`` with ``d_f`` the diagonal of the
        (training) normal matrix: ridge on columns scaled to unit weighted
        second moment, so small-variance blocks (high ``l``) are not shrunk
        more than the others.
    solver : {"auto", "primal", "dual"}
        ``"primal"``: streamed ``D x D`` normal equations (any labels).
        ``"dual"``: energy rows kept in memory and solved in the
        ``structure x structure`` space (energies only;
        for very wide designs such as the full SOAP). ``"auto"`` picks
        ``"dual"`` for energy-only fits with more features than structures
        (``D > structures``), the primal otherwise; ``solver_`` says which ran.
    cv_metric : {"loss", "energy", "forces", "stress"}
        What selects ``alpha``: the weighted validation loss, or one RMSE.
    batch_size : int
        Structures per design batch (memory).
    seed : int
        Seed of the fold assignment.
    progress : bool
        Show a progress bar.
    uncertainty : bool
        Keep what the posterior variance needs (``posterior_``, a ``D x D`` matrix,
        saved with the model) so that ``predict(frames, return_std=True)`` works;
        primal solver only (``solver_ == "dual"`` keeps nothing).

    Attributes
    ----------
    baseline_ : ElementBaseline
        Per-element reference energies fitted with the model.
    weights_ : numpy.ndarray
        ``theta [D]``.
    alpha_ : float
        Selected regularisation.
    cv_results_ : dict
        ``alphas`` and, per alpha, ``energy_rmse`` (eV/atom),
        ``forces_rmse`` (eV/Å), ``stress_rmse`` (eV/Å^3) and ``loss``.
    training_rmse_ : dict
        Training RMSEs of the final fit.
    condition_number_ : float
        Of the regularised normal equations.
    solver_ : str
        ``"primal"`` or ``"dual"``: the solver that ran.
    property_weights_ : dict
        The weights ``w_p`` used (after any automatic raise).
    fit_report_ : FitReport
        Training and cross-validation RMSE of every fitted property beside the
        trivial predictor's (``print(model.fit_report_)`` shows a table). A
        :class:`~tradens.models.FitWarning` is raised when the model is worse
        than the trivial predictor on a property or ``alpha_`` is at an edge of
        ``alphas``.
    posterior_ : dict or None
        The Bayesian reading of the ridge fit (:func:`tradens.models._solve.posterior_state`):
        ``factor [D, D]``, ``noise_variance`` (``sigma^2``), ``dof``,
        ``composition_map`` and ``composition_covariance`` (joint baseline), and
        ``energy_noise`` (``sigma^2 n_E / w_E^2``, (eV/atom)^2: the noise variance of a
        per-atom energy label of unit structure weight). None after a dual fit, with
        ``uncertainty=False`` or for files saved without it.

    Examples
    --------
    Refit with another regularisation grid without recomputing descriptors::

        model = LinearPotential(soap)
        cache = model.precompute(frames)
        model.fit_features(cache)
        model.set_params(alphas=np.logspace(-12, -6, 25)).fit_features(cache)

    A small fit (EMT energies and forces of rattled copper):

    >>> import ase.build
    >>> from ase.calculators.emt import EMT
    >>> from ase.calculators.singlepoint import SinglePointCalculator
    >>> from tradens import SOAP
    >>> from tradens.models import LinearPotential
    >>> frames = []
    >>> for seed in range(8):
    ...     atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    ...     atoms.rattle(0.05, seed=seed)
    ...     atoms.calc = EMT()
    ...     energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    ...     atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    ...     frames.append(atoms)
    >>> soap = SOAP(cutoff=4.0, l_max=2, radial={"n_max": 3}, species=[29])
    >>> model = LinearPotential(soap, alphas=(1e-6,), cv=None, stress_weight=0.0).fit(frames)
    >>> model.predict(frames[:2])["forces"].shape  # two structures of 4 atoms
    (8, 3)
    >>> model.training_rmse_["energy"] < 0.01  # eV/atom
    True
    """

    posterior_: dict | None

    def __init__(
        self,
        representation: Representation,
        *,
        alphas=DEFAULT_ALPHAS,
        cv=5,
        energy_weight: float | None = None,
        forces_weight: float | None = None,
        stress_weight: float | None = None,
        per_element: bool = False,
        projection=None,
        config_weights=None,
        config_key: str = "config_type",
        energy_key: str = "energy",
        forces_key: str = "forces",
        stress_key: str = "stress",
        label_share: float = 1.0,
        baseline: str = "joint",
        standardize: bool = False,
        solver: str = "auto",
        cv_metric: str = "loss",
        batch_size: int = 8,
        seed: int = 0,
        progress: bool = False,
        uncertainty: bool = True,
    ):
        self.representation = representation
        self.alphas = alphas
        self.cv = cv
        self.energy_weight = energy_weight
        self.forces_weight = forces_weight
        self.stress_weight = stress_weight
        self.per_element = per_element
        self.projection = projection
        self.config_weights = config_weights
        self.config_key = config_key
        self.energy_key = energy_key
        self.forces_key = forces_key
        self.stress_key = stress_key
        self.label_share = label_share
        self.baseline = baseline
        self.standardize = standardize
        self.solver = solver
        self.cv_metric = cv_metric
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self.uncertainty = uncertainty

    # ------------------------------------------------------------------ fitting
    def _validate(self):
        for name in ("energy_weight", "forces_weight", "stress_weight"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be None or a finite number >= 0, got {value!r}")
        if self.energy_weight == 0 and self.forces_weight == 0 and self.stress_weight == 0:
            raise ValueError(
                "at least one of energy_weight, forces_weight, stress_weight must be > 0"
            )
        alphas = np.atleast_1d(np.asarray(self.alphas, dtype=np.float64))
        if alphas.size == 0 or not np.isfinite(alphas).all() or (alphas <= 0).any():
            raise ValueError(f"alphas must be positive numbers, got {self.alphas!r}")
        if self.baseline not in ("first", "joint"):
            raise ValueError(f"baseline must be 'first' or 'joint', got {self.baseline!r}")
        if self.solver not in ("auto", "primal", "dual"):
            raise ValueError(f"solver must be 'auto', 'primal' or 'dual', got {self.solver!r}")
        if self.cv_metric not in ("loss", "energy", "forces", "stress"):
            raise ValueError(
                f"cv_metric must be 'loss', 'energy', 'forces' or 'stress', got {self.cv_metric!r}"
            )
        if not hasattr(self.representation, "forward"):
            raise ValueError(
                "representation must be a torch module with forward(batch, positions, cells)"
            )
        return alphas

    def _make_basis(self, n_features: int, species):
        if self.projection is not None:
            if self.per_element:
                raise ValueError("per_element cannot be combined with a projection")
            projection = copy.deepcopy(self.projection).fit(n_features)
            self.projection_ = projection
            return ProjectionBasis(torch.as_tensor(projection.components_))
        return LinearBasis(n_features, tuple(species) if self.per_element else None)

    def _n_features(self, frames) -> int:
        with torch.no_grad():
            from ..systems.batch import as_batch

            values, _ = self.representation.forward(as_batch(frames[:1]))
        return int(values.shape[1])

    def fit(self, frames, sample_weight=None, groups=None, *, client=None, chunk_size=None):
        """Fit baseline and weights; returns ``self``.

        Parameters
        ----------
        frames : list of ase.Atoms, a path, an ASE database or an iterable
            Labelled training structures (never modified). A file, database or
            iterator is read once into a list of structures; the design itself is
            never held (it is reduced to the normal equations as it is computed).
        sample_weight : array-like, optional
            ``[structure]`` weights ``c_s``.
        groups : array-like, optional
            ``[structure]`` fold labels (one fold per distinct label),
            overriding ``cv``.
        client : distributed.Client, optional
            Reduce the design on the workers of this dask cluster
            (``tradens[dask]``): every worker turns a partition of ``chunk_size``
            structures into its sufficient statistics and the client adds them up;
            the model equals the serial fit to rounding (primal solver only).
        chunk_size : int, optional
            Structures per partition with ``client`` (default: a quarter of an
            even share per worker).

        Raises
        ------
        ValueError
            When a label the fit uses is missing (see ``energy_key``).
        """
        self._cluster = None if client is None else (client, chunk_size)
        try:
            cache = self.precompute(frames, sample_weight=sample_weight, groups=groups)
        finally:
            self.__dict__.pop("_cluster", None)
        return self._fit_cache(cache, stacklevel=3)

    def precompute(self, frames, sample_weight=None, groups=None) -> DesignCache:
        """Descriptors of ``frames`` reduced to what every fit needs (see ``fit_features``).

        Parameters
        ----------
        frames, sample_weight, groups
            As :meth:`fit`.

        Returns
        -------
        DesignCache
            Per-fold sufficient statistics (``D x D`` per fold and property,
            float64) or, for the dual solver, the energy rows.
        """
        self._validate()
        frames = _as_frames(list(iter_structures(frames)) if is_lazy(frames) else frames)
        keys = {"energy": self.energy_key, "forces": self.forces_key, "stress": self.stress_key}
        targets = read_targets(
            frames,
            energy_key=self.energy_key,
            forces_key=self.forces_key,
            stress_key=self.stress_key,
        )
        wanted = {p: getattr(self, f"{p}_weight") != 0 for p in PROPERTIES}
        labels = check_labels(
            frames, targets, keys, wanted, share=self.label_share, periodic=periodic_3d(frames)
        )
        skipped = {
            p: f"no labels under {keys[p]!r}"
            for p in PROPERTIES
            if wanted[p] and keys[p] is not None and p not in labels
        }
        if not labels:
            raise ValueError(f"nothing to fit: {skipped or 'all property weights are 0'}")
        species = species_of(frames, self.representation)
        weights = structure_weights(frames, sample_weight, self.config_weights, self.config_key)
        folds, n_folds = fold_ids(len(frames), self.cv, groups, self.seed)
        basis = self._make_basis(self._n_features(frames), species)
        use_forces, use_stress = "forces" in labels, "stress" in labels
        derivatives = use_forces or use_stress
        if self.solver == "dual" and derivatives:
            raise ValueError(
                "solver='dual' fits energies only; set forces_weight=0 and stress_weight=0"
            )
        ridge = isinstance(self._regularizer(basis), (str, type(None)))
        dual = self.solver == "dual" or (
            self.solver == "auto" and ridge and not derivatives and basis.n_outputs > len(frames)
        )
        cluster = getattr(self, "_cluster", None)
        statistics: Any
        if dual and cluster is not None:
            raise ValueError(
                "fit(client=...) reduces the primal normal equations; this energy-only fit "
                f"with more features ({basis.n_outputs}) than structures ({len(frames)}) "
                "would use the dual solver: pass solver='primal' to fit it on the cluster"
            )
        if dual:
            from ._dual import dual_rows

            statistics = dual_rows(self, frames, targets, basis, species, weights)
        elif cluster is not None:
            from ._distributed import accumulate_on_cluster

            statistics = accumulate_on_cluster(
                self,
                cluster,
                frames,
                targets,
                basis,
                species,
                weights,
                folds,
                n_folds,
                (use_forces, use_stress),
            )
        else:
            statistics = self._accumulate(
                frames, targets, basis, species, weights, folds, n_folds, use_forces, use_stress
            )
        fitted = {
            name: getattr(self, name)
            for name in ("projection_", "sparse_points_", "sparse_numbers_")
            if hasattr(self, name)
        }
        return DesignCache(
            solver="dual" if dual else "primal",
            statistics=statistics,
            species=species,
            basis=basis,
            folds=folds,
            n_folds=n_folds,
            labels=labels,
            skipped=skipped,
            n_structures=len(frames),
            params={name: getattr(self, name) for name in self._cache_params()},
            representation=self.representation,
            fitted=fitted,
        )

    def _cache_params(self) -> tuple[str, ...]:
        return (*CACHE_PARAMS, "projection")

    def fit_features(self, cache: DesignCache):
        """Fit from a :class:`DesignCache` of :meth:`precompute`; returns ``self``.

        Only the regularisation grid ``alphas``, the property weights,
        ``baseline``, ``standardize`` and ``cv_metric`` may differ from when
        the cache was computed; the descriptors are not recomputed.
        """
        return self._fit_cache(cache, stacklevel=3)

    def _fit_cache(self, cache: DesignCache, stacklevel: int):
        if not isinstance(cache, DesignCache):
            raise TypeError(
                f"fit_features takes the DesignCache of precompute(frames), got "
                f"{type(cache).__name__}"
            )
        alphas = self._validate()
        cache.check(self)
        for name, value in cache.fitted.items():
            setattr(self, name, value)
        if cache.n_folds == 1 and alphas.size > 1:
            alphas = alphas[:1]
        self.basis_ = cache.basis
        labels = {p: n for p, n in cache.labels.items() if getattr(self, f"{p}_weight") != 0}
        if not labels:
            raise ValueError("nothing to fit: every property in the cache has weight 0")
        notes: list[str] = []
        statistics = cache.statistics
        if cache.solver == "dual":
            from ._dual import EnergyRows, dual_trivial_errors, fit_dual

            if not isinstance(statistics, EnergyRows):
                raise TypeError(f"a dual cache holds EnergyRows, got {type(statistics).__name__}")
            trivial = dual_trivial_errors(statistics, cache.folds, cache.n_folds)
            weights, _ = self._property_weights(labels, trivial)
            e0, theta, training, condition = fit_dual(
                self, statistics, cache.folds, cache.n_folds, alphas
            )
            self.posterior_ = None
        else:
            if not isinstance(statistics, FoldStatistics):
                raise TypeError(
                    f"a primal cache holds FoldStatistics, got {type(statistics).__name__}"
                )
            trivial = trivial_errors(statistics)
            weights, e0, theta, training, condition = self._solve_primal(
                statistics, labels, trivial, alphas, notes
            )
        self.solver_ = cache.solver
        self.property_weights_ = weights
        self._finish(cache.species, e0, theta, training, condition, cache.basis)
        self.fit_report_ = self._report(cache, labels, trivial, training, alphas, notes)
        warn_about(self.fit_report_, stacklevel=stacklevel + 1)
        return self

    def _property_weights(self, labels: dict, trivial: dict) -> tuple[dict, set]:
        """``w_p`` of every property (0 when not fitted) and the set of data-derived ones."""
        out, auto = {}, set()
        for p in PROPERTIES:
            given = getattr(self, f"{p}_weight")
            if p not in labels:
                out[p] = 0.0
            elif given is None:
                rms = trivial.get(p, (np.nan, np.nan))[0]
                out[p] = 1.0 / rms if np.isfinite(rms) and rms > 0 else 1.0
                auto.add(p)
            else:
                out[p] = float(given)
        return out, auto

    def _solve_primal(self, stats, labels, trivial, alphas, notes):
        """Cross-validate (raising data-derived weights while worse than trivial), then fit."""
        weights, auto = self._property_weights(labels, trivial)
        joint = self.baseline == "joint"
        regularizer = self._regularizer(self.basis_)
        for attempt in range(RECOVERY_ROUNDS + 1):
            if stats.n_folds > 1:
                results = cross_validate(stats, weights, alphas, regularizer, joint=joint)
                metric = "loss" if self.cv_metric == "loss" else f"{self.cv_metric}_rmse"
                scores = results[metric]
                if np.isnan(scores).all():
                    raise ValueError(f"cv_metric={self.cv_metric!r} but no such labels in the data")
                best = int(np.nanargmin(scores))
                alpha = float(alphas[best])
                errors = {p: results[f"{p}_rmse"][best] for p in labels}
                reference = {p: trivial[p][1] for p in labels}
            else:
                results, alpha = None, float(alphas[0])
            posterior: dict = {}
            fitted = final_fit(
                stats,
                weights,
                alpha,
                regularizer,
                joint=joint,
                posterior=posterior if self.uncertainty else None,
            )
            if stats.n_folds == 1:
                errors = dict(fitted[2])
                reference = {p: trivial[p][0] for p in labels}
            worse = [p for p in sorted(auto) if errors[p] > reference[p] * (1.0 + TOLERANCE)]
            # raising every weight alike changes nothing: only a trade-off can be recovered
            if not worse or len(worse) == len(labels) or attempt == RECOVERY_ROUNDS:
                break
            for p in worse:
                weights[p] *= RECOVERY_FACTOR
            notes.append(
                f"{', '.join(worse)} worse than the trivial predictor with the default weights: "
                f"weight x{RECOVERY_FACTOR:g} ({', '.join(f'{p} {weights[p]:.3g}' for p in worse)})"
            )
        self.cv_results_ = results
        self.alpha_ = alpha
        self.posterior_ = None
        if posterior:
            count = stats.merged(range(stats.n_folds))["count"]["energy"]
            posterior["energy_noise"] = (
                posterior["noise_variance"] * count / weights["energy"] ** 2
                if weights["energy"] > 0 and count > 0
                else float("nan")
            )
            self.posterior_ = posterior
        e0, theta, training, condition = fitted
        return weights, e0, theta, training, condition

    def _report(self, cache, labels, trivial, training, alphas, notes) -> FitReport:
        keys = {"energy": self.energy_key, "forces": self.forces_key, "stress": self.stress_key}
        rows = []
        results, best = self.cv_results_, None
        if results is not None:
            best = int(np.argmin(np.abs(np.asarray(results["alphas"]) - self.alpha_)))
        for p in PROPERTIES:
            if p not in labels:
                continue
            validation = (
                float("nan")
                if results is None or best is None
                else float(results[f"{p}_rmse"][best])
            )
            rows.append(
                PropertyErrors(
                    name=p,
                    key=str(keys[p]),
                    n_labels=int(labels[p]),
                    weight=float(self.property_weights_[p]),
                    train_rmse=float(training[p]),
                    validation_rmse=validation,
                    trivial_train_rmse=float(trivial[p][0]),
                    trivial_validation_rmse=float(trivial[p][1]),
                )
            )
        return FitReport(
            model=type(self).__name__,
            validation=f"{cache.n_folds}-fold CV" if cache.n_folds > 1 else "none",
            properties=tuple(rows),
            alpha=float(self.alpha_),
            alphas=tuple(float(a) for a in alphas),
            solver=cache.solver,
            skipped=dict(cache.skipped),
            notes=tuple(notes),
        )

    def _progress(self, batches, n_structures: int):
        """``batches`` with a progress bar when ``progress`` is set."""
        if not self.progress:
            return batches
        total = -(-n_structures // self.batch_size)
        return tqdm(batches, total=total, desc="descriptors", unit="batch")

    def _regularizer(self, basis):
        return "diagonal" if self.standardize else None

    def _finish(self, species, e0, theta, training, condition, basis) -> None:
        self.baseline_ = ElementBaseline(species=species).set_reference(species, e0)
        self.species_ = species
        self.weights_ = theta.numpy()
        self.training_rmse_ = training
        self.condition_number_ = condition
        self.n_features_in_ = basis.n_outputs
        self.basis_ = basis
        self.representation_ = self.representation
        self._theta = theta

    def _accumulate(
        self, frames, targets, basis, species, weights, folds, n_folds, use_forces, use_stress
    ):
        _check_normal_equations_memory(basis.n_outputs, n_folds, 1 + use_forces + use_stress)
        stats = FoldStatistics(n_folds, basis.n_outputs, len(species))
        fractions = composition(frames, species) / targets.n_atoms[:, None]
        batches = design_batches(
            self.representation,
            basis,
            frames,
            forces=use_forces,
            stress=use_stress,
            batch_size=self.batch_size,
        )
        if self.progress:
            batches = tqdm(
                batches, total=-(-len(frames) // self.batch_size), desc="design", unit="batch"
            )
        for start, batch, design in batches:
            n_batch = batch.n_structures
            index = np.arange(start, start + n_batch)
            for k in np.unique(folds[index]):
                chosen = index[folds[index] == k]
                local = torch.as_tensor(chosen - start)
                w = torch.as_tensor(weights[chosen])
                energy = torch.as_tensor(targets.energy[chosen])
                ok = torch.isfinite(energy)
                n_at = torch.as_tensor(targets.n_atoms[chosen], dtype=torch.float64)
                stats.add_energy(
                    int(k),
                    design.energy[local][ok] / n_at[ok, None],
                    (energy / n_at)[ok],
                    torch.as_tensor(fractions[chosen])[ok],
                    w[ok],
                )
                if use_forces:
                    self._add_forces(stats, int(k), chosen, start, batch, design, targets, weights)
                if use_stress:
                    self._add_stress(stats, int(k), chosen, start, batch, design, targets, weights)
        return stats

    @staticmethod
    def _add_forces(stats, k, chosen, start, batch, design, targets, weights):
        """Force rows of the structures ``chosen`` (one fold) as one Gram update."""
        atoms, labels, row_weights = [], [], []
        for s in chosen:
            if not targets.has_forces(s):
                continue
            lo, hi = batch.offsets[s - start], batch.offsets[s - start + 1]
            atoms.append(torch.arange(lo, hi))
            labels.append(targets.forces[targets.offsets[s] : targets.offsets[s + 1]].reshape(-1))
            row_weights.append(np.full(3 * (hi - lo), weights[s]))
        if not atoms:
            return
        index = torch.cat(atoms)
        rows = design.forces.index_select(0, index).reshape(-1, design.forces.shape[2])  # [3n, D]
        stats.add(
            "forces",
            k,
            rows,
            torch.as_tensor(np.concatenate(labels)),
            torch.as_tensor(np.concatenate(row_weights)),
        )

    @staticmethod
    def _add_stress(stats, k, chosen, start, batch, design, targets, weights):
        cells = batch.cells.detach().cpu().numpy()
        for s in chosen:
            if not targets.has_stress(s):
                continue
            volume = abs(float(np.linalg.det(cells[s - start])))
            if volume <= 0:
                continue
            virial = design.virial[s - start]  # [3, 3, D]
            rows = virial[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] / volume  # [6, D]
            labels = torch.as_tensor(targets.stress[s])
            stats.add("stress", k, rows, labels, torch.full_like(labels, weights[s]))

    # ------------------------------------------------------------------ prediction
    def has_std(self) -> bool:
        """Whether ``predict(..., return_std=True)`` is available (see ``posterior_``)."""
        return getattr(self, "posterior_", None) is not None

    def predict(
        self,
        frames,
        *,
        forces: bool = True,
        stress: bool = True,
        batch_size: int = 16,
        return_std: bool = False,
    ) -> dict:
        """Energies, forces and stress of ``frames`` (see :meth:`PotentialBase.predict`).

        With ``return_std=True`` the dict also holds ``"energy_std" [structure]`` (eV),
        the posterior standard deviation of the predicted energy (:meth:`predict_std`).
        """
        out = super().predict(frames, forces=forces, stress=stress, batch_size=batch_size)
        if return_std:
            out["energy_std"] = self.predict_std(frames, batch_size=batch_size)["energy_std"]
        return out

    def predict_std(self, frames, *, per_atom: bool = False, batch_size: int = 16) -> dict:
        """Posterior standard deviations of the energies (Bayesian ridge / projected process).

        For a structure with summed basis row ``Phi = sum_i phi(X_i) [D]`` and element
        counts ``m [element]``

        .. math::

            \\sigma_E^2 = \\sigma^2 \\big[ (\\Phi - M m)^T S^{-1} (\\Phi - M m)
                + m^T C^{+} m \\big]

        where ``S`` is the regularised (weighted, Schur-complement) normal matrix of the
        fit, ``sigma^2`` the noise scale estimated from the training residuals and the
        ``M``, ``C^+`` terms the uncertainty of jointly fitted reference energies
        (``baseline="joint"``; see :func:`tradens.models._solve.posterior_state` and
        ``docs/models.md``). It is the uncertainty of the fitted model's energy, not of a
        label: the label noise (``posterior_["energy_noise"]`` per atom, (eV/atom)^2) is
        not included. A per-atom energy ``phi(X_i) . theta + e_{Z_i}`` has the same form
        with ``Phi = phi(X_i)`` and ``m`` the one-hot element of atom ``i``.

        Parameters
        ----------
        frames : ase.Atoms or a list of them
            Structures (never modified).
        per_atom : bool
            Also return ``"atom_energy_std" [atom]`` (eV, all atoms concatenated).
        batch_size : int
            Structures per descriptor batch.

        Returns
        -------
        dict
            ``"energy_std" [structure]`` (eV) and, with ``per_atom``,
            ``"atom_energy_std" [atom]`` (eV).

        Raises
        ------
        ValueError
            When the model keeps no posterior (dual solver, ``uncertainty=False``,
            or a file saved before it existed).
        """
        self._check_fitted()
        posterior = getattr(self, "posterior_", None)
        if posterior is None:
            raise ValueError(
                f"this {type(self).__name__} has no posterior to give a standard deviation: "
                "fit it with uncertainty=True and solver='primal' (the dual solver keeps no "
                "normal matrix)"
            )
        from ..systems.batch import as_batch
        from ._design import _species_index

        frames = _as_frames(frames)
        factor = torch.as_tensor(posterior["factor"], dtype=torch.float64)  # [D, r]
        mapping, covariance = posterior["composition_map"], posterior["composition_covariance"]
        n_elements = len(self.species_)
        if mapping is None:
            mapping = np.zeros((factor.shape[0], n_elements))
            covariance = np.zeros((n_elements, n_elements))
        mapping_t = torch.as_tensor(mapping, dtype=torch.float64)  # [D, element]
        covariance_t = torch.as_tensor(covariance, dtype=torch.float64)  # [element, element]
        noise = float(posterior["noise_variance"])

        def variance(phi: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            centred = (phi - counts @ mapping_t.T) @ factor  # [n, r]
            return noise * (
                (centred * centred).sum(1) + ((counts @ covariance_t) * counts).sum(1)
            )  # [n]

        structure_var, atom_var = [], []
        representation = self._representation_for_prediction()
        with torch.no_grad():
            for start in range(0, len(frames), batch_size):
                batch = as_batch(
                    frames[start : start + batch_size], dtype=torch.float64, first_index=start
                )
                values, rows = representation(batch)
                numbers = batch.numbers[rows]
                phi = self.basis_.values(values, numbers)  # [row, D]
                onehot = torch.nn.functional.one_hot(
                    _species_index(numbers, tuple(self.species_)), n_elements
                ).to(torch.float64)  # [row, element]
                owner = batch.structure[rows]
                summed = torch.zeros(batch.n_structures, phi.shape[1], dtype=torch.float64)
                summed.index_add_(0, owner, phi)  # [s, D]
                counts = torch.zeros(batch.n_structures, n_elements, dtype=torch.float64)
                counts.index_add_(0, owner, onehot)  # [s, element]
                structure_var.append(variance(summed, counts).numpy())
                if per_atom:
                    per_row = torch.zeros(batch.n_atoms, dtype=torch.float64)
                    per_row[rows] = variance(phi, onehot)
                    atom_var.append(per_row.numpy())
        out = {"energy_std": np.sqrt(np.clip(np.concatenate(structure_var), 0.0, None))}
        if per_atom:
            out["atom_energy_std"] = np.sqrt(np.clip(np.concatenate(atom_var), 0.0, None))
        return out

    # ------------------------------------------------------------------ io
    def _fitted_state(self) -> tuple[dict, dict]:
        meta = {
            "species": list(self.species_),
            "alpha": self.alpha_,
            "training_rmse": self.training_rmse_,
            "condition_number": self.condition_number_,
            "n_features_in": self.n_features_in_,
            "basis": "projection"
            if self.projection is not None
            else ("per_element" if self.per_element else "linear"),
        }
        if getattr(self, "fit_report_", None) is not None:
            meta["fit_report"] = self.fit_report_.to_dict()
            meta["solver"] = self.solver_
            meta["property_weights"] = self.property_weights_
        arrays = {
            "weights": np.asarray(self.weights_),
            "reference_energies": self.baseline_.reference_energies_,
        }
        if self.projection is not None:
            arrays["projection"] = np.asarray(self.projection_.components_)
        posterior = getattr(self, "posterior_", None)
        if posterior is not None:
            meta["posterior"] = {
                key: float(posterior[key]) for key in ("noise_variance", "dof", "energy_noise")
            }
            arrays["posterior_factor"] = np.asarray(posterior["factor"])
            if posterior["composition_map"] is not None:
                arrays["posterior_composition_map"] = np.asarray(posterior["composition_map"])
                arrays["posterior_composition_covariance"] = np.asarray(
                    posterior["composition_covariance"]
                )
        return meta, arrays

    def _set_fitted(self, meta: dict, arrays: dict, representation) -> None:
        species = tuple(meta["species"])
        self.baseline_ = ElementBaseline(species=species).set_reference(
            species, arrays["reference_energies"]
        )
        self.species_ = species
        self.alpha_ = meta["alpha"]
        self.training_rmse_ = meta["training_rmse"]
        self.condition_number_ = meta["condition_number"]
        self.n_features_in_ = meta["n_features_in"]
        self.weights_ = np.asarray(arrays["weights"], dtype=np.float64)
        self._theta = torch.as_tensor(self.weights_)
        self.representation_ = representation
        self.cv_results_ = None
        self.posterior_ = None
        if meta.get("posterior") is not None:  # files before the posterior have none
            self.posterior_ = {
                **meta["posterior"],
                "factor": np.asarray(arrays["posterior_factor"], dtype=np.float64),
                "composition_map": arrays.get("posterior_composition_map"),
                "composition_covariance": arrays.get("posterior_composition_covariance"),
            }
        if meta.get("fit_report") is not None:  # files before 0.x have none
            self.fit_report_ = FitReport.from_dict(meta["fit_report"])
            self.solver_ = meta["solver"]
            self.property_weights_ = dict(meta["property_weights"])
        if meta["basis"] == "projection":
            self.projection_ = self.projection
            self.projection_.components_ = np.asarray(arrays["projection"], dtype=np.float64)
            self.basis_ = ProjectionBasis(torch.as_tensor(self.projection_.components_))
        else:
            n_features = int(representation.n_features)
            self.basis_ = LinearBasis(
                n_features, species if meta["basis"] == "per_element" else None
            )

    def _get_state(self):

        rep_meta, arrays = representation_state(self.representation_)
        meta, fitted_arrays = self._fitted_state()
        arrays.update(fitted_arrays)
        params = self._json_params(exclude=("representation", "projection"))
        projection = None if self.projection is None else self.projection.get_params()
        return {
            "representation": rep_meta,
            "params": params,
            "projection": projection,
            "fitted": meta,
        }, arrays

    @classmethod
    def _from_state(cls, meta, arrays):

        representation = representation_from_state(meta["representation"], arrays)
        params = dict(meta["params"])
        params["alphas"] = (
            tuple(params["alphas"]) if isinstance(params["alphas"], list) else params["alphas"]
        )
        projection = (
            None if meta.get("projection") is None else RandomProjection(**meta["projection"])
        )
        model = cls(representation, projection=projection, **params)
        model._set_fitted(meta["fitted"], arrays, representation)
        return model

    def _atom_energy(self, values: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        phi = self.basis_.values(values, numbers)  # [row, D]
        theta = self._theta.to(dtype=phi.dtype, device=phi.device)
        return phi @ theta + self.baseline_.atom_energies(numbers, phi.dtype).to(
            phi.device
        )  # [row]


def _check_normal_equations_memory(n_basis: int, n_folds: int, n_properties: int) -> None:
    """Refuse a fit whose normal equations (``D x D`` per fold and property) cannot fit."""
    from ..kernels.budget import check_memory

    needed = (n_folds * n_properties + 2) * n_basis * n_basis * 8  # + the solve's copies
    check_memory(
        needed,
        f"the normal equations of a fit with {n_basis} basis functions ({n_folds} fold(s) x "
        f"{n_properties} propert{'y' if n_properties == 1 else 'ies'} of {n_basis} x {n_basis})",
        "use fewer features (a mixing with smaller K, or projection=RandomProjection(...)), "
        "per_element=False, solver='dual' for energies only, or fewer folds (cv)",
    )
