"""``tradens fit`` / ``tradens eval`` round trip on the bundled sample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tradens.cli import main
from tradens.models import load

FAST = ["-K", "3", "--l-max", "2", "--n-max", "3", "--cutoff", "4.0", "--cv", "2", "--index", ":12"]


def test_fit_then_eval(tmp_path, capsys):
    model_path = tmp_path / "model.zip"
    assert main(["fit", "--example", "meam17", "-o", str(model_path), *FAST]) == 0
    assert "CV RMSE" in capsys.readouterr().out
    model = load(model_path)
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


def test_eval_missing_model(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.zip"), "--example", "meam17"]) == 1
    assert "does not exist" in capsys.readouterr().err
