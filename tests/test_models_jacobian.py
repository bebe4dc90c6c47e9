"""Force/virial design rows of the models against autograd of the representation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models_helpers import alloy, small_soap

from tradens.gradients import apply_strain
from tradens.gradients.pair_terms import _radial_with_derivative, soap_local_features
from tradens.gradients.summed import soap_summed_jacobian
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


@pytest.mark.parametrize("atom_chunk", [1, 5, 64])
def test_structure_fast_path_equals_general_path_and_autograd(atom_chunk, monkeypatch):
    """Per-structure blocks (reverse pairs, element buckets) against the general pair code.

    A batch of a periodic cell, a small strained cell with self-images and a sparse
    cluster (atoms without neighbours, structure without pairs), split into blocks of
    ``atom_chunk`` atoms; checked against the general path and against autograd.
    """
    import ase

    import tradens.gradients.summed as jacobian
    from tradens.gradients import summed_blocks as _structure_jacobian

    soap = small_soap(mixing={"channels": 3, "seed": 2})
    cluster = ase.Atoms("NiCuPd", positions=[[0, 0, 0], [2.3, 0.4, 0.1], [9.0, 9.0, 9.0]])
    lone = ase.Atoms("Cu", positions=[[0.0, 0.0, 0.0]])
    frames = [alloy(3, repeat=(1, 1, 2), strain=0.04), alloy(4, repeat=(1, 1, 1)), cluster, lone]
    batch = as_batch(frames)
    original = _structure_jacobian.structure_summed_jacobian
    calls = []

    def chunked(*args, **kwargs):
        calls.append(1)
        return original(*args, atom_chunk=atom_chunk)

    monkeypatch.setattr(jacobian, "structure_summed_jacobian", chunked)
    x, gradient, virial = jacobian.soap_summed_jacobian(soap, batch)
    assert calls, "the fast path was not taken"
    monkeypatch.setattr(jacobian, "fast_path_applies", lambda ctx: False)
    x0, gradient0, virial0 = jacobian.soap_summed_jacobian(soap, batch)
    scale = float(gradient0.abs().max())
    np.testing.assert_allclose(gradient.numpy(), gradient0.numpy(), atol=1e-12 * scale)
    np.testing.assert_allclose(
        virial.numpy(), virial0.numpy(), atol=1e-12 * float(virial0.abs().max())
    )
    direction = torch.as_tensor(np.random.default_rng(3).normal(size=x.shape[1]))
    g_positions, g_strain = _autograd(soap, batch, direction)
    np.testing.assert_allclose(
        (gradient @ direction).numpy(), g_positions.numpy(), atol=1e-11 * scale
    )
    assert float(gradient[-1].abs().max()) == 0.0  # a lone atom feels no force
