"""Tensor-reduced ACE calculator: contract, identities with SOAP, rank and convergence."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from tradens import SOAP
from tradens.representations.ace import ACE
from tradens.testing import (
    assert_permutation_covariant,
    assert_rotation_invariant,
    assert_supercell_consistent,
    assert_translation_invariant,
)

SPECIES = [28, 29, 46]
HEA25 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hea25" / "hea25_dev.xyz"


def make(**kw):
    base = dict(
        cutoff=4.5, species=SPECIES, nu_max=4, l_max=(0, 4, 3, 2), channels=5, radial={"n_max": 4}
    )
    base.update(kw)
    return ACE(**base)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"mode": "full", "channels": 3, "nu_max": 3, "l_max": (0, 2, 2)},
        {"channels": (3, 4, 2, 2)},
        {"parity": "even", "normalize": True},
    ],
)
def test_invariance_contract(kw, alloy, small_cell):
    ace = make(**kw)
    assert_rotation_invariant(ace, alloy, atol=1e-10)
    assert_translation_invariant(ace, alloy, atol=1e-10)
    assert_permutation_covariant(ace, alloy, atol=1e-10)
    assert_supercell_consistent(ace, small_cell, repeat=(2, 1, 2), atol=1e-10)


def test_parity_even_invariant_under_inversion_and_odd_flips(alloy):
    # channel-diagonal products of equal l are symmetric, which kills the nu=3 pseudoscalars
    # such as (1,1,1); the full basis keeps e.g. the triple product of three channels
    ace = make(nu_max=3, l_max=(0, 2, 2), mode="full", channels=3)
    reference = ace.compute(alloy).values
    inverted = alloy.copy()
    inverted.positions = -alloy.positions
    inverted.set_cell(-np.asarray(alloy.cell), scale_atoms=False)
    values = ace.compute(inverted).values
    odd = np.array([sum(map(int, l.split("-"))) % 2 == 1 for l in ace.feature_labels()["l"]])
    assert odd.any()
    np.testing.assert_allclose(values[:, ~odd], reference[:, ~odd], atol=1e-10)
    np.testing.assert_allclose(values[:, odd], -reference[:, odd], atol=1e-10)
    assert np.abs(reference[:, odd]).max() > 1e-6


def test_element_relabelling_with_permuted_embedding(alloy):
    n_max, K = 3, 4
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(3 * n_max, K))
    relabel = {28: 46, 29: 28, 46: 29}
    other = alloy.copy()
    other.numbers = [relabel[z] for z in alloy.numbers]
    permuted = np.empty_like(matrix)
    for s, z in enumerate(SPECIES):
        t = SPECIES.index(relabel[z])
        permuted[t * n_max : (t + 1) * n_max] = matrix[s * n_max : (s + 1) * n_max]
    kw = dict(radial={"n_max": n_max}, channels=K, weights="given", nu_max=3, l_max=(0, 3, 2))
    a = make(matrix=matrix, **kw).compute(alloy).values
    b = make(matrix=permuted, **kw).compute(other).values
    np.testing.assert_allclose(b, a, atol=1e-11)


def test_nu2_diagonal_equals_elementwise_tr_soap(alloy):
    """B_{k,(l,l)} = sum_m A_klm^2 / sqrt(2l+1) = p_kl of the element-wise TR power spectrum."""
    n_max, K, l_max = 4, 5, 4
    matrix = np.random.default_rng(2).normal(size=(3 * n_max, K))
    ace = make(
        nu_max=2,
        l_max=(0, l_max),
        channels=K,
        weights="given",
        matrix=matrix,
        density={"sigma": 0.5, "center_weight": 1.0},
    )
    soap = SOAP(
        cutoff=4.5,
        l_max=l_max,
        radial={"n_max": n_max},
        species=SPECIES,
        normalize=False,
        mixing={"mode": "radial+element", "channels": K, "weights": "given", "matrix": matrix},
        coupling="elementwise",
    )
    b = ace.compute(alloy)
    p = soap.compute(alloy).values.reshape(len(alloy), K, l_max + 1)  # [atom, k, l]
    labels = b.labels
    nu2 = labels["nu"] == 2
    for column in np.nonzero(nu2)[0]:
        k = int(labels["k"][column].split("-")[0])
        l = int(labels["l"][column].split("-")[0])
        np.testing.assert_allclose(b.values[:, column], p[:, k, l], rtol=1e-12, atol=1e-14)
    # nu = 1 is the l = 0 radial density invariant:
    # A_k00 = sqrt(4 pi)^-1-free projection sum_j W R Y00
    nu1 = np.nonzero(labels["nu"] == 1)[0]
    np.testing.assert_allclose(b.values[:, nu1] ** 2, p[:, :, 0], rtol=1e-12, atol=1e-14)


def test_full_onehot_nu2_is_the_full_soap(alloy):
    """With one-hot (z, n) channels the full nu=2 basis is the species-resolved power spectrum."""
    n_max, l_max = 2, 3
    ace = ACE(
        cutoff=4.5,
        species=SPECIES,
        nu_max=2,
        l_max=(0, l_max),
        weights="onehot",
        mode="full",
        radial={"n_max": n_max},
        density={"center_weight": 1.0},
    )
    soap = SOAP(cutoff=4.5, l_max=l_max, radial={"n_max": n_max}, species=SPECIES, normalize=False)
    b, x = ace.compute(alloy), soap.compute(alloy).values
    soap_labels = soap.feature_labels()
    lookup = {
        (a, c, l): i
        for i, (a, c, l) in enumerate(
            zip(soap_labels["channel_1"], soap_labels["channel_2"], soap_labels["l"], strict=True)
        )
    }
    nu2 = np.nonzero(b.labels["nu"] == 2)[0]
    assert len(nu2) == len(lookup)
    for column in nu2:
        k1, k2 = map(int, b.labels["k"][column].split("-"))
        l = int(b.labels["l"][column].split("-")[0])
        target = x[:, lookup[(max(k1, k2), min(k1, k2), l)]] / (1.0 if k1 == k2 else np.sqrt(2.0))
        np.testing.assert_allclose(
            np.abs(b.values[:, column]), np.abs(target), rtol=1e-11, atol=1e-14
        )


def test_linear_independence_over_environments():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(40):
        positions = rng.normal(scale=1.3, size=(9, 3))
        frames.append(ase.Atoms(numbers=rng.choice(SPECIES, 9), positions=positions))
    ace = make(nu_max=4, l_max=(0, 3, 2, 1), channels=3)
    x = ace.compute(frames).values
    assert x.shape[0] > 2 * x.shape[1]
    singular = np.linalg.svd(x / np.linalg.norm(x, axis=0), compute_uv=False)
    assert singular[-1] / singular[0] > 1e-8, singular[-1] / singular[0]


def test_feature_count_independent_of_species():
    a = make(species=[1, 6], channels=6)
    b = make(species=list(range(1, 26)), channels=6)
    assert a.n_features == b.n_features > 6


def test_float32_close_to_float64(alloy):
    ace = make()
    x64 = ace.compute(alloy).values
    x32 = ace.compute(alloy, dtype=torch.float32).values
    np.testing.assert_allclose(x32, x64, atol=1e-5 * np.abs(x64).max())


@pytest.mark.skipif(not HEA25.exists(), reason="shared HEA25 data not available")
def test_convergence_to_full_basis_on_hea25():
    """Residual of the full basis regressed on TR features falls with K; zero at K = S * n_max."""
    frames = ase.io.read(HEA25, "::2")  # 45 structures, all 25 elements, ~1800 atoms
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    common = dict(
        cutoff=4.0,
        species=species,
        nu_max=2,
        l_max=(0, 2),
        radial={"n_max": 1},
        density={"sigma": 0.5, "center_weight": 0.0},
    )
    full = ACE(weights="onehot", mode="full", **common).compute(frames).values
    full = full - full.mean(axis=0)
    residuals = {}
    assert len(species) == 25
    for mode, ks in (("full", (4, 12, 25)), ("diagonal", (8, 32))):
        residuals[mode] = []
        for K in ks:
            tr = (
                ACE(weights="random", mode=mode, channels=K, seed=3, **common)
                .compute(frames)
                .values
            )
            tr = np.hstack([tr - tr.mean(axis=0), np.ones((len(tr), 1))])
            coefficients, *_ = np.linalg.lstsq(tr, full, rcond=None)
            residuals[mode].append(np.linalg.norm(full - tr @ coefficients) / np.linalg.norm(full))
    for values in residuals.values():
        assert all(b < a for a, b in zip(values[:-1], values[1:], strict=True)), residuals
    assert residuals["full"][-1] < 1e-8  # K = S * n_max = 25 channels: exact
    assert residuals["full"][0] > 0.05


def test_per_order_mode_concatenates_the_pure_modes(alloy):
    """``mode`` per order: each order's columns are those of the same order in the pure mode."""
    kw = dict(nu_max=3, l_max=(0, 3, 2), channels=(3, 4, 3))
    mixed = make(mode=("full", "full", "diagonal"), **kw)
    parts = {m: make(mode=m, **kw) for m in ("full", "diagonal")}
    values = mixed.compute(alloy).values
    nu = mixed.feature_labels()["nu"]
    for order, mode in ((1, "full"), (2, "full"), (3, "diagonal")):
        reference = parts[mode]
        expected = reference.compute(alloy).values[:, reference.feature_labels()["nu"] == order]
        np.testing.assert_allclose(values[:, nu == order], expected, rtol=1e-12, atol=1e-14)
    assert mixed.n_features == sum(
        int((parts[m].feature_labels()["nu"] == o).sum())
        for o, m in ((1, "full"), (2, "full"), (3, "diagonal"))
    )
    # an int K with a per-order mode gives every order its own embedding of K channels
    shared = make(mode=("diagonal", "full", "diagonal"), nu_max=3, l_max=(0, 3, 2), channels=3)
    assert (
        shared.n_features
        == make(
            mode=("diagonal", "full", "diagonal"), nu_max=3, l_max=(0, 3, 2), channels=(3, 3, 3)
        ).n_features
    )
    assert_rotation_invariant(mixed, alloy, atol=1e-10)


@pytest.mark.parametrize("mode", [("full", "diagonal"), ("full", "full", "bad")])
def test_per_order_mode_validation(mode):
    with pytest.raises(ValueError, match="mode"):
        make(nu_max=3, l_max=(0, 3, 2), mode=mode)
