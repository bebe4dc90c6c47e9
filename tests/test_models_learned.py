"""The learned-embedding potential: it learns, is deterministic, and round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models_helpers import alloy, label, small_soap

from tradens.models import LearnedPotential, load, save


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
