"""Exported potentials (issue #15): the TorchScript features and the metatomic model files.

* :class:`~tradens.representations.scripted.ScriptedSOAP` equals ``SOAP.forward`` on every
  SOAP variant and cell type of ``tests/test_derivative_paths.py``;
* a file written by :func:`tradens.models.export` and loaded through ``metatomic-ase``
  gives the energy, forces and stress of :class:`~tradens.calculator.TradensCalculator`
  to 1e-10 (float64) for every model type, on periodic, triclinic, slab and molecular cells;
* float32 exports agree to float32 precision; ``selected_atoms`` sums only those atoms;
  ensembles report their spread; what cannot be exported is refused by name.
"""

from __future__ import annotations

import warnings

import ase
import ase.io
import numpy as np
import pytest
import torch
from _models_helpers import alloy, label, planted, small_soap
from test_derivative_paths import CELLS, SOAP_VARIANTS, cell, representation

from tradens import ACE, as_batch
from tradens.calculator import TradensCalculator
from tradens.models import (
    EnsemblePotential,
    FitWarning,
    LearnedPotential,
    LinearPotential,
    SparseKernelPotential,
    export,
)
from tradens.representations.scripted import scripted_representation

metatomic_ase = pytest.importorskip("metatomic_ase")
from metatensor.torch import Labels  # noqa: E402
from metatomic.torch import ModelOutput, load_atomistic_model  # noqa: E402

EXPORTABLE = [v for v in SOAP_VARIANTS if v != "rz-averaged"]


@pytest.mark.parametrize("variant", EXPORTABLE)
def test_scripted_features_equal_soap_forward(variant):
    soap = representation(variant)
    scripted = torch.jit.script(scripted_representation(soap))
    for kind in CELLS:
        batch = as_batch(cell(kind))
        expected, rows = soap.forward(batch)
        pairs = soap.expansion.pairs(batch)
        vectors = soap.expansion.vectors(batch, pairs)
        got = scripted(vectors, pairs.i, pairs.j, batch.numbers)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_averaged_and_ace_representations_are_refused_by_name():
    with pytest.raises(ValueError, match="average=True"):
        scripted_representation(representation("rz-averaged"))
    ace = ACE(cutoff=3.0, species=[28, 29], nu_max=2, l_max=(0, 2), channels=2)
    with pytest.raises(ValueError, match="ACE has no TorchScript form"):
        scripted_representation(ace)


@pytest.fixture(scope="module")
def data():
    soap = small_soap()
    _, _, model_fn = planted(soap)
    return label([alloy(s, repeat=(1, 1, 2), strain=0.03) for s in range(6)], soap, model_fn)


def _learned(**options):
    defaults = dict(max_epochs=2, batch_size=4, validation_fraction=0.3, device="cpu", seed=0)
    soap = small_soap(mixing={"channels": 3, "seed": 5})
    return LearnedPotential(soap, **{**defaults, **options})


MODELS = {
    "linear": lambda: LinearPotential(small_soap(), alphas=[1e-8], cv=2),
    "linear-per-element-full-soap": lambda: LinearPotential(
        small_soap(mixing=None), alphas=[1e-6], cv=2, per_element=True
    ),
    "kernel-gto-zeta1.5": lambda: SparseKernelPotential(
        small_soap(radial={"n_max": 3, "kind": "gto"}), n_sparse=12, zeta=1.5, cv=2, alphas=[1e-6]
    ),
    "kernel-per-element-elementwise": lambda: SparseKernelPotential(
        small_soap(mixing={"channels": 4, "seed": 1}, coupling="elementwise"),
        n_sparse=5,
        per_element=True,
        cv=2,
        alphas=[1e-6],
    ),
    "learned-mlp-pairs": lambda: _learned(
        hidden=(6,),
        element_features=2,
        pair_channels=2,
        pair_basis=5,
        pair_cutoff=3.5,
        scale_features=True,
        train_reference=True,
        ridge_alpha=None,
    ),
    "ensemble": lambda: EnsemblePotential(_learned(), n_members=3, seed=7, vary_embedding=True),
}


@pytest.fixture(scope="module")
def fitted(data):
    return {}


def _model(name, fitted, data):
    if name not in fitted:
        with warnings.catch_warnings():  # the fit's quality is not what these tests check
            warnings.simplefilter("ignore", FitWarning)
            fitted[name] = MODELS[name]().fit(data)
    return fitted[name]


def _test_cells():
    slab = alloy(3, repeat=(2, 1, 1), rattle=0.1)
    slab.pbc = [True, True, False]
    molecule = ase.Atoms(
        numbers=[28, 29, 46, 28, 29],
        positions=np.random.default_rng(4).normal(scale=1.3, size=(5, 3)),
    )
    triclinic = ase.Atoms(
        numbers=[28, 46, 29],
        positions=[[0.0, 0.0, 0.0], [1.3, 1.1, 0.9], [2.0, 0.2, 1.5]],
        cell=[[2.9, 0.0, 0.0], [0.7, 2.8, 0.0], [0.4, 0.6, 3.0]],
        pbc=True,
    )
    return {
        "strained-cubic": alloy(99, repeat=(2, 1, 1), strain=0.05),
        "small-triclinic": triclinic,
        "slab": slab,
        "molecule": molecule,
    }


def _compare(reference: ase.Atoms, exported: ase.Atoms, tolerance: float, periodic: bool):
    energy = exported.get_potential_energy()
    assert abs(energy - reference.get_potential_energy()) <= tolerance * max(1.0, abs(energy))
    np.testing.assert_allclose(exported.get_forces(), reference.get_forces(), atol=tolerance)
    if periodic:
        np.testing.assert_allclose(exported.get_stress(), reference.get_stress(), atol=tolerance)


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_model_in_ase_equals_the_tradens_calculator(name, fitted, data, tmp_path):
    model = _model(name, fitted, data)
    path = tmp_path / "model.pt"
    export(model, path)
    # (an ensemble's spread of these few-epoch members is above the default warning threshold)
    calculator = metatomic_ase.MetatomicCalculator(str(path), uncertainty_threshold=None)
    for atoms in _test_cells().values():
        reference, exported = atoms.copy(), atoms.copy()
        reference.calc, exported.calc = TradensCalculator(model), calculator
        _compare(reference, exported, 1e-10, periodic=bool(atoms.pbc.all()))


def test_float32_export_agrees_to_single_precision(fitted, data, tmp_path):
    model = _model("linear", fitted, data)
    path = tmp_path / "model32.pt"
    export(model, path, dtype="float32")
    atoms = _test_cells()["strained-cubic"]
    reference, exported = atoms.copy(), atoms.copy()
    reference.calc = TradensCalculator(model)
    exported.calc = metatomic_ase.MetatomicCalculator(str(path))
    energy = reference.get_potential_energy()
    assert abs(exported.get_potential_energy() - energy) < 1e-5 * abs(energy)
    forces = reference.get_forces()
    error = np.abs(exported.get_forces() - forces).max()
    assert 1e-12 < error < 1e-4 * np.abs(forces).max()  # float32, not float64


def test_selected_atoms_and_per_atom_energies(fitted, data, tmp_path):
    model = _model("linear", fitted, data)
    path = tmp_path / "model.pt"
    export(model, path)
    calculator = metatomic_ase.MetatomicCalculator(str(path))
    frames = [_test_cells()["strained-cubic"], _test_cells()["molecule"]]
    expected = model.predict_atom_energies(frames)  # [atom] of both
    per_atom = calculator.run_model(frames, {"energy": ModelOutput(unit="eV", sample_kind="atom")})
    block = per_atom["energy"].block()
    np.testing.assert_allclose(block.values[:, 0].detach().numpy(), expected, atol=1e-10)
    chosen = torch.tensor([[0, 1], [0, 5], [1, 2]], dtype=torch.int32)
    summed = calculator.run_model(
        frames,
        {"energy": ModelOutput(unit="eV", sample_kind="system")},
        selected_atoms=Labels(["system", "atom"], chosen),
    )["energy"].block()
    n0 = len(frames[0])
    want = [expected[1] + expected[5], expected[n0 + 2]]
    np.testing.assert_allclose(summed.values[:, 0].detach().numpy(), want, atol=1e-10)


def test_ensemble_exports_its_members_and_their_spread(fitted, data, tmp_path):
    model = _model("ensemble", fitted, data)
    path = tmp_path / "ensemble.pt"
    export(model, path)
    calculator = metatomic_ase.MetatomicCalculator(str(path), uncertainty_threshold=None)
    atoms = _test_cells()["strained-cubic"]
    outputs = {
        "energy_ensemble": ModelOutput(unit="eV", sample_kind="system"),
        "energy_uncertainty": ModelOutput(unit="eV", sample_kind="system"),
    }
    result = calculator.run_model(atoms, outputs)
    members = result["energy_ensemble"].block().values[0].detach().numpy()  # [member]
    expected = [m.predict([atoms], forces=False)["energy"][0] for m in model.members_]
    np.testing.assert_allclose(members, expected, atol=1e-10)
    spread = float(result["energy_uncertainty"].block().values[0, 0])
    assert spread == pytest.approx(np.std(expected), abs=1e-10)
    assert spread > 1e-6  # the members differ


def test_exported_file_carries_the_tradens_version(fitted, data, tmp_path):
    from tradens._version import __version__
    from tradens.models.metatomic import check_exported

    model = _model("linear", fitted, data)
    path = tmp_path / "model.pt"
    export(model, path)
    assert check_exported(path) == __version__
    loaded = load_atomistic_model(str(path))
    assert loaded.metadata().extra["tradens_version"] == __version__
    assert loaded.capabilities().atomic_types == [28, 29, 46]
    assert loaded.capabilities().interaction_range == pytest.approx(4.0)


def test_a_model_from_another_format_version_is_refused_with_a_clear_message(
    fitted, data, tmp_path, monkeypatch
):
    import tradens.models.metatomic as exporter

    model = _model("linear", fitted, data)
    path = tmp_path / "old.pt"
    monkeypatch.setattr(exporter, "FORMAT_VERSION", 0)
    monkeypatch.setattr(exporter, "__version__", "0.0.1")
    export(model, path)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"exported by tradens 0\.0\.1 \(format 0\)"):
        exporter.check_exported(path)


def test_export_refuses_what_it_cannot_write(data, tmp_path):
    with pytest.raises(ValueError, match="not fitted"):
        export(LinearPotential(small_soap()), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="format"):
        export(LinearPotential(small_soap()), tmp_path / "m.pt", format="lammps-table")
    with pytest.raises(ValueError, match="dtype"):
        export(LinearPotential(small_soap()), tmp_path / "m.pt", dtype="float16")
    assert not (tmp_path / "m.pt").exists()


def test_an_element_the_model_does_not_know_is_refused(fitted, data, tmp_path):
    model = _model("linear", fitted, data)
    path = tmp_path / "model.pt"
    export(model, path)
    atoms = _test_cells()["molecule"]
    atoms.numbers[0] = 79  # Au
    atoms.calc = metatomic_ase.MetatomicCalculator(str(path))
    with pytest.raises(Exception, match="atomic type|not in this model|79"):
        atoms.get_potential_energy()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_exported_model_on_cuda_equals_cpu(fitted, data, tmp_path):
    model = _model("kernel-per-element-elementwise", fitted, data)
    path = tmp_path / "model.pt"
    export(model, path)
    atoms = _test_cells()["strained-cubic"]
    cpu, gpu = atoms.copy(), atoms.copy()
    cpu.calc = metatomic_ase.MetatomicCalculator(str(path), device="cpu")
    gpu.calc = metatomic_ase.MetatomicCalculator(str(path), device="cuda")
    _compare(cpu, gpu, 1e-10, periodic=True)


def test_cli_export_round_trip(tmp_path, capsys):
    from tradens.cli import main
    from tradens.models import load

    model_path, exported = tmp_path / "model.zip", tmp_path / "model.pt"
    fast = ["-K", "3", "--l-max", "2", "--n-max", "3", "--cutoff", "4.0", "--cv", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        assert (
            main(["fit", "--example", "meam17", "-o", str(model_path), *fast, "--index", ":8"]) == 0
        )
    assert main(["export", str(model_path), "-o", str(exported)]) == 0
    assert "wrote" in capsys.readouterr().out
    model = load(model_path)
    from tradens.io import example_path

    atoms = ase.io.read(example_path("meam17"), index=9)
    reference, got = atoms.copy(), atoms.copy()
    reference.calc = TradensCalculator(model)
    got.calc = metatomic_ase.MetatomicCalculator(str(exported))
    _compare(reference, got, 1e-10, periodic=True)
    assert main(["export", str(tmp_path / "missing.zip"), "-o", str(exported)]) != 0
    assert "does not exist" in capsys.readouterr().err
