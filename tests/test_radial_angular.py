"""Radial and angular building blocks against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

from tradens.density.angular import l_of_lm, lm_index, spherical_harmonics
from tradens.density.radial import GaussianGridBasis, GtoBasis, cosine_cutoff, scaled_spherical_in


@pytest.mark.parametrize("l_max", [4, 12])
def test_scaled_bessel_against_scipy(l_max):
    x = np.concatenate([[0.0], np.logspace(-8, 2.2, 2000)])
    ours = scaled_spherical_in(torch.tensor(x), l_max).numpy()
    reference = np.stack(
        [np.exp(-x) * special.spherical_in(l, x) for l in range(l_max + 1)], axis=-1
    )
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-300)


def test_scaled_bessel_gradient_is_finite_at_threshold():
    from tradens.density.radial import _series_threshold

    t = _series_threshold(4)
    x = torch.tensor(
        [0.0, 1e-3, t - 1e-3, t, t + 1e-3, 30.0], dtype=torch.float64, requires_grad=True
    )
    values = scaled_spherical_in(x, 4)
    values.sum().backward()
    assert torch.isfinite(x.grad).all()
    # the series and the recurrence meet continuously at the threshold
    assert torch.allclose(values[2], values[3], rtol=1e-3) and torch.allclose(
        values[3], values[4], rtol=1e-3
    )


def test_spherical_harmonics_orthonormal_and_against_scipy():
    l_max = 12
    # Gauss-Legendre x trapezoid quadrature on the sphere, exact for degree <= 2 l_max
    nodes, weights = np.polynomial.legendre.leggauss(l_max + 2)
    phi = np.linspace(0, 2 * np.pi, 2 * l_max + 3, endpoint=False)
    z, ph = np.meshgrid(nodes, phi, indexing="ij")
    w = np.meshgrid(weights, np.full(phi.shape, 2 * np.pi / len(phi)), indexing="ij")
    w = (w[0] * w[1]).ravel()
    sin = np.sqrt(1 - z**2)
    xyz = np.stack([sin * np.cos(ph), sin * np.sin(ph), z], axis=-1).reshape(-1, 3)
    y = spherical_harmonics(torch.tensor(xyz), l_max).numpy()  # [q, lm]
    gram = (y * w[:, None]).T @ y
    np.testing.assert_allclose(gram, np.eye((l_max + 1) ** 2), atol=1e-12)
    # against scipy's complex harmonics:
    # Y_{l,m>0} = sqrt2 (-1)^m Re Y_l^m, Y_{l,-m} = sqrt2 (-1)^m Im Y_l^m
    theta, azimuth = np.arccos(xyz[:, 2]), np.arctan2(xyz[:, 1], xyz[:, 0])
    for l in (0, 3, 12):
        for m in range(-l, l + 1):
            ref = special.sph_harm_y(l, abs(m), theta, azimuth)
            if m > 0:
                expected = math.sqrt(2) * (-1) ** m * ref.real
            elif m < 0:
                expected = math.sqrt(2) * (-1) ** m * ref.imag
            else:
                expected = ref.real
            np.testing.assert_allclose(y[:, lm_index(l, m)], expected, atol=1e-12)


def test_addition_theorem():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    ya = spherical_harmonics(torch.tensor(a), 8).numpy()
    yb = spherical_harmonics(torch.tensor(b), 8).numpy()
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    ls = l_of_lm(8).numpy()
    for l in range(9):
        lhs = (ya[:, ls == l] * yb[:, ls == l]).sum(1)
        np.testing.assert_allclose(
            lhs, (2 * l + 1) / (4 * np.pi) * special.eval_legendre(l, cos), atol=1e-12
        )


def test_gaussian_grid_basis_reconstructs_density():
    """GAP's basis: phi = g L^-T is orthonormal, and sum_n R_nl(r) phi_n reproduces the l-component
    of a Gaussian atom at distance r exactly on the grid points (computed here by quadrature)."""
    n_max, cutoff, sigma = 5, 4.0, 0.6
    basis = GaussianGridBasis(n_max, 3, cutoff, sigma)
    grid = basis._grid.numpy()
    transform = basis._transform.numpy()  # C^-1 L
    alpha = 1 / (2 * sigma**2)
    overlap = np.exp(-alpha * (grid[:, None] - grid[None, :]) ** 2)  # C
    lower = overlap @ transform  # L

    def phi(s):  # orthonormal radial functions, [..., n]
        return np.exp(-alpha * (np.asarray(s)[..., None] - grid) ** 2) @ np.linalg.inv(lower).T

    s = np.linspace(0, cutoff + 8 * sigma, 40001)
    values = phi(s)  # [q, n]
    gram = integrate.trapezoid(
        values[:, :, None] * values[:, None, :] * s[:, None, None] ** 2, s, axis=0
    )
    np.testing.assert_allclose(gram, np.eye(n_max), atol=1e-8)
    r = 2.3
    coefficients = basis(torch.tensor([r], dtype=torch.float64)).numpy()[0]  # [n, l]
    cos_t, weights = np.polynomial.legendre.leggauss(200)
    for l in range(4):
        y_l0 = special.sph_harm_y(l, 0, 0.0, 0.0).real
        for a in range(1, n_max):
            d2 = grid[a] ** 2 + r**2 - 2 * grid[a] * r * cos_t
            y = special.sph_harm_y(l, 0, np.arccos(cos_t), 0.0).real
            projection = (
                2 * np.pi * np.sum(weights * np.exp(-alpha * d2) * y)
            )  # int dOmega rho Y_l0
            reconstructed = 4 * np.pi * y_l0 * coefficients[:, l] @ phi(grid[a])
            np.testing.assert_allclose(reconstructed, projection, rtol=1e-10, atol=1e-14)


def test_gto_spline_matches_direct_quadrature():
    basis = GtoBasis(4, 3, 4.5, 0.5)
    r = torch.tensor([0.3, 1.7, 2.95, 4.2], dtype=torch.float64)
    ours = basis(r).numpy()
    # direct evaluation of the same integral at these distances from a fresh dense table
    from tradens.density.radial import _gto_table

    knots, values, _ = _gto_table(4, 3, 4.5, 0.5, 451)
    for index, distance in enumerate(r.numpy()):
        k = int(round(distance / knots[1]))
        assert abs(knots[k] - distance) < 1e-9
        np.testing.assert_allclose(ours[index], values[k], atol=2e-9)


def test_cosine_cutoff():
    r = torch.tensor([0.0, 3.9, 4.25, 4.5, 4.7])
    f = cosine_cutoff(r, 4.5, 0.6)
    np.testing.assert_allclose(
        f.numpy(), [1.0, 1.0, 0.5 * (np.cos(np.pi * 0.35 / 0.6) + 1), 0.0, 0.0], atol=1e-7
    )


def test_gto_tabulated_derivative_matches_values():
    from tradens.density.radial import _gto_table

    knots, values, derivs = _gto_table(3, 4, 4.0, 0.5, 801)
    numeric = (values[2:] - values[:-2]) / (knots[2:] - knots[:-2])[:, None, None]
    scale = np.abs(derivs).max()
    assert scale > 0.1
    np.testing.assert_allclose(derivs[1:-1], numeric, atol=2e-4 * scale)
