"""Farthest point sampling and CUR: known extremes, references, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tradens import Features
from tradens.analysis.selection import CUR, FPS, cur_selection, farthest_point_sampling


def reference_fps(x: np.ndarray, n: int, first: int) -> list[int]:
    """Textbook O(n^2) farthest point sampling."""
    chosen = [first]
    while len(chosen) < n:
        best, best_d = None, -1.0
        for i in range(len(x)):
            if i in chosen:
                continue
            d = min(np.linalg.norm(x[i] - x[j]) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_fps_picks_known_extremes_on_a_line():
    x = np.array([[0.0], [1.0], [4.0], [10.0], [6.0]])
    index, distances = farthest_point_sampling(x, 4, return_distances=True)
    # from 0.0: the far end 10.0; then 4.0 and 6.0 are both 4 from {0, 10} (tie: lowest index);
    # then 6.0 (2 from 4.0) beats 1.0 (1 from 0.0)
    assert index.tolist() == [0, 3, 2, 4]
    np.testing.assert_allclose(distances, [np.inf, 10.0, 4.0, 2.0])


def test_fps_picks_the_corners_of_a_square_first():
    rng = np.random.default_rng(0)
    corners = np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    inside = rng.uniform(-0.5, 0.5, size=(30, 2))
    x = np.concatenate([[[0.0, 0.0]], inside, corners])  # the centre is row 0, corners 31..34
    from_centre = farthest_point_sampling(x, 5)
    assert set(from_centre[1:].tolist()) == {31, 32, 33, 34}
    # from a corner: the opposite corner, the two others (2 away), then the centre (sqrt 2 away,
    # farther from every corner than any point of the inner square)
    index = farthest_point_sampling(x, 5, initial=31)
    assert index[1] == 34 and set(index[2:4].tolist()) == {32, 33} and index[4] == 0


def test_fps_matches_reference_and_distances_decrease():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5))
    index, distances = farthest_point_sampling(x, 12, initial=7, return_distances=True)
    assert index.tolist() == reference_fps(x, 12, 7)
    assert np.all(np.diff(distances[1:]) <= 1e-12)
    assert len(set(index.tolist())) == 12


def test_fps_initial_choices_and_inputs():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 3))
    x[17] = [9.0, 9.0, 9.0]
    assert farthest_point_sampling(x, 1, initial="farthest")[0] == 17
    a = farthest_point_sampling(x, 5, initial="random", seed=3)
    np.testing.assert_array_equal(a, farthest_point_sampling(x, 5, initial="random", seed=3))
    assert farthest_point_sampling(x, 3, initial=-1)[0] == 39
    x0 = x.copy()
    from_torch = farthest_point_sampling(torch.as_tensor(x), 6)
    features = Features(x, np.zeros(40, dtype=int), np.arange(40), np.ones(40, dtype=int))
    np.testing.assert_array_equal(from_torch, farthest_point_sampling(features, 6))
    np.testing.assert_array_equal(x, x0)  # not modified


def test_fps_errors():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="cannot select 5 points out of 4"):
        farthest_point_sampling(x, 5)
    with pytest.raises(ValueError, match="integer >= 1"):
        farthest_point_sampling(x, 0)
    with pytest.raises(ValueError, match="out of range"):
        farthest_point_sampling(x, 2, initial=9)
    with pytest.raises(ValueError, match="'random' or 'farthest'"):
        farthest_point_sampling(x, 2, initial="centre")
    with pytest.raises(ValueError, match="NaN"):
        farthest_point_sampling(np.full((3, 2), np.inf), 2)


def test_cur_picks_independent_directions_and_skips_parallel_rows():
    x = np.array(
        [
            [3.0, 0.0, 0.0],
            [0.0, 2.0, 0.0],
            [0.0, 0.0, 1.0],
            [1.5, 0.0, 0.0],  # parallel to row 0: spent once row 0 is chosen
            [0.0, 0.0, 0.5],  # parallel to row 2
        ]
    )
    index, scores = cur_selection(x, 3, return_scores=True)
    assert index.tolist() == [0, 1, 2]
    # first pick: leverage on the top left singular vector, 9 / (9 + 2.25)
    assert scores[0] == pytest.approx(9.0 / 11.25)
    with pytest.raises(ValueError, match="rank 3"):
        cur_selection(x, 4)


def test_cur_is_deterministic_and_keeps_inputs():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 8)) @ np.diag(np.linspace(3, 0.2, 8))
    x0 = x.copy()
    a = cur_selection(x, 6, n_vectors=2)
    np.testing.assert_array_equal(a, cur_selection(x, 6, n_vectors=2))
    assert len(set(a.tolist())) == 6
    np.testing.assert_array_equal(x, x0)


def test_estimators_follow_sklearn_conventions():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(30, 4))
    fps = FPS(5, initial=2)
    assert fps.n_to_select == 5 and not hasattr(fps, "selected_idx_")
    assert fps.fit(x) is fps
    np.testing.assert_array_equal(fps.transform(x), x[fps.selected_idx_])
    assert fps.hausdorff_[0] == np.inf
    cur = CUR(4).fit(x)
    assert cur.selected_idx_.shape == (4,) and cur.scores_.shape == (4,)


def test_against_scikit_matter_when_installed():
    skmatter = pytest.importorskip("skmatter.sample_selection")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 6))
    ours = farthest_point_sampling(x, 10, initial=0)
    theirs = skmatter.FPS(n_to_select=10, initialize=0).fit(x).selected_idx_
    np.testing.assert_array_equal(ours, theirs)
    ours = cur_selection(x, 5)
    theirs = skmatter.CUR(n_to_select=5, k=1).fit(x).selected_idx_
    np.testing.assert_array_equal(ours, theirs)
