"""Tests for the ACE product basis (tradens.invariants.product_basis.ace_product_basis)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tradens.invariants.coupling import coupling_tensors, n_coupling_paths, wigner_d_real_full
from tradens.invariants.product_basis import (
    FeatureLabel,
    ace_product_basis,
    ace_product_basis_labels,
    ace_product_basis_plan,
)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_A(n_atoms: int, n_channels: int, l_max: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_atoms, n_channels, (l_max + 1) ** 2, generator=g, dtype=torch.float64)


def rotate_A(A: torch.Tensor, R: np.ndarray) -> torch.Tensor:
    l_max = math.isqrt(A.shape[-1]) - 1
    D = torch.as_tensor(wigner_d_real_full(l_max, R), dtype=A.dtype)
    return A @ D.T  # A_l -> D_l A_l for every (atom, channel)


def brute_force_feature(A: np.ndarray, label: FeatureLabel, parity: str) -> np.ndarray:
    """sum_m U[path, m] prod_t A[:, k_t, l_t, m_t] by explicit loops over m."""
    u = coupling_tensors(label.l, labels=label.k, parity=parity)[label.path]
    out = np.zeros(A.shape[0])
    ranges = [range(2 * l + 1) for l in label.l]
    for ms in itertools.product(*ranges):
        coeff = u[ms]
        if coeff == 0.0:
            continue
        prod = np.full(A.shape[0], coeff)
        for k, l, m in zip(label.k, label.l, ms, strict=True):
            prod = prod * A[:, k, l * l + m]
        out += prod
    return out


def expected_full_labels(K, nu_max, l_max_per_order, parity):
    """Independent enumeration: multisets of (k, l) pairs, sorted lexicographically."""
    out = []
    for nu in range(1, nu_max + 1):
        l_max = 0 if nu == 1 else l_max_per_order[nu - 1]
        pairs = [(k, l) for k in range(K) for l in range(l_max + 1)]
        for combo in itertools.combinations_with_replacement(pairs, nu):
            ks = tuple(p[0] for p in combo)
            ls = tuple(p[1] for p in combo)
            n = n_coupling_paths(ls, labels=ks, parity=parity)
            out.extend(FeatureLabel(nu, ks, ls, p) for p in range(n))
    return sorted(out)


# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["diagonal", "full"])
@pytest.mark.parametrize("parity", ["all", "even"])
def test_rotation_and_inversion_invariance(mode, parity):
    # diagonal: the first single-channel pseudoscalars appear at nu = 3 for (2, 3, 4)
    l_max_per_order = [0, 4, 4, 2] if mode == "diagonal" else [0, 3, 2, 2]
    K = 3 if mode == "diagonal" else 2
    A = random_A(20, K, 4, seed=1)
    B, labels = ace_product_basis(A, 4, l_max_per_order, mode=mode, parity=parity)
    assert B.shape == (20, len(labels))
    assert {lab.nu for lab in labels} == {1, 2, 3, 4}
    rng = np.random.default_rng(5)
    scale = B.abs().amax(dim=0)  # per-feature scale, [F]
    signs = torch.tensor([(-1.0) ** sum(lab.l) for lab in labels], dtype=torch.float64)
    if parity == "even":
        assert torch.all(signs == 1)
    else:
        assert torch.any(signs == -1)  # pseudoscalars present for nu >= 3
    for _ in range(2):
        R = random_rotation(rng)
        B_rot, _ = ace_product_basis(rotate_A(A, R), 4, l_max_per_order, mode=mode, parity=parity)
        assert torch.all((B_rot - B).abs() <= 1e-12 * scale + 1e-13)
        # improper rotation: A_l -> (-1)^l D_l A_l, B -> (-1)^{sum l} B
        B_inv, _ = ace_product_basis(rotate_A(A, -R), 4, l_max_per_order, mode=mode, parity=parity)
        assert torch.all((B_inv - signs * B).abs() <= 1e-12 * scale + 1e-13)
    # the features are not trivially invariant (sanity: a non-rotation changes them)
    A_bad = A.clone()
    A_bad[:, :, 1] *= 2.0
    B_bad, _ = ace_product_basis(A_bad, 4, l_max_per_order, mode=mode, parity=parity)
    assert (B_bad - B).abs().max() > 1e-3


def test_nu1_and_nu2_closed_form():
    A = random_A(7, 4, 3, seed=2)
    B, labels = ace_product_basis(A, 2, [0, 3])
    assert len(labels) == 4 + 4 * 4
    for col, lab in enumerate(labels):
        (k,) = set(lab.k)
        if lab.nu == 1:
            torch.testing.assert_close(B[:, col], A[:, k, 0], rtol=0, atol=0)
        else:
            l = lab.l[0]
            expected = (A[:, k, l * l : (l + 1) ** 2] ** 2).sum(-1) / math.sqrt(2 * l + 1)
            torch.testing.assert_close(B[:, col], expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize(
    "mode,K,nu_max,l_max_per_order,parity",
    [
        ("diagonal", 2, 4, [0, 3, 3, 2], "all"),
        ("full", 2, 3, [0, 2, 2], "all"),
        ("full", 3, 4, [0, 1, 1, 1], "odd"),
        ("full", 3, 3, [0, 1, 1], "even"),
    ],
)
def test_against_brute_force_loops(mode, K, nu_max, l_max_per_order, parity):
    A = random_A(6, K, max(l_max_per_order), seed=3)
    B, labels = ace_product_basis(A, nu_max, l_max_per_order, mode=mode, parity=parity)
    assert len(labels) > 0
    A_np = A.numpy()
    for col, lab in enumerate(labels):
        ref = brute_force_feature(A_np, lab, parity)
        np.testing.assert_allclose(B[:, col].numpy(), ref, rtol=1e-12, atol=1e-12)


def test_full_labels_match_independent_enumeration():
    for K, nu_max, lmax, parity in [(2, 4, [0, 2, 2, 1], "all"), (3, 3, [0, 2, 1], "even")]:
        labels = ace_product_basis_labels(K, nu_max, lmax, mode="full", parity=parity)
        assert labels == expected_full_labels(K, nu_max, lmax, parity)
        assert len(set(labels)) == len(labels)


def test_diagonal_feature_count_and_channel_independence():
    lmax = [0, 4, 3, 2]
    n_paths = sum(
        n_coupling_paths(ls)
        for nu in (2, 3, 4)
        for ls in itertools.combinations_with_replacement(range(lmax[nu - 1] + 1), nu)
    )
    for K in (1, 3, 5):
        labels = ace_product_basis_labels(K, 4, lmax)
        assert len(labels) == K * (1 + n_paths)
        assert labels == sorted(labels)
        assert all(len(set(lab.k)) == 1 for lab in labels)
    # explicit small counts: nu=3, l_max=1, diagonal: (0,0,0), (0,1,1) -> 1 each; (1,1,1) -> 0
    assert len(ace_product_basis_labels(1, 3, [0, 0, 1])) == 1 + 1 + 2
    # full with one channel coincides with diagonal
    A = random_A(5, 1, 3, seed=4)
    B_d, lab_d = ace_product_basis(A, 4, [0, 3, 2, 2], mode="diagonal")
    B_f, lab_f = ace_product_basis(A, 4, [0, 3, 2, 2], mode="full")
    assert lab_d == lab_f
    torch.testing.assert_close(B_d, B_f, rtol=1e-12, atol=1e-12)


def test_diagonal_is_subset_of_full():
    A = random_A(5, 3, 2, seed=6)
    B_d, lab_d = ace_product_basis(A, 3, [0, 2, 2], mode="diagonal")
    B_f, lab_f = ace_product_basis(A, 3, [0, 2, 2], mode="full")
    index = {lab: i for i, lab in enumerate(lab_f)}
    cols = [index[lab] for lab in lab_d]
    torch.testing.assert_close(B_d, B_f[:, cols], rtol=1e-13, atol=1e-13)
    assert len(lab_f) > len(lab_d)


@pytest.mark.parametrize(
    "mode,K,nu_max,l_max_per_order,parity",
    [
        ("diagonal", 3, 4, [0, 6, 4, 3], "all"),
        ("diagonal", 2, 4, [0, 5, 5, 4], "even"),
        ("full", 3, 4, [0, 3, 2, 2], "all"),
        ("full", 2, 4, [0, 2, 2, 2], "odd"),
    ],
)
def test_linear_independence(mode, K, nu_max, l_max_per_order, parity):
    labels = ace_product_basis_labels(K, nu_max, l_max_per_order, mode=mode, parity=parity)
    n_atoms = 2 * len(labels) + 50
    A = random_A(n_atoms, K, max(l_max_per_order), seed=7)
    B, _ = ace_product_basis(A, nu_max, l_max_per_order, mode=mode, parity=parity)
    assert B.shape == (n_atoms, len(labels))
    B = B / torch.linalg.vector_norm(B, dim=0, keepdim=True)
    s = torch.linalg.svdvals(B)
    assert s.min() / s.max() > 1e-10, (s.min() / s.max()).item()


def test_unsymmetrised_products_would_be_dependent():
    # negative control for the rank test: raw (unsymmetrised) trees of (1,1,1,1) on one
    # channel give 3 columns spanning only 1 dimension
    A = random_A(40, 1, 1, seed=8).numpy()
    u = coupling_tensors((1, 1, 1, 1), symmetrize=False)
    a = A[:, 0, 1:4]
    cols = np.einsum("pabcd,ia,ib,ic,id->ip", u, a, a, a, a)
    s = np.linalg.svd(cols / np.linalg.norm(cols, axis=0), compute_uv=False)
    assert s[-1] / s[0] < 1e-10
    assert n_coupling_paths((1, 1, 1, 1)) == 1


def test_gradients_flow_to_A():
    A = random_A(3, 2, 2, seed=9).requires_grad_(True)

    def f(a):
        return ace_product_basis(a, 4, [0, 2, 2, 1], mode="diagonal")[0]

    assert torch.autograd.gradcheck(f, (A,), eps=1e-6, atol=1e-8)
    A2 = random_A(2, 2, 1, seed=10).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a: ace_product_basis(a, 3, 1, mode="full")[0], (A2,), eps=1e-6, atol=1e-8
    )
    # gradient of an invariant energy is equivariant: dE/dA_l -> D_l dE/dA_l
    R = random_rotation(np.random.default_rng(11))
    w = torch.randn(len(ace_product_basis_labels(2, 4, [0, 2, 2, 1])), dtype=torch.float64)
    (g,) = torch.autograd.grad((f(A) @ w).sum(), A)
    A_rot = rotate_A(A.detach(), R).requires_grad_(True)
    (g_rot,) = torch.autograd.grad((f(A_rot) @ w).sum(), A_rot)
    torch.testing.assert_close(g_rot, rotate_A(g, R), rtol=1e-10, atol=1e-10)


def test_degree_truncation():
    K, lmax = 4, [0, 3, 2, 2]
    n = np.array([0, 1, 2, 3])
    A = random_A(5, K, 3, seed=12)
    for mode in ("diagonal", "full"):
        B_all, lab_all = ace_product_basis(A, 4, lmax, mode=mode)
        B, lab = ace_product_basis(A, 4, lmax, mode=mode, channel_degree=n, max_degree=5, w_L=1.5)
        expected = [x for x in lab_all if sum(n[k] for k in x.k) + 1.5 * sum(x.l) <= 5 + 1e-12]
        assert lab == expected
        assert 0 < len(lab) < len(lab_all)
        index = {x: i for i, x in enumerate(lab_all)}
        torch.testing.assert_close(B, B_all[:, [index[x] for x in lab]], rtol=1e-12, atol=1e-12)
    # truncating everything away gives an empty (but well-shaped) result
    B, lab = ace_product_basis(A, 2, 2, channel_degree=n + 10, max_degree=1)
    assert B.shape == (5, 0) and lab == []


def test_parity_selection_and_labels_order():
    A = random_A(4, 2, 3, seed=13)
    B_all, lab_all = ace_product_basis(A, 4, [0, 3, 3, 3], parity="all")
    B_even, lab_even = ace_product_basis(A, 4, [0, 3, 3, 3], parity="even")
    B_odd, lab_odd = ace_product_basis(A, 4, [0, 3, 3, 3], parity="odd")
    assert all(sum(x.l) % 2 == 0 for x in lab_even)
    assert all(sum(x.l) % 2 == 1 for x in lab_odd) and len(lab_odd) > 0
    assert sorted(lab_even + lab_odd) == lab_all
    index = {x: i for i, x in enumerate(lab_all)}
    for B_sub, lab_sub in ((B_even, lab_even), (B_odd, lab_odd)):
        cols = [index[x] for x in lab_sub]
        torch.testing.assert_close(B_sub, B_all[:, cols], rtol=1e-12, atol=1e-12)
    assert lab_all == sorted(lab_all)


def test_dtype_plan_and_errors():
    A = random_A(3, 2, 2, seed=14).to(torch.float32)
    B, labels = ace_product_basis(A, 3, [0, 2, 2])
    assert B.dtype == torch.float32 and B.device == A.device
    B64, _ = ace_product_basis(A.double(), 3, [0, 2, 2])
    torch.testing.assert_close(B.double(), B64, rtol=1e-5, atol=1e-5)
    plan = ace_product_basis_plan(2, 3, [0, 2, 2])
    assert plan is ace_product_basis_plan(2, 3, (0, 2, 2))
    assert plan.n_features == len(labels) and plan.l_max == 2
    torch.testing.assert_close(plan(A), B, rtol=0, atol=0)
    # no atoms
    B0, _ = ace_product_basis(A[:0], 3, [0, 2, 2])
    assert B0.shape == (0, len(labels))
    # an int l_max applies to every order; A with a larger l_max is fine
    B_int, _ = ace_product_basis(random_A(3, 2, 3, seed=14), 3, 2)
    assert B_int.shape[1] == len(labels)

    with pytest.raises(ValueError, match="shape"):
        ace_product_basis(A[0], 2, 2)
    with pytest.raises(ValueError, match=r"\(l_max\+1\)\*\*2"):
        ace_product_basis(A[:, :, :5], 2, 2)
    with pytest.raises(ValueError, match="l_max"):
        ace_product_basis(A, 2, [0, 3])
    with pytest.raises(ValueError, match="mode"):
        ace_product_basis(A, 2, 2, mode="sparse")
    with pytest.raises(ValueError, match="parity"):
        ace_product_basis(A, 2, 2, parity="bad")
    with pytest.raises(ValueError, match="nu_max"):
        ace_product_basis(A, 0, 2)
    with pytest.raises(ValueError, match="one entry per order"):
        ace_product_basis(A, 3, [0, 2])
    with pytest.raises(ValueError, match="channel_degree"):
        ace_product_basis(A, 2, 2, max_degree=3)
    with pytest.raises(ValueError, match="one entry per channel"):
        ace_product_basis(A, 2, 2, channel_degree=[0, 1, 2], max_degree=3)
    with pytest.raises(ValueError, match="floating"):
        ace_product_basis(torch.zeros(3, 2, 9, dtype=torch.long), 2, 2)
    with pytest.raises(ValueError, match="channels"):
        plan(random_A(3, 3, 2))


def test_double_backward():
    # forces-in-the-loss training needs second derivatives
    A = random_A(2, 2, 2, seed=15).requires_grad_(True)
    assert torch.autograd.gradgradcheck(
        lambda a: ace_product_basis(a, 4, [0, 2, 1, 1])[0], (A,), eps=1e-6, atol=1e-7
    )


def test_nu5_general_trees():
    # nu = 5 uses balanced trees with a 3 + 2 split (chains with an intermediate degree)
    lmax = [0, 2, 2, 2, 1]
    A = random_A(6, 2, 2, seed=16)
    for mode in ("diagonal", "full"):
        B, labels = ace_product_basis(A, 5, lmax, mode=mode)
        nu5 = [i for i, lab in enumerate(labels) if lab.nu == 5]
        assert len(nu5) > 0
        A_np = A.numpy()
        for col in nu5:
            ref = brute_force_feature(A_np, labels[col], "all")
            np.testing.assert_allclose(B[:, col].numpy(), ref, rtol=1e-12, atol=1e-12)
        R = random_rotation(np.random.default_rng(17))
        B_rot, _ = ace_product_basis(rotate_A(A, R), 5, lmax, mode=mode)
        torch.testing.assert_close(B_rot, B, rtol=1e-11, atol=1e-11)
