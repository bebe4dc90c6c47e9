"""The model examples (learning curves, NVE) run on the bundled MEAM17 sample, sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import tradens

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SAMPLE = Path(tradens.__file__).parent / "data" / "meam17_sample.xyz"


def run(name: str, *args: str, cwd=None) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_learning_curves_example_writes_curves_for_every_family(tmp_path):
    run(
        "learning_curves.py",
        "--sizes",
        "12",
        "24",
        "--test",
        "10",
        "--force-test",
        "4",
        "--channels",
        "4",
        "8",
        "--epochs",
        "2",
        "--out",
        str(tmp_path),
    )
    data = json.loads((tmp_path / "learning_curves.json").read_text())
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000
    results = data["results"]
    families = {r["family"] for r in results}
    assert {
        "baseline",
        "full SOAP",
        "TR-SOAP (tensor)",
        "TR-ACE",
        "random projection",
        "learned embedding",
    } <= families
    for r in results:
        assert np.isfinite(r["energy"]) and r["energy"] > 0, r
        assert r["n_train"] in (12, 24)
    # feature counts are the representations' own:
    # TR-SOAP (tensor) grows as K^2, not with the elements
    sizes = sorted({r["features"] for r in results if r["family"] == "TR-SOAP (tensor)"})
    assert len(sizes) == 2 and sizes[1] > 3 * sizes[0]
    # the random projections have exactly the sizes of the tensor-coupled TR-SOAPs
    # they are compared with
    tr_sizes = {r["features"] for r in results if r["family"] == "TR-SOAP (tensor)"}
    assert {r["features"] for r in results if r["family"] == "random projection"} <= tr_sizes


def test_md_nve_example_conserves_energy():
    out = run("md_nve.py", "--data", str(SAMPLE), "--train", "24", "--steps", "40")
    result = json.loads(out[out.index("{") :])
    assert result["steps"] == 40 and result["atoms"] > 0
    # velocity Verlet at 1 fs with a smooth potential:
    # far below thermal energies (~40 meV/atom at 300 K)
    assert abs(result["drift_meV_per_atom_per_ps"]) < 5.0
    assert result["max_excursion_meV_per_atom"] < 5.0
    assert result["mean_temperature_K"] > 10.0


def test_learning_curves_held_out_pairs_never_train_on_a_held_out_pair(tmp_path):
    import ase.io

    run(
        "learning_curves.py",
        "--held-out-pairs",
        "1",
        "--channels",
        "4",
        "--epochs",
        "1",
        "--test",
        "5",
        "--force-test",
        "2",
        "--no-ace",
        "--out",
        str(tmp_path),
    )
    results = json.loads((tmp_path / "held_out_pairs.json").read_text())["results"]
    ((a, b),) = results[0]["held_out_pairs"]
    frames = ase.io.read(SAMPLE, ":")
    n_train = sum(1 for atoms in frames if not {a, b} <= set(atoms.numbers.tolist()))
    assert 0 < n_train < len(frames)
    assert {r["family"] for r in results} >= {"baseline", "TR-SOAP (tensor)", "learned embedding"}
    for r in results:
        assert r["n_train"] == n_train and np.isfinite(r["energy"]), r
