"""Tests for tradens.invariants.coupling: real CG, real Wigner D, generalised coupling tensors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tradens.density.angular import spherical_harmonics
from tradens.invariants.coupling import (
    canonical_labels,
    complex_clebsch_gordan,
    complex_to_real_matrix,
    coupling_tensors,
    coupling_tensors_torch,
    coupling_tree_coefficients,
    coupling_tree_tensor,
    coupling_trees,
    enumerate_l_tuples,
    n_coupling_paths,
    real_clebsch_gordan,
    real_clebsch_gordan_torch,
    wigner_d_real,
    wigner_d_real_full,
)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotate_tensor(u: np.ndarray, ls, R: np.ndarray) -> np.ndarray:
    """Apply D_{l_t}(R) to every m index of u[path, m_1, ..., m_nu]."""
    out = u
    for t, l in enumerate(ls):
        d = wigner_d_real(l, R)
        out = np.moveaxis(np.tensordot(out, d, axes=([t + 1], [0])), -1, t + 1)
    return out


# --------------------------------------------------------------------------
# SO(3) character theory: independent count of invariants
# --------------------------------------------------------------------------

_THETA = np.linspace(0.0, 2.0 * np.pi, 512, endpoint=False)


def _chi(l: int, theta: np.ndarray) -> np.ndarray:
    return 1.0 + 2.0 * sum(np.cos(m * theta) for m in range(1, l + 1))


def _sym_power_character(n: int, l: int) -> np.ndarray:
    # cycle index of S_n: Z_n = (1/n) sum_k p_k Z_{n-k}, p_k = chi_l(k theta)
    z = [np.ones_like(_THETA)]
    for j in range(1, n + 1):
        z.append(sum(_chi(l, k * _THETA) * z[j - k] for k in range(1, j + 1)) / j)
    return z[n]


def expected_invariants(ls, labels) -> int:
    """dim of SO(3) invariants in the tensor product of Sym^{n}(V_l) over (label, l) groups."""
    groups: dict = {}
    for lab, l in zip(labels, ls, strict=True):
        groups[(lab, l)] = groups.get((lab, l), 0) + 1
    char = np.ones_like(_THETA)
    for (_, l), n in groups.items():
        char = char * _sym_power_character(n, l)
    # Weyl integration formula, class function of the rotation angle
    value = np.mean(char * (1.0 - np.cos(_THETA)))
    return int(round(value))


# --------------------------------------------------------------------------
# Clebsch-Gordan coefficients
# --------------------------------------------------------------------------


def test_complex_cg_matches_sympy():
    wigner = pytest.importorskip("sympy.physics.wigner")
    for l1, l2 in itertools.product(range(4), repeat=2):
        for L in range(abs(l1 - l2), l1 + l2 + 1):
            c = complex_clebsch_gordan(l1, l2, L)
            for m1, m2 in itertools.product(range(-l1, l1 + 1), range(-l2, l2 + 1)):
                M = m1 + m2
                if abs(M) > L:
                    continue
                ref = float(wigner.clebsch_gordan(l1, l2, L, m1, m2, M))
                assert c[m1 + l1, m2 + l2, M + L] == pytest.approx(ref, abs=1e-14)


def test_complex_to_real_matrix_matches_scipy():
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    theta = np.arccos(x[:, 2])
    phi = np.arctan2(x[:, 1], x[:, 0])
    l_max = 4
    y_real = spherical_harmonics(torch.from_numpy(x), l_max).numpy()
    for l in range(l_max + 1):
        ms = np.arange(-l, l + 1)
        if hasattr(special, "sph_harm_y"):
            yc = special.sph_harm_y(l, ms[None, :], theta[:, None], phi[:, None])
        else:  # pragma: no cover - old scipy
            yc = special.sph_harm(ms[None, :], l, phi[:, None], theta[:, None])
        u = complex_to_real_matrix(l)
        np.testing.assert_allclose(u @ u.conj().T, np.eye(2 * l + 1), atol=1e-14)
        np.testing.assert_allclose(yc @ u.T, y_real[:, l * l : (l + 1) ** 2], atol=1e-12)


@pytest.mark.parametrize("l1,l2", [(0, 0), (1, 1), (1, 2), (2, 2), (3, 2), (3, 3), (4, 2)])
def test_real_cg_orthogonality(l1, l2):
    cols = [real_clebsch_gordan(l1, l2, L) for L in range(abs(l1 - l2), l1 + l2 + 1)]
    mat = np.concatenate(cols, axis=2).reshape((2 * l1 + 1) * (2 * l2 + 1), -1)
    n = mat.shape[0]
    assert mat.shape == (n, n)
    np.testing.assert_allclose(mat.T @ mat, np.eye(n), atol=1e-13)  # sum_m1m2 C C = d_LL' d_MM'
    np.testing.assert_allclose(mat @ mat.T, np.eye(n), atol=1e-13)  # sum_LM C C = d d
    assert np.isrealobj(mat)
    # outside the triangle rule: zeros
    assert not real_clebsch_gordan(l1, l2, l1 + l2 + 1).any()


def test_real_cg_equivariance():
    rng = np.random.default_rng(1)
    for _ in range(3):
        R = random_rotation(rng)
        for l1, l2 in itertools.product(range(4), repeat=2):
            d1, d2 = wigner_d_real(l1, R), wigner_d_real(l2, R)
            for L in range(abs(l1 - l2), l1 + l2 + 1):
                c = real_clebsch_gordan(l1, l2, L)
                dl = wigner_d_real(L, R)
                lhs = np.einsum("abc,ai,bj->ijc", c, d1, d2)
                rhs = np.einsum("cd,ijd->ijc", dl, c)
                np.testing.assert_allclose(lhs, rhs, atol=1e-12)


def test_real_cg_equivariance_coupled_vectors():
    # couple two random equivariant vectors, rotate inputs -> output rotates
    rng = np.random.default_rng(2)
    R = random_rotation(rng)
    l1, l2, L = 2, 3, 4
    a1, a2 = rng.normal(size=2 * l1 + 1), rng.normal(size=2 * l2 + 1)
    c = real_clebsch_gordan(l1, l2, L)
    x = np.einsum("abc,a,b->c", c, a1, a2)
    x_rot = np.einsum("abc,a,b->c", c, wigner_d_real(l1, R) @ a1, wigner_d_real(l2, R) @ a2)
    np.testing.assert_allclose(x_rot, wigner_d_real(L, R) @ x, atol=1e-12)


def _gauss_sphere_quadrature(n: int):
    # exact for polynomials of degree < 2n in cos(theta) and < n in phi harmonics
    z, wz = np.polynomial.legendre.leggauss(n)
    phi = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    s = np.sqrt(1 - zz**2)
    pts = np.stack([s * np.cos(pp), s * np.sin(pp), zz], axis=-1).reshape(-1, 3)
    w = (wz[:, None] * np.full(phi.shape, 2 * np.pi / len(phi))[None, :]).reshape(-1)
    return pts, w


def test_real_cg_against_gaunt_quadrature():
    # integral Y_{l1 m1} Y_{l2 m2} Y_{L M} over the sphere (real Gaunt coefficients)
    # = sqrt((2l1+1)(2l2+1) / (4 pi (2L+1))) <l1 0 l2 0|L 0> * C_real[m1, m2, M]
    # up to a global sign per (l1, l2, L), and vanishes for odd l1 + l2 + L.
    l_max = 3
    pts, w = _gauss_sphere_quadrature(12)
    y = spherical_harmonics(torch.from_numpy(pts), 2 * l_max).numpy()
    checked = 0
    for l1, l2 in itertools.product(range(l_max + 1), repeat=2):
        for L in range(abs(l1 - l2), l1 + l2 + 1):
            y1 = y[:, l1 * l1 : (l1 + 1) ** 2]
            y2 = y[:, l2 * l2 : (l2 + 1) ** 2]
            y3 = y[:, L * L : (L + 1) ** 2]
            gaunt = np.einsum("p,pa,pb,pc->abc", w, y1, y2, y3)
            c = real_clebsch_gordan(l1, l2, L)
            if (l1 + l2 + L) % 2:
                np.testing.assert_allclose(gaunt, 0.0, atol=1e-13)
                assert np.abs(c).max() > 0.1
                continue
            kappa = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) / (4 * math.pi * (2 * L + 1)))
            kappa *= complex_clebsch_gordan(l1, l2, L)[l1, l2, L]
            sign = np.sign(np.sum(gaunt * c) * kappa)
            np.testing.assert_allclose(gaunt, sign * kappa * c, atol=1e-13)
            checked += 1
    assert checked > 20


# --------------------------------------------------------------------------
# Wigner D
# --------------------------------------------------------------------------


def test_wigner_d_real_properties():
    rng = np.random.default_rng(3)
    R1, R2 = random_rotation(rng), random_rotation(rng)
    x = rng.normal(size=(20, 3))
    for l in range(6):
        d1 = wigner_d_real(l, R1)
        np.testing.assert_allclose(d1 @ d1.T, np.eye(2 * l + 1), atol=1e-12)
        np.testing.assert_allclose(wigner_d_real(l, R1 @ R2), d1 @ wigner_d_real(l, R2), atol=1e-12)
        y = spherical_harmonics(torch.from_numpy(x), l).numpy()[:, l * l :]
        y_rot = spherical_harmonics(torch.from_numpy(x @ R1.T), l).numpy()[:, l * l :]
        np.testing.assert_allclose(y_rot, y @ d1.T, atol=1e-12)
        # inversion: D(-R) = (-1)^l D(R)
        np.testing.assert_allclose(wigner_d_real(l, -R1), (-1) ** l * d1, atol=1e-12)
    # l = 1 in the (y, z, x) order of m = -1, 0, 1
    perm = [1, 2, 0]
    np.testing.assert_allclose(wigner_d_real(1, R1), R1[np.ix_(perm, perm)], atol=1e-12)
    # torch in, torch out; full block matrix
    Rt = torch.tensor(R1, dtype=torch.float32)
    dt = wigner_d_real(2, Rt)
    assert isinstance(dt, torch.Tensor) and dt.dtype == torch.float32
    full = wigner_d_real_full(3, R1)
    assert full.shape == (16, 16)
    np.testing.assert_allclose(full[4:9, 4:9], wigner_d_real(2, R1), atol=1e-14)
    assert np.abs(full[:4, 4:]).max() == 0.0
    with pytest.raises(ValueError, match="3x3"):
        wigner_d_real(1, np.eye(2))
    with pytest.raises(ValueError, match="orthogonal"):
        wigner_d_real(1, 2 * np.eye(3))


# --------------------------------------------------------------------------
# coupling tensors
# --------------------------------------------------------------------------

_TUPLES = [
    (0,),
    (3, 3),
    (1, 1, 2),
    (1, 2, 3),
    (2, 2, 2),
    (2, 3, 3),
    (1, 1, 1, 1),
    (1, 2, 2, 3),
    (2, 2, 2, 2),
    (3, 3, 3, 3),
    (0, 1, 2, 3),
]


@pytest.mark.parametrize("ls", _TUPLES)
@pytest.mark.parametrize("labels_kind", ["diagonal", "distinct", "unsymmetrized"])
def test_coupling_tensors_invariant_and_orthonormal(ls, labels_kind):
    rng = np.random.default_rng(sum(ls) + 10 * len(ls))
    if labels_kind == "diagonal":
        u = coupling_tensors(ls)
    elif labels_kind == "distinct":
        u = coupling_tensors(ls, labels=range(len(ls)))
    else:
        u = coupling_tensors(ls, symmetrize=False)
    assert u.shape[1:] == tuple(2 * l + 1 for l in ls)
    assert u.shape[0] >= 1
    flat = u.reshape(u.shape[0], -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(u.shape[0]), atol=1e-12)
    for _ in range(2):
        R = random_rotation(rng)
        np.testing.assert_allclose(rotate_tensor(u, ls, R), u, atol=1e-12)
        # inversion multiplies by (-1)^{sum l}
        np.testing.assert_allclose(rotate_tensor(u, ls, -R), (-1) ** sum(ls) * u, atol=1e-12)


def test_coupling_tensor_symmetry_under_label_preserving_permutations():
    ls = (1, 1, 1, 1)
    # labels (a, b, a, b): symmetric under swapping factors 0<->2 and 1<->3 only
    u = coupling_tensors(ls, labels=("a", "b", "a", "b"))
    assert u.shape[0] == 2  # Sym^2 V1 x Sym^2 V1 = (V0 + V2) x (V0 + V2)
    np.testing.assert_allclose(u, np.swapaxes(u, 1, 3), atol=1e-14)
    np.testing.assert_allclose(u, np.swapaxes(u, 2, 4), atol=1e-14)
    assert np.abs(u - np.swapaxes(u, 1, 2)).max() > 1e-2
    # distinct labels: 3 paths, including (a x b).(c x d), antisymmetric in a <-> b
    u3 = coupling_tensors(ls, labels=range(4))
    assert u3.shape[0] == 3
    assert np.abs(u3 - np.swapaxes(u3, 1, 2)).max() > 1e-2
    # (a, a, b, c): the antisymmetric path is removed
    u2 = coupling_tensors(ls, labels=("a", "a", "b", "c"))
    assert u2.shape[0] == 2
    np.testing.assert_allclose(u2, np.swapaxes(u2, 1, 2), atol=1e-14)
    # all equal: fully symmetric, only (a.a)^2
    u1 = coupling_tensors(ls)
    assert u1.shape[0] == 1
    for perm in itertools.permutations(range(4)):
        axes = (0,) + tuple(p + 1 for p in perm)
        np.testing.assert_allclose(u1, np.transpose(u1, axes), atol=1e-14)
    # same label but different l: factors do not commute -> no symmetrisation
    u_mixed = coupling_tensors((1, 1, 2, 2), labels=("a", "a", "a", "b"))
    np.testing.assert_allclose(u_mixed, np.swapaxes(u_mixed, 1, 2), atol=1e-14)
    assert u_mixed.shape[0] == 2


def test_nu1_and_nu2_paths():
    np.testing.assert_array_equal(coupling_tensors((0,)), np.ones((1, 1)))
    assert n_coupling_paths((1,)) == 0
    assert n_coupling_paths((1, 2)) == 0
    for l in range(6):
        u = coupling_tensors((l, l))
        assert u.shape == (1, 2 * l + 1, 2 * l + 1)
        np.testing.assert_allclose(u[0], np.eye(2 * l + 1) / math.sqrt(2 * l + 1), atol=1e-14)
        np.testing.assert_allclose(coupling_tensors((l, l), labels=(0, 1)), u, atol=1e-14)


def test_triple_product_pseudoscalar():
    # (1,1,1): one path for distinct factors, proportional to the Levi-Civita symbol
    u = coupling_tensors((1, 1, 1), labels=(0, 1, 2))
    assert u.shape[0] == 1
    eps = np.zeros((3, 3, 3))
    for (i, j, k), s in [((0, 1, 2), 1), ((1, 2, 0), 1), ((2, 0, 1), 1)]:
        eps[i, j, k], eps[j, i, k] = s, -s
    np.testing.assert_allclose(np.abs(u[0]), np.abs(eps) / math.sqrt(6), atol=1e-14)
    ratio = u[0] / np.where(eps == 0, 1, eps)
    assert np.allclose(ratio[eps != 0], ratio[0, 1, 2])
    # excluded with parity="even", kept by "odd", vanishes for identical factors
    assert n_coupling_paths((1, 1, 1), labels=(0, 1, 2), parity="even") == 0
    assert n_coupling_paths((1, 1, 1), labels=(0, 1, 2), parity="odd") == 1
    assert n_coupling_paths((1, 1, 1)) == 0
    assert n_coupling_paths((2, 2, 2), parity="odd") == 0
    assert n_coupling_paths((2, 2, 2), parity="even") == 1


def test_known_path_counts():
    # unsymmetrised (l,l,l): 1 path; symmetrised: 1 for even l, 0 for odd l
    for l in range(1, 6):
        assert n_coupling_paths((l, l, l), symmetrize=False) == 1
        assert n_coupling_paths((l, l, l)) == (1 if l % 2 == 0 else 0)
        # unsymmetrised (l,l,l,l): intermediate L1 = 0..2l
        assert n_coupling_paths((l,) * 4, symmetrize=False) == 2 * l + 1
    # invariants of Sym^4(V_l): 1, 1, 2, 2 for l = 1..4 (e.g. l=2: (tr A^2)^2 only)
    assert [n_coupling_paths((l,) * 4) for l in range(1, 5)] == [1, 1, 2, 2]


def test_path_counts_match_character_theory():
    cases = []
    for nu, l_max in [(3, 4), (4, 3)]:
        for ls in enumerate_l_tuples(nu, l_max):
            cases.append((ls, (0,) * nu))
            cases.append((ls, tuple(range(nu))))
    cases += [
        ((1, 2, 1, 2), (0, 0, 1, 1)),
        ((2, 2, 3, 3), (0, 1, 0, 0)),
        ((1, 1, 2, 2), (0, 0, 0, 1)),
    ]
    for ls, labels in cases:
        expected = expected_invariants(ls, labels)
        assert n_coupling_paths(ls, labels=labels) == expected, (ls, labels)
        even = expected if sum(ls) % 2 == 0 else 0
        assert n_coupling_paths(ls, labels=labels, parity="even") == even
        assert n_coupling_paths(ls, labels=labels, parity="odd") == expected - even
    # a few larger nu = 4 cases
    for ls in [(4, 4, 4, 4), (2, 3, 4, 5), (5, 5, 5, 5)]:
        assert n_coupling_paths(ls) == expected_invariants(ls, (0,) * 4)
        assert n_coupling_paths(ls, symmetrize=False) == expected_invariants(ls, range(4))


def test_tree_coefficients_reconstruct_paths():
    for ls, labels in [((2, 2, 2, 2), None), ((1, 2, 2, 3), (0, 0, 1, 1)), ((1, 1, 2), None)]:
        u = coupling_tensors(ls, labels=labels)
        coeffs, trees = coupling_tree_coefficients(ls, labels=labels)
        assert trees == coupling_trees(ls)
        assert coeffs.shape == (u.shape[0], len(trees))
        rebuilt = np.zeros_like(u)
        for t, tree in enumerate(trees):
            # explicit sequential coupling
            tens = np.eye(2 * ls[0] + 1)
            current = ls[0]
            for i, L in enumerate(tree):
                tens = np.tensordot(tens, real_clebsch_gordan(current, ls[i + 1], L), axes=1)
                current = L
            tens = np.tensordot(tens, real_clebsch_gordan(current, ls[-1], 0)[:, :, 0], axes=1)
            rebuilt += coeffs[:, t].reshape((-1,) + (1,) * len(ls)) * tens[None]
        np.testing.assert_allclose(rebuilt, u, atol=1e-13)
    assert coupling_trees((2, 2, 2, 2)) == ((0, 2), (1, 2), (2, 2), (3, 2), (4, 2))
    assert coupling_trees((1, 2, 3)) == ((3,),)
    assert coupling_trees((1, 2, 4)) == ()


def test_balanced_trees():
    # balanced trees: orthonormal, invariant, complete, and reconstruct the paths
    rng = np.random.default_rng(21)
    R = random_rotation(rng)
    assert coupling_trees((2, 2, 2, 2), "balanced") == tuple(((L,), (L,)) for L in range(5))
    assert coupling_trees((1, 2, 3), "balanced") == (((3,), ()),)
    assert coupling_trees((1, 2, 2, 3, 4), "balanced")[0] == ((1, 1), (1,))
    for ls, labels in [
        ((3, 3), None),
        ((1, 2, 3), None),
        ((2, 2, 2, 2), None),
        ((1, 1, 2, 3), (0, 1, 1, 2)),
        ((1, 2, 2, 3, 3), (0, 0, 0, 1, 1)),
        ((1, 1, 1, 1, 1), None),
    ]:
        trees = coupling_trees(ls, "balanced")
        assert len(trees) == expected_invariants(ls, range(len(ls)))
        mats = np.stack([coupling_tree_tensor(ls, t, "balanced") for t in trees])
        flat = mats.reshape(len(trees), -1)
        np.testing.assert_allclose(flat @ flat.T, np.eye(len(trees)), atol=1e-13)
        np.testing.assert_allclose(rotate_tensor(mats, ls, R), mats, atol=1e-12)
        coeffs, trees2 = coupling_tree_coefficients(ls, labels=labels, scheme="balanced")
        assert trees2 == trees
        u = coupling_tensors(ls, labels=labels)
        np.testing.assert_allclose(np.tensordot(coeffs, mats, axes=1), u, atol=1e-13)
    with pytest.raises(ValueError, match="scheme"):
        coupling_trees((1, 1), "random")
    with pytest.raises(ValueError, match="not a balanced coupling tree"):
        coupling_tree_tensor((1, 1, 1, 1), ((5,), (5,)), "balanced")


def test_enumerate_l_tuples():
    assert enumerate_l_tuples(1, 3) == [(0,)]
    assert enumerate_l_tuples(2, 2) == [(0, 0), (1, 1), (2, 2)]
    t3 = enumerate_l_tuples(3, 2)
    assert t3 == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 1, 1), (1, 1, 2), (1, 2, 2), (2, 2, 2)]
    assert enumerate_l_tuples(3, 2, parity="even") == [
        (0, 0, 0),
        (0, 1, 1),
        (0, 2, 2),
        (1, 1, 2),
        (2, 2, 2),
    ]
    assert enumerate_l_tuples(3, 2, parity="odd") == [(1, 1, 1), (1, 2, 2)]
    for nu in (2, 3, 4):
        for ls in enumerate_l_tuples(nu, 3):
            assert list(ls) == sorted(ls)
            assert n_coupling_paths(ls, symmetrize=False) >= 1


def test_bad_input_and_caching():
    with pytest.raises(ValueError, match="parity"):
        coupling_tensors((1, 1), parity="bogus")
    with pytest.raises(ValueError, match=">= 0"):
        coupling_tensors((1, -1))
    with pytest.raises(ValueError, match="integer"):
        coupling_tensors((1, 1.5))
    with pytest.raises(ValueError, match="at least one"):
        coupling_tensors(())
    with pytest.raises(ValueError, match="one entry per factor"):
        coupling_tensors((1, 1), labels=(0,))
    with pytest.raises(ValueError, match="nu"):
        enumerate_l_tuples(0, 2)
    with pytest.raises(ValueError, match=">= 0"):
        real_clebsch_gordan(-1, 1, 1)
    assert canonical_labels(("x", "y", "x"), 3) == (0, 1, 0)
    assert canonical_labels(None, 2) == (0, 0)
    # cached, read-only, same object for equivalent labels
    u1 = coupling_tensors((1, 1, 2), labels=("a", "a", "b"))
    u2 = coupling_tensors((1, 1, 2), labels=(5, 5, 7))
    assert u1 is u2
    assert not u1.flags.writeable
    t = coupling_tensors_torch((1, 1, 2), dtype=torch.float32)
    assert t.dtype == torch.float32 and t.device.type == "cpu"
    assert t is coupling_tensors_torch((1, 1, 2), dtype=torch.float32)
    np.testing.assert_allclose(t.numpy(), coupling_tensors((1, 1, 2)), atol=1e-7)
    c = real_clebsch_gordan_torch(1, 2, 2, dtype=torch.float64)
    np.testing.assert_array_equal(c.numpy(), real_clebsch_gordan(1, 2, 2))
