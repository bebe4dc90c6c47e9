"""Inputs that used to give silently wrong results or unclear errors (issue 14, input surface)."""

from __future__ import annotations

import json
import zipfile

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch

import tradens
from tradens import ACE, SOAP, as_batch
from tradens.cli import main as cli_main
from tradens.kernels import budget
from tradens.models import ElementBaseline, load, save
from tradens.models._data import read_targets
from tradens.systems.neighbors import neighbor_list


def small(**kwargs) -> SOAP:
    options = dict(cutoff=4.0, l_max=3, radial={"n_max": 3}, species=[6, 28, 29])
    options.update(kwargs)
    return SOAP(**options)


def nickel(seed: int = 0) -> ase.Atoms:
    atoms = ase.build.bulk("Ni", "fcc", a=3.6) * (2, 2, 2)
    atoms.numbers[::3] = 29
    atoms.rattle(0.1, seed=seed)
    return atoms


# ------------------------------------------------------------------ overlapping atoms
def test_overlapping_atoms_are_an_error_naming_them():
    frames = [nickel(), nickel(1)]
    frames[1].positions[5] = frames[1].positions[2] + [0.0, 0.0, 1e-9]
    with pytest.raises(ValueError, match=r"structure 1: atoms 2 and 5 are 1e-09 Å apart"):
        small().compute(frames, batch_size=1)  # the index counts across batches
    exact = ase.Atoms("Ni2", positions=[[1.0, 1.0, 1.0]] * 2)
    with pytest.raises(ValueError, match=r"structure 0: atoms 0 and 1 are 0 Å apart.*min_distance"):
        small().compute(exact)
    # an atom on a periodic image of another one
    image = ase.Atoms("Ni2", positions=[[0, 0, 0], [3.0, 0, 0]], cell=[3.0, 5, 5], pbc=True)
    with pytest.raises(ValueError, match=r"atoms 0 and 1 \(periodic image .*\) are 0 Å apart"):
        small().compute(image)


def test_min_distance_is_an_option():
    close = ase.Atoms("Ni2", positions=[[0, 0, 0], [0.3, 0, 0]])
    values = small().compute(close).values  # 0.3 Å: unphysical but well defined, accepted
    assert np.isfinite(values).all() and np.abs(values[0] - values[1]).max() < 1e-12
    with pytest.raises(ValueError, match=r"0.3 Å apart, closer than min_distance=0.5 Å"):
        small().compute(close, min_distance=0.5)
    with pytest.raises(ValueError, match="min_distance must be a finite number >= 0"):
        as_batch(close, min_distance=-1.0)
    # 0 turns the check off: the old behaviour (the zero-distance pair is dropped)
    same = ase.Atoms("Ni2", positions=[[0, 0, 0]] * 2)
    alone = small().compute(same[:1]).values[0]
    np.testing.assert_allclose(small().compute(same, min_distance=0).values[0], alone)
    batch = as_batch(same, min_distance=0.0)
    assert len(neighbor_list(batch, 4.0)) == 0


# ------------------------------------------------------------------ memory and bounds
@pytest.fixture
def one_gib(monkeypatch):
    monkeypatch.setattr(budget, "available_memory", lambda device=None: 2**30)


def test_huge_channel_counts_are_refused_before_allocating(one_gib):
    with pytest.raises(ValueError, match=r"needs about 111.8 GiB but only 1.0 GiB.*fewer mixed"):
        SOAP(cutoff=5.0, species=[28], mixing={"channels": 100000})
    with pytest.raises(ValueError, match=r"ACE with K=.*needs about.*mode='diagonal'"):
        ACE(cutoff=4.0, species=[28, 29], channels=2000, mode="full", l_max=(0, 2, 2))


def test_compute_refuses_an_output_larger_than_memory(one_gib):
    soap = SOAP(cutoff=3.0, l_max=6, radial={"n_max": 8}, species=list(range(1, 84)))
    assert soap.n_features == 1545460
    frames = [ase.Atoms("H", positions=[[0, 0, 0]])] * 100  # 100 rows x 1.5 M float64: 1.2 GB
    with pytest.raises(ValueError, match=r"100 rows x 1545460 features.*float32.*mixing"):
        soap.compute(frames)
    # float32 halves it: 0.6 GB fits
    assert soap.memory_estimate(100, 1, torch.float32) < 2**30


def test_memory_estimate_matches_the_output():
    soap = small()
    rows = 37
    output = rows * soap.n_features * 8
    estimate = soap.memory_estimate(rows, 5, torch.float64)
    assert output <= estimate < output + 2**20  # the output plus a small working set
    ace = ACE(cutoff=4.0, species=[28, 29], l_max=(0, 3, 2), channels=4, radial={"n_max": 3})
    output = rows * ace.n_features * 4
    assert output <= ace.memory_estimate(rows, 5, torch.float32) < output + 2**20


def test_ace_compute_refuses_an_output_larger_than_memory(monkeypatch):
    ace = ACE(cutoff=4.0, species=[28, 29], l_max=(0, 3, 2), channels=4, radial={"n_max": 3})
    frames = [nickel(s) for s in range(4)]
    needed = ace.memory_estimate(32, 8, torch.float64)
    monkeypatch.setattr(budget, "available_memory", lambda device=None: needed - 1)
    with pytest.raises(ValueError, match=r"ACE features of 4 structures \(32 rows x"):
        ace.compute(frames, batch_size=1)
    monkeypatch.setattr(budget, "available_memory", lambda device=None: 2**40)
    assert ace.compute(frames, batch_size=1).values.shape == (32, ace.n_features)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(radial={"n_max": 257}), "n_max must be <= 256, got 257"),
        (dict(l_max=21), "l_max must be <= 20, got 21"),
        (dict(mixing={"channels": 2**20 + 1}), r"channels \(K\) must be <= 1048576"),
        (dict(covariance_sigma0=float("nan")), "covariance_sigma0 must be a finite number"),
    ],
)
def test_upper_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(**kwargs)


def test_ace_l_max_bound():
    with pytest.raises(ValueError, match="l_max must be <= 20"):
        ACE(cutoff=4.0, species=[28], l_max=(0, 21, 2), channels=2)


def test_info_counts_without_allocating(capsys, one_gib):
    code = cli_main(["info", "--species", "Ni,Cu", "--channels", "1000000"])
    out = capsys.readouterr().out
    assert code == 0
    assert "features per atom      3500003500000" in out
    assert "available memory       1.0 GiB" in out and "does not fit" in out


def test_features_cli_refuses_a_huge_configuration(tmp_path, capsys, one_gib):
    code = cli_main(
        ["features", "--example", "-o", str(tmp_path / "f.npz"), "--channels", "100000", "-q"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "needs about" in err and "fewer mixed channels K" in err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ float32 far from the origin
@pytest.mark.parametrize("periodic", [True, False])
def test_float32_features_do_not_depend_on_where_the_structure_sits(periodic):
    atoms = nickel(3) if periodic else nickel(3)[:7]
    if not periodic:
        atoms.pbc = False
    soap = small()
    reference = soap.compute(atoms, dtype=torch.float32).values
    exact = soap.compute(atoms).values
    assert np.abs(reference - exact).max() < 1e-5  # float32 is close to float64 at the origin
    for shift in (1e6, 1e8):
        moved = atoms.copy()
        moved.positions += [shift, -0.5 * shift, 0.25 * shift]
        values = soap.compute(moved, dtype=torch.float32).values
        np.testing.assert_allclose(values, reference, rtol=0, atol=1e-6)
    assert np.array_equal(atoms.positions, nickel(3).positions[: len(atoms)])  # not modified


def test_float32_gradients_far_from_the_origin():
    from tradens.gradients import energy_forces_stress

    atoms = nickel(4)
    soap = small()
    theta = torch.linspace(-1.0, 1.0, soap.n_features, dtype=torch.float64)

    def model(values, numbers):
        return values @ theta.to(values.dtype)

    near = energy_forces_stress(soap, model, atoms, dtype=torch.float32)
    moved = atoms.copy()
    moved.positions += 1e7
    far = energy_forces_stress(soap, model, moved, dtype=torch.float32)
    np.testing.assert_allclose(np.asarray(far.forces), np.asarray(near.forces), atol=1e-4)


# ------------------------------------------------------------------ 2D and 1D cells
def _vacuum_equivalent(flat: ase.Atoms, vacuum: float = 15.0) -> ase.Atoms:
    """The same structure with the zero (non-periodic) cell vectors replaced by long ones."""
    cell = flat.cell[:].copy()
    periodic = cell[flat.pbc]
    for d in np.flatnonzero(~flat.pbc):
        # a long vector orthogonal to the periodic ones
        _, _, vt = np.linalg.svd(periodic, full_matrices=True)
        cell[d] = vt[len(periodic) + list(np.flatnonzero(~flat.pbc)).index(d)] * vacuum
    out = flat.copy()
    out.set_cell(cell, scale_atoms=False)
    return out


@pytest.mark.parametrize(
    "build",
    [
        lambda: ase.build.graphene(vacuum=None) * (2, 2, 1),
        lambda: ase.build.fcc111("Ni", (2, 2, 3), vacuum=None),
        lambda: ase.Atoms(
            "CNi", positions=[[0, 0, 0], [1.2, 0.3, 0]], cell=[[2.5, 0, 0], [0, 0, 0], [0, 0, 0]]
        ),
        lambda: ase.Atoms(
            "C2", positions=[[0, 0, 0], [0.3, 1.4, 0.2]], cell=[[0, 0, 0], [0, 2.6, 0.1], [0, 0, 0]]
        ),
    ],
    ids=["graphene", "fcc111", "chain-x", "chain-y"],
)
def test_2d_and_1d_cells_with_zero_vectors(build):
    flat = build()
    if not flat.pbc.any() or flat.pbc.all():
        flat.pbc = np.linalg.norm(flat.cell[:], axis=1) > 0
    assert np.linalg.det(flat.cell[:]) == 0
    soap = small()
    values = soap.compute(flat).values
    expected = soap.compute(_vacuum_equivalent(flat)).values
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    assert np.abs(values).max() > 0


def test_zero_vector_along_a_periodic_direction_is_still_an_error():
    atoms = ase.build.graphene(vacuum=None)
    atoms.pbc = True
    with pytest.raises(ValueError, match=r"cell is singular: cell vector\(s\) \[2\] are zero"):
        small().compute(atoms)
    coplanar = ase.Atoms("C", cell=[[1, 0, 0], [0, 1, 0], [1, 1, 0]], pbc=True)
    with pytest.raises(ValueError, match="periodic vectors are linearly dependent"):
        small().compute(coplanar)


# ------------------------------------------------------------------ clear messages
def test_structure_without_atoms():
    with pytest.raises(ValueError, match="structure 2 has no atoms"):
        small().compute([nickel(), nickel(1), ase.Atoms()], batch_size=2)


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError)])
def test_batch_size(batch_size, error):
    with pytest.raises(error, match=f"batch_size must be .*got {batch_size}"):
        small().compute(nickel(), batch_size=batch_size)


def test_index_past_the_end(tmp_path, capsys):
    path = tmp_path / "three.xyz"
    ase.io.write(path, [nickel(s) for s in range(3)], format="extxyz")
    for index in ("3", "-4"):
        code = cli_main(["info", str(path), "--index", index])
        err = capsys.readouterr().err
        assert code == 1
        assert f"index '{index}'" in err and "has 3 structures (valid: -3..2)" in err
    assert cli_main(["info", str(path), "--index", "-3"]) == 0


def test_non_numeric_labels_name_structure_and_key():
    frames = [nickel(s) for s in range(3)]
    for atoms in frames:
        atoms.info["REF_energy"] = -1.0
    frames[2].info["REF_energy"] = "n/a"
    with pytest.raises(ValueError, match=r"structure 2: the energy label 'REF_energy' is not"):
        read_targets(frames, energy_key="REF_energy", forces_key=None, stress_key=None)
    frames[2].info["REF_energy"] = -2.0
    frames[1].arrays["REF_forces"] = np.array([["x", "y", "z"]] * len(frames[1]))
    with pytest.raises(ValueError, match=r"structure 1: the forces label 'REF_forces'"):
        read_targets(frames, energy_key="REF_energy", forces_key="REF_forces", stress_key=None)


def _baseline_file(tmp_path):
    frames = [nickel(s) for s in range(3)]
    for s, atoms in enumerate(frames):
        atoms.info["energy"] = -4.0 * len(atoms) + s
    return save(ElementBaseline(energy_key="energy").fit(frames), tmp_path / "model.zip")


def _rewrite(path, member, data):
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[member] = data
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in members.items():
            archive.writestr(name, value)


def test_damaged_model_files(tmp_path):
    path = _baseline_file(tmp_path)
    assert type(load(path)) is ElementBaseline
    _rewrite(path, "arrays.npz", b"garbage")
    with pytest.raises(ValueError, match=r"model.zip'.*member 'arrays.npz' is damaged"):
        load(path)
    path = _baseline_file(tmp_path)
    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    _rewrite(path, "metadata.json", json.dumps({**metadata, "format_version": "1"}))
    with pytest.raises(ValueError, match=r"'format_version' must be an integer, got '1' \(str\)"):
        load(path)
    _rewrite(path, "metadata.json", b"{not json")
    with pytest.raises(ValueError, match="member 'metadata.json' is not valid JSON"):
        load(path)
    (tmp_path / "plain.zip").write_text("hello")
    with pytest.raises(ValueError, match="not a tradens model file"):
        load(tmp_path / "plain.zip")
    with pytest.raises(FileNotFoundError, match="model file .* does not exist"):
        load(tmp_path / "absent.zip")


def test_saving_into_a_missing_directory(tmp_path):
    frames = [nickel()]
    frames[0].info["energy"] = -1.0
    model = ElementBaseline(energy_key="energy").fit(frames)
    with pytest.raises(FileNotFoundError, match=r"directory '.*nowhere' does not exist"):
        save(model, tmp_path / "nowhere" / "model.zip")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["features", "--example", "-o", "{missing}/f.npz"],
        ["map", "--example", "-o", "{missing}/m.png"],
        ["map", "--example", "-o", "m.png", "--chemiscope", "{missing}/c.json"],
        ["select", "--example", "-n", "2", "-o", "{missing}/s.xyz"],
        ["imbalance", "--example", "--a", "full", "--b", "full", "--json", "{missing}/i.json"],
        ["fit", "--example", "-o", "{missing}/model.zip"],
        ["eval", "model.zip", "--example", "--json", "{missing}/e.json"],
    ],
    ids=["features", "map", "chemiscope", "select", "imbalance", "fit", "eval"],
)
def test_cli_checks_output_locations_before_computing(args, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for module in ("commands", "common", "analysis", "fit"):
        monkeypatch.setattr(
            f"tradens.cli.{module}.load_frames",
            lambda *a, **k: pytest.fail("read the input before checking the output"),
            raising=False,
        )
    missing = str(tmp_path / "missing")
    code = cli_main([a.replace("{missing}", missing) for a in args])
    err = capsys.readouterr().err
    assert code == 1
    assert f"directory '{missing}' does not exist" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_public_names():
    assert tradens.systems.batch.DEFAULT_MIN_DISTANCE == 1e-6


@pytest.mark.parametrize(
    "species, message",
    [
        (28, "species must be a list of atomic numbers"),
        ("NiCu", "species must be a list of atomic numbers"),
        ([28.5], "species must be a list of atomic numbers"),
        ([28, 28], "species must be distinct"),
    ],
)
def test_species_types(species, message):
    with pytest.raises(ValueError, match=message):
        small(species=species)
    with pytest.raises(ValueError, match=message):
        ACE(cutoff=4.0, species=species, channels=2)
    assert small(species=[28.0, 29]).hypers.species == (28, 29)  # integral floats are fine


def test_ace_l_max_of_the_wrong_type():
    with pytest.raises(ValueError, match="l_max must be an integer or one integer per order"):
        ACE(cutoff=4.0, species=[28], l_max=1.5, channels=2)
