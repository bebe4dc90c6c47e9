"""Sparse kernel (GAP-style) potential and the random-projection baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models_helpers import alloy, label, planted, small_soap

from tradens.models import (
    CompressedLeastSquares,
    LinearPotential,
    RandomProjection,
    SparseKernelPotential,
    load,
    save,
)


@pytest.fixture(scope="module")
def data():
    soap = small_soap()
    _, _, model_fn = planted(soap, seed=7)
    return soap, label(
        [alloy(seed, repeat=(1, 1, 2), strain=0.03) for seed in range(5)], soap, model_fn
    )


def test_planted_kernel_model_is_recovered(data, tmp_path):
    soap, frames = data
    options = dict(
        n_sparse=12,
        zeta=2,
        selection="fps",
        alphas=(1e-12,),
        cv=None,
        baseline="joint",
        forces_weight=1.0,
    )
    probe = SparseKernelPotential(soap, **options).fit(frames)
    rng = np.random.default_rng(2)
    weights = torch.as_tensor(rng.normal(size=probe.sparse_points_.shape[0]))
    points = torch.as_tensor(probe.sparse_points_)

    def model_fn(values, numbers):
        return ((values @ points.T) ** 2) @ weights - 3.0

    labelled = label(frames, soap, model_fn)
    model = SparseKernelPotential(soap, **options).fit(labelled)
    np.testing.assert_array_equal(model.sparse_points_, probe.sparse_points_)
    np.testing.assert_allclose(
        model.weights_, weights.numpy(), atol=1e-6 * float(weights.abs().max())
    )
    scores = model.score(labelled)
    assert scores["energy"] < 1e-9 and scores["forces"] < 1e-8 and scores["stress"] < 1e-9
    loaded = load(save(model, tmp_path / "kernel.zip"))
    np.testing.assert_array_equal(
        loaded.predict(frames[:1])["forces"], model.predict(frames[:1])["forces"]
    )


def test_projected_process_matches_the_closed_form(data):
    soap, frames = data
    model = SparseKernelPotential(
        soap,
        n_sparse=10,
        zeta=3,
        selection="cur",
        alphas=(1e-3,),
        cv=None,
        forces_weight=0.0,
        stress_weight=0.0,
        per_element=True,
    ).fit(frames)
    features = soap.compute(frames)
    points, numbers = model.sparse_points_, model.sparse_numbers_
    kernel = (features.values @ points.T) ** 3 * (features.numbers[:, None] == numbers[None, :])
    k_nm = np.zeros((len(frames), len(points)))
    np.add.at(k_nm, features.structure, kernel)
    n_atoms = np.array([len(f) for f in frames], dtype=float)
    k_nm /= n_atoms[:, None]
    k_mm = (points @ points.T) ** 3 * (numbers[:, None] == numbers[None, :])
    energy = np.array([f.get_potential_energy() for f in frames]) / n_atoms
    residual = energy - model.baseline_.predict_energy(frames) / n_atoms
    a = k_nm.T @ k_nm / len(frames)
    # whitened trace = tr(K_mm^-1 A), the regularisation scale
    tau = np.trace(
        np.linalg.solve(k_mm + 1e-10 * np.diag(k_mm).mean() * np.eye(len(k_mm)), a)
    ) / len(k_mm)
    expected = np.linalg.solve(a + 1e-3 * tau * k_mm, k_nm.T @ residual / len(frames))
    np.testing.assert_allclose(
        model.weights_, expected, rtol=1e-6, atol=1e-8 * np.abs(expected).max()
    )
    assert set(numbers.tolist()) == {28, 29, 46}


def test_random_projection_preserves_norms_and_sparsity():
    x = np.random.default_rng(0).normal(size=(50, 400))
    for kind in ("gaussian", "sparse"):
        projection = RandomProjection(300, kind=kind, seed=1).fit(400)
        ratio = (projection.transform(x) ** 2).sum(1) / (x**2).sum(1)
        assert abs(ratio.mean() - 1.0) < 0.05 and ratio.std() < 0.15
        torch_out = projection.transform(torch.as_tensor(x))
        np.testing.assert_allclose(torch_out.numpy(), projection.transform(x))
    sparse = RandomProjection(300, kind="sparse", seed=1).fit(400).components_
    assert abs((sparse != 0).mean() - 1 / np.sqrt(400)) < 0.01
    np.testing.assert_array_equal(
        RandomProjection(5, seed=3).fit(9).components_,
        RandomProjection(5, seed=3).fit(9).components_,
    )


def test_compressed_least_squares_is_ridge_on_the_projection(data):
    soap, frames = data
    full = small_soap(mixing=None)
    energy_only = dict(forces_weight=0.0, stress_weight=0.0)
    cls = CompressedLeastSquares(full, 20, n_projections=1, alpha=1e-8, seed=4, **energy_only).fit(
        frames
    )
    ridge = LinearPotential(
        full, alphas=(1e-8,), cv=None, projection=RandomProjection(20, seed=4), **energy_only
    ).fit(frames)
    np.testing.assert_allclose(cls.members_[0].weights_, ridge.weights_, rtol=1e-10)
    two = CompressedLeastSquares(full, 20, n_projections=2, alpha=1e-8, seed=4, **energy_only).fit(
        frames
    )
    energies = [m.predict(frames[:2], forces=False, stress=False)["energy"] for m in two.members_]
    np.testing.assert_allclose(
        two.predict(frames[:2])["energy"], np.mean(energies, axis=0), rtol=1e-12
    )
