"""The learned-embedding potential: it learns, is deterministic, and round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models_helpers import alloy, label, small_soap

from tradens.models import LearnedPotential, load, save

# a few epochs on a handful of structures: worse than the trivial predictor is expected here
# (test_fit_reports.py asserts the warning)
pytestmark = pytest.mark.filterwarnings("ignore::tradens.models.FitWarning")


@pytest.fixture(scope="module")
def teacher_data():
    """Labels from a SOAP whose embedding differs from the student's starting point."""
    teacher = small_soap(mixing={"channels": 3, "seed": 11})
    rng = np.random.default_rng(0)
    theta = torch.as_tensor(rng.normal(size=teacher.n_features))

    def model_fn(values, numbers):
        return values @ theta - 4.0

    return label(
        [alloy(seed, repeat=(1, 1, 2), rattle=0.15) for seed in range(10)], teacher, model_fn
    )


def test_training_lowers_the_validation_loss_and_moves_the_embedding(teacher_data):
    student = small_soap(mixing={"channels": 3, "seed": 5})
    model = LearnedPotential(
        student,
        max_epochs=8,
        patience=8,
        batch_size=8,
        learning_rate=1e-2,
        embedding_learning_rate=3e-2,
        forces_weight=1.0,
        validation_fraction=0.3,
        device="cpu",
        seed=1,
    )
    assert model.fit(teacher_data) is model
    losses = [h["val_loss"] for h in model.history_]
    assert min(losses) < 0.75 * losses[0]
    assert model.history_[model.best_epoch_]["val_loss"] == min(losses)
    assert not torch.equal(model.representation_.weights1.detach(), student.weights1)
    assert not student.weights1.requires_grad  # the argument was not modified
    forces = model.predict(teacher_data[:1])["forces"]
    assert np.isfinite(forces).all()


def test_seeded_training_is_deterministic_and_round_trips(teacher_data, tmp_path):
    def train():
        return LearnedPotential(
            small_soap(mixing={"channels": 3, "seed": 5}),
            hidden=(8,),
            max_epochs=2,
            batch_size=4,
            validation_fraction=0.3,
            device="cpu",
            seed=3,
        ).fit(teacher_data)

    first, second = train(), train()
    a, b = first.predict(teacher_data[:2]), second.predict(teacher_data[:2])
    np.testing.assert_array_equal(a["energy"], b["energy"])
    np.testing.assert_array_equal(a["forces"], b["forces"])
    loaded = load(save(first, tmp_path / "learned.zip"))
    c = loaded.predict(teacher_data[:2])
    for key in a:
        np.testing.assert_array_equal(a[key], c[key])
    assert loaded.history_ == first.history_


def test_needs_an_embedding():
    with pytest.raises(ValueError, match="no embedding to learn"):
        LearnedPotential(small_soap(mixing=None), max_epochs=1).fit([alloy(0), alloy(1)])


def _full_options(**kwargs):
    options = dict(
        hidden=(6,),
        element_features=2,
        pair_channels=2,
        pair_basis=5,
        pair_cutoff=3.5,
        pair_r_min=1.5,
        scale_features=True,
        train_reference=True,
        ridge_alpha=None,
        forces_weight=1.0,
        stress_weight=1.0,
        forces_loss="huber",
        forces_delta=0.5,
        ema=0.9,
        max_epochs=3,
        patience=3,
        batch_size=4,
        validation_fraction=0.3,
        device="cpu",
        seed=2,
    )
    options.update(kwargs)
    return options


@pytest.fixture(scope="module")
def full_model(teacher_data):
    return LearnedPotential(small_soap(mixing={"channels": 3, "seed": 5}), **_full_options()).fit(
        teacher_data
    )


def test_all_options_forces_are_minus_the_energy_gradient(full_model, teacher_data):
    """Finite differences of the trained model's energy give its forces and stress."""
    atoms = teacher_data[0].copy()
    predicted = full_model.predict([atoms])
    step = 1e-5
    for atom, axis in [(0, 0), (3, 1), (5, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += step
        minus.positions[atom, axis] -= step
        e_plus = full_model.predict([plus], forces=False, stress=False)["energy"][0]
        e_minus = full_model.predict([minus], forces=False, stress=False)["energy"][0]
        numeric = -(e_plus - e_minus) / (2 * step)
        assert predicted["forces"][atom, axis] == pytest.approx(numeric, rel=1e-6, abs=1e-7)
    # stress xx from a homogeneous strain of cell and positions
    energies = []
    for sign in (1, -1):
        strained = atoms.copy()
        deformation = np.eye(3)
        deformation[0, 0] += sign * step
        strained.set_cell(atoms.cell[:] @ deformation, scale_atoms=True)
        energies.append(full_model.predict([strained], forces=False, stress=False)["energy"][0])
    numeric = (energies[0] - energies[1]) / (2 * step) / atoms.get_volume()
    assert predicted["stress"][0, 0] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_all_options_train_deterministically_and_round_trip(full_model, teacher_data, tmp_path):
    again = LearnedPotential(small_soap(mixing={"channels": 3, "seed": 5}), **_full_options()).fit(
        teacher_data
    )
    a, b = full_model.predict(teacher_data[:2]), again.predict(teacher_data[:2])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # the trained references are the model's (and the saved) reference energies
    np.testing.assert_array_equal(
        full_model.readout_.reference.detach().numpy(), full_model.baseline_.reference_energies_
    )
    loaded = load(save(full_model, tmp_path / "full.zip"))
    c = loaded.predict(teacher_data[:2])
    for key in a:
        np.testing.assert_array_equal(a[key], c[key])
    assert loaded.history_ == full_model.history_
    assert torch.equal(loaded.readout_.inv_scale, full_model.readout_.inv_scale)


def test_training_lowers_the_loss_with_pair_densities_and_element_readout(teacher_data):
    model = LearnedPotential(
        small_soap(mixing={"channels": 3, "seed": 5}),
        **_full_options(max_epochs=5, patience=5, learning_rate=1e-2, ema=0.0, stress_weight=0.0),
    ).fit(teacher_data)
    losses = [h["val_loss"] for h in model.history_]
    assert min(losses) < 0.75 * losses[0]
    assert model.history_[model.best_epoch_]["val_loss"] == min(losses)
    # the pair embedding was trained
    start = LearnedPotential(
        small_soap(mixing={"channels": 3, "seed": 5}), **_full_options(max_epochs=1)
    )
    start.species_ = model.species_
    fresh = start._build_representation(model.species_)
    assert not torch.equal(fresh.pair.embedding, model.representation_.pair.embedding)


def test_huber_force_loss_and_feature_scale():
    model = LearnedPotential(small_soap(), forces_loss="huber", forces_delta=1.0)
    error = torch.tensor([0.5, -0.9, 3.0, -4.0], dtype=torch.float64)
    penalty = model._force_penalty(error)
    np.testing.assert_allclose(penalty[:2], error[:2] ** 2)  # quadratic below delta
    np.testing.assert_allclose(penalty[2:], 2 * (error[2:].abs() - 0.5))  # linear beyond
    model.forces_loss = "mse"
    np.testing.assert_allclose(model._force_penalty(error), error**2)
    from tradens.models._readout import Readout

    readout = Readout(3)
    values = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, -2.0]], dtype=torch.float64)
    readout.set_feature_scale(values)
    scaled = values * readout.inv_scale
    np.testing.assert_allclose(scaled.pow(2).mean(0), [1.0, 0.0, 1.0])


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="forces_loss"):
        LearnedPotential(small_soap(), forces_loss="l1").fit([alloy(0), alloy(1)])
    with pytest.raises(ValueError, match="ema"):
        LearnedPotential(small_soap(), ema=1.0).fit([alloy(0), alloy(1)])
    with pytest.raises(ValueError, match="pair_channels"):
        LearnedPotential(small_soap(), pair_channels=-1).fit([alloy(0), alloy(1)])
