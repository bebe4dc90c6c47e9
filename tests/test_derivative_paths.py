"""Every derivative path of each product against autograd, on every variant and cell type.

Two products, each behind one dispatcher that records the path it took
(:mod:`tradens.gradients.paths`):

* ``"forces"`` — :func:`tradens.gradients.energy_forces_stress` (a non-linear
  model on the features): the analytic SOAP path against one reverse pass
  (``method="autograd"``);
* ``"jacobian"`` — :func:`tradens.gradients.descriptor_gradients`: the analytic
  per-pair paths (``soap-symmetric``, ``soap-pair``, ``ace-pair``) against
  Jacobian-vector products (``method="jvp"``).

Variants: full SOAP (Gaussian grid and GTO), R+Z / element / radial mixing,
symmetric and asymmetric, tensor and element-wise coupling, normalised or not,
averaged, ``covariance_sigma0``, ``diagonal_radial``; channel-diagonal and full
TR-ACE. Cells: periodic cubic, a small triclinic cell (smaller than the
cutoff), a non-periodic molecule with an isolated atom, mixed periodicity.
Each case asserts which path ran.
"""

from __future__ import annotations

import functools

import ase
import numpy as np
import pytest
import torch
from conftest import SPECIES, make_alloy

import tradens.kernels.compiled
from tradens import ACE, SOAP
from tradens.gradients import descriptor_gradients, energy_forces_stress, paths
from tradens.gradients.api import forces_path, jacobian_path

SOAP_HYPERS = dict(cutoff=3.2, l_max=2, radial={"n_max": 3}, species=list(SPECIES))
SOAP_VARIANTS = {
    "full": {},
    "full-gto": dict(radial={"n_max": 3, "kind": "gto"}),
    "full-diagonal-radial-sigma0": dict(diagonal_radial=True, covariance_sigma0=0.5),
    "rz-sym-tensor": dict(mixing={"channels": 4}),
    "rz-sym-tensor-gto": dict(mixing={"channels": 3}, radial={"n_max": 3, "kind": "gto"}),
    "rz-asym-tensor": dict(mixing={"channels": 3, "symmetric": False}),
    "rz-sym-elementwise": dict(mixing={"channels": 5}, coupling="elementwise"),
    "element-sym-elementwise": dict(
        mixing={"mode": "element", "channels": 2}, coupling="elementwise"
    ),
    "element-asym-tensor": dict(mixing={"mode": "element", "channels": 2, "symmetric": False}),
    "radial-sym-tensor-raw": dict(mixing={"mode": "radial", "channels": 2}, normalize=False),
    "radial-asym-elementwise": dict(
        mixing={"mode": "radial", "channels": 2, "symmetric": False}, coupling="elementwise"
    ),
    "rz-sym-tensor-sigma0": dict(mixing={"channels": 3}, covariance_sigma0=0.3),
    "rz-averaged": dict(mixing={"channels": 3}, average=True),
}
ACE_HYPERS = dict(
    cutoff=3.2, species=list(SPECIES), nu_max=3, l_max=(0, 3, 2), channels=3, radial={"n_max": 3}
)
ACE_VARIANTS = {
    "ace-diagonal": {},
    "ace-diagonal-normalised": dict(normalize=True),
    "ace-per-order": dict(channels=(2, 3, 2)),
    "ace-full": dict(mode="full", channels=2, l_max=(0, 2, 1)),
}
CELLS = ("cubic", "small-triclinic", "molecule", "mixed-pbc")


def cell(kind: str) -> ase.Atoms:
    """The four cell types (small, so that every case stays fast)."""
    if kind == "cubic":  # 4 atoms, periodic, a 3.6 Å cube (above the cutoff, below twice it)
        return make_alloy(seed=11, repeat=(1, 1, 1))
    if kind == "small-triclinic":  # 2 atoms, every side below the cutoff: many self-images
        return ase.Atoms(
            numbers=[28, 46],
            positions=[[0.0, 0.0, 0.0], [1.3, 1.1, 0.9]],
            cell=[[2.5, 0.0, 0.0], [0.7, 2.4, 0.0], [0.4, 0.6, 2.6]],
            pbc=True,
        )
    if kind == "molecule":  # non-periodic, with an isolated atom
        rng = np.random.default_rng(5)
        positions = np.vstack([rng.normal(scale=1.2, size=(4, 3)), [[30.0, 30.0, 30.0]]])
        return ase.Atoms(numbers=[28, 29, 46, 28, 29], positions=positions)
    if kind == "mixed-pbc":  # a slab: periodic in x and y only
        atoms = make_alloy(seed=12, repeat=(1, 1, 1), rattle=0.15)
        atoms.pbc = [True, True, False]
        return atoms
    raise ValueError(kind)


@functools.cache
def representation(variant: str):
    """One representation per variant (built once: the GTO tables take a while)."""
    if variant in SOAP_VARIANTS:
        return SOAP(**{**SOAP_HYPERS, **SOAP_VARIANTS[variant]})
    return ACE(**{**ACE_HYPERS, **ACE_VARIANTS[variant]})


def model_of(n_features: int):
    """A non-linear model with per-element offsets: ``E_i = w.x + 0.3 (w.x)^2 - 0.1 Z``."""
    w = torch.randn(n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def model_fn(values, numbers):
        linear = values @ w
        return linear + 0.3 * linear**2 - 0.1 * numbers.to(values.dtype)

    return model_fn


def expected_forces_path(variant: str) -> str:
    return "soap-analytic" if variant in SOAP_VARIANTS else "autograd"


def expected_jacobian_path(variant: str) -> str:
    if variant == "ace-full":
        return "jvp"
    if variant.startswith("ace"):
        return "ace-pair"
    h = SOAP_VARIANTS[variant]
    mixing = h.get("mixing")
    symmetric = mixing is not None and mixing.get("symmetric", True) and not h.get("average")
    tensor = h.get("coupling", "tensor") == "tensor"  # all b <= a channel pairs
    matching = mixing is not None and mixing.get("mode", "radial+element") == "radial+element"
    return "soap-symmetric" if symmetric and (tensor or matching) else "soap-pair"


VARIANTS = sorted(SOAP_VARIANTS) + sorted(ACE_VARIANTS)
# ACE has no analytic forces path: its "auto" path is the reference itself, checked once
FORCES_VARIANTS = sorted(SOAP_VARIANTS) + ["ace-diagonal"]


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("variant", FORCES_VARIANTS)
def test_forces_paths_equal_autograd(variant, kind):
    atoms, rep = cell(kind), representation(variant)
    model = model_of(rep.n_features)
    assert forces_path(rep) == expected_forces_path(variant)
    with paths.recording() as seen:
        fast = energy_forces_stress(rep, model, atoms)
    assert seen == [("forces", expected_forces_path(variant))]
    reference = energy_forces_stress(rep, model, atoms, method="autograd")
    assert paths.last("forces") == "autograd"
    if kind == "cubic":  # the comparison is not vacuous
        assert np.abs(reference.forces).max() > 1e-4
    np.testing.assert_allclose(fast.energy, reference.energy, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast.forces, reference.forces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.virial, reference.virial, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.stress, reference.stress, rtol=0, atol=1e-12, equal_nan=True)
    assert np.isnan(fast.stress).all() == (kind in ("molecule", "mixed-pbc"))


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_jacobian_paths_equal_autograd(variant, kind):
    atoms, rep = cell(kind), representation(variant)
    path = expected_jacobian_path(variant)
    assert jacobian_path(rep) == path
    with paths.recording() as seen:
        fast = descriptor_gradients(rep, atoms)
    assert seen == [("jacobian", path)]
    reference = descriptor_gradients(rep, atoms, method="jvp")
    assert paths.last("jacobian") == "jvp"
    assert torch.equal(fast.index, reference.index)
    assert torch.equal(fast.rows, reference.rows)
    scale = max(1.0, float(reference.positions.abs().max()))
    if kind == "cubic":
        assert float(reference.positions.abs().max()) > 1e-3
    torch.testing.assert_close(fast.values, reference.values, atol=1e-14, rtol=0)
    torch.testing.assert_close(fast.positions, reference.positions, atol=1e-12 * scale, rtol=0)
    torch.testing.assert_close(fast.strain, reference.strain, atol=1e-11 * scale, rtol=0)


@pytest.mark.skipif(
    not tradens.kernels.compiled.compiled_available(), reason="numba is not installed"
)
@pytest.mark.parametrize("variant", ["full", "rz-sym-tensor", "rz-asym-tensor", "ace-diagonal"])
def test_torch_backend_equals_compiled_backend(variant):
    """The compiled kernels are an option inside each analytic path: same numbers without them."""
    atoms, rep = cell("small-triclinic"), representation(variant)
    model = model_of(rep.n_features)
    compiled_forces = energy_forces_stress(rep, model, atoms)
    compiled_jacobian = descriptor_gradients(rep, atoms)
    previous = tradens.kernels.compiled.set_compiled(False)
    try:
        torch_forces = energy_forces_stress(rep, model, atoms)
        assert paths.last("forces") == expected_forces_path(variant)
        torch_jacobian = descriptor_gradients(rep, atoms)
        assert paths.last("jacobian") == expected_jacobian_path(variant)
    finally:
        tradens.kernels.compiled.set_compiled(previous)
    np.testing.assert_allclose(torch_forces.forces, compiled_forces.forces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(torch_forces.virial, compiled_forces.virial, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        torch_jacobian.positions, compiled_jacobian.positions, atol=1e-12, rtol=0
    )
    torch.testing.assert_close(torch_jacobian.strain, compiled_jacobian.strain, atol=1e-11, rtol=0)


def test_dispatch_errors_name_the_problem():
    full_ace = representation("ace-full")
    with pytest.raises(ValueError, match="channel-diagonal ACE"):
        jacobian_path(full_ace, method="pair")
    with pytest.raises(ValueError, match="images=True"):
        jacobian_path(full_ace, images=True)
    with pytest.raises(ValueError, match="analytic"):
        forces_path(full_ace, method="analytic")
    with pytest.raises(ValueError, match="method"):
        forces_path(representation("full"), method="bogus")
    assert forces_path(representation("full"), create_graph=True) == "autograd"
    assert jacobian_path(representation("rz-sym-tensor"), method="jvp") == "jvp"
