"""``tradens fit`` / ``tradens eval`` round trip on the bundled sample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tradens.cli import main
from tradens.cli.common import bundled_path
from tradens.models import load

FAST = ["-K", "3", "--l-max", "2", "--n-max", "3", "--cutoff", "4.0", "--cv", "2", "--index", ":12"]


def test_fit_then_eval(tmp_path, capsys):
    model_path = tmp_path / "model.zip"
    assert main(["fit", "--example", "meam17", "-o", str(model_path), *FAST]) == 0
    out = capsys.readouterr().out
    model = load(model_path)
    # the error table: every fitted property, train and CV beside the trivial predictor
    for prop in ("energy", "forces", "stress"):
        row = model.fit_report_[prop]
        assert f"{1000 * row.trivial_validation_rmse:10.4g}" in out
        assert f"{1000 * row.validation_rmse:10.4g}" in out
    assert "2-fold CV" in out and "trivial" in out
    assert model.get_params()["cv"] == 2
    errors = tmp_path / "errors.json"
    predicted = tmp_path / "predicted.xyz"
    argv = ["eval", str(model_path), "--example", "meam17", "--index", ":3"]
    assert main([*argv, "--json", str(errors), "--output", str(predicted)]) == 0
    scores = json.loads(errors.read_text())
    import ase.io

    frames = ase.io.read(predicted, ":")
    assert len(frames) == 3
    reference = model.predict(frames)
    assert frames[0].get_potential_energy() == pytest.approx(reference["energy"][0], abs=1e-8)
    assert np.isfinite(scores["energy"]) and scores["forces"] > 0
    # the posterior uncertainty: written per structure and calibrated against the labels
    from tradens.models.uncertainty import calibration

    labelled = ase.io.read(bundled_path("meam17"), ":3")
    std = model.predict_std(labelled)["energy_std"]
    np.testing.assert_allclose([f.info["energy_std"] for f in frames], std, rtol=1e-10)
    errors_ev = model.predict(labelled, forces=False, stress=False)["energy"] - [
        a.get_potential_energy() for a in labelled
    ]
    expected = calibration(errors_ev, std, n_atoms=[len(a) for a in labelled])
    assert scores["calibration"]["energy"] == pytest.approx(expected)
    assert "within 1 sigma" in capsys.readouterr().out


def test_eval_missing_model(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.zip"), "--example", "meam17"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_fit_with_a_misspelled_key_fails_on_one_line(tmp_path, capsys):
    model_path = tmp_path / "model.zip"
    argv = ["fit", "--example", "meam17", "-o", str(model_path), *FAST]
    assert main([*argv, "--forces-key", "REF_forcez"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "forces label under the key 'REF_forcez'" in err and "keys present:" in err
    assert "did you mean 'forces'?" in err
    assert not model_path.exists()


def test_eval_fails_when_no_label_matches(tmp_path, capsys):
    model_path = tmp_path / "model.zip"
    assert main(["fit", "--example", "meam17", "-o", str(model_path), *FAST]) == 0
    capsys.readouterr()
    argv = ["eval", str(model_path), "--example", "meam17", "--index", ":3"]
    assert main([*argv, "--energy-key", "REF_energy"]) == 1
    assert "energy label under the key 'REF_energy'" in capsys.readouterr().err
    import ase.io

    bare = [a.copy() for a in ase.io.read(bundled_path("meam17"), ":2")]
    ase.io.write(tmp_path / "bare.xyz", bare)
    assert main(["eval", str(model_path), str(tmp_path / "bare.xyz")]) == 1
    assert "no labels to score against" in capsys.readouterr().err
    # with labels: per-property errors beside the trivial predictor
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(zero forces:" in out and "(baseline alone:" in out
