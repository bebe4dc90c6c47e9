"""The analytic SOAP vector-Jacobian product of ``energy_forces_stress``.

The implementation lives in :mod:`tradens.gradients.soap_forces`.

Forces, virial and stress of the analytic path are compared with the autograd
path (``method="autograd"``, one reverse pass through the whole SOAP) for every
mixing mode and coupling, both radial bases, averaging and centre selection, on
periodic, triclinic, small (cell below the cutoff) and non-periodic systems
with an isolated atom, in float64 and float32, and with central finite
differences of the energy; with the compiled kernel of :mod:`tradens.kernels.compiled`
(numba) and with the pure-torch code.
"""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch
from conftest import SPECIES, make_alloy

import tradens.kernels.compiled
from tradens import SOAP
from tradens.density.derivatives import rowwise_jacobian
from tradens.density.radial import cosine_cutoff
from tradens.gradients import energy_forces_stress
from tradens.gradients.api import forces_path

HYPERS = dict(cutoff=4.0, l_max=3, radial={"n_max": 4}, species=list(SPECIES))
VARIANTS = {
    "full": {},
    "full-gto": dict(radial={"n_max": 4, "kind": "gto"}),
    "rz-sym-tensor": dict(mixing={"channels": 4}),
    "rz-sym-tensor-gto": dict(mixing={"channels": 3}, radial={"n_max": 4, "kind": "gto"}),
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
    "gap-weights-sigma0": dict(mixing={"channels": 3, "weights": "gap"}, covariance_sigma0=0.3),
    "average": dict(mixing={"channels": 4}, average=True),
    "centres": dict(mixing={"channels": 3, "symmetric": False}, center_species=(29,)),
}
SYSTEMS = ("alloy", "triclinic", "small_cell", "molecule")


def soap_of(variant: str, **extra) -> SOAP:
    return SOAP(**{**HYPERS, **VARIANTS[variant], **extra})


def model_of(n_features: int, seed: int = 0, dtype=torch.float64):
    """A non-linear model with per-element offsets: ``E_i = w.x + 0.3 (w.x)^2 + e_Z``."""
    w = torch.randn(n_features, dtype=dtype, generator=torch.Generator().manual_seed(seed))

    def model_fn(values, numbers):
        linear = values @ w
        return linear + 0.3 * linear**2 - 0.1 * numbers.to(values.dtype)

    return model_fn


def both(rep, model_fn, atoms, **kwargs):
    analytic = energy_forces_stress(rep, model_fn, atoms, method="analytic", **kwargs)
    reference = energy_forces_stress(rep, model_fn, atoms, method="autograd", **kwargs)
    return analytic, reference


def assert_same(analytic, reference, atol):
    np.testing.assert_allclose(analytic.energy, reference.energy, rtol=atol, atol=atol)
    np.testing.assert_allclose(analytic.forces, reference.forces, rtol=0, atol=atol)
    np.testing.assert_allclose(analytic.virial, reference.virial, rtol=0, atol=atol)
    np.testing.assert_allclose(analytic.stress, reference.stress, rtol=0, atol=atol, equal_nan=True)
    assert np.array_equal(np.isnan(analytic.stress), np.isnan(reference.stress))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("system", SYSTEMS)
def test_analytic_equals_autograd(variant, system, request, implementation):
    atoms = request.getfixturevalue(system)
    rep = soap_of(variant)
    analytic, reference = both(rep, model_of(rep.n_features), atoms)
    if system == "alloy":
        assert np.abs(reference.forces).max() > 1e-3 * (1e-2 if variant == "average" else 1.0)
    assert_same(analytic, reference, atol=1e-12)


def test_batches_of_mixed_systems(alloy, molecule, small_cell, triclinic):
    rep = soap_of("rz-sym-tensor")
    frames = [molecule, alloy, small_cell, triclinic]
    analytic, reference = both(rep, model_of(rep.n_features, seed=2), frames, batch_size=3)
    assert_same(analytic, reference, atol=1e-12)
    assert np.isnan(analytic.stress[0]).all() and np.isfinite(analytic.stress[1:]).all()


def test_isolated_atom_and_no_pairs():
    rep = soap_of("rz-sym-elementwise")
    lone = ase.Atoms(numbers=[28], positions=[[0.0, 0.0, 0.0]])
    apart = ase.Atoms(numbers=[28, 46], positions=[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    for atoms in (lone, apart):
        analytic, reference = both(rep, model_of(rep.n_features), atoms)
        assert_same(analytic, reference, atol=1e-12)
        assert np.all(analytic.forces == 0.0) and np.all(analytic.virial == 0.0)


def test_float32(alloy, small_cell, implementation):
    for variant in ("rz-sym-tensor", "rz-sym-elementwise", "full"):
        rep = soap_of(variant)
        for atoms in (alloy, small_cell):
            model = model_of(rep.n_features, dtype=torch.float32)
            analytic, reference = both(rep, model, atoms, dtype=torch.float32)
            assert analytic.forces.dtype == np.float32
            scale = np.abs(reference.forces).max()
            np.testing.assert_allclose(analytic.forces, reference.forces, rtol=0, atol=2e-5 * scale)
            np.testing.assert_allclose(
                analytic.virial,
                reference.virial,
                rtol=0,
                atol=2e-5 * np.abs(reference.virial).max(),
            )


def test_small_chunks_split_centres(alloy, implementation):
    from tradens import as_batch
    from tradens.gradients.soap_forces import soap_energy_and_gradients

    rep = soap_of("rz-asym-tensor")
    model = model_of(rep.n_features)
    batch = as_batch(alloy)
    whole = soap_energy_and_gradients(rep, model, batch)
    for chunk in (1, 7, 100):
        parts = soap_energy_and_gradients(rep, model, batch, pair_chunk=chunk)
        for a, b in zip(whole, parts, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("variant", ["rz-sym-elementwise", "full-gto", "rz-asym-tensor"])
def test_finite_differences_of_the_energy(variant):
    atoms = make_alloy(seed=4, repeat=(1, 1, 2))
    atoms.set_cell(
        np.asarray(atoms.get_cell()) + [[0.0, 0.1, 0.0], [0.05, 0.0, -0.1], [0.1, 0.0, 0.0]],
        scale_atoms=True,
    )
    rep = soap_of(variant)
    model = model_of(rep.n_features, seed=1)
    out = energy_forces_stress(rep, model, atoms, method="analytic")
    h = 1e-5

    def energy(a):
        return energy_forces_stress(rep, model, a, method="analytic").energy[0]

    numeric = np.zeros((3, 3))
    for row, k in enumerate((0, 5, 7)):
        for a in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[k, a] += h
            minus.positions[k, a] -= h
            numeric[row, a] = -(energy(plus) - energy(minus)) / (2 * h)
    scale = np.abs(out.forces).max()
    assert scale > 1e-2
    assert np.abs(out.forces[[0, 5, 7]] - numeric).max() <= 1e-6 * scale
    strain = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            plus, minus = atoms.copy(), atoms.copy()
            for sign, copy in ((1, plus), (-1, minus)):
                deformation = np.eye(3) + sign * eps
                copy.set_cell(np.asarray(atoms.get_cell()) @ deformation, scale_atoms=False)
                copy.set_positions(atoms.get_positions() @ deformation)
            strain[a, b] = (energy(plus) - energy(minus)) / (2 * h)
    reference = 0.5 * (strain + strain.T) / atoms.get_volume()
    assert np.abs(out.stress[0] - reference).max() <= 1e-6 * np.abs(reference).max()


def test_dispatch_and_fallbacks(alloy):
    rep = soap_of("rz-sym-tensor")
    assert forces_path(rep, create_graph=False) == "soap-analytic"
    assert forces_path(rep, create_graph=True) == "autograd"
    with pytest.raises(ValueError, match="method"):
        energy_forces_stress(rep, model_of(rep.n_features), alloy, method="bogus")
    with pytest.raises(ValueError, match="analytic"):
        energy_forces_stress(
            rep,
            model_of(rep.n_features),
            alloy,
            method="analytic",
            create_graph=True,
            output="torch",
        )
    # create_graph takes the autograd path, with the same numbers
    graph = energy_forces_stress(
        rep, model_of(rep.n_features), alloy, create_graph=True, output="torch"
    )
    plain = energy_forces_stress(rep, model_of(rep.n_features), alloy)
    np.testing.assert_allclose(graph.forces.detach().numpy(), plain.forces, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian_grid", "gto"])
def test_radial_terms_equal_autograd(kind):
    rep = SOAP(cutoff=4.0, l_max=5, radial={"n_max": 6, "kind": kind}, species=[28, 29])
    h = rep.hypers
    r = torch.linspace(0.05, 4.2, 200, dtype=torch.float64)
    values, derivatives = rowwise_jacobian(
        lambda q: (
            rep.radial_basis(q[:, 0])
            * cosine_cutoff(q[:, 0], h.cutoff.radius, h.cutoff.width)[:, None, None]
        ),
        r[:, None],
    )  # [p, N, L], [p, 1, N, L]
    for layout in ("degree", "pair"):
        terms, transform = rep.expansion.radial_terms(r, layout=layout)
        if layout == "pair":  # [p, 2, L, c] -> [L, p, 2, c]
            terms = terms.permute(2, 0, 1, 3)
        if transform is not None:
            terms = torch.matmul(terms, transform)  # [L, p, 2, N]
        torch.testing.assert_close(terms[:, :, 0].permute(1, 2, 0), values, rtol=0, atol=1e-14)
        torch.testing.assert_close(
            terms[:, :, 1].permute(1, 2, 0),
            derivatives[:, 0],
            rtol=0,
            atol=1e-12 * derivatives.abs().max().item(),
        )


@pytest.mark.skipif(
    not tradens.kernels.compiled.compiled_available(), reason="numba is not installed"
)
def test_compiled_pair_kernel_is_used(alloy, monkeypatch):
    """Mixed SOAP forces go through the compiled pair kernel and equal the torch path."""
    import tradens.gradients.soap_forces as forces_module

    rep = soap_of("rz-sym-tensor")
    model = model_of(rep.n_features)
    monkeypatch.setattr(tradens.kernels.compiled, "_ENABLED", False)
    reference = energy_forces_stress(rep, model, alloy, method="analytic")
    monkeypatch.setattr(tradens.kernels.compiled, "_ENABLED", True)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return tradens.kernels.compiled.pair_forces(*args, **kwargs)

    monkeypatch.setattr(forces_module, "pair_forces", counting)
    compiled = energy_forces_stress(rep, model, alloy, method="analytic")
    assert calls, "the compiled kernel was not used"
    assert np.abs(reference.forces).max() > 1e-3
    np.testing.assert_allclose(compiled.forces, reference.forces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(compiled.virial, reference.virial, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["rz-asym-tensor", "gap-weights-sigma0", "centres", "average"])
def test_fused_pass_equals_the_two_pass_path(variant, small_cell, monkeypatch):
    """The fused compiled pass (terms stored once) equals the density expansion + pair pass."""
    import tradens.gradients.soap_forces as forces_module

    if not tradens.kernels.compiled.compiled_available():
        pytest.skip("numba is not installed")
    rep = soap_of(variant)
    model = model_of(rep.n_features)
    frames = [small_cell, make_alloy(seed=9, repeat=(1, 1, 2))]
    built = []
    original = forces_module._fused_pair_terms

    def recording(*args, **kwargs):
        terms = original(*args, **kwargs)
        built.append(terms is not None)
        return terms

    monkeypatch.setattr(forces_module, "_fused_pair_terms", recording)
    fused = energy_forces_stress(rep, model, frames, method="analytic")
    assert built and all(built), "the fused pass was not taken"
    monkeypatch.setattr(forces_module, "FUSED_BYTES", 0)  # too little room: the two-pass path
    built.clear()
    two_pass = energy_forces_stress(rep, model, frames, method="analytic")
    assert built and not any(built)
    assert np.abs(two_pass.forces).max() > 1e-3
    np.testing.assert_allclose(fused.energy, two_pass.energy, rtol=1e-12)
    np.testing.assert_allclose(fused.forces, two_pass.forces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fused.virial, two_pass.virial, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "variant", ["full", "rz-sym-tensor", "rz-sym-elementwise", "gap-weights-sigma0"]
)
def test_many_row_chunks_in_the_backward(variant, alloy, monkeypatch):
    """Per-degree leaves of many small chunks of rows give the autograd forces."""
    import tradens.gradients.soap_forces as forces_module

    rep = soap_of(variant)
    model = model_of(rep.n_features)
    reference = energy_forces_stress(rep, model, alloy, method="autograd")
    monkeypatch.setattr(forces_module, "GRAM_BYTES", 1)  # one row per chunk
    chunked = energy_forces_stress(rep, model, alloy, method="analytic")
    assert np.abs(reference.forces).max() > 1e-3
    assert_same(chunked, reference, atol=1e-11)
