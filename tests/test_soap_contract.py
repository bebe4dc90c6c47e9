"""The physics-invariance contract and identities for every SOAP variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tradens import SOAP
from tradens.testing import (
    assert_permutation_covariant,
    assert_rotation_invariant,
    assert_supercell_consistent,
    assert_translation_invariant,
    random_rotation,
    rotated,
)

SPECIES = [28, 29, 46]
VARIANTS = {
    "full": {},
    "full-gto": {"radial": {"kind": "gto", "n_max": 4}},
    "rz-elementwise": {
        "mixing": {"mode": "radial+element", "channels": 6},
        "coupling": "elementwise",
    },
    "rz-tensor-asym": {"mixing": {"mode": "radial+element", "channels": 5, "symmetric": False}},
    "element-gap": {
        "mixing": {"mode": "element", "channels": 2, "weights": "gap"},
        "coupling": "elementwise",
    },
    "radial-asym": {"mixing": {"mode": "radial", "channels": 3, "symmetric": False}},
    "averaged": {"mixing": {"mode": "radial+element", "channels": 4}, "average": True},
}


def make(variant: str, **extra) -> SOAP:
    kwargs = dict(cutoff=4.5, l_max=4, radial={"n_max": 4}, species=SPECIES)
    kwargs.update(VARIANTS[variant])
    kwargs.update(extra)
    return SOAP(**kwargs)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rotation_translation_permutation(variant, alloy):
    soap = make(variant)
    assert_rotation_invariant(soap, alloy, atol=1e-11)
    assert_rotation_invariant(
        soap, alloy, proper=False, atol=1e-11
    )  # power spectra are O(3) invariant
    assert_translation_invariant(soap, alloy, atol=1e-11)
    if not soap.hypers.average:
        assert_permutation_covariant(soap, alloy, atol=1e-11)


@pytest.mark.parametrize("variant", ["full", "rz-elementwise", "radial-asym"])
def test_supercell_equals_cell(variant, small_cell, triclinic):
    soap = make(variant)
    assert_supercell_consistent(soap, small_cell, repeat=(2, 3, 1), atol=1e-11)
    assert_supercell_consistent(soap, triclinic, repeat=(2, 1, 2), atol=1e-11)


def test_wrapped_and_unwrapped_positions_agree(alloy):
    soap = make("rz-tensor-asym")
    moved = alloy.copy()
    moved.positions += np.asarray(alloy.get_cell()).sum(axis=0) * 1.7  # far outside the cell
    wrapped = moved.copy()
    wrapped.wrap()
    np.testing.assert_allclose(soap.compute(moved).values, soap.compute(wrapped).values, atol=1e-11)


def test_onehot_embedding_reproduces_full_soap(alloy):
    full = make("full").compute(alloy).values
    n_channels = len(SPECIES) * 4
    onehot = make(
        "full", mixing={"mode": "radial+element", "channels": n_channels, "weights": "onehot"}
    )
    np.testing.assert_allclose(onehot.compute(alloy).values, full, atol=1e-13)
    # element-only one-hot mixing is the full density with a different channel order: same norm
    # of the unnormalised power spectrum (Frobenius norm of G_l, summed over l)
    kw = dict(normalize=False)
    full_raw = make("full", **kw).compute(alloy).values
    element = make("full", mixing={"mode": "element", "channels": 3, "weights": "onehot"}, **kw)
    np.testing.assert_allclose(
        np.linalg.norm(element.compute(alloy).values, axis=1),
        np.linalg.norm(full_raw, axis=1),
        rtol=1e-12,
    )


def test_mixed_equals_w_transpose_g_w(alloy):
    """P_l = W1^T G_l W2 with G_l from the full unnormalised SOAP (GAP's identity)."""
    n_max, l_max = 4, 4
    full = make("full", normalize=False).compute(alloy[:1] if False else alloy).values[0]
    n = len(SPECIES) * n_max
    gram = np.zeros((l_max + 1, n, n))
    index = 0
    for a in range(n):
        for b in range(a + 1):
            for l in range(l_max + 1):
                value = full[index] / (1.0 if a == b else np.sqrt(2.0))
                gram[l, a, b] = gram[l, b, a] = value
                index += 1
    soap = make("rz-tensor-asym", normalize=False)
    w1, w2 = soap.mixing_matrices(torch.float64, torch.device("cpu"))
    mixed = soap.compute(alloy).values[0].reshape(5, 5, l_max + 1)  # [a, b, l]
    expected = np.einsum("Ia,lIJ,Jb->abl", w1.numpy(), gram, w2.numpy())
    np.testing.assert_allclose(mixed, expected, atol=1e-12)


def test_element_relabelling_with_permuted_embedding(alloy):
    """Swapping the elements and the rows of the embedding leaves features unchanged."""
    rng = np.random.default_rng(3)
    free = rng.normal(size=(3, 4))  # element mode: [S, K]
    soap = make(
        "full", mixing={"mode": "element", "channels": 4, "weights": "given", "matrix": free}
    )
    relabel = {28: 46, 29: 28, 46: 29}
    other = alloy.copy()
    other.numbers = [relabel[z] for z in alloy.numbers]
    permuted_rows = np.empty_like(free)
    for s, z in enumerate(SPECIES):
        permuted_rows[SPECIES.index(relabel[z])] = free[s]
    soap2 = make(
        "full",
        mixing={"mode": "element", "channels": 4, "weights": "given", "matrix": permuted_rows},
    )
    np.testing.assert_allclose(soap2.compute(other).values, soap.compute(alloy).values, atol=1e-12)


@pytest.mark.parametrize("variant", ["full", "rz-elementwise"])
def test_float32_matches_float64(variant, alloy):
    soap = make(variant)
    x64 = soap.compute(alloy).values
    x32 = soap.compute(alloy, dtype=torch.float32).values
    assert x32.dtype == np.float32
    np.testing.assert_allclose(x32, x64, atol=2e-6, rtol=0)


def test_torch_positions_keep_dtype_and_gradient(alloy):
    soap = make("rz-elementwise")
    positions = torch.tensor(alloy.positions, requires_grad=True)
    frame = {"positions": positions, "numbers": alloy.numbers, "cell": alloy.cell[:], "pbc": True}
    from tradens import as_batch

    batch = as_batch(frame)
    values, _ = soap.forward(batch, positions=positions)
    values.sum().backward()
    assert positions.grad is not None and float(positions.grad.abs().max()) > 1e-6


def test_rotation_matrix_helper():
    rotation = random_rotation(4)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-14)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    assert np.linalg.det(random_rotation(4, proper=False)) == pytest.approx(-1.0)


def test_isolated_atom_and_rows(molecule):
    soap = make("full", normalize=False)
    features = soap.compute([molecule, molecule[:3]])
    assert features.values.shape == (11, soap.n_features)
    np.testing.assert_array_equal(features.structure, [0] * 8 + [1] * 3)
    np.testing.assert_array_equal(features.center, list(range(8)) + [0, 1, 2])
    np.testing.assert_array_equal(
        features.numbers, list(molecule.numbers) + list(molecule.numbers[:3])
    )
    isolated = features.values[7]
    # only the centre term: the (Ni n, Ni n', l=0) block is non-zero
    names = np.array(features.names)
    nonzero = names[np.abs(isolated) > 1e-14]
    assert len(nonzero) > 0 and all(
        n.startswith("Z28") and ".Z28" in n and n.endswith(".l0") for n in nonzero
    )


def test_inputs_not_modified(alloy):
    copy = alloy.copy()
    make("rz-tensor-asym").compute(alloy)
    np.testing.assert_array_equal(alloy.positions, copy.positions)
    np.testing.assert_array_equal(alloy.numbers, copy.numbers)
    np.testing.assert_array_equal(alloy.cell[:], copy.cell[:])


def test_rotated_helper_rotates_cell(alloy):
    rotation = random_rotation(1)
    other = rotated(alloy, rotation)
    np.testing.assert_allclose(other.cell.volume, alloy.cell.volume)
    np.testing.assert_allclose(other.positions, alloy.positions @ rotation.T)
