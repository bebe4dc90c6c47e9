"""A real MD engine runs an exported tradens potential (issue #15): i-PI, in process.

i-PI (PyPI ``ipi``) integrates NVE dynamics with its own velocity Verlet, calling the
exported file through its ``metatomic`` driver (forces by autograd inside the model);
the trajectory must match ASE's velocity Verlet with :class:`TradensCalculator` from the
same start, with i-PI's conserved quantity equal to ASE's total energy at every step.
"""

from __future__ import annotations

import os
import warnings

import ase.io
import numpy as np
import pytest
from _models_helpers import alloy, label, planted, small_soap

from tradens.calculator import TradensCalculator
from tradens.models import FitWarning, LinearPotential, export

pytest.importorskip("metatomic.torch")
ipi_scripting = pytest.importorskip("ipi.scripting")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    soap = small_soap()
    _, _, model_fn = planted(soap)
    frames = label([alloy(s, repeat=(1, 1, 2)) for s in range(6)], soap, model_fn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        model = LinearPotential(soap, alphas=[1e-8], cv=2).fit(frames)
    path = tmp_path_factory.mktemp("engine") / "model.pt"
    export(model, path)
    return model, path


def _nve_in_ipi(atoms, model_path, workdir, steps):
    from ipi.scripting.templates import forcefield_xml, simulation_xml

    template = os.path.join(workdir, "template.xyz")
    ase.io.write(template, atoms)
    forcefield = forcefield_xml(
        "tradens",
        mode="direct",
        pes="metatomic",
        parameters={"template": template, "model": str(model_path)},
    )
    motion = (
        "<motion mode='dynamics'><dynamics mode='nve'>"
        "<timestep units='femtosecond'> 1.0 </timestep></dynamics></motion>"
    )
    xml = simulation_xml(
        atoms, forcefield, motion, output=f"<output prefix='{workdir}/sim'></output>"
    )
    simulation = ipi_scripting.InteractiveSimulation(xml)
    conserved = []
    for _ in range(steps):
        simulation.run(1)
        conserved.append(float(simulation.properties("conserved")))
    return simulation.get_structures(), np.array(conserved)


def test_ipi_nve_with_the_exported_model_matches_ase(exported, tmp_path, monkeypatch):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    model, path = exported
    atoms = alloy(42, repeat=(2, 2, 1), rattle=0.1)
    atoms.arrays["mass"] = atoms.get_masses()  # the same masses in both engines
    monkeypatch.chdir(tmp_path)  # i-PI writes its RESTART files into the working directory
    final, conserved = _nve_in_ipi(atoms, path, str(tmp_path), steps=20)
    reference = atoms.copy()
    reference.calc = TradensCalculator(model)
    dynamics = VelocityVerlet(reference, 1.0 * units.fs)
    total = []
    for _ in range(20):
        dynamics.run(1)
        total.append(reference.get_potential_energy() + reference.get_kinetic_energy())
    moved = np.abs(reference.positions - atoms.positions).max()
    assert moved > 1e-3  # the atoms did move
    # the same trajectory (i-PI works in atomic units: conversions cost ~1e-8 Å)
    np.testing.assert_allclose(final.positions, reference.positions, atol=1e-6)
    # and the same total energy at every step (i-PI's conserved quantity; the interactive
    # simulation reports it in ASE units, eV)
    np.testing.assert_allclose(conserved, total, atol=1e-6)


def test_md_ipi_example_runs_and_conserves_energy(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sample = root / "src" / "tradens" / "data" / "meam17_sample.xyz"
    result = subprocess.run(
        [sys.executable, str(root / "examples" / "md_ipi.py"), "--steps", "20", "--train", "20"]
        + ["--data", str(sample), "--compare"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["atoms"] == 54 and report["steps"] == 20
    assert report["max_position_difference_A"] < 1e-6  # i-PI and ASE: the same trajectory
    assert abs(report["drift_meV_per_atom_per_ps"]) < 5.0
    assert not list(tmp_path.iterdir())  # i-PI's RESTART files stayed in its own folder
