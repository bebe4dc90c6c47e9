"""Analytic per-pair Jacobians of the channel-diagonal ACE against JVPs and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SPECIES
from test_gradients import check_against_finite_differences

from tradens import as_batch
from tradens.gradients import descriptor_gradients
from tradens.gradients.ace_pairs import ace_pair_gradients
from tradens.gradients.api import jacobian_path
from tradens.representations.ace import ACE

BASE = dict(
    cutoff=4.5, species=list(SPECIES), nu_max=4, l_max=(0, 4, 3, 2), channels=5, radial={"n_max": 4}
)
VARIANTS = {
    "shared": {},
    "normalised": dict(normalize=True),
    "per-order-channels": dict(channels=(3, 4, 2, 2)),
    "even-gto": dict(parity="even", radial={"n_max": 3, "kind": "gto"}),
    "centre-weight": dict(nu_max=3, l_max=(0, 3, 2), density={"center_weight": 1.0}),
}


def ace_of(variant: str) -> ACE:
    return ACE(**{**BASE, **VARIANTS[variant]})


@pytest.mark.parametrize("system", ["alloy", "small_cell", "triclinic", "molecule"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pair_path_equals_jvps(variant, system, request):
    atoms = request.getfixturevalue(system)
    ace = ace_of(variant)
    assert jacobian_path(ace) == "ace-pair"
    pair = descriptor_gradients(ace, atoms, method="pair")
    jvp = descriptor_gradients(ace, atoms, method="jvp")
    assert torch.equal(pair.index, jvp.index)
    scale = float(jvp.positions.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(pair.values, jvp.values, atol=1e-14, rtol=0)
    torch.testing.assert_close(pair.positions, jvp.positions, atol=1e-12 * max(1.0, scale), rtol=0)
    torch.testing.assert_close(pair.strain, jvp.strain, atol=1e-11 * max(1.0, scale), rtol=0)


def test_finite_differences_and_auto_dispatch(triclinic):
    ace = ace_of("normalised")
    check_against_finite_differences(ace, triclinic, atom_ids=[0, 2], method="auto")
    full = ACE(**{**BASE, "nu_max": 3, "l_max": (0, 2, 2), "channels": 3, "mode": "full"})
    assert jacobian_path(full) == "jvp"  # channel tuples: the JVP path
    with pytest.raises(ValueError, match="channel-diagonal ACE"):
        descriptor_gradients(full, triclinic, method="pair")


def test_small_chunks_and_float32(alloy):
    ace = ace_of("shared")
    reference = ace_pair_gradients(ace, as_batch(alloy), strain=True, chunk_bytes=64 * 2**20)
    chunked = ace_pair_gradients(
        ace, as_batch(alloy), strain=True, chunk_bytes=1
    )  # one centre per chunk
    torch.testing.assert_close(chunked.positions, reference.positions, atol=1e-14, rtol=0)
    torch.testing.assert_close(chunked.strain, reference.strain, atol=1e-13, rtol=0)
    single = descriptor_gradients(ace, alloy, dtype=torch.float32)
    assert single.positions.dtype == torch.float32
    scale = float(reference.positions.abs().max())
    np.testing.assert_allclose(
        single.positions.double().numpy(), reference.positions.numpy(), atol=1e-5 * scale
    )
