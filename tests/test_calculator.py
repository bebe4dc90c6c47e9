"""The ASE calculator: consistency with finite differences, periodic and not, and short NVE MD."""

from __future__ import annotations

from importlib import resources

import ase
import ase.io
import numpy as np
import pytest
from _models_helpers import small_soap
from ase import units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.md.verlet import VelocityVerlet

from tradens import SOAP
from tradens.calculator import TradensCalculator
from tradens.models import LinearPotential, save

# a smoke fit on a few structures (worse than the trivial predictor is expected here)
pytestmark = pytest.mark.filterwarnings("ignore::tradens.models.FitWarning")


@pytest.fixture(scope="module")
def meam_frames():
    path = resources.files("tradens") / "data" / "meam17_sample.xyz"
    return ase.io.read(str(path), ":")


@pytest.fixture(scope="module")
def fitted(meam_frames, tmp_path_factory):
    species = sorted({int(z) for atoms in meam_frames for z in atoms.numbers})
    soap = SOAP(
        cutoff=4.5, l_max=3, radial={"n_max": 4}, species=species, mixing={"channels": 6, "seed": 2}
    )
    model = LinearPotential(soap, alphas=(1e-3, 1e-2), cv=2, forces_weight=0.3).fit(meam_frames)
    path = tmp_path_factory.mktemp("model") / "meam.zip"
    save(model, path)
    return model, path


def test_forces_and_stress_match_finite_differences(fitted, meam_frames):
    model, path = fitted
    atoms = meam_frames[3].copy()
    atoms.calc = TradensCalculator(path)
    forces = atoms.get_forces()
    some = [0, 7, 19]
    numeric = calculate_numerical_forces(atoms, eps=1e-4, iatoms=some)
    assert np.abs(forces).max() > 0.1
    np.testing.assert_allclose(forces[some], numeric, atol=2e-6)
    stress = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(stress, numeric, atol=1e-7)
    assert atoms.get_potential_energy() == pytest.approx(
        model.predict([atoms])["energy"][0], abs=1e-10
    )
    assert atoms.calc.results["free_energy"] == atoms.calc.results["energy"]
    assert atoms.get_potential_energies().sum() == pytest.approx(
        atoms.get_potential_energy(), abs=1e-9
    )


def test_non_periodic_cluster(fitted, meam_frames):
    model, _ = fitted
    source = meam_frames[0]
    cluster = ase.Atoms(numbers=source.numbers[:8], positions=source.positions[:8])
    cluster.calc = TradensCalculator(model)
    numeric = calculate_numerical_forces(cluster, eps=1e-4)
    np.testing.assert_allclose(cluster.get_forces(), numeric, atol=2e-6)
    assert np.abs(cluster.get_forces().sum(axis=0)).max() < 1e-10  # translation invariance
    with pytest.raises(PropertyNotImplementedError):
        cluster.get_stress()


def test_short_nve_run_conserves_energy(fitted, meam_frames):
    model, _ = fitted
    atoms = meam_frames[0].copy()
    atoms.calc = TradensCalculator(model)
    masses = atoms.get_masses()[:, None]
    momenta = np.random.default_rng(0).normal(size=(len(atoms), 3)) * np.sqrt(
        masses * units.kB * 300.0
    )
    atoms.set_momenta(momenta - momenta.mean(axis=0))
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    totals = []
    dynamics.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    dynamics.run(50)
    totals = np.array(totals) / len(atoms)
    assert np.ptp(totals) < 2e-4  # eV/atom over 50 fs
    assert abs(totals[-1] - totals[0]) < 1e-4


def test_calculator_rejects_unfitted_models():
    with pytest.raises(ValueError, match="fitted tradens potential"):
        TradensCalculator(LinearPotential(small_soap()))


def test_calculator_energy_std(fitted, meam_frames):
    model, path = fitted
    atoms = meam_frames[0].copy()
    atoms.calc = TradensCalculator(path, uncertainty=True)
    energy = atoms.get_potential_energy()
    std = atoms.calc.get_property("energy_std", atoms)
    assert std == pytest.approx(model.predict_std([atoms])["energy_std"][0], rel=1e-10)
    assert std > 0 and energy == pytest.approx(model.predict([atoms])["energy"][0])
    plain = TradensCalculator(model)
    with pytest.raises(PropertyNotImplementedError):
        plain.get_property("energy_std", atoms)
