"""Posterior (Bayesian ridge / projected-process) uncertainty of the linear and kernel models."""

from __future__ import annotations

import numpy as np
import pytest
from _models_helpers import SPECIES, alloy, label, planted, small_soap
from ase.calculators.singlepoint import SinglePointCalculator

from tradens.models import LinearPotential, SparseKernelPotential, load, save
from tradens.models.uncertainty import calibration, spearman


def _features(soap, frames):
    """Per-atom features ``[atom, F]``, their structure ``[atom]`` and elements ``[atom]``."""
    features = soap.compute(frames, output="numpy")
    return (
        np.asarray(features.values),
        np.asarray(features.structure),
        np.asarray(features.numbers),
    )


def _energies_only(frames):
    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy())
        out.append(copy)
    return out


@pytest.fixture(scope="module")
def planted_small():
    """Energies exactly linear in the features (plus reference energies), D > structures."""
    soap = small_soap()
    _, _, model_fn = planted(soap, seed=3)
    train = _energies_only(label([alloy(s, repeat=(1, 1, 1)) for s in range(10)], soap, model_fn))
    away = _energies_only(label([alloy(s, repeat=(1, 1, 1)) for s in (50, 51)], soap, model_fn))
    return soap, train, away


def test_noiseless_posterior_vanishes_on_training_points(planted_small):
    soap, train, away = planted_small
    assert soap.n_features > len(train)  # the training rows do not span the feature space
    model = LinearPotential(soap, alphas=(1e-7,), cv=None, solver="primal").fit(train)
    scale = np.std([a.get_potential_energy() for a in train])  # eV, label scale
    on = model.predict(train, forces=False, stress=False, return_std=True)["energy_std"]
    off = model.predict_std(away)["energy_std"]
    # sigma^2 ~ alpha and the prior variance ~ sigma^2 / alpha: vanishing on the data (the
    # noise, O(alpha)), finite off it (the prior, O(1))
    assert np.max(on) < 1e-3 * scale
    assert np.min(off) > 1e-2 * scale
    assert np.min(off) > 100 * np.max(on)
    # the same with a ten times smaller alpha: on-data variance shrinks with the noise
    smaller = LinearPotential(soap, alphas=(1e-8,), cv=None, solver="primal").fit(train)
    on_small = smaller.predict_std(train)["energy_std"]
    assert np.max(on_small**2) < 0.3 * np.max(on**2)


def _brute_force_linear(model, soap, train, test):
    """``sigma^2 v^T P^-1 v`` with ``P`` built and inverted explicitly (joint baseline)."""
    x, structure, numbers = _features(soap, train)
    n_atoms = np.bincount(structure).astype(float)
    species = list(model.species_)
    onehot = (numbers[:, None] == np.array(species)[None, :]).astype(float)
    summed = np.zeros((len(train), x.shape[1]))
    np.add.at(summed, structure, x)
    counts = np.zeros((len(train), len(species)))
    np.add.at(counts, structure, onehot)
    design = np.hstack([summed, counts]) / n_atoms[:, None]  # per-atom rows [s, D + element]
    y = np.array([a.get_potential_energy() for a in train]) / n_atoms  # eV/atom
    w2n = model.property_weights_["energy"] ** 2 / len(train)
    d = x.shape[1]
    tau = w2n * np.trace(design[:, :d].T @ design[:, :d]) / d
    precision = w2n * design.T @ design
    precision[:d, :d] += model.alpha_ * tau * np.eye(d)
    inverse = np.linalg.inv(precision)
    parameters = inverse @ (w2n * design.T @ y)
    residual = design @ parameters - y
    hat = np.trace(w2n * design @ inverse @ design.T)  # effective parameters, baseline included
    sigma2 = w2n * (residual**2).sum() / (len(train) - hat)
    xt, st, nt = _features(soap, test)
    vt = np.zeros((len(test), d + len(species)))
    np.add.at(vt[:, :d], st, xt)
    np.add.at(vt[:, d:], st, (nt[:, None] == np.array(species)[None, :]).astype(float))
    return np.sqrt(sigma2 * np.einsum("si,ij,sj->s", vt, inverse, vt)), parameters[:d]


def test_linear_std_equals_explicit_inverse():
    soap = small_soap()
    _, _, model_fn = planted(soap, seed=1)
    frames = [alloy(s, repeat=(1, 1, 1)) for s in range(40)]
    labelled = _energies_only(label(frames, soap, model_fn))
    rng = np.random.default_rng(0)
    for atoms in labelled:  # noise, so that sigma^2 is well away from round-off
        energy = atoms.get_potential_energy() + rng.normal(scale=0.05) * len(atoms)
        atoms.calc = SinglePointCalculator(atoms, energy=energy)
    train, test = labelled[:30], labelled[30:]
    model = LinearPotential(soap, alphas=(1e-3,), cv=None, solver="primal").fit(train)
    expected, theta = _brute_force_linear(model, soap, train, test)
    np.testing.assert_allclose(model.weights_, theta, rtol=1e-6, atol=1e-8)
    got = model.predict_std(test)["energy_std"]
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    assert model.posterior_["dof"] > 0


def test_kernel_std_equals_explicit_inverse():
    soap = small_soap(mixing=None, l_max=2, radial={"n_max": 3})
    _, _, model_fn = planted(soap, seed=2)
    frames = _energies_only(label([alloy(s, repeat=(1, 1, 1)) for s in range(30)], soap, model_fn))
    train, test = frames[:24], frames[24:]
    model = SparseKernelPotential(soap, n_sparse=12, alphas=(1e-4,), cv=None, zeta=2).fit(train)
    points = model.sparse_points_  # [M, F]
    x, structure, numbers = _features(soap, train)
    n_atoms = np.bincount(structure).astype(float)
    phi = np.zeros((len(train), len(points)))
    np.add.at(phi, structure, (x @ points.T) ** 2)
    rows = phi / n_atoms[:, None]  # [s, M]
    species = list(model.species_)
    fractions = np.zeros((len(train), len(species)))
    np.add.at(fractions, structure, (numbers[:, None] == np.array(species)[None, :]) * 1.0)
    fractions /= n_atoms[:, None]
    y = np.array([a.get_potential_energy() for a in train]) / n_atoms
    e0 = np.linalg.lstsq(fractions, y, rcond=None)[0]  # baseline="first"
    target = y - fractions @ e0
    w2n = model.property_weights_["energy"] ** 2 / len(train)
    kmm = (points @ points.T) ** 2
    gamma = kmm + 1e-10 * np.mean(np.diag(kmm)) * np.eye(len(points))  # the solver's jitter
    a = w2n * rows.T @ rows
    chol = np.linalg.cholesky(gamma)
    whitened = np.linalg.solve(chol, np.linalg.solve(chol, a).T).T
    tau = np.trace(whitened) / len(points)
    inverse = np.linalg.inv(a + model.alpha_ * tau * gamma)
    c = inverse @ (w2n * rows.T @ target)
    np.testing.assert_allclose(model.weights_, c, rtol=1e-5, atol=1e-8)
    residual = rows @ c - target
    effective = np.trace(a @ inverse)
    sigma2 = w2n * (residual**2).sum() / (len(train) - effective - len(species))
    xt, st, _ = _features(soap, test)
    phit = np.zeros((len(test), len(points)))
    np.add.at(phit, st, (xt @ points.T) ** 2)
    expected = np.sqrt(sigma2 * np.einsum("si,ij,sj->s", phit, inverse, phit))
    np.testing.assert_allclose(model.predict_std(test)["energy_std"], expected, rtol=1e-6)


def test_posterior_survives_save_and_load(tmp_path):
    soap = small_soap()
    _, _, model_fn = planted(soap, seed=1)
    frames = [alloy(s, repeat=(1, 1, 1), rattle=0.2) for s in range(14)]
    labelled = _energies_only(label(frames, soap, model_fn))
    model = LinearPotential(soap, alphas=(1e-2,), cv=None, solver="primal").fit(labelled)
    kernel = SparseKernelPotential(soap, n_sparse=6, alphas=(1e-2,), cv=None).fit(labelled)
    for fitted in (model, kernel):
        path = tmp_path / f"{type(fitted).__name__}.zip"
        save(fitted, path)
        loaded = load(path)
        before = fitted.predict_std(labelled, per_atom=True)
        after = loaded.predict_std(labelled, per_atom=True)
        np.testing.assert_allclose(after["energy_std"], before["energy_std"], rtol=1e-12)
        np.testing.assert_allclose(after["atom_energy_std"], before["atom_energy_std"], rtol=1e-12)
        assert np.all(before["energy_std"] > 0)
        assert loaded.posterior_["noise_variance"] == fitted.posterior_["noise_variance"]


def test_without_posterior_a_clear_error():
    soap = small_soap()
    _, _, model_fn = planted(soap, seed=1)
    frames = _energies_only(label([alloy(s, repeat=(1, 1, 1)) for s in range(6)], soap, model_fn))
    dual = LinearPotential(soap, alphas=(1e-2,), cv=None, solver="dual").fit(frames)
    assert not dual.has_std()
    with pytest.raises(ValueError, match="solver='primal'"):
        dual.predict(frames, return_std=True)
    off = LinearPotential(soap, alphas=(1e-2,), cv=None, solver="primal", uncertainty=False)
    assert off.fit(frames).posterior_ is None


def test_per_atom_std_sums_consistently():
    """Per-atom and structure variances are the same quadratic form: one atom = one structure."""
    soap = small_soap()
    _, _, model_fn = planted(soap, seed=1)
    frames = _energies_only(label([alloy(s, repeat=(1, 1, 1)) for s in range(12)], soap, model_fn))
    model = LinearPotential(soap, alphas=(1e-2,), cv=None, solver="primal").fit(frames)
    import ase

    single = ase.Atoms("Cu", cell=[10, 10, 10], pbc=True)
    out = model.predict_std([single], per_atom=True)
    np.testing.assert_allclose(out["atom_energy_std"], out["energy_std"], rtol=1e-12)
    assert set(np.unique(single.numbers)) <= set(SPECIES)


def test_calibration_values():
    errors = np.array([0.5, -1.5, 3.0, 0.1])
    std = np.array([1.0, 1.0, 1.0, 1.0])
    out = calibration(errors, std)
    assert out["within_1_sigma"] == pytest.approx(0.5)  # 0.5, 0.1
    assert out["within_2_sigma"] == pytest.approx(0.75)  # and 1.5
    assert out["n"] == 4
    # per atom: errors and std divided by the atom counts before ranking
    # per-atom errors [0.5, 0.75, 1.0, 0.2] (ranks 2 3 4 1), std [1, 3, 2, 0.5] (ranks 2 4 3 1)
    n_atoms = np.array([1, 2, 3, 4])
    scaled = calibration(errors * [1, 1, 1, 8], n_atoms * [1, 3, 2, 0.5], n_atoms=n_atoms)
    assert scaled["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))
    # ranks with ties, as scipy.stats.spearmanr
    a, b = np.array([1.0, 2.0, 2.0, 5.0, 3.0]), np.array([2.0, 1.0, 4.0, 4.0, 9.0])
    from scipy.stats import spearmanr

    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, rel=1e-12)


def test_eval_cli_calibrates_an_ensemble(tmp_path, capsys):
    import json

    import ase.io

    from tradens.cli import main
    from tradens.models import EnsemblePotential

    soap = small_soap()
    _, _, model_fn = planted(soap, seed=1)
    frames = _energies_only(label([alloy(s, repeat=(1, 1, 1)) for s in range(16)], soap, model_fn))
    rng = np.random.default_rng(1)
    for atoms in frames:
        atoms.calc.results["energy"] += rng.normal(scale=0.2)
    member = LinearPotential(soap, alphas=(1e-2,), cv=None)
    ensemble = EnsemblePotential(member, n_members=3, vary_embedding=True).fit(frames[:10])
    path, data, summary = tmp_path / "e.zip", tmp_path / "test.xyz", tmp_path / "s.json"
    save(ensemble, path)
    ase.io.write(data, frames[10:])
    assert main(["eval", str(path), str(data), "--json", str(summary)]) == 0
    assert "Spearman" in capsys.readouterr().out
    predicted = ensemble.predict(frames[10:], forces=False, stress=False, return_std=True)
    assert np.all(predicted["energy_std"] > 0)  # the members differ in their embedding
    errors = predicted["energy"] - [a.get_potential_energy() for a in frames[10:]]
    expected = calibration(errors, predicted["energy_std"], n_atoms=[4] * 6)
    assert json.loads(summary.read_text())["calibration"]["energy"] == pytest.approx(expected)


def test_calibration_example_runs(tmp_path):
    """``examples/uncertainty_calibration.py`` on the bundled sample (tiny sizes)."""
    import importlib.util
    import json
    from pathlib import Path

    from tradens.cli.common import bundled_path

    path = Path(__file__).resolve().parents[1] / "examples" / "uncertainty_calibration.py"
    spec = importlib.util.spec_from_file_location("uncertainty_calibration", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "calibration.json"
    argv = ["meam17", "--data", bundled_path("meam17"), "--n-train", "20", "--n-test", "10"]
    argv += ["--splits", "random", "--models", "ridge", "--channels", "2", "--json", str(out)]
    assert example.main(argv) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["n_train"] == 20 and result["n_test"] == 10
    # adding the label noise can only widen the intervals
    for k in ("within_1_sigma", "within_2_sigma"):
        assert result["with_noise"][k] >= result["posterior"][k]
    assert -1.0 <= result["posterior"]["spearman"] <= 1.0


def test_absorbed_statistics_keep_the_row_count():
    """Partitioned statistics (cluster fits) count the rows the noise estimate divides by."""
    import torch

    from tradens.models._solve import FoldStatistics

    rng = np.random.default_rng(0)
    parts = [FoldStatistics(1, 3, 1) for _ in range(2)]
    for n, part in zip((4, 5), parts, strict=True):
        weights = torch.ones(n)
        weights[0] = 0.0  # a zero-weight row does not count
        part.add("forces", 0, torch.as_tensor(rng.normal(size=(n, 3))), torch.zeros(n), weights)
    parts[0].absorb(parts[1])
    assert parts[0].merged([0])["rows"]["forces"] == 3 + 4
