"""GAP XML export (tradens.models.gap_xml) and SOAP -> GAP descriptor strings.

The round trips run GAP itself (quippy-ase, a test-time oracle with an academic
licence; those tests skip without it): the exported file, loaded by
``quippy.potential.Potential``, must give tradens' energies, forces and
virials on held-out structures to 1e-8 (absolute: eV, eV/Å, eV).
"""

from __future__ import annotations

import hashlib
import re

import ase
import ase.build
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT

from tradens import SOAP
from tradens.interop.quip import gap_from_soap, soap_from_gap
from tradens.models import (
    ElementBaseline,
    LinearPotential,
    RandomProjection,
    SparseKernelPotential,
)
from tradens.models.gap_xml import GAP_VERSION, gap_xml_text, write_gap_xml

TOL = 1e-8  # eV, eV/Å, eV (virial)

# the fits are tiny (4 structures, 6 sparse points): their quality is not the point here
pytestmark = pytest.mark.filterwarnings("ignore::tradens.models.FitWarning")


def _label(atoms: ase.Atoms) -> ase.Atoms:
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
    atoms.calc = None
    atoms.info["energy"] = energy
    atoms.arrays["forces"] = forces
    if stress is not None:
        atoms.info["stress"] = stress
    return atoms


def _cell(seed: int, nickel: list[int], repeat=(1, 1, 1)) -> ase.Atoms:
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * repeat
    atoms.numbers[nickel] = 28
    atoms.rattle(0.1, seed=seed)
    return _label(atoms)


def _held_out(alloy: bool) -> list[ase.Atoms]:
    """A periodic supercell, a small triclinic cell (many images) and a cluster."""
    cubic = _cell(50, [0, 5] if alloy else [], repeat=(2, 1, 1))
    triclinic = ase.build.bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    if alloy:
        triclinic.numbers[[1, 4]] = 28
    triclinic.rattle(0.1, seed=3)
    triclinic.set_cell(
        triclinic.cell[:] + np.array([[0.0, 0.2, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.1]]),
        scale_atoms=True,
    )
    positions = np.random.default_rng(0).normal(size=(6, 3)) * 1.3
    cluster = ase.Atoms("Cu4Ni2" if alloy else "Cu6", positions=positions)
    return [cubic, _label(triclinic), _label(cluster)]


@pytest.fixture(scope="module")
def alloy_train() -> list[ase.Atoms]:
    return [_cell(seed, [seed % 4, 2 + seed % 2]) for seed in range(4)]


@pytest.fixture(scope="module")
def copper_train() -> list[ase.Atoms]:
    return [_cell(seed, []) for seed in range(4)]


BASE = {"cutoff": 4.0, "l_max": 3, "radial": {"n_max": 4}, "species": [28, 29]}
CASES = {
    # name: (SOAP keywords, SparseKernelPotential keywords, write keywords, alloy)
    "full-single-element-wildcard": (
        {"cutoff": 4.0, "l_max": 3, "radial": {"n_max": 4}},
        {"zeta": 2},
        {},
        False,
    ),
    "full-per-element": (BASE, {"zeta": 3, "per_element": True}, {}, True),
    "full-sigma0-unnormalised-taper": (
        {
            **BASE,
            "cutoff": {"radius": 4.0, "width": 0.8},
            "normalize": False,
            "covariance_sigma0": 0.3,
            "density": {"sigma": 0.45, "center_weight": 0.7},
        },
        {"zeta": 2},
        {},
        True,
    ),
    "tr-radial+element-tensor-sym_mix=F": (
        {**BASE, "mixing": {"channels": 3, "weights": "gap", "symmetric": False, "seed": 2}},
        {"zeta": 2},
        {},
        True,
    ),
    "tr-radial+element-elementwise": (
        {**BASE, "mixing": {"channels": 4, "weights": "gap"}, "coupling": "elementwise"},
        {"zeta": 4},
        {},
        True,
    ),
    "tr-element-tensor-sym_mix=F-per-element": (
        {
            **BASE,
            "mixing": {"mode": "element", "channels": 2, "weights": "gap", "symmetric": False},
        },
        {"zeta": 2, "per_element": True},
        {},
        True,
    ),
    "tr-radial-zeta1.5-side-files": (
        {**BASE, "mixing": {"mode": "radial", "channels": 3, "weights": "gap", "seed": 7}},
        {"zeta": 1.5},
        {"sparse_files": True},
        True,
    ),
}


def _fit(soap_kwargs: dict, model_kwargs: dict, frames) -> SparseKernelPotential:
    soap = SOAP(**soap_kwargs)
    return SparseKernelPotential(soap, n_sparse=6, alphas=(1e-6,), cv=None, **model_kwargs).fit(
        frames
    )


def _gap_differences(model, path, frames) -> dict[str, float]:
    """Max abs differences of GAP's (quippy) predictions from ``model.predict``."""
    potential = pytest.importorskip("quippy.potential").Potential(param_filename=str(path))
    expected = model.predict(frames)
    out = {"energy": 0.0, "forces": 0.0, "virial": 0.0}
    offset = 0
    for k, atoms in enumerate(frames):
        copy = atoms.copy()
        copy.calc = potential
        n = len(atoms)
        out["energy"] = max(out["energy"], abs(copy.get_potential_energy() - expected["energy"][k]))
        forces = expected["forces"][offset : offset + n]
        out["forces"] = max(out["forces"], float(np.abs(copy.get_forces() - forces).max()))
        offset += n
        if atoms.pbc.all():  # virial = -V * stress (Voigt)
            volume = atoms.get_volume()
            diff = (copy.get_stress() - expected["stress"][k]) * volume
            out["virial"] = max(out["virial"], float(np.abs(diff).max()))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_gap_reproduces_tradens(case, alloy_train, copper_train, tmp_path):
    pytest.importorskip("quippy")
    soap_kwargs, model_kwargs, write_kwargs, alloy = CASES[case]
    model = _fit(soap_kwargs, model_kwargs, alloy_train if alloy else copper_train)
    points = model.sparse_points_.copy()
    path = tmp_path / "model.xml"
    write_gap_xml(model, path, **write_kwargs)
    np.testing.assert_array_equal(model.sparse_points_, points)  # input not modified
    differences = _gap_differences(model, path, _held_out(alloy))
    assert max(differences.values()) <= TOL, differences
    energies = model.predict(_held_out(alloy), forces=False, stress=False)["energy"]
    assert np.ptp(energies) > 0.1  # the comparison is not between constants
    files = sorted(p.name for p in tmp_path.iterdir())
    if write_kwargs.get("sparse_files"):
        assert files == ["model.xml", "model.xml.sparseX.GAP_tradens1"]
    else:
        assert files == ["model.xml"]  # one self-contained file, no temporary left


LINEAR_CASES = {
    # name: (SOAP keywords, LinearPotential keywords)
    "tr-radial+element": ({**BASE, "mixing": {"channels": 4, "weights": "gap"}}, {}),
    "full-per-element-sigma0": ({**BASE, "covariance_sigma0": 0.2}, {"per_element": True}),
    "tr-element-projection": (
        {**BASE, "mixing": {"mode": "element", "channels": 2, "weights": "gap"}},
        {"projection": RandomProjection(n_components=12, seed=1)},
    ),
}


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_gap_reproduces_linear_models(case, alloy_train, tmp_path):
    """A ridge model is GAP's zeta = 1 kernel with its weights as the sparse point(s)."""
    pytest.importorskip("quippy")
    soap_kwargs, model_kwargs = LINEAR_CASES[case]
    model = LinearPotential(SOAP(**soap_kwargs), alphas=(1e-6,), cv=None, **model_kwargs)
    model.fit(alloy_train)
    write_gap_xml(model, tmp_path / "model.xml")
    text = (tmp_path / "model.xml").read_text()
    assert re.findall(r'zeta="([^"]+)"', text) == ["1.0"] * (2 if model.per_element else 1)
    differences = _gap_differences(model, tmp_path / "model.xml", _held_out(True))
    assert max(differences.values()) <= TOL, differences


def test_side_file_md5_is_checked(alloy_train, tmp_path):
    """GAP verifies the side file against the md5 sum written in the XML."""
    potential_module = pytest.importorskip("quippy.potential")
    model = _fit(BASE, {"zeta": 2}, alloy_train)
    path = tmp_path / "model.xml"
    write_gap_xml(model, path, sparse_files=True)
    side = tmp_path / "model.xml.sparseX.GAP_tradens1"
    text = side.read_text()
    assert f'sparseX_md5sum="{hashlib.md5(text.encode()).hexdigest()}"' in path.read_text()
    assert len(text.split()) == model.sparse_points_.size + model.sparse_points_.shape[0]
    side.write_text(text.replace("\n", "\n\n", 1))  # same values, different bytes
    with pytest.raises(RuntimeError):
        potential_module.Potential(param_filename=str(path))


def test_xml_layout(alloy_train):
    model = _fit(BASE, {"zeta": 3, "per_element": True}, alloy_train)
    text = gap_xml_text(model, label="my_GAP")
    assert text.startswith("<my_GAP>\n") and text.endswith("</my_GAP>\n")
    assert f'gap_version="{GAP_VERSION}"' in text
    assert 'init_args="IP GAP label=my_GAP"' in text
    assert max(len(line) for line in text.splitlines()) < 1024  # QUIP's read pieces
    blocks = re.findall(r"<descriptor>(.*?)</descriptor>", text)
    assert [b.split()[0] for b in blocks] == ["soap", "soap"]
    assert [re.search(r" Z=\{(\d+)\}", b).group(1) for b in blocks] == ["28", "29"]
    counts = [int(n) for n in re.findall(r'n_sparseX="(\d+)"', text)]
    assert counts == [int((model.sparse_numbers_ == z).sum()) for z in (28, 29)]
    assert re.findall(r'zeta="([^"]+)"', text) == ["3.0", "3.0"]
    alphas = [float(a) for a in re.findall(r'alpha="([^"]+)"', text)]
    order = np.argsort(model.sparse_numbers_, kind="stable")
    np.testing.assert_array_equal(alphas, model.weights_[order])
    e0 = {int(z): float(v) for z, v in re.findall(r'<e0 Z="(\d+)" value="([^"]+)"/>', text)}
    baseline = model.baseline_
    assert e0 == dict(zip(baseline.species_, baseline.reference_energies_.tolist(), strict=True))
    dims = {int(d) for d in re.findall(r'dimensions="(\d+)"', text)}
    assert dims == {model.representation_.n_features + 1}  # GAP's covariance_sigma0 slot


def test_export_dispatcher_gap_xml(alloy_train, tmp_path):
    """``tradens.models.export(..., format="gap-xml")`` writes the same file, which GAP runs."""
    from tradens.models import export

    model = _fit({**BASE, "mixing": {"channels": 3, "weights": "gap"}}, {"zeta": 2}, alloy_train)
    export(model, tmp_path / "model.xml", format="gap-xml")
    assert (tmp_path / "model.xml").read_text() == gap_xml_text(model)
    with pytest.raises(ValueError, match="float64"):
        export(model, tmp_path / "other.xml", format="gap-xml", dtype="float32")
    pytest.importorskip("quippy")
    differences = _gap_differences(model, tmp_path / "model.xml", _held_out(True))
    assert max(differences.values()) <= TOL, differences


def test_saved_model_exports_the_same_file(alloy_train, tmp_path):
    """A model loaded from its file (as ``tradens export`` does) writes identical XML."""
    from tradens.models import load, save

    soap_kwargs = {**BASE, "mixing": {"channels": 3, "weights": "gap", "symmetric": False}}
    model = _fit(soap_kwargs, {"zeta": 2, "per_element": True}, alloy_train)
    save(model, tmp_path / "model.zip")
    assert gap_xml_text(load(tmp_path / "model.zip")) == gap_xml_text(model)


# ---------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def fitted(alloy_train) -> SparseKernelPotential:
    return _fit(BASE, {"zeta": 2}, alloy_train)


def test_refuses_other_models(alloy_train, tmp_path):
    baseline = ElementBaseline().fit(alloy_train)
    with pytest.raises(TypeError, match="SparseKernelPotential"):
        write_gap_xml(baseline, tmp_path / "x.xml")
    with pytest.raises(ValueError, match="not fitted"):
        write_gap_xml(SparseKernelPotential(SOAP(**BASE)), tmp_path / "x.xml")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("soap_kwargs", "model_kwargs", "message"),
    [
        ({**BASE, "mixing": {"channels": 3}}, {}, "weights='random'"),
        ({**BASE, "mixing": {"channels": 3, "weights": "gap", "learnable": True}}, {}, "learnable"),
        ({**BASE, "radial": {"kind": "gto", "n_max": 4}}, {}, "gto"),
        (
            {**BASE, "mixing": {"channels": 3, "weights": "gap", "symmetric": False}},
            {"zeta": 2.5},
            "zeta=2.5",
        ),
    ],
)
def test_refuses_what_gap_cannot_express(alloy_train, tmp_path, soap_kwargs, model_kwargs, message):
    model = _fit(soap_kwargs, {"zeta": 2, **model_kwargs}, alloy_train[:2])
    with pytest.raises(ValueError, match=re.escape(message)):
        write_gap_xml(model, tmp_path / "x.xml")
    assert not list(tmp_path.iterdir())


def test_refuses_other_representations_and_labels(fitted, tmp_path):
    model = SparseKernelPotential(fitted.representation_)
    model.__dict__.update(fitted.__dict__)
    for bad in ("1abc", "a b", "x<y", ""):
        with pytest.raises(ValueError, match="label"):
            write_gap_xml(model, tmp_path / "x.xml", label=bad)
    averaged = SOAP(**BASE, average=True)
    model.representation_ = averaged
    with pytest.raises(ValueError, match="average=True"):
        write_gap_xml(model, tmp_path / "x.xml")
    model.representation_ = torch.nn.Identity()
    with pytest.raises(ValueError, match="representation Identity"):
        write_gap_xml(model, tmp_path / "x.xml")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- descriptor strings

DESCRIPTOR_CASES = [
    {},
    {"species": None},
    {"normalize": False, "covariance_sigma0": 0.5},
    {"diagonal_radial": True},
    {"center_species": (28,)},
    {"density": {"sigma": 0.45, "center_weight": 0.8, "center_all_species": True}},
    {"cutoff": {"radius": 4.0, "width": 1.0}, "radial": {"n_max": 4, "error_exponent": 8.0}},
    {"average": True},
] + [
    {
        "mixing": {"mode": mode, "channels": 3, "weights": "gap", "seed": 5, "symmetric": sym},
        "coupling": coupling,
    }
    for mode in ("radial+element", "element", "radial")
    for sym in (True, False)
    for coupling in ("tensor", "elementwise")
]


def _descriptor_atoms() -> ase.Atoms:
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.numbers[[1, 3, 6]] = [28, 46, 28]
    atoms.rattle(0.1, seed=1)
    return atoms


@pytest.mark.parametrize("extra", DESCRIPTOR_CASES, ids=lambda e: str(sorted(e))[:60])
def test_gap_from_soap_round_trip(extra):
    """soap_from_gap(gap_from_soap(soap)) computes soap's features (and GAP agrees)."""
    soap = SOAP(**{**BASE, "species": [29, 28, 46], **extra})
    args = gap_from_soap(soap)
    atoms = _descriptor_atoms()
    ours = soap.compute(atoms).values
    if soap.hypers.covariance_sigma0 is None:
        ours = np.concatenate([ours, np.zeros((ours.shape[0], 1))], axis=1)
    back = soap_from_gap(args).compute(atoms).values
    np.testing.assert_allclose(back, ours, atol=1e-14, rtol=0)
    try:
        from quippy.descriptors import Descriptor
    except ImportError:
        return
    reference = Descriptor(args).calc(atoms)["data"]
    np.testing.assert_allclose(reference, ours, atol=1e-12, rtol=0)


def test_gap_from_soap_centres_override():
    soap = SOAP(**BASE, center_species=(28, 29))
    assert " n_Z=2 Z={28 29}" in gap_from_soap(soap)
    assert " n_Z=1 Z={29}" in gap_from_soap(soap, centers=[29])
    assert " Z=" not in gap_from_soap(SOAP(**BASE))


def test_gap_from_soap_refusals():
    with pytest.raises(TypeError, match="SOAP"):
        gap_from_soap("soap cutoff=4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights='onehot'"):
        gap_from_soap(SOAP(**BASE, mixing={"mode": "radial", "channels": 4, "weights": "onehot"}))
    with pytest.raises(ValueError, match="nu_R"):
        gap_from_soap(soap_from_gap("soap cutoff=4 l_max=2 n_max=3 atom_sigma=0.5 nu_R=1"))
    changed = SOAP(**BASE, mixing={"channels": 3, "weights": "gap"})
    with torch.no_grad():
        changed.weights1[0, 0] += 1e-9
    with pytest.raises(ValueError, match="weights1 differ from GAP's"):
        gap_from_soap(changed)


def test_cli_export_gap_xml_round_trip(tmp_path, capsys):
    """``tradens fit --model kernel`` then ``tradens export --format gap-xml``, run by GAP."""
    pytest.importorskip("quippy")
    import ase.io

    from tradens.cli import main
    from tradens.io import example_path
    from tradens.models import load

    model_path, exported = tmp_path / "model.zip", tmp_path / "model.xml"
    fit = ["fit", "--example", "meam17", "-o", str(model_path), "--index", ":8", "--model"]
    small = ["-K", "3", "--l-max", "2", "--n-max", "3", "--cutoff", "4.0", "--cv", "1"]
    kernel = ["kernel", "--n-sparse", "8", "--zeta", "2", "--alphas", "1e-6"]
    # explicit weights: with 8 structures and 14 elements the baseline alone fits the energies
    kernel += ["--energy-weight", "1", "--forces-weight", "1", "--stress-weight", "0"]
    assert main([*fit, *kernel, *small, "--weights", "gap", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(model_path), "-o", str(exported), "--format", "gap-xml"]) == 0
    assert "gap-xml" in capsys.readouterr().out
    model = load(model_path)
    held_out = [ase.io.read(example_path("meam17"), index=9)]
    assert np.abs(model.predict(held_out)["forces"]).max() > 0.1  # eV/Å: a real comparison
    differences = _gap_differences(model, exported, held_out)
    assert max(differences.values()) <= TOL, differences
    # the CLI's default TR-SOAP draws its own random weights, which GAP cannot read
    assert main([*fit, *kernel, *small, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(model_path), "-o", str(exported), "--format", "gap-xml"]) != 0
    assert "weights='random'" in capsys.readouterr().err
