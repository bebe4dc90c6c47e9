"""Saving and loading: identical predictions, versioned format, clear errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from _models_helpers import alloy, label, planted, small_soap

from tradens.models import ElementBaseline, LinearPotential, load, save
from tradens.models.io import FORMAT_VERSION
from tradens.models.projection import CompressedLeastSquares, RandomProjection


@pytest.fixture(scope="module")
def frames():
    soap = small_soap()
    theta, e0, model_fn = planted(soap, seed=4)
    return label([alloy(seed, strain=0.03) for seed in range(4)], soap, model_fn)


def _same_predictions(a, b, frames):
    first, second = a.predict(frames), b.predict(frames)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.parametrize("kind", ["linear", "per_element", "projection", "learnable-mixing"])
def test_round_trip_gives_identical_predictions(kind, frames, tmp_path):
    if kind == "learnable-mixing":
        soap = small_soap(mixing={"channels": 3, "learnable": True, "weights": "gap"})
        with np.errstate(all="ignore"):
            soap.weights1.data += 0.01  # a trained embedding must survive the round trip
    else:
        soap = (
            small_soap(mixing={"mode": "element", "channels": 2})
            if kind == "projection"
            else small_soap()
        )
    options = {
        "per_element": kind == "per_element",
        "projection": RandomProjection(12, seed=3) if kind == "projection" else None,
    }
    model = LinearPotential(soap, alphas=(1e-4,), cv=None, **options).fit(frames)
    path = save(model, tmp_path / "model.zip")
    loaded = load(path)
    assert type(loaded) is LinearPotential
    assert loaded.get_params()["per_element"] == model.per_element
    np.testing.assert_array_equal(
        loaded.baseline_.reference_energies_, model.baseline_.reference_energies_
    )
    _same_predictions(model, loaded, frames[:2])


def test_baseline_and_compressed_least_squares_round_trip(frames, tmp_path):
    baseline = ElementBaseline().fit(frames)
    loaded = load(save(baseline, tmp_path / "baseline.zip"))
    assert loaded.energies_by_element() == baseline.energies_by_element()
    full = small_soap(mixing=None)
    cls = CompressedLeastSquares(full, 15, n_projections=2, forces_weight=0, stress_weight=0).fit(
        frames
    )
    _same_predictions(cls, load(save(cls, tmp_path / "cls.zip")), frames[:1])


def test_file_contents_are_plain_data(frames, tmp_path):
    model = LinearPotential(small_soap(), alphas=(1e-4,), cv=None).fit(frames)
    path = save(model, tmp_path / "model.zip")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["arrays.npz", "metadata.json"]
        meta = json.loads(archive.read("metadata.json"))
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["representation"]["hypers"]["type"] == "SoapHypers"
    assert meta["fitted"]["species"] == [28, 29, 46]
    assert not list(tmp_path.glob(".tradens-*"))  # no temporary left behind


def test_other_format_version_gives_a_clear_message(frames, tmp_path):
    model = LinearPotential(small_soap(), alphas=(1e-4,), cv=None).fit(frames)
    path = save(model, tmp_path / "model.zip")
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("metadata.json"))
        arrays = archive.read("arrays.npz")
    meta["format_version"] = FORMAT_VERSION + 1
    old = tmp_path / "future.zip"
    with zipfile.ZipFile(old, "w") as archive:
        archive.writestr("metadata.json", json.dumps(meta))
        archive.writestr("arrays.npz", arrays)
    with pytest.raises(
        ValueError, match=f"format version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"
    ):
        load(old)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a tradens model file"):
        load(tmp_path / "junk.zip")
    with pytest.raises(ValueError, match="not fitted yet"):
        save(LinearPotential(small_soap()), tmp_path / "unfitted.zip")
