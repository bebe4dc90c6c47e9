"""Force/virial design rows of the models against autograd of the representation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models_helpers import alloy, small_soap

from tradens.gradients import apply_strain
from tradens.models._jacobian import soap_summed_jacobian
from tradens.models._pair_derivatives import _radial_with_derivative, soap_local_features
from tradens.systems import as_batch

VARIANTS = {
    "radial+element": {},
    "asymmetric": {"mixing": {"channels": 3, "symmetric": False}},
    "element-wise": {"mixing": {"mode": "element", "channels": 2}, "coupling": "elementwise"},
    "radial-gto": {
        "mixing": {"mode": "radial", "channels": 2},
        "radial": {"n_max": 3, "kind": "gto"},
    },
    "full": {"mixing": None},
    "unnormalised+sigma0": {"normalize": False, "covariance_sigma0": 0.4},
}


def _autograd(soap, batch, direction):
    positions = batch.positions.clone().requires_grad_(True)
    strain = torch.zeros_like(batch.cells, requires_grad=True)
    new_positions, new_cells = apply_strain(batch, strain, positions=positions)
    values, _ = soap.forward(batch, new_positions, new_cells)
    return torch.autograd.grad((values @ direction).sum(), [positions, strain])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_summed_jacobian_and_virial_match_autograd(name):
    soap = small_soap(**VARIANTS[name])
    frames = [alloy(0, repeat=(1, 1, 2), strain=0.05), alloy(1, repeat=(2, 1, 1))]
    batch = as_batch(frames)
    x, gradient, virial = soap_summed_jacobian(soap, batch)
    np.testing.assert_allclose(x.numpy(), soap.forward(batch)[0].numpy(), rtol=1e-12, atol=1e-14)
    direction = torch.as_tensor(np.random.default_rng(0).normal(size=x.shape[1]))
    g_positions, g_strain = _autograd(soap, batch, direction)
    scale = float(g_positions.abs().max())
    np.testing.assert_allclose(
        (gradient @ direction).numpy(), g_positions.numpy(), atol=1e-11 * scale
    )
    np.testing.assert_allclose(
        (virial @ direction).numpy(), g_strain.numpy(), atol=1e-11 * float(g_strain.abs().max())
    )


def test_pair_derivatives_match_autograd_and_radial_derivative_matches_finite_differences():
    soap = small_soap(mixing={"channels": 3, "symmetric": False})
    batch = as_batch([alloy(2, repeat=(1, 1, 2))])
    x, chunks = soap_local_features(soap, batch, pair_chunk=100)
    direction = torch.as_tensor(np.random.default_rng(1).normal(size=x.shape[1]))
    mine = torch.zeros_like(batch.positions)
    for i, j, _, dx in chunks:
        d = dx @ direction  # [p, 3]
        mine.index_add_(0, j, d).index_add_(0, i, -d)
    expected, _ = _autograd(soap, batch, direction)
    np.testing.assert_allclose(
        mine.numpy(), expected.numpy(), atol=1e-11 * float(expected.abs().max())
    )
    r = torch.linspace(0.3, 3.9, 50, dtype=torch.float64)
    for radial in (soap.radial_basis, small_soap(radial={"n_max": 4, "kind": "gto"}).radial_basis):
        _, derivative = _radial_with_derivative(radial, r)
        h = 1e-6
        numeric = (radial(r + h) - radial(r - h)) / (2 * h)
        np.testing.assert_allclose(
            derivative.numpy(), numeric.numpy(), atol=1e-6 * float(numeric.abs().max())
        )
