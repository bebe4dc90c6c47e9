"""Linear (ridge) potentials and the per-element baseline: values, not shapes."""

from __future__ import annotations

import itertools

import ase
import numpy as np
import pytest
import torch
from _models_helpers import SPECIES, alloy, label, planted, small_soap

from tradens.models import ElementBaseline, LinearPotential


@pytest.fixture(scope="module")
def planted_data():
    soap = small_soap()
    frames = [alloy(seed, strain=0.03) for seed in range(5)]
    theta, e0, model_fn = planted(soap)
    return soap, label(frames, soap, model_fn), theta, e0


def test_baseline_recovers_reference_energies_exactly():
    rng = np.random.default_rng(1)
    truth = {28: -4.4, 29: -3.5, 46: -3.9}
    frames = []
    for _ in range(6):
        numbers = rng.choice(list(truth), rng.integers(2, 9))
        atoms = ase.Atoms(numbers=numbers, positions=rng.normal(size=(len(numbers), 3)) * 3.0)
        atoms.info["energy"] = sum(truth[int(z)] for z in atoms.numbers)
        frames.append(atoms)
    model = ElementBaseline().fit(frames)
    assert model.energies_by_element() == pytest.approx(truth, abs=1e-10)
    assert model.predict_energy(frames) == pytest.approx(
        [f.info["energy"] for f in frames], abs=1e-10
    )
    forces = model.predict(frames[:2])["forces"]
    assert np.all(forces == 0.0)


def test_planted_weights_recovered_from_energy_forces_stress(planted_data):
    soap, frames, theta, e0 = planted_data
    model = LinearPotential(
        soap,
        alphas=(1e-14,),
        cv=None,
        energy_weight=1.0,
        forces_weight=1.0,
        stress_weight=1.0,
        baseline="joint",
    )
    assert model.fit(frames) is model
    np.testing.assert_allclose(model.weights_, theta, rtol=0, atol=1e-6 * np.abs(theta).max())
    assert model.baseline_.energies_by_element() == pytest.approx(e0, abs=1e-6)
    # from the sufficient statistics: exact up to cancellation against sum y^2
    assert model.training_rmse_["energy"] < 1e-6 and model.training_rmse_["forces"] < 1e-6
    scores = model.score(frames)
    assert scores["energy"] < 1e-9 and scores["forces"] < 1e-8 and scores["stress"] < 1e-10


def test_baseline_first_then_forces_recover_the_weights(planted_data):
    """With the baseline fitted first, force and stress rows still carry the whole model."""
    soap, frames, theta, _ = planted_data
    model = LinearPotential(
        soap,
        alphas=(1e-14,),
        cv=None,
        energy_weight=0.0,
        forces_weight=1.0,
        stress_weight=1.0,
        baseline="first",
    ).fit(frames)
    np.testing.assert_allclose(model.weights_, theta, atol=1e-6 * np.abs(theta).max())
    # the kept baseline is the least-squares fit of E/N on the composition fractions
    counts = np.array(
        [[np.sum(f.numbers == z) for z in model.species_] for f in frames], dtype=float
    )
    n_atoms = counts.sum(1)
    energies = np.array([f.get_potential_energy() for f in frames])
    expected = np.linalg.lstsq(counts / n_atoms[:, None], energies / n_atoms, rcond=None)[0]
    np.testing.assert_allclose(model.baseline_.reference_energies_, expected, atol=1e-9)


def test_streaming_batches_give_the_same_fit(planted_data):
    soap, frames, _, _ = planted_data
    noisy = [f.copy() for f in frames]
    rng = np.random.default_rng(3)
    for atoms, frame in zip(noisy, frames, strict=True):
        atoms.calc = type(frame.calc)(
            atoms,
            energy=frame.get_potential_energy() + rng.normal(),
            forces=frame.get_forces() + rng.normal(size=(len(atoms), 3)),
            stress=frame.get_stress(),
        )
    one = LinearPotential(soap, alphas=(1e-3,), cv=None, batch_size=1).fit(noisy)
    many = LinearPotential(soap, alphas=(1e-3,), cv=None, batch_size=5).fit(noisy)
    np.testing.assert_allclose(one.weights_, many.weights_, rtol=1e-9, atol=1e-12)


def test_cross_validation_errors_equal_explicit_refits():
    """The fold statistics give exactly the RMSE of refitting on each training fold."""
    soap = small_soap()
    frames = [alloy(seed, rattle=0.2) for seed in range(6)]
    rng = np.random.default_rng(0)
    for atoms in frames:
        atoms.info["energy"] = -4.0 * len(atoms) + rng.normal()
    groups = [0, 1, 0, 1, 0, 1]
    alphas = (1e-4, 1e-2)
    for baseline, (a, alpha) in itertools.product(("first", "joint"), enumerate(alphas)):
        model = LinearPotential(
            soap, alphas=alphas, forces_weight=0, stress_weight=0, baseline=baseline
        ).fit(frames, groups=groups)
        sse, count = 0.0, 0
        for fold in (0, 1):
            train = [f for f, g in zip(frames, groups, strict=True) if g != fold]
            test = [f for f, g in zip(frames, groups, strict=True) if g == fold]
            refit = LinearPotential(
                soap, alphas=(alpha,), cv=None, forces_weight=0, stress_weight=0, baseline=baseline
            ).fit(train)
            errors = (
                refit.predict(test, forces=False, stress=False)["energy"]
                - [f.info["energy"] for f in test]
            ) / np.array([len(f) for f in test])
            sse, count = sse + float((errors**2).sum()), count + len(test)
        assert model.cv_results_["energy_rmse"][a] == pytest.approx(np.sqrt(sse / count), rel=1e-7)
    assert model.alpha_ in alphas


def test_zero_config_weight_equals_leaving_structures_out():
    soap = small_soap()
    frames = [alloy(seed, rattle=0.2) for seed in range(6)]
    rng = np.random.default_rng(1)
    for k, atoms in enumerate(frames):
        atoms.info["energy"] = -4.0 * len(atoms) + rng.normal()
        atoms.info["config_type"] = "keep" if k < 4 else "drop"
    weighted = LinearPotential(
        soap,
        alphas=(1e-3,),
        cv=None,
        forces_weight=0,
        stress_weight=0,
        config_weights={"drop": 0.0},
    ).fit(frames)
    subset = LinearPotential(soap, alphas=(1e-3,), cv=None, forces_weight=0, stress_weight=0).fit(
        frames[:4]
    )
    np.testing.assert_allclose(weighted.weights_, subset.weights_, rtol=1e-9, atol=1e-12)


def test_per_element_weights_recover_a_per_element_model():
    soap = small_soap()
    frames = [alloy(seed, strain=0.02) for seed in range(4)]
    rng = np.random.default_rng(5)
    thetas = {z: torch.as_tensor(rng.normal(size=soap.n_features)) for z in SPECIES}

    def model_fn(values, numbers):
        return torch.stack([values[r] @ thetas[int(z)] for r, z in enumerate(numbers.tolist())])

    labelled = label(frames, soap, model_fn)
    model = LinearPotential(
        soap, alphas=(1e-14,), cv=None, per_element=True, forces_weight=1.0, baseline="joint"
    ).fit(labelled)
    expected = np.concatenate([thetas[z].numpy() for z in model.species_])
    np.testing.assert_allclose(model.weights_, expected, atol=1e-5 * np.abs(expected).max())


def test_extensive_energy_and_inputs_unchanged(planted_data):
    soap, frames, _, _ = planted_data
    positions = [f.get_positions().copy() for f in frames]
    model = LinearPotential(soap, alphas=(1e-6,), cv=None).fit(frames)
    for f, p in zip(frames, positions, strict=True):
        np.testing.assert_array_equal(f.get_positions(), p)
    cell = frames[0].copy()
    supercell = cell * (2, 1, 1)
    single, double = model.predict([cell, supercell])["energy"]
    assert double == pytest.approx(2.0 * single, rel=1e-12)
    forces = model.predict([supercell])["forces"]
    np.testing.assert_allclose(forces[: len(cell)], model.predict([cell])["forces"], atol=1e-10)


def test_sklearn_clone_and_params():
    clone = pytest.importorskip("sklearn.base").clone
    soap = small_soap()
    model = LinearPotential(soap, alphas=(1e-3, 1e-2), cv=3, forces_weight=0.5)
    copy = clone(model)
    assert copy.get_params()["forces_weight"] == 0.5
    assert copy.get_params()["alphas"] == (1e-3, 1e-2)
    assert copy.representation is not soap and isinstance(copy.representation, type(soap))
    assert model.set_params(cv=2) is model and model.cv == 2
    with pytest.raises(ValueError, match="invalid parameter 'bogus'"):
        model.set_params(bogus=1)
    assert not hasattr(copy, "weights_")


def test_validation_messages():
    soap = small_soap()
    frames = [alloy(0)]
    frames[0].info["energy"] = -100.0
    with pytest.raises(ValueError, match="forces_weight must be None or a finite number >= 0"):
        LinearPotential(soap, forces_weight=-1).fit(frames)
    with pytest.raises(ValueError, match="alphas must be positive"):
        LinearPotential(soap, alphas=(0.0,)).fit(frames)
    with pytest.raises(ValueError, match="cv=5 folds need at least 5 structures"):
        LinearPotential(soap).fit(frames)
    with pytest.raises(ValueError, match="not fitted yet"):
        LinearPotential(soap).predict(frames)
    model = LinearPotential(soap, cv=None, forces_weight=0, stress_weight=0).fit(frames)
    with pytest.raises(ValueError, match=r"element\(s\) with atomic number \[26\]"):
        model.predict([ase.Atoms("Fe", positions=[[0, 0, 0]])])


@pytest.mark.filterwarnings("ignore::tradens.models.FitWarning")  # random energies: no signal
def test_dual_solver_equals_primal_for_energy_only_fits(planted_data):
    soap = small_soap()
    frames = [alloy(seed, rattle=0.2) for seed in range(6)]
    rng = np.random.default_rng(2)
    for atoms in frames:
        atoms.info["energy"] = -4.0 * len(atoms) + rng.normal()
    for standardize, baseline in itertools.product((False, True), ("first", "joint")):
        options = dict(
            alphas=(1e-4, 1e-2),
            cv=3,
            forces_weight=0,
            stress_weight=0,
            standardize=standardize,
            baseline=baseline,
        )
        primal = LinearPotential(soap, solver="primal", **options).fit(frames)
        dual = LinearPotential(soap, solver="dual", **options).fit(frames)
        # joint + standardize: the primal's composition pseudo-inverse (rcond 1e-10 on the
        # composition Gram) and the dual's (on its square root) differ at ~1e-5 on 6 structures
        rtol = 1e-4 if (standardize and baseline == "joint") else 1e-6
        np.testing.assert_allclose(
            dual.cv_results_["energy_rmse"], primal.cv_results_["energy_rmse"], rtol=rtol
        )
        np.testing.assert_allclose(dual.weights_, primal.weights_, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(
            dual.baseline_.reference_energies_,
            primal.baseline_.reference_energies_,
            rtol=1e-6,
            atol=1e-8,
        )
    options["baseline"] = "first"
    assert not np.allclose(
        primal.weights_,
        LinearPotential(soap, solver="primal", **dict(options, standardize=False))
        .fit(frames)
        .weights_,
    )
    with pytest.raises(ValueError, match="solver='dual' fits energies only"):
        LinearPotential(soap, solver="dual", cv=None).fit(planted_data[1])
