"""Fits that find their labels, report their errors beside the trivial predictor, and warn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _models_helpers import alloy, label, planted, small_soap
from ase.calculators.singlepoint import SinglePointCalculator

import tradens.models.linear as linear_module
from tradens.gradients import energy_forces_stress
from tradens.models import (
    FitReport,
    FitWarning,
    LinearPotential,
    RandomProjection,
    SparseKernelPotential,
    load,
    save,
)
from tradens.models.linear import DEFAULT_ALPHAS


@pytest.fixture(scope="module")
def soap():
    return small_soap()


@pytest.fixture(scope="module")
def consistent(soap):
    """Labels of a planted linear model (energies, forces and stress agree)."""
    frames = [alloy(seed, strain=0.03) for seed in range(6)]
    return label(frames, soap, planted(soap)[2])


def _relabel(frames, mapping):
    """Copies whose labels live under other keys (``{"energy": "REF_energy", ...}``)."""
    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = None
        for prop, key in mapping.items():
            value = {
                "energy": atoms.get_potential_energy(),
                "forces": atoms.get_forces(),
                "stress": atoms.get_stress(),
            }[prop]
            (copy.arrays if prop == "forces" else copy.info)[key] = value
        out.append(copy)
    return out


# ---------------------------------------------------------------------------------- label keys
def test_misspelled_energy_key_fails_and_suggests_the_closest(soap, consistent):
    with pytest.raises(ValueError, match=r"energy label under the key 'enrgy'") as info:
        LinearPotential(soap, cv=None, energy_key="enrgy").fit(consistent)
    assert "did you mean 'energy'?" in str(info.value)
    assert "keys present: energy, forces, free_energy" in str(info.value) or "stress" in str(
        info.value
    )


def test_misspelled_forces_key_names_the_keys_present(soap, consistent):
    frames = _relabel(consistent, {"energy": "REF_energy", "forces": "REF_forces"})
    with pytest.raises(ValueError) as info:
        LinearPotential(
            soap, cv=None, energy_key="REF_energy", forces_key="REF_forcez", stress_weight=0
        ).fit(frames)
    message = str(info.value)
    assert "forces label under the key 'REF_forcez'" in message
    assert "REF_energy" in message and "did you mean 'REF_forces'?" in message
    # the right keys fit
    model = LinearPotential(
        soap, cv=None, energy_key="REF_energy", forces_key="REF_forces", stress_weight=0
    ).fit(frames)
    assert [p.name for p in model.fit_report_.properties] == ["energy", "forces"]


def test_partial_labels_need_a_stated_share(soap, consistent):
    frames = [a.copy() for a in consistent]
    for atoms, source in zip(frames, consistent, strict=True):
        atoms.calc = SinglePointCalculator(
            atoms, energy=source.get_potential_energy(), forces=source.get_forces()
        )
    frames[1].calc.results["stress"] = consistent[1].get_stress()
    frames[4].calc.results["stress"] = consistent[4].get_stress()
    with pytest.raises(ValueError, match=r"stress label 'stress' found in 2 of 6 structures"):
        LinearPotential(soap, cv=None).fit(frames)
    model = LinearPotential(soap, cv=None, label_share=0.3).fit(frames)
    assert model.fit_report_["stress"].n_labels == 2
    # default keys that match nothing are left out and said so
    no_stress = [a.copy() for a in frames]
    for atoms, source in zip(no_stress, frames, strict=True):
        atoms.calc = SinglePointCalculator(
            atoms, energy=source.get_potential_energy(), forces=source.get_forces()
        )
    model = LinearPotential(soap, cv=None).fit(no_stress)
    assert model.fit_report_.skipped == {"stress": "no labels under 'stress'"}


def test_non_numeric_label_names_structure_and_key(soap, consistent):
    frames = _relabel(consistent, {"energy": "dft_energy"})
    frames[3].info["dft_energy"] = "n/a"
    with pytest.raises(ValueError, match=r"structure 3: the energy label 'dft_energy' is not num"):
        LinearPotential(soap, cv=None, energy_key="dft_energy").fit(frames)


def test_score_fails_when_no_label_matches(soap, consistent):
    model = LinearPotential(soap, cv=None).fit(consistent)
    bare = [a.copy() for a in consistent]
    for atoms in bare:
        atoms.calc = None
    with pytest.raises(ValueError, match="no labels to score against"):
        model.score(bare)
    with pytest.raises(ValueError, match="did you mean 'forces'"):
        model.score(consistent, forces_key="forcez")


# ------------------------------------------------------------------ reports, weights, warnings
@pytest.fixture(scope="module")
def inconsistent(soap):
    """Small cells whose energies come from one linear model and forces/stress from another.

    The failure mode of the Au-X fit of issue 14: with weights in physical units (1 per eV/atom,
    0.1 per eV/A, 1 per eV/A^3) the energy error dominates and the fit pays for it with forces
    and stress far worse than predicting zero.
    """
    frames = [alloy(s, repeat=(1, 1, 2), rattle=0.1, strain=0.05) for s in range(30)]
    energy = energy_forces_stress(soap, planted(soap, seed=1)[2], frames)
    model_b = planted(soap, seed=2)[2]
    derivatives = energy_forces_stress(soap, lambda v, z: 0.1 * model_b(v, z), frames)
    out, offset = [], 0
    for s, atoms in enumerate(frames):
        atoms = atoms.copy()
        n = len(atoms)
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=float(energy.energy[s]),
            forces=derivatives.forces[offset : offset + n].copy(),
            stress=derivatives.stress[s][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
        )
        out.append(atoms)
        offset += n
    return out


def test_physical_unit_weights_are_worse_than_zero_and_warn(soap, inconsistent):
    with pytest.warns(FitWarning, match=r"worse than the trivial predictor .* on forces, stress"):
        model = LinearPotential(
            soap, cv=5, energy_weight=1.0, forces_weight=0.1, stress_weight=1.0
        ).fit(inconsistent)
    report = model.fit_report_
    assert report.worse_than_trivial() == ["forces", "stress"]
    assert report["forces"].ratio > 2 and report["stress"].ratio > 4
    # the trivial predictor: zero forces
    forces = np.concatenate([a.get_forces() for a in inconsistent])
    assert report["forces"].trivial_validation_rmse == pytest.approx(
        np.sqrt(np.mean(forces**2)), rel=1e-10
    )
    assert "WORSE than trivial" in str(report)


def test_default_weights_beat_the_trivial_predictor_on_every_property(soap, inconsistent):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        model = LinearPotential(soap, cv=5).fit(inconsistent)
    report = model.fit_report_
    assert [p.name for p in report.properties] == ["energy", "forces", "stress"]
    for row in report.properties:
        assert row.validation_rmse < row.trivial_validation_rmse, row
        assert row.train_rmse < row.trivial_train_rmse, row
    # the documented formula: w_p = 1 / (training RMSE of the trivial predictor)
    for row in report.properties:
        assert row.weight == pytest.approx(1.0 / row.trivial_train_rmse, rel=1e-10)
    assert model.property_weights_["forces"] == report["forces"].weight
    # the energy trivial predictor is the per-element baseline: its CV error is above its
    # training error (refitted per fold)
    assert report["energy"].trivial_validation_rmse > report["energy"].trivial_train_rmse


def test_report_round_trips_through_save_and_load(soap, consistent, tmp_path):
    model = LinearPotential(soap, cv=3, alphas=(1e-8, 1e-6)).fit(consistent)
    save(model, tmp_path / "m.zip")
    again = load(tmp_path / "m.zip").fit_report_
    assert isinstance(again, FitReport)
    assert str(again) == str(model.fit_report_)
    assert again["forces"].validation_rmse == model.fit_report_["forces"].validation_rmse


def test_alpha_at_the_edge_of_the_grid_warns(soap, consistent):
    # exact planted labels: the smallest alpha wins
    with pytest.warns(FitWarning, match=r"alpha=1e-06 is at the lower edge .* extend alphas"):
        model = LinearPotential(soap, cv=3, alphas=(1e-6, 1e-4, 1e-2)).fit(consistent)
    assert model.fit_report_.alpha_at_edge == "lower"
    inside = FitReport(model="LinearPotential", validation="none", properties=(), alpha=1e-6)
    assert FitReport(**{**inside.__dict__, "alphas": (1e-8, 1e-6, 1e-4)}).alpha_at_edge is None
    assert FitReport(**{**inside.__dict__, "alphas": (1e-6, 1e-4)}).alpha_at_edge is None
    assert FitReport(**{**inside.__dict__, "alphas": (1e-8, 1e-7, 1e-6)}).alpha_at_edge == "upper"


def test_kernel_model_reports_too(consistent):
    soap = small_soap(normalize=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        model = SparseKernelPotential(soap, n_sparse=20, cv=3, alphas=(1e-6, 1e-3)).fit(consistent)
    assert [p.name for p in model.fit_report_.properties] == ["energy", "forces", "stress"]
    assert model.fit_report_.model == "SparseKernelPotential"
    assert np.isfinite(model.fit_report_["forces"].validation_rmse)


# ------------------------------------------------------------------- precomputed descriptors
def test_fit_features_reuses_descriptors_across_grids(soap, consistent, monkeypatch):
    calls = []
    original = linear_module.design_batches

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(linear_module, "design_batches", counting)
    model = LinearPotential(soap, cv=3, alphas=(1e-8, 1e-6, 1e-4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        cache = model.precompute(consistent)
        assert len(calls) == 1
        first = model.fit_features(cache).weights_.copy()
        second = model.set_params(alphas=(1e-3, 1e-2, 1e-1)).fit_features(cache)
        assert len(calls) == 1  # no new descriptors
        assert second.alpha_ in (1e-3, 1e-2, 1e-1)
        assert not np.allclose(first, second.weights_)
        direct = LinearPotential(soap, cv=3, alphas=(1e-3, 1e-2, 1e-1)).fit(consistent)
    np.testing.assert_allclose(second.weights_, direct.weights_, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="cv=5 differs from the value the DesignCache"):
        model.set_params(cv=5).fit_features(cache)
    with pytest.raises(TypeError, match="takes the DesignCache"):
        model.fit_features(np.zeros((3, 3)))


def test_default_alpha_grid_has_four_values_per_decade():
    assert len(DEFAULT_ALPHAS) == 41
    assert DEFAULT_ALPHAS[0] == pytest.approx(1e-9) and DEFAULT_ALPHAS[-1] == pytest.approx(10.0)
    np.testing.assert_allclose(np.diff(np.log10(DEFAULT_ALPHAS)), 0.25)


@pytest.mark.filterwarnings("ignore::tradens.models.FitWarning")
def test_auto_solver_picks_dual_when_features_exceed_structures(soap, consistent):
    assert soap.n_features > len(consistent)
    energy_only = LinearPotential(soap, cv=3, forces_weight=0, stress_weight=0).fit(consistent)
    assert energy_only.solver_ == "dual" and energy_only.fit_report_.solver == "dual"
    primal = LinearPotential(soap, cv=3, forces_weight=0, stress_weight=0, solver="primal")
    np.testing.assert_allclose(
        primal.fit(consistent).weights_, energy_only.weights_, rtol=1e-5, atol=1e-8
    )
    with_forces = LinearPotential(soap, cv=3).fit(consistent)
    assert with_forces.solver_ == "primal"
    narrow = LinearPotential(
        soap, cv=3, forces_weight=0, stress_weight=0, projection=RandomProjection(4, seed=0)
    ).fit(consistent)
    assert narrow.n_features_in_ < len(consistent) and narrow.solver_ == "primal"
