"""The fast paths of the expansion and power spectrum against their plain definitions.

``expand_density(weights=W)`` mixes per pair (neighbours grouped by species,
padded neighbour lists, batched products) instead of forming ``c``; the power
spectrum writes symmetric (triangle) and element-wise (diagonal) products into
a preallocated output without autograd; the radial basis and the harmonics
have no-autograd paths that write into buffers. Each is checked here against
the straightforward formula, with and without autograd, and by finite
differences (``gradcheck``) where derivatives flow.
"""

from __future__ import annotations

import dataclasses
import math

import ase
import ase.build
import numpy as np
import pytest
import torch

from tradens import SOAP
from tradens.density.angular import l_of_lm, spherical_harmonics
from tradens.density.expansion import SpeciesMap, expand_density
from tradens.density.radial import GaussianGridBasis, GtoBasis, cosine_cutoff
from tradens.representations.soap import _plan, pair_plan, power_spectrum
from tradens.systems import as_batch
from tradens.systems.neighbors import neighbor_list, pair_vectors

SPECIES = (28, 29, 46)


def _reference_density(
    batch,
    vectors,
    pairs,
    species_index,
    *,
    n_species,
    radial,
    l_max,
    cutoff,
    width,
    center_weight,
    center_all,
):
    """``c [atom, S*N, lm]`` straight from the definition (outer products, one pair at a time)."""
    n_max = radial.n_max
    lm_to_l = l_of_lm(l_max)
    c = torch.zeros(batch.n_atoms, n_species, n_max, (l_max + 1) ** 2, dtype=vectors.dtype)
    r = torch.linalg.vector_norm(vectors, dim=1)
    values = radial(r) * cosine_cutoff(r, cutoff, width)[:, None, None]  # [p, n, l]
    harmonics = spherical_harmonics(vectors, l_max)  # [p, lm]
    for p in range(len(pairs)):
        s = int(species_index[pairs.j[p]])
        if s < 0:
            continue
        c[pairs.i[p], s] += values[p][:, lm_to_l] * harmonics[p][None, :]
    center = (
        radial.center_values(vectors.dtype, vectors.device) * center_weight / math.sqrt(4 * math.pi)
    )
    for atom in range(batch.n_atoms):
        s = int(species_index[atom])
        if s < 0:
            continue
        targets = range(n_species) if center_all else [s]
        for t in targets:
            c[atom, t, :, 0] += center
    return c.reshape(batch.n_atoms, n_species * n_max, -1)


def _frames():
    rng = np.random.default_rng(3)
    bulk = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    bulk.numbers = rng.choice([28, 29, 46, 26], len(bulk))  # 26 is not a species: skipped
    bulk.rattle(0.2, seed=4)
    cluster = ase.Atoms(numbers=[28, 29, 46, 46, 28], positions=rng.normal(scale=1.4, size=(5, 3)))
    return [bulk, cluster]  # uneven neighbour counts, an element outside the species


@pytest.mark.parametrize("basis", ["gaussian_grid", "gto"])
@pytest.mark.parametrize("channels", [None, 4, 30])
@pytest.mark.parametrize("center_all", [False, True])
def test_expand_density_matches_definition(basis, channels, center_all):
    batch = as_batch(_frames())
    l_max, n_max, cutoff = 3, 4, 4.0
    radial = (
        GaussianGridBasis(n_max, l_max, cutoff, 0.5)
        if basis == "gaussian_grid"
        else GtoBasis(n_max, l_max, cutoff, 0.5)
    )
    pairs = neighbor_list(batch, cutoff)
    vectors = pair_vectors(batch, pairs)
    species_index = SpeciesMap(SPECIES, "skip")(batch.numbers)
    common = dict(n_species=3, radial=radial, l_max=l_max, cutoff=cutoff)
    reference = _reference_density(
        batch,
        vectors,
        pairs,
        species_index,
        width=0.7,
        center_weight=0.8,
        center_all=center_all,
        **common,
    )
    weights = None
    if channels is not None:
        weights = torch.randn(
            3 * n_max, channels, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
        )
        reference = torch.einsum("aIm,Ik->akm", reference, weights)
    for pair_chunk in (None, 7):  # 7: many chunks, atoms never split
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                vec = vectors.clone().requires_grad_(grad)
                ours = expand_density(
                    batch,
                    pairs,
                    vec,
                    species_index,
                    cutoff_width=0.7,
                    center_weight=0.8,
                    center_all_species=center_all,
                    pair_chunk=pair_chunk,
                    weights=weights,
                    **common,
                )
            np.testing.assert_allclose(
                ours.detach().numpy(), reference.numpy(), rtol=1e-12, atol=1e-13
            )


def test_mixing_by_species_with_uneven_counts():
    """Almost all neighbours of one species: per-species products are used instead of padding."""
    atoms = ase.build.bulk("Ni", "fcc", a=3.5, cubic=True) * (2, 2, 2)
    atoms.numbers[:2] = [29, 46]
    atoms.rattle(0.05, seed=1)
    kwargs = dict(cutoff=4.0, l_max=3, radial={"n_max": 4}, species=list(SPECIES))
    mixed = SOAP(mixing={"channels": 5}, coupling="elementwise", **kwargs)
    onehot_free = mixed.weights1.detach()
    dense = SOAP(**kwargs)  # full SOAP: c, then mix by hand
    batch = as_batch(atoms)
    pairs = neighbor_list(batch, 4.0)
    c = expand_density(
        batch,
        pairs,
        pair_vectors(batch, pairs),
        dense.species_map(batch.numbers),
        n_species=3,
        radial=dense.radial_basis,
        l_max=3,
        cutoff=4.0,
        cutoff_width=0.5,
        center_weight=1.0,
        center_all_species=False,
    )
    a = torch.einsum("aIm,Ik->akm", c, onehot_free)
    expected = (a * a).reshape(32, 5, -1)
    lm_to_l = l_of_lm(3)
    expected = torch.stack(
        [expected[:, :, lm_to_l == l].sum(-1) / math.sqrt(2 * l + 1) for l in range(4)], -1
    )
    expected = expected.reshape(32, -1)
    expected = expected / torch.linalg.vector_norm(expected, dim=1, keepdim=True)
    values, _ = mixed(batch)
    np.testing.assert_allclose(values.detach().numpy(), expected.numpy(), rtol=1e-12, atol=1e-14)


def _generic_plan(plan):
    return _plan(
        list(zip(plan.first.tolist(), plan.second.tolist(), plan.factor.tolist(), strict=True)),
        int(plan.first.max()) + 1,
        int(plan.second.max()) + 1,
    )


@pytest.mark.parametrize("kind", ["triangle-full", "triangle-mixed", "diagonal"])
def test_power_spectrum_fast_paths(kind):
    torch.manual_seed(0)
    if kind == "diagonal":
        plan = pair_plan(
            mode="radial+element",
            coupling="elementwise",
            symmetric=True,
            n_species=3,
            n_max=4,
            channels=7,
        )
        k = 7
    elif kind == "triangle-mixed":
        plan = pair_plan(
            mode="radial+element",
            coupling="tensor",
            symmetric=True,
            n_species=3,
            n_max=4,
            channels=7,
        )
        k = 7
    else:
        plan = pair_plan(mode=None, coupling="tensor", symmetric=True, n_species=13, n_max=9)
        k = 117  # several row blocks in the triangle kernel
    assert plan.structure == kind.split("-")[0]
    slow = dataclasses.replace(plan, structure="generic")
    y = torch.randn(5, k, 16, dtype=torch.float64)
    fast = power_spectrum(y, y, plan, 3)
    reference = power_spectrum(y, y, slow, 3)
    np.testing.assert_allclose(fast.numpy(), reference.numpy(), rtol=1e-13, atol=1e-13)
    assert _generic_plan(plan).structure == plan.structure


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"mixing": {"channels": 5}},
        {"mixing": {"channels": 5}, "coupling": "elementwise"},
        {"covariance_sigma0": 0.3, "normalize": False},
        {"mixing": {"channels": 3, "symmetric": False}},
    ],
)
def test_forward_without_graph_equals_forward_with_graph(variant):
    """The no-autograd fast paths (buffers, in-place writes) give the autograd path's values."""
    soap = SOAP(
        cutoff=4.0,
        l_max=3,
        radial={"n_max": 4},
        species=list(SPECIES),
        unknown_species="skip",
        **variant,
    )
    batch = as_batch(_frames()[:1])
    with torch.no_grad():
        fast, _ = soap(batch)
    positions = batch.positions.clone().requires_grad_(True)
    slow, _ = soap(batch, positions)
    assert slow.requires_grad
    np.testing.assert_allclose(fast.numpy(), slow.detach().numpy(), rtol=1e-13, atol=1e-14)
    out = torch.full_like(fast, math.nan)
    with torch.no_grad():
        soap(batch, out=out)
    np.testing.assert_allclose(out.numpy(), fast.numpy(), rtol=0, atol=0)


def _tiny():
    rng = np.random.default_rng(1)
    return ase.Atoms(
        numbers=[28, 29, 46, 28],
        positions=rng.normal(scale=1.3, size=(4, 3)),
        cell=np.eye(3) * 4.1 + rng.normal(scale=0.1, size=(3, 3)),
        pbc=True,
    )


@pytest.mark.parametrize(
    "variant",
    [
        {"mixing": {"channels": 3}, "coupling": "elementwise"},
        {"mixing": {"channels": 3}},
        {"mixing": {"mode": "element", "channels": 2}, "coupling": "elementwise"},
        {},
    ],
)
def test_gradcheck_positions_and_cell(variant):
    soap = SOAP(cutoff=3.0, l_max=2, radial={"n_max": 3}, species=list(SPECIES), **variant)
    batch = as_batch(_tiny())
    positions = batch.positions.clone().requires_grad_(True)
    cells = batch.cells.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, c: soap(batch, p, c)[0], (positions, cells))


def test_gradcheck_learnable_weights():
    soap = SOAP(
        cutoff=3.0,
        l_max=2,
        radial={"n_max": 3},
        species=list(SPECIES),
        mixing={"channels": 3, "learnable": True},
        coupling="elementwise",
    )
    batch = as_batch(_tiny())

    def features(w):
        soap.weights1.data = w  # the parameter holds the value being varied
        with torch.no_grad():
            values, _ = soap(batch)
        return values

    # derivative with respect to the parameter, by autograd, against central differences
    values, _ = soap(batch)
    probe = torch.randn_like(values)
    (grad,) = torch.autograd.grad((values * probe).sum(), soap.weights1)
    step = 1e-6
    for index in [(0, 0), (4, 2), (8, 1)]:
        original = soap.weights1.data.clone()
        shifted = original.clone()
        shifted[index] += step
        plus = features(shifted.clone())
        shifted[index] -= 2 * step
        minus = features(shifted.clone())
        soap.weights1.data = original
        numeric = float(((plus - minus) * probe).sum()) / (2 * step)
        assert abs(float(grad[index]) - numeric) < 1e-6 * max(1.0, abs(numeric))
    assert float(grad.abs().max()) > 1e-3  # not trivially zero


def test_radial_primitive_and_harmonics_paths_agree():
    basis = GaussianGridBasis(8, 6, 5.0, 0.5)
    r = torch.linspace(0.05, 5.0, 777, dtype=torch.float64)  # small and large Bessel arguments
    weight = torch.rand(777, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fast, transform = basis.primitive(r, weight)
    slow, _ = basis.primitive(r.clone().requires_grad_(True), weight)
    # the fast path applies the Gaussian factor before the recurrence, the autograd path after
    np.testing.assert_allclose(fast.numpy(), slow.detach().numpy(), rtol=1e-13, atol=0)
    radial = basis(r)  # [p, n, l]
    np.testing.assert_allclose(
        torch.einsum("lpa,an->pnl", fast, transform).numpy() / weight[:, None, None].numpy(),
        radial.numpy(),
        rtol=1e-12,
        atol=1e-14,
    )
    # values, independent of both paths: the primitive in closed form (scipy), e^{-x} i_l(x) =
    # sqrt(pi / 2x) ive(l + 1/2, x), and the basis R = rho T reproducing it on the grid from
    # radial functions phi_n that are orthonormal with weight s^2 (a scaled basis fails one of them)
    from scipy import integrate, special

    grid, alpha = basis._grid.numpy(), basis.alpha
    x = 2 * alpha * r.numpy()[:, None] * grid[None, :]  # [p, a]
    gauss = weight.numpy()[:, None] * np.exp(-alpha * (r.numpy()[:, None] - grid[None, :]) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        for l in range(7):
            bessel = np.sqrt(np.pi / (2 * x)) * special.ive(l + 0.5, x)
            closed = gauss * np.where(x > 0, bessel, float(l == 0))  # [p, a]
            np.testing.assert_allclose(fast[l].numpy(), closed, rtol=1e-10, atol=1e-300)
    overlap = np.exp(-alpha * (grid[:, None] - grid[None, :]) ** 2)  # [a, b]
    lower = overlap @ transform.numpy()  # L = C T
    s = np.linspace(0.0, grid.max() + 6.0, 20001)  # 12 Gaussian widths beyond the grid
    phi = np.exp(-alpha * (s[:, None] - grid[None, :]) ** 2) @ np.linalg.inv(lower).T  # [q, n]
    gram = integrate.trapezoid(phi[:, :, None] * phi[:, None, :] * s[:, None, None] ** 2, s, axis=0)
    np.testing.assert_allclose(gram, np.eye(8), atol=1e-7)
    on_grid = overlap @ np.linalg.inv(lower).T  # phi_n(grid_a) = (C L^-T)[a, n]
    for l in range(7):
        reproduced = radial[:, :, l].numpy() @ on_grid.T  # [p, a]
        closed = fast[l].numpy() / weight.numpy()[:, None]
        np.testing.assert_allclose(reproduced, closed, rtol=1e-8, atol=1e-12)
    vectors = torch.randn(300, 3, dtype=torch.float64)
    with torch.no_grad():
        plain = spherical_harmonics(vectors, 6)
    tracked = spherical_harmonics(vectors.clone().requires_grad_(True), 6)
    np.testing.assert_allclose(plain.numpy(), tracked.detach().numpy(), rtol=0, atol=0)


def test_float32_fast_paths():
    common = dict(
        cutoff=4.0, l_max=3, radial={"n_max": 4}, species=list(SPECIES), unknown_species="skip"
    )
    soap = SOAP(mixing={"channels": 5}, coupling="elementwise", **common)
    full = SOAP(**common)
    frames = _frames()
    for calculator in (soap, full):
        single = calculator.compute(frames, dtype=torch.float32).values
        double = calculator.compute(frames).values
        assert single.dtype == np.float32
        np.testing.assert_allclose(single, double, rtol=2e-4, atol=2e-5)
