"""The committee of learned potentials: mean of the members, spread, save/load, ASE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models_helpers import alloy, label, small_soap

from tradens.models import ElementBaseline, EnsemblePotential, LearnedPotential, load, save

# a few epochs on a handful of structures: worse than the trivial predictor is expected here
# (test_fit_reports.py asserts the warning)
pytestmark = pytest.mark.filterwarnings("ignore::tradens.models.FitWarning")


@pytest.fixture(scope="module")
def data():
    teacher = small_soap(mixing={"channels": 3, "seed": 11})
    theta = torch.as_tensor(np.random.default_rng(0).normal(size=teacher.n_features))
    return label(
        [alloy(seed, repeat=(1, 1, 2), rattle=0.15) for seed in range(8)],
        teacher,
        lambda values, numbers: values @ theta - 4.0,
    )


def _member():
    return LearnedPotential(
        small_soap(mixing={"channels": 3, "seed": 5}),
        max_epochs=2,
        batch_size=4,
        validation_fraction=0.3,
        device="cpu",
        seed=0,
    )


@pytest.fixture(scope="module")
def committee(data):
    return EnsemblePotential(_member(), n_members=3, seed=7, vary_embedding=True).fit(data)


def test_members_differ_and_the_prediction_is_their_mean(committee, data):
    assert [m.seed for m in committee.members_] == [7, 8, 9]
    frames = data[:2]
    members = [m.predict(frames) for m in committee.members_]
    assert not np.allclose(members[0]["energy"], members[1]["energy"])  # different seeds
    mean = committee.predict(frames, return_std=True)
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(
            mean[key], np.mean([p[key] for p in members], axis=0), rtol=0, atol=1e-12
        )
        np.testing.assert_allclose(
            mean[f"{key}_std"], np.std([p[key] for p in members], axis=0), rtol=0, atol=1e-12
        )
    assert mean["energy_std"].min() > 0
    atom_energies = committee.predict_atom_energies(frames[:1])
    assert atom_energies.sum() == pytest.approx(mean["energy"][0], rel=1e-10)
    assert committee.estimator.seed == 0 and not hasattr(committee.estimator, "members_")


def test_members_start_from_differently_seeded_embeddings(committee):
    starts = [m.representation.hypers.mixing.seed for m in committee.members_]
    assert starts == [5, 6, 7]  # the estimator's representation has seed 5
    assert committee.estimator.representation.hypers.mixing.seed == 5  # not modified
    assert EnsemblePotential(_member()).get_params()["vary_embedding"] is False  # the default


def test_forces_are_minus_the_gradient_of_the_mean_energy(committee, data):
    atoms = data[0].copy()
    forces = committee.predict([atoms])["forces"]
    step = 1e-5
    for atom, axis in [(0, 0), (2, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += step
        minus.positions[atom, axis] -= step
        e = [committee.predict([a], forces=False, stress=False)["energy"][0] for a in (plus, minus)]
        assert forces[atom, axis] == pytest.approx(-(e[0] - e[1]) / (2 * step), rel=1e-6, abs=1e-7)


def test_save_load_round_trip_and_calculator(committee, data, tmp_path):
    from tradens.calculator import TradensCalculator

    path = save(committee, tmp_path / "committee.zip")
    loaded = load(path)
    assert isinstance(loaded, EnsemblePotential) and len(loaded.members_) == 3
    a, b = committee.predict(data[:2]), loaded.predict(data[:2])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    atoms = data[1].copy()
    atoms.calc = TradensCalculator(path)
    assert atoms.get_potential_energy() == pytest.approx(float(a["energy"][1]), rel=1e-12)
    np.testing.assert_allclose(
        atoms.get_forces(),
        a["forces"][len(data[0]) : len(data[0]) + len(atoms)],
        rtol=0,
        atol=1e-12,
    )


def test_bad_parameters():
    with pytest.raises(ValueError, match="n_members"):
        EnsemblePotential(_member(), n_members=0).fit([alloy(0)])
    with pytest.raises(ValueError, match="tradens potential"):
        EnsemblePotential(object()).fit([alloy(0)])
    with pytest.raises(ValueError, match="no seed"):
        EnsemblePotential(ElementBaseline(), n_members=2).fit([alloy(0)])
    with pytest.raises(ValueError, match="not fitted"):
        EnsemblePotential(_member()).predict([alloy(0)])
