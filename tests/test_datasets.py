"""Many small structures: the vectorised neighbour pass, packing by size, errors and skip_bad."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest

import tradens
from tradens import cli
from tradens.io import read_features
from tradens.systems.batch import as_batch, batch_ranges
from tradens.systems.neighbors import _complete_box, neighbor_list


def tiny_cells(count: int, seed: int = 0, unwrapped: bool = False) -> list[ase.Atoms]:
    """1-3 atom triclinic cells of Ni/Cu/Pd (positions outside the cell when ``unwrapped``)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        n = int(rng.integers(1, 4))
        cell = np.eye(3) * rng.uniform(2.4, 3.6) + rng.uniform(-0.6, 0.6, (3, 3))
        scaled = rng.uniform(-1.5, 2.5, (n, 3)) if unwrapped else rng.uniform(0, 1, (n, 3))
        frames.append(
            ase.Atoms(
                numbers=rng.choice([28, 29, 46], n), scaled_positions=scaled, cell=cell, pbc=True
            )
        )
    return frames


def molecules(count: int, seed: int = 1) -> list[ase.Atoms]:
    rng = np.random.default_rng(seed)
    return [
        ase.Atoms(numbers=rng.choice([28, 29], n), positions=rng.uniform(0, 4.0, (n, 3)))
        for n in rng.integers(1, 9, count)
    ]


def vesin_pairs(frames, cutoff: float) -> set:
    """Every pair ``(i, j, S)`` (batch indices) by one vesin call per structure."""
    import vesin

    batch = as_batch(frames)
    calculator = vesin.NeighborList(cutoff=cutoff, full_list=True)
    positions, cells, pbc = batch.positions.numpy(), batch.cells.numpy(), batch.pbc.numpy()
    out = set()
    for s in range(batch.n_structures):
        a, b = batch.offsets[s], batch.offsets[s + 1]
        box = _complete_box(cells[s], pbc[s]) if pbc[s].any() else np.zeros((3, 3))
        i, j, shifts, d = calculator.compute(
            points=positions[a:b], box=box, periodic=pbc[s].tolist(), quantities="ijSd"
        )
        keep = (d < cutoff) & (d > 0)
        out |= {
            (int(x) + a, int(y) + a, *map(int, z))
            for x, y, z in zip(i[keep], j[keep], shifts[keep], strict=True)
        }
    return out


@pytest.mark.parametrize("kind", ["tiny", "unwrapped", "molecules", "mixed"])
def test_vectorised_neighbour_pass_lists_what_vesin_lists(kind):
    tiny = tiny_cells(40, unwrapped=kind == "unwrapped")
    frames = {"tiny": tiny, "unwrapped": tiny, "molecules": molecules(30)}.get(kind)
    if frames is None:  # small and large, periodic and not, and a slab left to vesin
        bulk = ase.Atoms("Ni32", positions=np.random.default_rng(2).uniform(0, 7, (32, 3)))
        bulk.cell, bulk.pbc = np.eye(3) * 7.2, True
        slab = tiny_cells(1, seed=5)[0]
        slab.pbc = [True, True, False]
        frames = tiny_cells(5) + molecules(5) + [bulk, slab] + tiny_cells(5, seed=3)
    pairs = neighbor_list(as_batch(frames), 4.5)
    listed = {
        (int(i), int(j), *map(int, s))
        for i, j, s in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.shifts.tolist(), strict=True)
    }
    assert len(listed) == len(pairs) > 0 and listed == vesin_pairs(frames, 4.5)
    assert bool((pairs.i[1:] >= pairs.i[:-1]).all())  # grouped by centre


def test_batch_ranges_pack_by_atoms():
    assert batch_ranges([3, 3, 3, 3, 3], 2) == [(0, 2), (2, 4), (4, 5)]
    assert batch_ranges([3, 3, 3, 3, 3], None, atoms_per_batch=7) == [(0, 2), (2, 4), (4, 5)]
    assert batch_ranges([1, 10, 1, 1], None, atoms_per_batch=4) == [(0, 1), (1, 2), (2, 4)]
    assert batch_ranges([], None) == []


def small_soap(**kwargs):
    options = dict(cutoff=4.5, l_max=3, radial={"n_max": 3}, species=[28, 29, 46])
    options.update(kwargs)
    return tradens.SOAP(**options)


def test_packed_batches_give_the_values_of_one_structure_at_a_time():
    frames = tiny_cells(60) + molecules(20)
    soap = small_soap(mixing={"channels": 4})
    packed = soap.compute(frames)  # one batch of 80 small structures
    single = soap.compute(frames, batch_size=1)
    np.testing.assert_allclose(packed.values, single.values, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(packed.structure, single.structure)
    np.testing.assert_array_equal(packed.center, single.center)
    assert packed.skipped == []


def test_errors_name_the_structure_in_the_callers_list():
    frames = tiny_cells(300)
    bad = list(frames)
    bad[250] = bad[250].copy()
    bad[250].positions[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"structure 250: positions contain NaN"):
        small_soap().compute(bad)
    bad = list(frames)
    bad[137] = ase.Atoms("NiFe", positions=[[0, 0, 0], [2.0, 0, 0]])
    with pytest.raises(ValueError, match=r"structure 137: element\(s\) with atomic number \[26\]"):
        small_soap().compute(bad, batch_size=100)  # in the second batch
    bad = list(frames)
    bad[201] = ase.Atoms("Ni2", positions=[[0, 0, 0], [0, 0, 1e-8]], cell=np.eye(3) * 3, pbc=True)
    with pytest.raises(ValueError, match=r"structure 201: atoms 0 and 1 are 1e-08 Å apart"):
        small_soap().compute(bad)


def test_skip_bad_goes_on_and_lists_what_it_skipped():
    frames = tiny_cells(30)
    bad = list(frames)
    bad[3] = ase.Atoms("Ni", positions=[[0, 0, np.nan]])
    bad[17] = ase.Atoms("NiFe", positions=[[0, 0, 0], [2.0, 0, 0]])
    bad[22] = ase.Atoms("Ni", cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]], pbc=True)  # singular cell
    soap = small_soap()
    with pytest.warns(UserWarning, match=r"skipped 3 bad structure\(s\): structure 3: "):
        features = soap.compute(bad, skip_bad=True)
    assert [index for index, _ in features.skipped] == [3, 17, 22]
    assert "NaN" in features.skipped[0][1] and "[26]" in features.skipped[1][1]
    assert "singular" in features.skipped[2][1]
    good = [f for k, f in enumerate(frames) if k not in (3, 17, 22)]
    expected = soap.compute(good)
    np.testing.assert_allclose(features.values, expected.values, rtol=0, atol=1e-13)
    kept = [k for k in range(30) if k not in (3, 17, 22)]
    assert sorted(set(features.structure.tolist())) == kept  # indices of the input list
    with pytest.raises(ValueError, match="structure 3: positions contain NaN"):
        soap.compute(bad)


def test_cli_skip_bad(tmp_path, capsys):
    frames = tiny_cells(6)
    frames[4].positions[0, 0] = np.nan
    source = tmp_path / "in.xyz"
    ase.io.write(source, frames)
    out = tmp_path / "out.npz"
    common = ["--species", "Ni,Cu,Pd", "--n-max", "3", "--l-max", "2", "--channels", "4", "-q"]
    assert cli.main(["features", str(source), "-o", str(out), *common]) == 1
    assert "structure 4: positions contain NaN" in capsys.readouterr().err
    assert cli.main(["features", str(source), "-o", str(out), *common, "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "skipped structure 4: structure 4: positions contain NaN" in err
    features, _ = read_features(out)
    assert sorted(set(np.asarray(features.structure).tolist())) == [0, 1, 2, 3, 5]


def test_bulk_validation_names_the_first_bad_structure():
    frames = tiny_cells(8)
    frames[2].positions[1, 0] = np.inf
    shape = {"positions": [[0.0, 0.0]], "numbers": [28]}  # wrong shape, checked per structure
    with pytest.raises(ValueError, match=r"structure 2: positions contain NaN or inf"):
        as_batch([*frames[:5], shape])
    frames[2].positions[1, 0] = 0.0
    with pytest.raises(ValueError, match=r"structure 5: positions must have shape"):
        as_batch([*frames[:5], shape])
    singular = ase.Atoms("Ni", cell=[[1, 0, 0], [0, 1, 0], [1, 1, 0]], pbc=True)
    negative = {"positions": [[0.0, 0.0, 0.0]], "numbers": [-1]}
    with pytest.raises(ValueError, match=r"structure 11: atomic numbers must be non-negative"):
        as_batch([*frames[:4], negative], first_index=7)  # negative: structure 11
    with pytest.raises(ValueError, match=r"structure 3: the cell is singular"):
        as_batch([*frames[:3], singular, negative])
    slab = ase.Atoms("Ni", cell=[[1, 0, 0], [2, 0, 0], [0, 0, 0]], pbc=[True, True, False])
    with pytest.raises(ValueError, match=r"structure 1: the cell is singular: its periodic"):
        as_batch([frames[0], slab])


def test_forces_of_packed_batches_equal_one_structure_at_a_time():
    from tradens.gradients.api import energy_forces_stress

    frames = tiny_cells(25, seed=4) + molecules(10)
    soap = small_soap(mixing={"channels": 4})
    weights = np.random.default_rng(0).normal(size=soap.n_features)
    import torch

    def model(values, numbers):
        return values @ torch.as_tensor(weights, dtype=values.dtype)

    packed = energy_forces_stress(soap, model, frames)  # one batch
    single = energy_forces_stress(soap, model, frames, batch_size=1)
    assert np.abs(packed.forces).max() > 1e-3  # the model has forces to compare
    for name in ("energy", "forces", "stress"):
        np.testing.assert_allclose(
            getattr(packed, name), getattr(single, name), rtol=0, atol=1e-12, equal_nan=True
        )
