"""The HEA25 learned-embedding preset: public, used by the benchmark and the CLI; its report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import tradens
from tradens.cli import main
from tradens.models import FitWarning, LearnedPotential, load
from tradens.models.learned import PRESETS

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_hea25_learned.py"
SPECIES = [22, 24, 26, 28, 29]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_hea25_learned", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_hea25_learned", module)
    spec.loader.exec_module(module)
    return module


def test_hea25_preset_sets_the_documented_settings():
    model = LearnedPotential.preset("hea25", species=SPECIES)
    defaults = LearnedPotential(model.representation).get_params()
    params = model.get_params()
    changed = {k for k in params if k != "representation" and params[k] != defaults[k]}
    assert changed == set(PRESETS["hea25"]["model"])
    assert len(changed) >= 15
    assert params["forces_loss"] == "huber" and params["ema"] == 0.99
    assert params["ridge_alpha"] is None and params["pair_channels"] == 4
    rep = model.representation
    assert isinstance(rep, tradens.ACE)
    assert rep.hypers.channels == 8 and tuple(rep.hypers.species) == tuple(SPECIES)
    assert LearnedPotential.preset("hea25", species=SPECIES, max_epochs=3).max_epochs == 3
    with pytest.raises(ValueError, match="unknown preset 'hea52'; known: \\['hea25'\\]"):
        LearnedPotential.preset("hea52", species=SPECIES)
    with pytest.raises(ValueError, match="give species"):
        LearnedPotential.preset("hea25")
    with pytest.raises(ValueError, match=r"unknown LearnedPotential parameter\(s\) \['epochs'\]"):
        LearnedPotential.preset("hea25", species=SPECIES, epochs=3)


def test_benchmark_defaults_are_the_preset():
    bench = _bench()
    args = bench.build_parser().parse_args([])
    from_bench = LearnedPotential.preset(
        "hea25",
        bench.make_representation("ace", SPECIES, args),
        **bench.model_options(args),
    )
    preset = LearnedPotential.preset("hea25", species=SPECIES)
    ignore = {"representation", "device", "verbose", "hidden", "seed"}
    for name, value in preset.get_params().items():
        if name not in ignore:
            assert from_bench.get_params()[name] == value, name
    assert tradens.to_dict(from_bench.representation.hypers) == tradens.to_dict(
        preset.representation.hypers
    )
    assert bench.DATA.parts[-2:] == ("hea25", "hea25_dev.xyz")


def test_cli_fit_with_the_preset_prints_the_learned_report(tmp_path, capsys):
    out = tmp_path / "learned.zip"
    argv = ["fit", "--example", "meam17", "--index", ":6", "-o", str(out), "--preset", "hea25"]
    assert main([*argv, "--epochs", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    text, err = captured.out, captured.err
    model = load(out)
    assert isinstance(model, LearnedPotential) and model.max_epochs == 1
    assert model.get_params()["pair_channels"] == 4
    assert "held-out" in text and "LearnedPotential fit" in text
    # the trivial predictor of forces is zero: its RMSE is the RMS of the labels
    import ase.io

    frames = ase.io.read(tradens.cli.common.bundled_path("meam17"), ":6")
    _, val = model._split(frames, None)
    forces = np.concatenate([f.get_forces() for f in val])
    row = model.fit_report_["forces"]
    assert row.trivial_validation_rmse == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-10)
    assert np.isfinite(row.validation_rmse) and row.weight == 3.0
    # one epoch on five structures: whatever the report says, the CLI said it too
    for name in model.fit_report_.worse_than_trivial():
        assert "worse than the trivial predictor" in err and name in err


def test_learned_report_warns_when_worse_than_trivial(tmp_path):
    import ase.io

    frames = ase.io.read(tradens.cli.common.bundled_path("meam17"), ":8")
    soap = tradens.SOAP(
        cutoff=4.0,
        l_max=2,
        radial={"n_max": 3},
        species=sorted({int(z) for f in frames for z in f.numbers}),
        mixing={"channels": 2, "seed": 0},
    )
    # a huge learning rate for one epoch: worse than the baseline alone
    model = LearnedPotential(soap, max_epochs=1, learning_rate=50.0, ridge_alpha=None, seed=0)
    with pytest.warns(FitWarning, match="worse than the trivial predictor"):
        model.fit(frames)
    assert model.fit_report_.worse_than_trivial()
    assert [p.name for p in model.fit_report_.properties] == ["energy", "forces"]
