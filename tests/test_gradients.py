"""Gradients: descriptor Jacobians, forces, stress, learnable weights (tradens.gradients)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase
import numpy as np
import pytest
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.fd import calculate_numerical_stress
from conftest import SPECIES, make_alloy

from tradens import SOAP, as_batch
from tradens.gradients import apply_strain, descriptor_gradients, energy_forces_stress

HYPERS = dict(cutoff=4.0, l_max=3, radial={"n_max": 4}, species=list(SPECIES))
VARIANTS = {
    "full": {},
    "rz-sym-tensor": dict(mixing={"channels": 4}),
    "rz-asym-tensor": dict(mixing={"channels": 3, "symmetric": False}),
    "rz-sym-elementwise": dict(mixing={"channels": 4}, coupling="elementwise"),
    "element-sym-elementwise": dict(
        mixing={"mode": "element", "channels": 2}, coupling="elementwise"
    ),
    "element-asym-tensor": dict(mixing={"mode": "element", "channels": 2, "symmetric": False}),
    "radial-sym-tensor-raw": dict(mixing={"mode": "radial", "channels": 2}, normalize=False),
    "radial-asym-elementwise": dict(
        mixing={"mode": "radial", "channels": 2, "symmetric": False}, coupling="elementwise"
    ),
    "gap-weights-sigma0": dict(mixing={"channels": 3, "weights": "gap"}, covariance_sigma0=0.3),
}


@pytest.fixture
def small_cell(small_cell):
    """conftest's small cell, nudged: a1 + a2 is exactly 4.0 Å long (= the cutoff here), where
    the taper is only C1 and central differences err by O(h)."""
    atoms = small_cell.copy()
    atoms.set_cell(
        np.asarray(atoms.get_cell()) + [[0.0, 0.0, 0.0], [0.013, 0.0, 0.0], [0.02, -0.01, 0.03]]
    )
    atoms.positions[1] += [0.013, -0.021, 0.017]
    return atoms


def soap_of(variant: str, **extra) -> SOAP:
    return SOAP(**{**HYPERS, **VARIANTS[variant], **extra})


def strained_copy(atoms: ase.Atoms, eps: np.ndarray) -> ase.Atoms:
    """positions (1 + eps), cell (1 + eps), as in tradens.gradients.api."""
    out = atoms.copy()
    deformation = np.eye(3) + eps
    out.set_cell(np.asarray(atoms.get_cell()) @ deformation, scale_atoms=False)
    out.set_positions(atoms.get_positions() @ deformation)
    return out


def fd_positions(rep, atoms, atom_ids, h=1e-5):
    """Central differences d values / d x[atom, a]: [atom_ids, 3, row, F]."""
    out = []
    for k in atom_ids:
        per_axis = []
        for a in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[k, a] += h
            minus.positions[k, a] -= h
            per_axis.append((rep.compute(plus).values - rep.compute(minus).values) / (2 * h))
        out.append(per_axis)
    return np.array(out)


def fd_strain(rep, atoms, h=1e-5):
    """Central differences d values / d eps_ab (unsymmetrised): [3, 3, row, F]."""
    out = np.zeros((3, 3) + rep.compute(atoms).values.shape)
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            out[a, b] = (
                rep.compute(strained_copy(atoms, eps)).values
                - rep.compute(strained_copy(atoms, -eps)).values
            ) / (2 * h)
    return out


def assert_relative(analytic, reference, rtol=1e-6, floor=1e-3):
    analytic, reference = np.asarray(analytic), np.asarray(reference)
    scale = np.abs(reference).max()
    assert scale > floor, (
        f"reference gradient is negligible ({scale:.2e}): the test would prove nothing"
    )
    error = np.abs(analytic - reference).max()
    assert error <= rtol * scale, f"max abs error {error:.3e} > {rtol:g} x {scale:.3e}"


def check_against_finite_differences(rep, atoms, atom_ids, method="pair", strain=True, h=1e-5):
    result = descriptor_gradients(rep, atoms, method=method, strain=strain)
    dense = result.dense(len(atoms)).numpy()  # [row, atom, 3, F]
    reference = fd_positions(rep, atoms, atom_ids, h=h)  # [k, 3, row, F]
    assert_relative(dense[:, atom_ids].transpose(1, 2, 0, 3), reference)
    if strain:
        assert_relative(result.strain.numpy().transpose(1, 2, 0, 3), fd_strain(rep, atoms, h=h))
    return result


# ---------------------------------------------------------------- Jacobians vs finite differences


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_matches_finite_differences(variant, triclinic):
    rep = soap_of(variant)
    check_against_finite_differences(rep, triclinic, atom_ids=[0, 2])


@pytest.mark.parametrize("system", ["alloy", "small_cell", "molecule"])
@pytest.mark.parametrize("variant", ["full", "rz-sym-tensor"])
def test_systems_match_finite_differences(system, variant, request):
    atoms = request.getfixturevalue(system)
    rep = soap_of(variant)
    ids = [0, len(atoms) - 1] if system != "molecule" else [0, 3]
    check_against_finite_differences(rep, atoms, atom_ids=ids)


def test_gto_basis_average_and_centre_selection_match_finite_differences(alloy):
    atoms = make_alloy(seed=2, repeat=(1, 1, 2))
    gto = SOAP(**{**HYPERS, "radial": {"n_max": 4, "kind": "gto"}, "mixing": {"channels": 3}})
    check_against_finite_differences(gto, atoms, atom_ids=[1], h=1e-6)
    averaged = soap_of("rz-sym-tensor", average=True)
    check_against_finite_differences(averaged, atoms, atom_ids=[0, 5])
    centres = soap_of("rz-asym-tensor", center_species=(29,))
    result = check_against_finite_differences(centres, atoms, atom_ids=[0, 3])
    assert set(atoms.numbers[result.rows.numpy()]) == {29}


def test_strain_is_symmetric_for_invariant_features(alloy):
    result = descriptor_gradients(soap_of("rz-sym-tensor"), alloy)
    s = result.strain
    assert s.abs().max() > 0.1
    torch.testing.assert_close(s, s.transpose(1, 2), atol=1e-12, rtol=0)


# ---------------------------------------------------------------- closed-form pair derivatives


@pytest.mark.parametrize("l_max", [1, 4, 8])
def test_closed_form_harmonic_gradients_match_autograd(l_max):
    from tradens.density.angular import spherical_harmonics
    from tradens.density.derivatives import harmonics_with_gradient, rowwise_jacobian

    generator = torch.Generator().manual_seed(l_max)
    vectors = torch.randn(200, 3, dtype=torch.float64, generator=generator) * 2.0
    vectors[0] = torch.tensor([0.0, 0.0, 1.7])  # the poles
    vectors[1] = torch.tensor([0.0, 0.0, -0.4])
    values, gradient = harmonics_with_gradient(vectors, l_max)
    reference_values, reference = rowwise_jacobian(lambda v: spherical_harmonics(v, l_max), vectors)
    torch.testing.assert_close(values, reference_values, atol=1e-14, rtol=0)
    assert reference.abs().max() > 1.0
    torch.testing.assert_close(gradient, reference, atol=1e-12 * reference.abs().max(), rtol=0)


@pytest.mark.parametrize(
    "gap",
    [
        "soap cutoff=5.0 l_max=6 n_max=8 atom_sigma=0.5",
        "soap cutoff=4.0 l_max=9 n_max=10 atom_sigma=0.3 cutoff_transition_width=1.2",
    ],
)
def test_closed_form_radial_derivative_matches_autograd(gap):
    from tradens.density.derivatives import rowwise_jacobian
    from tradens.density.radial import cosine_cutoff
    from tradens.quip import soap_from_gap

    soap = soap_from_gap(gap)
    h = soap.hypers
    r = torch.linspace(0.05, h.cutoff.radius - 1e-6, 500, dtype=torch.float64)
    radial, derivative = soap.expansion.radial_with_derivative(r)
    reference_values, reference = rowwise_jacobian(
        lambda x: (
            soap.radial_basis(x[:, 0])
            * cosine_cutoff(x[:, 0], h.cutoff.radius, h.cutoff.width)[:, None, None]
        ),
        r[:, None],
    )
    torch.testing.assert_close(radial, reference_values, atol=1e-15, rtol=0)
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(
        derivative, reference[:, 0], atol=1e-12 * reference.abs().max(), rtol=0
    )


# ---------------------------------------------------------------- autograd reference, invariances


@pytest.mark.parametrize(
    "variant", ["full", "rz-asym-tensor", "element-sym-elementwise", "gap-weights-sigma0"]
)
@pytest.mark.parametrize("system", ["small_cell", "triclinic"])
def test_pair_path_equals_autograd_path(variant, system, request):
    atoms = request.getfixturevalue(system)
    rep = soap_of(variant)
    pair = descriptor_gradients(rep, atoms, method="pair")
    jvp = descriptor_gradients(rep, atoms, method="jvp")
    assert torch.equal(pair.index, jvp.index)
    assert pair.positions.abs().max() > 0.01
    torch.testing.assert_close(pair.positions, jvp.positions, atol=1e-12, rtol=0)
    torch.testing.assert_close(pair.strain, jvp.strain, atol=1e-12, rtol=0)
    torch.testing.assert_close(pair.values, jvp.values, atol=1e-14, rtol=0)


def test_autograd_path_is_translation_invariant(molecule, small_cell):
    """sum_j dX_i/dx_j = 0, checked on the generic path (the pair path has it by construction)."""
    for atoms in (molecule, small_cell):
        result = descriptor_gradients(soap_of("rz-sym-tensor"), atoms, method="jvp", strain=False)
        total = torch.zeros(result.values.shape[0], 3, result.values.shape[1], dtype=torch.float64)
        total.index_add_(0, result.index[:, 0], result.positions)
        assert result.positions.abs().max() > 0.01
        assert total.abs().max() < 1e-12


def test_layouts_atom_and_image(small_cell, molecule):
    for atoms in (small_cell, molecule):
        rep = soap_of("rz-sym-tensor")
        by_atom = descriptor_gradients(rep, atoms)
        by_image = descriptor_gradients(rep, atoms, images=True, strain=False)
        # entries sorted by (row, atom) and including every centre
        keys = by_atom.index[:, 0] * len(atoms) + by_atom.index[:, 1]
        assert torch.equal(keys, torch.unique(keys))
        centres = by_atom.index[by_atom.index[:, 0] == by_atom.index[:, 1]]
        assert torch.equal(centres[:, 0], torch.arange(len(atoms)))
        # image layout: centre entry first in each row, equal to minus the row's image entries
        rows = by_image.index[:, 0].contiguous()
        first = torch.searchsorted(rows, torch.arange(len(atoms)))
        assert torch.equal(by_image.index[first, 1], by_image.rows)
        assert torch.all(by_image.shifts[first] == 0)
        summed = torch.zeros_like(by_image.positions[first]).index_add_(0, rows, by_image.positions)
        assert summed.abs().max() < 1e-12
        torch.testing.assert_close(
            by_image.dense(len(atoms)), by_atom.dense(len(atoms)), atol=1e-13, rtol=0
        )
        if atoms is small_cell:  # a cell smaller than the cutoff: many images of each atom
            assert by_image.index.shape[0] > 10 * by_atom.index.shape[0]


def test_isolated_atom_has_zero_gradient_and_inputs_unchanged(molecule):
    before = molecule.copy()
    result = descriptor_gradients(soap_of("full"), molecule)
    assert molecule == before and np.array_equal(molecule.positions, before.positions)
    isolated = len(molecule) - 1
    rows = result.index[:, 0] == isolated
    assert rows.sum() == 1  # only the centre itself
    assert result.positions[rows].abs().max() == 0


def test_structure_without_pairs():
    """A single atom: no pair, zero gradients on both paths, zero forces (no autograd error)."""
    lone = ase.Atoms("Ni", positions=[[0.3, 0.2, 0.1]], cell=np.eye(3) * 9.0, pbc=True)
    for variant in ("full", "rz-sym-tensor"):
        rep = soap_of(variant)
        for method in ("pair", "jvp"):
            result = descriptor_gradients(rep, lone, method=method)
            assert result.index.tolist() == [[0, 0]]
            assert result.positions.abs().max() == 0 and result.strain.abs().max() == 0
        out = energy_forces_stress(rep, lambda x, z: x.sum(1), lone)
        assert np.abs(out.forces).max() == 0 and np.abs(out.stress).max() == 0


def test_bad_arguments():
    rep = soap_of("rz-sym-tensor")
    atoms = make_alloy(repeat=(1, 1, 1))
    with pytest.raises(ValueError, match="method"):
        descriptor_gradients(rep, atoms, method="magic")
    with pytest.raises(ValueError, match="images=True"):
        descriptor_gradients(rep, atoms, method="jvp", images=True)
    with pytest.raises(ValueError, match="average"):
        descriptor_gradients(soap_of("full", average=True), atoms, images=True)
    with pytest.raises(ValueError, match="create_graph"):
        energy_forces_stress(rep, lambda x, z: x.sum(1), atoms, create_graph=True)
    with pytest.raises(ValueError, match="one energy per row"):
        energy_forces_stress(rep, lambda x, z: x.sum(), atoms)
    with pytest.raises(ValueError, match="strain must have shape"):
        apply_strain(as_batch(atoms), torch.zeros(2, 3, 3))


# ---------------------------------------------------------------- model path


class _ModelCalculator(Calculator):
    """ASE calculator around a tradens model, for ASE's own numerical stress."""

    implemented_properties = ["energy"]

    def __init__(self, rep, model_fn):
        super().__init__()
        self.rep, self.model_fn = rep, model_fn

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        out = energy_forces_stress(self.rep, self.model_fn, atoms)
        self.results["energy"] = float(out.energy[0])


def linear_model(n_features: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(n_features, dtype=torch.float64, generator=generator)
    e0 = {28: -1.0, 29: -2.0, 46: -3.5}

    def model_fn(values, numbers):
        shift = torch.tensor([e0.get(int(z), 0.0) for z in numbers], dtype=values.dtype)
        return values @ w + shift

    return w, model_fn


def test_linear_model_forces_and_stress(alloy):
    rep = soap_of("rz-sym-tensor")
    w, model_fn = linear_model(rep.n_features)
    out = energy_forces_stress(rep, model_fn, alloy)
    values = rep.compute(alloy).values
    e0 = (
        -1.0 * (alloy.numbers == 28).sum()
        - 2.0 * (alloy.numbers == 29).sum()
        - 3.5 * (alloy.numbers == 46).sum()
    )
    np.testing.assert_allclose(out.energy, [(values @ w.numpy()).sum() + e0], rtol=1e-13)
    # forces = -w . Jacobian, stress = (1/V) w . strain Jacobian
    jac = descriptor_gradients(rep, alloy)
    contracted = -torch.einsum("eaf,f->ea", jac.positions, w)
    forces = torch.zeros(len(alloy), 3, dtype=torch.float64).index_add_(
        0, jac.index[:, 1], contracted
    )
    assert np.abs(out.forces).max() > 0.05
    np.testing.assert_allclose(out.forces, forces.numpy(), atol=1e-12)
    volume = alloy.get_volume()
    np.testing.assert_allclose(
        out.stress[0], torch.einsum("rabf,f->ab", jac.strain, w).numpy() / volume, atol=1e-13
    )
    np.testing.assert_allclose(out.virial[0], -out.stress[0] * volume, atol=1e-12)
    assert np.abs(out.forces.sum(0)).max() < 1e-12
    # finite differences of the energy itself
    h = 1e-5
    for k, a in [(0, 0), (7, 2), (31, 1)]:
        plus, minus = alloy.copy(), alloy.copy()
        plus.positions[k, a] += h
        minus.positions[k, a] -= h
        numeric = -(
            energy_forces_stress(rep, model_fn, plus).energy[0]
            - energy_forces_stress(rep, model_fn, minus).energy[0]
        ) / (2 * h)
        assert abs(out.forces[k, a] - numeric) <= 1e-6 * np.abs(out.forces).max()
    # stress against ASE's own numerical stress (sign and Voigt convention of ASE)
    probe = alloy.copy()
    probe.calc = _ModelCalculator(rep, model_fn)
    numeric_stress = calculate_numerical_stress(
        probe, eps=1e-5, voigt=False, force_consistent=False
    )
    assert np.abs(out.stress[0]).max() > 1e-3
    np.testing.assert_allclose(
        out.stress[0], numeric_stress, atol=1e-6 * np.abs(out.stress[0]).max()
    )


def test_model_path_batches_and_non_periodic(molecule, small_cell, triclinic):
    rep = soap_of("rz-asym-tensor")
    w, model_fn = linear_model(rep.n_features, seed=3)
    frames = [molecule, small_cell, triclinic]
    together = energy_forces_stress(rep, model_fn, frames, batch_size=2)
    for index, atoms in enumerate(frames):
        alone = energy_forces_stress(rep, model_fn, atoms)
        np.testing.assert_allclose(together.energy[index], alone.energy[0], rtol=1e-13)
        np.testing.assert_allclose(
            together.forces[together.structure == index], alone.forces, atol=1e-12
        )
        np.testing.assert_allclose(together.virial[index], alone.virial[0], atol=1e-12)
    assert np.array_equal(together.structure, np.repeat([0, 1, 2], [8, 2, 4]))
    # non-periodic: no stress, and the virial is sum_i x_i (x) F_i
    assert np.isnan(together.stress[0]).all() and np.isfinite(together.stress[1:]).all()
    mask = together.structure == 0
    np.testing.assert_allclose(
        together.virial[0], molecule.positions.T @ together.forces[mask], atol=1e-12
    )
    assert np.abs(together.virial[0]).max() > 1e-3


def test_forces_of_a_cell_smaller_than_the_cutoff_match_finite_differences(small_cell):
    rep = soap_of("full")
    _, model_fn = linear_model(rep.n_features, seed=4)
    out = energy_forces_stress(rep, model_fn, small_cell)
    h = 1e-5
    numeric = np.zeros((2, 3))
    for k in range(2):
        for a in range(3):
            plus, minus = small_cell.copy(), small_cell.copy()
            plus.positions[k, a] += h
            minus.positions[k, a] -= h
            numeric[k, a] = -(
                energy_forces_stress(rep, model_fn, plus).energy[0]
                - energy_forces_stress(rep, model_fn, minus).energy[0]
            ) / (2 * h)
    assert_relative(out.forces, numeric)
    strain_numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            strain_numeric[a, b] = (
                energy_forces_stress(rep, model_fn, strained_copy(small_cell, eps)).energy[0]
                - energy_forces_stress(rep, model_fn, strained_copy(small_cell, -eps)).energy[0]
            ) / (2 * h)
    assert_relative(out.stress[0] * small_cell.get_volume(), strain_numeric)


# ---------------------------------------------------------------- learnable weights


def _tiny_system():
    return ase.Atoms(
        numbers=[28, 29, 46, 28],
        positions=[[0.0, 0.0, 0.0], [1.9, 0.3, 0.1], [0.2, 2.1, 0.4], [1.1, 1.0, 1.8]],
        cell=np.diag([3.3, 3.5, 3.4]),
        pbc=True,
    )


def test_gradcheck_learnable_weights_features_and_forces():
    rep = SOAP(
        cutoff=3.0,
        l_max=2,
        radial={"n_max": 2},
        species=list(SPECIES),
        mixing={"channels": 2, "symmetric": False, "learnable": True},
    )
    batch = as_batch(_tiny_system())
    w1 = rep.weights1.detach().clone().requires_grad_(True)
    w2 = rep.weights2.detach().clone().requires_grad_(True)

    class WithWeights(torch.nn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.a, self.b = a, b

        def forward(self, batch, positions=None, cells=None):
            return torch.func.functional_call(
                rep, {"weights1": self.a, "weights2": self.b}, (batch, positions, cells)
            )

    def features(a, b):
        return WithWeights(a, b)(batch)[0]

    assert torch.autograd.gradcheck(features, (w1, w2))

    def forces_and_stress(a, b):
        out = energy_forces_stress(
            WithWeights(a, b), lambda x, z: x.sum(1) ** 2, batch, create_graph=True, output="torch"
        )
        return out.forces, out.stress

    forces, stress = forces_and_stress(w1, w2)
    assert forces.abs().max() > 1e-3 and stress.abs().max() > 1e-3
    assert torch.autograd.gradcheck(forces_and_stress, (w1, w2))


# ---------------------------------------------------------------- ACE (any representation)


def _ace_class():
    import tradens

    for module_name in (
        "tradens",
        "tradens.representations.ace",
        "tradens.invariants.product_basis",
    ):
        try:
            module = __import__(module_name, fromlist=["ACE"])
        except ImportError:
            continue
        cls = getattr(module, "ACE", None)
        if cls is not None and hasattr(cls, "forward"):
            return cls
    del tradens
    return None


def test_ace_gets_gradients_through_the_generic_path(triclinic):
    cls = _ace_class()
    if cls is None:
        pytest.skip("tradens has no ACE calculator yet")
    ace = cls(
        cutoff=4.0,
        species=list(SPECIES),
        nu_max=3,
        l_max=(0, 2, 1),
        channels=3,
        radial={"n_max": 3},
    )
    check_against_finite_differences(ace, triclinic, atom_ids=[1, 3], method="auto")
    w, _ = linear_model(ace.n_features, seed=5)
    out = energy_forces_stress(ace, lambda x, z: x @ w, triclinic)
    jac = descriptor_gradients(ace, triclinic)
    forces = torch.zeros(len(triclinic), 3, dtype=torch.float64).index_add_(
        0, jac.index[:, 1], -torch.einsum("eaf,f->ea", jac.positions, w)
    )
    np.testing.assert_allclose(out.forces, forces.numpy(), atol=1e-10)


# ---------------------------------------------------------------- benchmark smoke test


def test_benchmark_script_smoke(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gradients.py"
    if not script.exists():
        pytest.skip("benchmarks/bench_gradients.py not present")
    output = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(script), "--smoke", "--output", str(output)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    records = json.loads(output.read_text())["records"]
    assert records and all(r["seconds"] > 0 for r in records if "seconds" in r)
