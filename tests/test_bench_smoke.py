"""Smoke test of ``benchmarks/bench_soap.py`` at tiny size, so that the script does not rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_soap.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_soap", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_soap_quick(tmp_path, capsys):
    bench = _load()
    output = tmp_path / "bench.json"
    code = bench.main(["--quick", "--libs", "tradens,quippy", "--output", str(output)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads(output.read_text())
    assert data["machine"]["versions"]["torch"]
    rows = {(r["lib"], r["variant"]): r for r in data["cases"]}
    full, reduced = rows[("tradens", "full")], rows[("tradens", "rz-el")]
    assert full["ok"] and reduced["ok"]
    assert full["features_per_atom"] == 3 * 8 * (3 * 8 + 1) // 2 * 7 + 1  # GAP layout + sigma0 slot
    assert reduced["features_per_atom"] == 16 * 7 + 1
    assert full["median_s"] > 0 and full["peak_rss_mb"] > 0
    if ("quippy", "rz-el") in rows:  # the optional oracle is installed
        assert reduced["speedup_vs_quippy"] > 0
    assert "x quippy" in printed and "cpu s" in printed
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_gap_strings_and_elements():
    bench = _load()
    assert bench.elements_for(3) == ["Cr", "Fe", "Ni"]
    assert bench.elements_for(3, scan=True) == ["Sc", "Ti", "V"]
    assert len(bench.elements_for(25)) == 25
    string = bench.gap_string(["Cr", "Fe"], "rz-el", 16)
    assert "species_Z={24 26}" in string and "coupling=F K=16" in string
    atoms = bench.make_system(["Cr", "Fe", "Ni"], repeat=2)
    assert len(atoms) == 16 and all(atoms.pbc)
