"""Smoke test of ``benchmarks/bench_datasets.py`` at tiny size, so that the script does not rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_datasets.py"


def _load():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_datasets", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_datasets_quick(tmp_path, capsys):
    bench = _load()
    output = tmp_path / "bench.json"
    code = bench.main(
        ["--quick", "--libs", "tradens,quippy", "--datasets", "tiny,large", "--output", str(output)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = {(r["lib"], r["dataset"]): r for r in json.loads(output.read_text())["cases"]}
    tiny, large = rows[("tradens", "tiny")], rows[("tradens", "large")]
    assert tiny["ok"] and large["ok"], printed
    assert tiny["n_structures"] == bench.QUICK_SIZES["tiny"] and large["n_atoms"] == 16
    assert tiny["us_per_atom"] == tiny["median_s"] / tiny["n_atoms"] * 1e6
    assert tiny["tiny_over_large"] == tiny["us_per_atom"] / large["us_per_atom"]
    if ("quippy", "tiny") in rows:  # the optional oracle is installed
        assert tiny["x_quippy"] == rows[("quippy", "tiny")]["us_per_atom"] / tiny["us_per_atom"]
    assert "us/atom" in printed and "tiny/large" in printed
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_tiny_cells_and_strings():
    bench = _load()
    frames = bench.tiny_cells(50)
    assert [len(f) for f in frames] == [len(f) for f in bench.tiny_cells(50)]  # seeded
    assert {len(f) for f in frames} == {1, 2, 3} and all(f.pbc.all() for f in frames)
    assert set(bench.species_of(frames)) <= set(bench.TINY_ELEMENTS)
    assert np.allclose(frames[0].positions, bench.tiny_cells(1)[0].positions)
    string = bench.gap_string([8, 22, 56], "rz-el")
    assert "species_Z={8 22 56}" in string and "coupling=F K=16" in string
    assert "K=" not in bench.gap_string([1, 6], "full")
