"""Hypers round trip and clear errors on bad input."""

from __future__ import annotations

import json

import ase
import ase.build
import numpy as np
import pytest
import torch

import tradens
from tradens import SOAP, SoapHypers, System, as_batch, from_dict, to_dict
from tradens.quip import Descriptor
from tradens.systems.neighbors import neighbor_list


def soap(**kw):
    base = dict(cutoff=4.0, l_max=3, radial={"n_max": 3}, species=[28, 29, 46])
    base.update(kw)
    return SOAP(**base)


def test_hypers_round_trip_through_json():
    calc = soap(
        mixing={"mode": "element", "channels": 2, "weights": "given", "matrix": np.ones((3, 2))},
        coupling="elementwise",
        covariance_sigma0=0.1,
    )
    data = json.loads(json.dumps(to_dict(calc.hypers)))
    assert data["type"] == "SoapHypers" and data["mixing"]["type"] == "Mixing"
    rebuilt = from_dict(data)
    assert rebuilt == calc.hypers
    assert SOAP(rebuilt).n_features == calc.n_features


def test_from_dict_rejects_unknown_keys_and_types():
    with pytest.raises(ValueError, match="unknown SoapHypers hyper"):
        from_dict({"type": "SoapHypers", "cutoff": {"type": "Cutoff", "radius": 4.0}, "lmax": 3})
    with pytest.raises(ValueError, match="unknown hyper type 'os.system'"):
        from_dict({"type": "os.system"})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cutoff=-1.0), "cutoff radius must be a positive number"),
        (dict(density={"sigma": 0.0}), "atom sigma must be a positive number"),
        (dict(radial={"n_max": 0}), "n_max must be an integer >= 1"),
        (dict(mixing={"channels": 0}), r"channels \(K\) must be an integer >= 1"),
        (dict(l_max=-1), "l_max must be an integer >= 0"),
        (dict(mixing={"mode": "spin"}), "mixing mode must be"),
        (dict(coupling="outer"), "coupling must be 'tensor' or 'elementwise'"),
        (dict(radial={"kind": "bessel"}), "radial basis kind must be"),
        (dict(species=[28, 28]), "species must be distinct"),
        (
            dict(
                mixing={
                    "mode": "element",
                    "channels": 2,
                    "weights": "given",
                    "matrix": np.ones((2, 2)),
                }
            ),
            r"shape \(3, 2\)",
        ),
    ],
)
def test_bad_hypers(kwargs, message):
    with pytest.raises(ValueError, match=message):
        soap(**kwargs)


def test_unknown_element_is_an_error_or_skipped():
    atoms = ase.Atoms("NiFe", positions=[[0, 0, 0], [1.5, 0, 0]])
    with pytest.raises(ValueError, match=r"atomic number \[26\] not in species \[28, 29, 46\]"):
        soap().compute(atoms)
    skipped = soap(unknown_species="skip", normalize=False).compute(atoms).values
    alone = soap(normalize=False).compute(atoms[:1]).values
    np.testing.assert_allclose(skipped[0], alone[0], atol=1e-15)  # Fe is invisible to Ni


def test_unknown_element_in_ace_names_it_and_offers_no_missing_option():
    from tradens.density.expansion import UnknownSpeciesError

    atoms = ase.Atoms("NiFe", positions=[[0, 0, 0], [1.5, 0, 0]])
    ace = tradens.ACE(
        cutoff=4.0, species=[28, 29], nu_max=3, l_max=(0, 2, 1), channels=2, radial={"n_max": 2}
    )
    with pytest.raises(UnknownSpeciesError, match=r"\[26\] not in species \[28, 29\]") as info:
        ace.compute(atoms)
    assert info.value.missing == [26] and "unknown_species" not in str(info.value)


@pytest.mark.parametrize(
    "frame, message",
    [
        ({"positions": [[0, 0, np.nan]], "numbers": [28]}, "positions contain NaN or inf"),
        ({"positions": [[0, 0, np.inf]], "numbers": [28]}, "positions contain NaN or inf"),
        ({"positions": [[0, 0]], "numbers": [28]}, r"positions must have shape \[n_atoms, 3\]"),
        ({"positions": [[0, 0, 0]], "numbers": [28, 29]}, r"numbers must have shape \[1\]"),
        (
            {"positions": [[0, 0, 0]], "numbers": [28], "cell": np.zeros((3, 3)), "pbc": True},
            "cell is singular",
        ),
        (
            {"positions": [[0, 0, 0]], "numbers": [28], "cell": np.eye(2), "pbc": True},
            r"cell must have shape \[3, 3\]",
        ),
        ({"positions": [[0, 0, 0]], "numbers": [28], "charges": [1]}, "unknown keys"),
    ],
)
def test_bad_structures(frame, message):
    with pytest.raises(ValueError, match=message):
        soap().compute(frame)


def test_empty_list_and_wrong_type():
    with pytest.raises(ValueError, match="empty list of structures"):
        soap().compute([])
    with pytest.raises(TypeError, match="expected ase.Atoms"):
        soap().compute([42])


def test_gap_string_errors():
    with pytest.raises(ValueError, match="unsupported or misspelled soap keyword 'n_maxx'"):
        Descriptor("soap cutoff=5 l_max=4 n_maxx=6 atom_sigma=0.5")
    with pytest.raises(ValueError, match="missing mandatory soap keyword 'n_max'"):
        Descriptor("soap cutoff=5 l_max=4 atom_sigma=0.5")
    with pytest.raises(ValueError, match="species_Z"):
        Descriptor("soap cutoff=5 l_max=4 n_max=4 atom_sigma=0.5 n_species=2")
    with pytest.raises(ValueError, match="not mixing anything"):
        Descriptor("soap cutoff=5 l_max=4 n_max=4 atom_sigma=0.5 sym_mix=T K=3")
    with pytest.raises(ValueError, match="only the 'soap' descriptor"):
        Descriptor("distance_2b cutoff=4")
    with pytest.raises(ValueError, match="expects T or F"):
        Descriptor("soap cutoff=5 l_max=4 n_max=4 atom_sigma=0.5 normalise=maybe")


def test_neighbor_list_against_ase_brute_force(small_cell, triclinic):
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    for atoms in (small_cell, triclinic):
        mixed = atoms.copy()
        for pbc in ([True, True, True], [True, False, True]):
            mixed.pbc = pbc
            pairs = neighbor_list(as_batch(mixed), 4.0)
            i, j, shifts = ase_neighbor_list("ijS", mixed, 4.0)
            ours = sorted(
                zip(
                    pairs.i.tolist(),
                    pairs.j.tolist(),
                    map(tuple, pairs.shifts.tolist()),
                    strict=True,
                )
            )
            reference = sorted(
                zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist()), strict=True)
            )
            assert ours == reference
            assert len(ours) > 10 * len(atoms)


def test_system_and_dict_inputs_agree_with_ase(alloy):
    calc = soap()
    reference = calc.compute(alloy).values
    system = System(positions=alloy.positions, numbers=alloy.numbers, cell=alloy.cell[:], pbc=True)
    np.testing.assert_allclose(calc.compute(system).values, reference, atol=1e-14)
    frame = {
        "positions": torch.tensor(alloy.positions),
        "numbers": alloy.numbers,
        "cell": alloy.cell[:],
        "pbc": [True, True, True],
    }
    np.testing.assert_allclose(calc.compute(frame).values, reference, atol=1e-14)


def test_public_api_names_import():
    for name in tradens.__all__:
        assert getattr(tradens, name) is not None
    assert isinstance(tradens.__version__, str)
    assert isinstance(SoapHypers, type)


def test_neighbour_memory_check_accepts_a_large_dense_alloy_cell():
    """2000 atoms in a 32 Å cube (a 25-element HEA cell, cutoff 5 Å): about 1e5 pairs, accepted.

    (An n^2-images bound once estimated 1.1e8 pairs and refused it.)"""
    from tradens.systems.neighbors import PAIR_BYTES, _check_pair_count

    box = np.eye(3) * 32.0
    _check_pair_count(0, 2000, box, np.array([True, True, True]), 5.0)
    from tradens.kernels import budget

    # the estimate itself stays within a few times the true count (~70 per atom at 0.061/Å^3)
    seen = {}

    def record(nbytes, what, remedy):
        seen["pairs"] = nbytes / PAIR_BYTES

    original = budget.check_memory
    budget.check_memory = record
    try:
        _check_pair_count(0, 2000, box, np.array([True, True, True]), 5.0)
    finally:
        budget.check_memory = original
    assert 2000 * 70 < seen["pairs"] < 2000 * 600


def test_neighbour_memory_check_refuses_a_cell_far_too_small_for_its_atoms():
    """2000 atoms in a 5 Å cube with a 20 Å cutoff: ~2e9 pairs, refused with the count."""
    atoms = ase.Atoms(
        "Cu2000",
        positions=np.random.default_rng(0).uniform(0, 5, (2000, 3)),
        cell=np.eye(3) * 5.0,
        pbc=True,
    )
    from tradens.systems.neighbors import _check_pair_count

    with pytest.raises(ValueError, match="neighbour pairs within the cutoff of 20"):
        _check_pair_count(0, len(atoms), np.asarray(atoms.cell), np.array([True] * 3), 20.0)


def test_descriptor_jacobians_that_cannot_fit_are_refused_with_the_estimate(monkeypatch):
    from tradens.gradients import descriptor_gradients
    from tradens.kernels import budget

    soap = SOAP(cutoff=3.5, l_max=4, radial={"n_max": 6}, species=[29])
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    descriptor_gradients(soap, atoms)  # fits: computed
    # room for the neighbour-list estimate (~111 KB) but not for the Jacobians (~160 KB)
    monkeypatch.setattr(budget, "available_memory", lambda device=None: 120_000.0)
    with pytest.raises(ValueError, match=r"descriptor Jacobians of 1 structure.*entries x 3 x 105"):
        descriptor_gradients(soap, atoms)


def test_a_fit_whose_normal_equations_cannot_fit_is_refused_with_the_estimate(monkeypatch):
    from _models_helpers import alloy, label, planted, small_soap

    from tradens.kernels import budget
    from tradens.models import LinearPotential

    soap = small_soap()
    _, _, model_fn = planted(soap)
    frames = label([alloy(s, repeat=(1, 1, 1)) for s in range(4)], soap, model_fn)
    model = LinearPotential(soap, alphas=[1e-6], cv=2, per_element=True, solver="primal")
    d = model.fit(frames).basis_.n_outputs  # fits: 3 elements x F features
    needed = (2 * 3 + 2) * d * d * 8  # 2 folds x energy, forces, stress, + the solve's copies
    monkeypatch.setattr(budget, "available_memory", lambda device=None: needed - 1.0)
    with pytest.raises(ValueError, match=rf"normal equations of a fit with {d} basis functions"):
        LinearPotential(soap, alphas=[1e-6], cv=2, per_element=True, solver="primal").fit(frames)
