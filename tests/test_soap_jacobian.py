"""The fast Jacobian path of symmetric mixed SOAP (:mod:`tradens.gradients.soap_jacobian`).

It is compared with the general per-pair path (``fast=False``) and with the
autograd path (``method="jvp"``), in both layouts, on systems that exercise its
branches: entries written in place (large cells), slots added into shared
entries (a cell smaller than the cutoff), rows of different lengths and an
isolated atom (a molecule), ``covariance_sigma0``, few and many channels
(K below and above 16), centre selection and float32. Each comparison runs with
the compiled kernel of :mod:`tradens.kernels.compiled` (when numba is installed) and
with the pure-torch code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SPECIES, make_alloy

from tradens import SOAP, as_batch
from tradens.density.derivatives import harmonics_and_gradient, harmonics_with_gradient
from tradens.gradients import descriptor_gradients
from tradens.gradients.soap_jacobian import fast_structure
from tradens.gradients.soap_pairs import soap_pair_gradients
from tradens.kernels import compiled as _kernels

HYPERS = dict(cutoff=4.0, l_max=3, radial={"n_max": 4}, species=list(SPECIES))
FAST_VARIANTS = {
    "tensor-K4": dict(mixing={"channels": 4}),
    "tensor-K16": dict(mixing={"channels": 16}),
    "elementwise-K5": dict(mixing={"channels": 5}, coupling="elementwise"),
    "gap-sigma0": dict(mixing={"channels": 3, "weights": "gap"}, covariance_sigma0=0.3),
    "tensor-raw": dict(mixing={"channels": 3}, normalize=False),
}


def soap_of(variant: str, **extra) -> SOAP:
    return SOAP(**{**HYPERS, **FAST_VARIANTS[variant], **extra})


@pytest.mark.parametrize("variant", sorted(FAST_VARIANTS))
def test_variants_take_the_fast_path(variant):
    soap = soap_of(variant)
    w1, w2 = soap.mixing_matrices(torch.float64, torch.device("cpu"))
    assert fast_structure(soap, w2 is w1, w1) in ("triangle", "diagonal")


@pytest.mark.parametrize("images", [False, True])
@pytest.mark.parametrize("system", ["alloy", "small_cell", "molecule", "triclinic"])
@pytest.mark.parametrize("variant", sorted(FAST_VARIANTS))
def test_fast_path_equals_general_path(variant, system, images, request, implementation):
    atoms = request.getfixturevalue(system)
    soap = soap_of(variant)
    batch = as_batch(atoms)
    with torch.no_grad():
        fast = soap_pair_gradients(soap, batch, strain=True, images=images)
        slow = soap_pair_gradients(soap, batch, strain=True, images=images, fast=False)
    assert torch.equal(fast.index, slow.index)
    assert slow.positions.abs().max() > 1e-3
    torch.testing.assert_close(fast.positions, slow.positions, atol=1e-13, rtol=0)
    torch.testing.assert_close(fast.strain, slow.strain, atol=1e-12, rtol=0)
    torch.testing.assert_close(fast.values, slow.values, atol=1e-14, rtol=0)
    if images:
        assert torch.equal(fast.shifts, slow.shifts)


@pytest.mark.parametrize("variant", ["tensor-K4", "elementwise-K5", "gap-sigma0"])
def test_fast_path_equals_autograd(variant, triclinic):
    soap = soap_of(variant)
    pair = descriptor_gradients(soap, triclinic, method="pair")
    jvp = descriptor_gradients(soap, triclinic, method="jvp")
    assert torch.equal(pair.index, jvp.index)
    torch.testing.assert_close(pair.positions, jvp.positions, atol=1e-12, rtol=0)
    torch.testing.assert_close(pair.strain, jvp.strain, atol=1e-12, rtol=0)
    if variant == "gap-sigma0":  # the constant column has no derivative
        assert pair.positions[:, :, -1].abs().max() == 0 and pair.strain[..., -1].abs().max() == 0


def test_small_chunks_and_centre_selection(implementation):
    """Many chunks of rows (one row each) and rows that are a subset of the atoms."""
    atoms = make_alloy(seed=4)
    soap = soap_of("tensor-K4", center_species=[28, 46])
    batch = as_batch(atoms)
    with torch.no_grad():
        fast = soap_pair_gradients(soap, batch, chunk_bytes=1)
        slow = soap_pair_gradients(soap, batch, fast=False)
    assert fast.values.shape[0] < len(atoms)
    torch.testing.assert_close(fast.positions, slow.positions, atol=1e-13, rtol=0)
    torch.testing.assert_close(fast.strain, slow.strain, atol=1e-12, rtol=0)


def test_float32(alloy, implementation):
    soap = soap_of("tensor-K4")
    reference = descriptor_gradients(soap, alloy)
    single = descriptor_gradients(soap, alloy, dtype=torch.float32)
    assert single.positions.dtype == torch.float32
    torch.testing.assert_close(single.positions.double(), reference.positions, atol=2e-5, rtol=0)
    torch.testing.assert_close(single.strain.double(), reference.strain, atol=1e-4, rtol=0)


@pytest.mark.skipif(not _kernels.compiled_available(), reason="numba is not installed")
@pytest.mark.parametrize("system", ["alloy", "small_cell"])
def test_compiled_kernel_equals_torch_and_is_used(system, request, monkeypatch):
    """The compiled tensor-coupling kernel gives the torch numbers, and really runs."""
    import tradens.gradients.soap_jacobian as jacobian_module

    atoms = request.getfixturevalue(system)
    soap = soap_of("tensor-K16")
    monkeypatch.setattr(_kernels, "_ENABLED", False)
    reference = descriptor_gradients(soap, atoms)
    monkeypatch.setattr(_kernels, "_ENABLED", True)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return _kernels.triangle_slab(*args, **kwargs)

    monkeypatch.setattr(jacobian_module, "triangle_slab", counting)
    compiled = descriptor_gradients(soap, atoms)
    assert calls, "the compiled kernel was not used"
    assert reference.positions.abs().max() > 1e-3
    torch.testing.assert_close(compiled.positions, reference.positions, atol=1e-13, rtol=0)
    torch.testing.assert_close(compiled.strain, reference.strain, atol=1e-12, rtol=0)


def test_compiled_switch_and_tensor_rules():
    """``use_compiled`` refuses autograd tensors and other dtypes; the switch round-trips."""
    previous = _kernels.set_compiled(True)
    try:
        x = torch.zeros(3, dtype=torch.float64)
        assert _kernels.use_compiled(x) == _kernels.compiled_available()
        assert not _kernels.use_compiled(torch.zeros(3, dtype=torch.float64, requires_grad=True))
        assert not _kernels.use_compiled(torch.zeros(3, dtype=torch.int64))
        assert _kernels.set_compiled(False) is True
        assert not _kernels.use_compiled(x)
    finally:
        _kernels.set_compiled(previous)


@pytest.mark.parametrize("l_max", [0, 1, 4, 8])
def test_solid_harmonic_gradients_equal_closed_form(l_max):
    vectors = torch.randn(200, 3, dtype=torch.float64) * 2.0
    values, gradients = harmonics_with_gradient(vectors, l_max)
    fast_values, fast_gradients = harmonics_and_gradient(vectors, l_max)
    torch.testing.assert_close(fast_values, values, atol=1e-13, rtol=0)
    torch.testing.assert_close(fast_gradients, gradients, atol=1e-12, rtol=0)


@pytest.mark.parametrize("l_max, width", [(6, 1.0), (9, 0.0)])
def test_radial_primitive_derivative_equals_closed_form(l_max, width, implementation):
    soap = SOAP(
        cutoff={"radius": 5.0, "width": width}, l_max=l_max, radial={"n_max": 8}, species=[1, 8]
    )
    r = torch.linspace(
        0.05, 5.2, 97, dtype=torch.float64
    )  # power series at small r; beyond the cutoff
    radial, d_radial = soap.expansion.radial_with_derivative(r)  # [p, N, L]
    primitive, transform = soap.expansion.radial_primitive(r)  # [p, 2L, a]
    n_l = radial.shape[2]
    torch.testing.assert_close(
        (primitive[:, :n_l] @ transform).transpose(1, 2), radial, atol=1e-15, rtol=0
    )
    torch.testing.assert_close(
        (primitive[:, n_l:] @ transform).transpose(1, 2), d_radial, atol=1e-14, rtol=0
    )
    assert d_radial.abs().max() > 1e-3
    assert np.isfinite(primitive.numpy()).all()
    single, _ = soap.expansion.radial_primitive(r.float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), primitive, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ["tensor-K4", "elementwise-K5"])
def test_gpu_launch_layout_gives_the_same_jacobian(variant, monkeypatch):
    """The GPU layout (large blocks, rows padded for one batched sum) run on the CPU."""
    import tradens.gradients.soap_jacobian
    import tradens.gradients.soap_pairs

    atoms = [
        make_alloy(seed=6),
        make_alloy(seed=7, repeat=(1, 1, 1), rattle=0.3),
    ]  # rows of unequal sizes
    soap = soap_of(variant)
    previous = _kernels.set_compiled(False)
    try:
        reference = descriptor_gradients(soap, atoms)
        for module in (tradens.gradients.soap_jacobian, tradens.gradients.soap_pairs):
            monkeypatch.setattr(module, "_small_launches_are_cheap", lambda device: False)
        gpu_layout = descriptor_gradients(soap, atoms)
    finally:
        _kernels.set_compiled(previous)
    assert torch.equal(gpu_layout.index, reference.index)
    assert reference.positions.abs().max() > 1e-2
    torch.testing.assert_close(gpu_layout.positions, reference.positions, atol=1e-13, rtol=0)
    torch.testing.assert_close(gpu_layout.strain, reference.strain, atol=1e-12, rtol=0)
