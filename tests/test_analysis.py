"""Information imbalance: hand-computed cases, limits, ties, chunking, subsampling, example."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

import tradens
from tradens.analysis import Imbalance, information_imbalance, random_projection

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SAMPLE = Path(tradens.__file__).parent / "data" / "hea25_sample.xyz"


def brute_force(a: np.ndarray, b: np.ndarray, k: int = 1) -> float:
    """Delta(A -> B) by the definition, for data without ties."""
    n = len(a)
    da = ((a[:, None] - a[None]) ** 2).sum(-1)
    db = ((b[:, None] - b[None]) ** 2).sum(-1)
    total = 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        by_a = sorted(others, key=lambda j: da[i, j])[:k]
        by_b = sorted(others, key=lambda j: db[i, j])
        total += sum(by_b.index(j) + 1 for j in by_a) / k
    return 2.0 / n * total / n


def test_hand_computed_case():
    # A: 0, 1, 3, 7 -> nearest neighbours 0->1, 1->0, 2->1, 3->2
    # B: 0, 5, 1, 2.6 -> ranks of those in B: r(0,1)=3, r(1,0)=3, r(2,1)=3, r(3,2)=1
    #    Delta(A->B) = 2/4 * (3+3+3+1)/4 = 1.25
    # nearest in B: 0->2, 1->3, 2->0, 3->2; ranks in A: 2, 3, 2, 1 -> Delta(B->A) = 2/4 * 8/4 = 1.0
    a = np.array([[0.0], [1.0], [3.0], [7.0]])
    b = np.array([[0.0], [5.0], [1.0], [2.6]])
    result = information_imbalance(a, b)
    assert result.a_to_b == pytest.approx(1.25, abs=1e-12)
    assert result.b_to_a == pytest.approx(1.0, abs=1e-12)
    assert result.exact and result.n_points == result.n_used == 4 and result.n_repeats == 1
    np.testing.assert_allclose(
        result.per_point_a_to_b, [2 * 3 / 4, 2 * 3 / 4, 2 * 3 / 4, 2 * 1 / 4]
    )
    # k = 2 by hand: A neighbours {1,2}, {0,2}, {1,0}, {2,1}
    # with B ranks {3,1}, {3,2}, {3,1}, {2,1}
    two = information_imbalance(a, b, k=2)
    assert two.a_to_b == pytest.approx(2 / 4 * (4 + 5 + 4 + 3) / 8, abs=1e-12)


def test_ties_are_resolved_by_their_expectation():
    # A: 0, 1, -1, 10: point 0 has two nearest neighbours at distance 1 (weights 1/2 each)
    # B: 0, 1, 3, 10: ranks of 1 and 2 from point 0 are 1 and 2 -> 1.5; then 1, 2, 2
    a = np.array([[0.0], [1.0], [-1.0], [10.0]])
    b = np.array([[0.0], [1.0], [3.0], [10.0]])
    result = information_imbalance(a, b)
    assert result.a_to_b == pytest.approx(0.5 * (1.5 + 1 + 2 + 2) / 4, abs=1e-12)
    # B -> A: neighbours 0->1, 1->0, 2->1, 3->2; in A point 1 ties with point 2 from point 0
    # (mid-rank 1.5), then ranks 1, 2, 3
    assert result.b_to_a == pytest.approx(0.5 * (1.5 + 1 + 2 + 3) / 4, abs=1e-12)


def test_limits_identical_and_independent():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    for k in (1, 3):
        same = information_imbalance(x, x.copy(), k=k)
        # identical spaces: the k neighbours have ranks 1..k -> Delta = (k+1)/N, which goes to 0
        assert same.a_to_b == pytest.approx((k + 1) / 400, abs=1e-12)
        assert same.b_to_a == pytest.approx((k + 1) / 400, abs=1e-12)
    y = rng.normal(size=(1500, 6))
    z = rng.normal(size=(1500, 4))
    independent = information_imbalance(y, z, k=2)
    assert abs(independent.a_to_b - 1.0) < 4 * independent.a_to_b_error + 0.01
    assert abs(independent.b_to_a - 1.0) < 4 * independent.b_to_a_error + 0.01
    assert 0.005 < independent.a_to_b_error < 0.05


def test_matches_brute_force_and_is_asymmetric():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4))
    part = x[:, :2]  # a projection: x predicts part well, not the other way round
    for k in (1, 4):
        result = information_imbalance(x, part, k=k)
        assert result.a_to_b == pytest.approx(brute_force(x, part, k), abs=1e-12)
        assert result.b_to_a == pytest.approx(brute_force(part, x, k), abs=1e-12)
    result = information_imbalance(x, part)
    assert result.a_to_b < 0.5 * result.b_to_a


def test_many_ties_mean_no_information():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 3))
    coincident = np.zeros((300, 2))  # every point in the same place: all distances tie
    assert information_imbalance(coincident, x).a_to_b == pytest.approx(1.0, abs=1e-14)
    assert information_imbalance(x, coincident, k=3).a_to_b == pytest.approx(1.0, abs=1e-14)
    # discrete features: many ties (the sorted-rank path). The result is the expectation over random
    # tie-breaking: compare with the mean over tiny random jitters of the textbook definition
    a = rng.integers(0, 3, size=(150, 2)).astype(float)
    b = a[:, :1].copy()
    result = information_imbalance(a, b, k=2)
    jittered = [
        (
            jittered_definition(
                a + 1e-7 * rng.normal(size=a.shape), b + 1e-7 * rng.normal(size=b.shape)
            )
        )
        for _ in range(100)
    ]
    mean, spread = np.mean(jittered, axis=0), np.std(jittered, axis=0) / 10
    assert abs(result.a_to_b - mean[0]) < 4 * spread[0] + 1e-3
    assert abs(result.b_to_a - mean[1]) < 4 * spread[1] + 1e-3
    assert result.a_to_b < result.b_to_a < 1.0  # b is a function of a


def jittered_definition(a: np.ndarray, b: np.ndarray, k: int = 2) -> tuple[float, float]:
    """Both directions of the textbook definition (no ties), vectorised."""
    da = ((a[:, None] - a[None]) ** 2).sum(-1)
    db = ((b[:, None] - b[None]) ** 2).sum(-1)
    np.fill_diagonal(da, np.inf)
    np.fill_diagonal(db, np.inf)
    out = []
    for first, second in ((da, db), (db, da)):
        ranks = np.argsort(np.argsort(second, axis=1), axis=1) + 1
        nearest = np.argsort(first, axis=1)[:, :k]
        out.append(2 / len(a) * np.take_along_axis(ranks, nearest, 1).mean())
    return out[0], out[1]


def test_invariant_to_similarity_transforms_and_chunking():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(150, 5))
    b = a[:, :3] + 0.3 * rng.normal(size=(150, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = 7.0 * b @ q + 2.0  # rotation, scaling and translation keep all ranks
    reference = information_imbalance(a, b)
    other = information_imbalance(a, moved, memory=1)  # one row per chunk
    assert other.a_to_b == pytest.approx(reference.a_to_b, abs=1e-12)
    assert other.b_to_a == pytest.approx(reference.b_to_a, abs=1e-12)
    # values, not only consistency: a space predicts itself (and its similarity transforms)
    # perfectly, its k nearest neighbours have ranks 1..k, so Delta = (2/N) (k+1)/2 = (k+1)/N
    for k in (1, 3):
        same = information_imbalance(b, moved, k=k)
        assert same.a_to_b == pytest.approx((k + 1) / len(b), abs=1e-15)
        assert same.b_to_a == pytest.approx((k + 1) / len(b), abs=1e-15)
    assert 0.05 < reference.a_to_b < reference.b_to_a < 1.0  # b is a noisy projection of a


def test_inputs_unchanged_and_torch_input():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    a0, b0 = a.copy(), b.copy()
    result = information_imbalance(torch.as_tensor(a), b)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
    assert result.a_to_b == pytest.approx(information_imbalance(a, b).a_to_b, abs=1e-15)


def test_subsampling_reports_an_uncertainty():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1500, 3))
    part = x[:, :2] + 0.05 * rng.normal(size=(1500, 2))
    exact = information_imbalance(x, part)
    sub = information_imbalance(x, part, max_points=500, n_repeats=4, seed=1)
    assert not sub.exact and sub.n_used == 500 and sub.n_repeats == 4 and sub.n_points == 1500
    assert sub.per_point_a_to_b is None
    assert 0 < sub.b_to_a_error < 0.05
    assert abs(sub.b_to_a - exact.b_to_a) < 0.15 * exact.b_to_a
    again = information_imbalance(x, part, max_points=500, n_repeats=4, seed=1)
    assert again.as_dict() == sub.as_dict()  # seeded


def test_errors_name_the_bad_value():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="same points"):
        information_imbalance(x, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="k=5"):
        information_imbalance(x, x, k=5)
    with pytest.raises(ValueError, match="k must be"):
        information_imbalance(x, x, k=0)
    with pytest.raises(ValueError, match="NaN"):
        information_imbalance(np.full((5, 2), np.nan), x)
    with pytest.raises(ValueError, match="2-D"):
        information_imbalance(np.zeros(5), x)
    with pytest.raises(ValueError, match="pool"):
        information_imbalance(x, x, pool="median")


def test_random_projection_preserves_distances_on_average():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 400))
    y = random_projection(x, 200, seed=3)
    assert y.shape == (60, 200)
    np.testing.assert_array_equal(y, random_projection(x, 200, seed=3))
    dx = np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(60, 1)]
    dy = np.linalg.norm(y[:, None] - y[None], axis=-1)[np.triu_indices(60, 1)]
    ratio = dy / dx
    assert abs(ratio.mean() - 1.0) < 0.03 and ratio.std() < 0.1
    with pytest.raises(ValueError, match="n_components"):
        random_projection(x, 0)


def test_features_per_atom_and_pooled():
    frames = ase.io.read(SAMPLE, ":4")
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    base = dict(cutoff=4.5, l_max=2, radial={"n_max": 3}, species=species)
    full = tradens.SOAP(**base).compute(frames)
    onehot = tradens.SOAP(
        **base, mixing={"mode": "radial+element", "weights": "onehot", "channels": 3 * len(species)}
    ).compute(frames)
    small = tradens.SOAP(**base, mixing={"channels": 1}).compute(frames)
    n = len(full)
    # the one-hot embedding is the full SOAP: the imbalance is at its floor 2/N both ways
    result = information_imbalance(full, onehot)
    assert result.a_to_b == pytest.approx(2 / n, abs=1e-12)
    assert result.b_to_a == pytest.approx(2 / n, abs=1e-12)
    # K = 1 loses information: the full SOAP predicts it better than the reverse
    lossy = information_imbalance(full, small)
    assert lossy.a_to_b < lossy.b_to_a and lossy.b_to_a > 10 * (2 / n)
    pooled = information_imbalance(full, small, pool="mean", k=1)
    assert pooled.n_points == 4
    shuffled = tradens.Features(
        small.values, small.structure[::-1].copy(), small.center, small.numbers
    )
    with pytest.raises(ValueError, match="different rows"):
        information_imbalance(full, shuffled)


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imbalance_vs_K_example_runs(capsys, tmp_path):
    example = _load_example("imbalance_vs_K.py")
    output = tmp_path / "table.json"
    code = example.main(
        [
            "--structures",
            "3",
            "--K",
            "1",
            "4",
            "--seeds",
            "1",
            "--n-max",
            "3",
            "--l-max",
            "2",
            "--json",
            str(output),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    import json

    rows = json.loads(output.read_text())["rows"]
    assert [r["K"] for r in rows] == [1, 4]
    assert [r["n_features"] for r in rows] == [3, 30]
    # more channels: the tensor-reduced space predicts the full SOAP's neighbourhoods better,
    # and better than a random subset of the full SOAP's columns of the same size
    assert rows[1]["to_full_tr"][0] < rows[0]["to_full_tr"][0]
    assert rows[1]["to_full_tr"][0] < rows[1]["to_full_rs"][0]
    assert (
        "full->TR" in printed
        and len([line for line in printed.splitlines() if line.startswith("  ")]) == 2
    )


def test_result_type():
    result = information_imbalance(np.arange(6.0)[:, None], np.arange(6.0)[:, None])
    assert isinstance(result, Imbalance)
    assert set(result.as_dict()) == {
        "a_to_b",
        "b_to_a",
        "a_to_b_error",
        "b_to_a_error",
        "n_points",
        "n_used",
        "n_repeats",
        "k",
        "exact",
    }
