"""Data-driven embeddings (issue #17): the leading components of the density covariance."""

from __future__ import annotations

import numpy as np
import pytest
from _models_helpers import alloy

from tradens import SOAP
from tradens.hypers import Mixing
from tradens.representations.compression import density_covariance, pca_mixing, with_pca_mixing

COMMON = dict(cutoff=4.0, l_max=3, radial={"n_max": 4}, species=[28, 29, 46])


@pytest.fixture(scope="module")
def frames():
    return [alloy(seed, repeat=(1, 1, 2)) for seed in range(4)]


def _values(soap, frames):
    return np.asarray(soap.compute(frames).values)


def test_full_rank_embedding_reproduces_every_dot_product_of_the_full_soap(frames):
    full = SOAP(**COMMON)
    compressed = with_pca_mixing(full, frames, 12)  # K = S*N: an orthogonal map
    test = [alloy(50), alloy(51, strain=0.04)]
    x, y = _values(full, test), _values(compressed, test)
    assert x.shape == y.shape
    assert not np.allclose(x, y)  # different features ...
    np.testing.assert_allclose(y @ y.T, x @ x.T, atol=1e-13)  # ... the same kernel


def test_columns_are_the_leading_orthonormal_eigenvectors(frames):
    full = SOAP(**COMMON)
    covariance = density_covariance(full, frames)
    mixing = pca_mixing(full, frames, 5)
    w = np.asarray(mixing.matrix)  # [S*N, K]
    np.testing.assert_allclose(w.T @ w, np.eye(5), atol=1e-12)
    values = np.linalg.eigvalsh(covariance)[::-1]
    np.testing.assert_allclose(np.diag(w.T @ covariance @ w), values[:5], rtol=1e-10)
    # the retained variance beats any random orthonormal embedding of the same size
    rng = np.random.default_rng(0)
    for _ in range(5):
        q, _ = np.linalg.qr(rng.normal(size=w.shape))
        assert np.trace(q.T @ covariance @ q) < np.trace(w.T @ covariance @ w)


def test_covariance_is_the_definition_on_one_structure(frames):
    full = SOAP(**COMMON)
    batch_frames = frames[:1]
    covariance = density_covariance(full, batch_frames)
    from tradens import as_batch

    batch = as_batch(batch_frames)
    expansion = full.expansion
    pairs = expansion.pairs(batch)
    c = expansion.coefficients(batch, pairs, expansion.vectors(batch, pairs)).numpy()
    l_of = np.concatenate([[l] * (2 * l + 1) for l in range(4)])
    expected = np.einsum("aim,ajm,m->ij", c, c, 1.0 / (2 * l_of + 1)) / c.shape[0]
    np.testing.assert_allclose(covariance, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("mode", "shape"), [("element", (3, 2)), ("radial", (4, 3))])
def test_element_and_radial_modes(frames, mode, shape):
    full = SOAP(**COMMON)
    mixing = pca_mixing(full, frames, shape[1], mode=mode)
    assert isinstance(mixing, Mixing) and mixing.mode == mode
    assert np.asarray(mixing.matrix).shape == shape
    soap = SOAP(**COMMON, mixing=mixing)
    assert np.isfinite(_values(soap, frames[:1])).all()


def test_the_embedding_is_saved_with_the_representation(frames, tmp_path):
    from tradens import from_dict, to_dict

    soap = with_pca_mixing(SOAP(**COMMON), frames, 6, mode="radial+element")
    again = SOAP(from_dict(to_dict(soap.hypers)))
    np.testing.assert_array_equal(_values(again, frames[:1]), _values(soap, frames[:1]))


def test_bad_requests_name_the_problem(frames):
    full = SOAP(**COMMON)
    with pytest.raises(ValueError, match=r"channels must be between 1 and 3 for mode 'element'"):
        pca_mixing(full, frames, 4, mode="element")
    with pytest.raises(ValueError, match="mixing mode"):
        pca_mixing(full, frames, 2, mode="species")
    with pytest.raises(ValueError, match="no atoms"):
        density_covariance(full, frames, max_atoms=0)


def test_data_driven_embedding_example_runs(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sample = root / "src" / "tradens" / "data" / "meam17_sample.xyz"
    argv = ["--train", "24", "--test", "12", "--seeds", "2", "--channels", "4"]
    result = subprocess.run(
        [sys.executable, str(root / "examples" / "data_driven_embedding.py"), *argv]
        + ["--data", str(sample)],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for coupling in ("elementwise", "tensor"):
        block = report[f"K=4 {coupling}"]
        assert len(block["random"]["rmse_meV_atom"]) == 2
        assert 0 < block["pca"]["rmse_meV_atom"] < 10 * report["baseline_meV_atom"]
