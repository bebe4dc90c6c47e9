"""Force/virial design rows of the models against autograd of the representation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models_helpers import alloy, small_soap

from tradens.gradients import apply_strain, paths
from tradens.gradients.pair_terms import soap_local_features
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
    for radial_soap in (soap, small_soap(radial={"n_max": 4, "kind": "gto"})):

        def tapered(x, radial_soap=radial_soap):  # f_c R [p, L, 2, N]: values, r-derivatives
            terms, transform = radial_soap.expansion.radial_terms(x)  # [p, 2, L, c]
            terms = terms.transpose(1, 2)  # [p, L, 2, c]
            return terms if transform is None else terms @ transform

        derivative = tapered(r)[:, :, 1]
        h = 1e-6
        numeric = (tapered(r + h)[:, :, 0] - tapered(r - h)[:, :, 0]) / (2 * h)
        np.testing.assert_allclose(
            derivative.numpy(), numeric.numpy(), atol=1e-6 * float(numeric.abs().max())
        )


def _summed_autograd(soap, batch):
    """``d(sum_i X_i)/dx [atom, 3, F]`` and ``d(sum_i X_i)/d strain [structure, 3, 3, F]``."""
    positions = batch.positions.clone().requires_grad_(True)
    strain = torch.zeros_like(batch.cells, requires_grad=True)
    new_positions, new_cells = apply_strain(batch, strain, positions=positions)
    values, rows = soap.forward(batch, new_positions, new_cells)
    summed = torch.zeros(batch.n_structures, values.shape[1], dtype=values.dtype)
    summed = summed.index_add(0, batch.structure[rows], values)  # [structure, F]
    columns = [
        torch.autograd.grad(summed[:, f].sum(), [positions, strain], retain_graph=True)
        for f in range(values.shape[1])
    ]
    gradient = torch.stack([c[0] for c in columns], dim=-1)  # [atom, 3, F]
    virial = torch.stack([c[1] for c in columns], dim=-1)  # [structure, 3, 3, F]
    return values.detach(), gradient, virial


def _cells():
    """A periodic cell, a small triclinic cell (self-images) and a cluster (no cell)."""
    import ase

    periodic = alloy(5, repeat=(1, 1, 2), strain=0.05)
    triclinic = ase.Atoms(
        "NiCu",
        cell=[[2.6, 0.0, 0.0], [0.9, 2.5, 0.0], [0.6, 0.8, 2.4]],
        scaled_positions=[[0.0, 0.0, 0.0], [0.45, 0.55, 0.5]],
        pbc=True,
    )
    triclinic.rattle(0.05, seed=7)
    cluster = ase.Atoms(
        "NiCuPdNiCu",
        positions=[[0, 0, 0], [2.3, 0.4, 0.1], [0.2, 2.4, -0.3], [1.9, 2.0, 1.4], [-1.2, 0.9, 2.0]],
    )
    return [periodic, triclinic, cluster]


SUMMED_VARIANTS = {
    "full": {"mixing": None, "radial": {"n_max": 3}, "l_max": 2},
    "tensor": {"mixing": {"channels": 4, "seed": 1}},
    "element-wise": {"mixing": {"mode": "element", "channels": 3}, "coupling": "elementwise"},
    "asymmetric": {"mixing": {"channels": 3, "symmetric": False}},
    "gto": {"mixing": {"mode": "radial", "channels": 3}, "radial": {"n_max": 3, "kind": "gto"}},
    "unknown-neighbour": {"species": [28, 29], "unknown_species": "skip"},
}


@pytest.mark.parametrize("atom_chunk", [2, 24])
@pytest.mark.parametrize("name", list(SUMMED_VARIANTS))
def test_summed_jacobian_equals_autograd_on_every_cell(name, atom_chunk):
    """Every feature column, on a periodic, a small triclinic and a non-periodic structure."""
    soap = small_soap(**SUMMED_VARIANTS[name])
    batch = as_batch(_cells())
    with paths.recording() as seen:
        x, gradient, virial = soap_summed_jacobian(soap, batch, atom_chunk=atom_chunk)
    assert seen == [("summed", "analytic")]
    assert paths.last("summed") == "analytic"
    values, g_positions, g_strain = _summed_autograd(soap, batch)
    np.testing.assert_allclose(x.numpy(), values.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        gradient.numpy(), g_positions.numpy(), atol=1e-11 * float(g_positions.abs().max())
    )
    np.testing.assert_allclose(
        virial.numpy(), g_strain.numpy(), atol=1e-11 * float(g_strain.abs().max())
    )


def test_summed_jacobian_rejects_a_bad_block_size():
    with pytest.raises(ValueError, match="atom_chunk"):
        soap_summed_jacobian(small_soap(), as_batch([alloy(0, repeat=(1, 1, 1))]), atom_chunk=0)


@pytest.mark.parametrize("atom_chunk", [1, 5, 64])
def test_structure_blocks_equal_autograd(atom_chunk):
    """Blocks of ``atom_chunk`` atoms across structure boundaries against autograd.

    A batch of a periodic cell, a small strained cell with self-images and a sparse
    cluster (atoms without neighbours, structure without pairs).
    """
    import ase

    soap = small_soap(mixing={"channels": 3, "seed": 2})
    cluster = ase.Atoms("NiCuPd", positions=[[0, 0, 0], [2.3, 0.4, 0.1], [9.0, 9.0, 9.0]])
    lone = ase.Atoms("Cu", positions=[[0.0, 0.0, 0.0]])
    frames = [alloy(3, repeat=(1, 1, 2), strain=0.04), alloy(4, repeat=(1, 1, 1)), cluster, lone]
    batch = as_batch(frames)
    x, gradient, virial = soap_summed_jacobian(soap, batch, atom_chunk=atom_chunk)
    assert paths.last("summed") == "analytic", "the fast path was not taken"
    _, gradient0, virial0 = _summed_autograd(soap, batch)
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
