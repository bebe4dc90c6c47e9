"""PCA, kernel PCA, pooling, PNG maps and chemiscope export."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest

import tradens
from tradens.analysis.maps import (
    PCA,
    KernelPCA,
    map_properties,
    plot_map,
    pool_features,
    structure_properties,
    write_chemiscope,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SAMPLE = Path(tradens.__file__).parent / "data" / "hea25_sample.xyz"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def frames():
    return ase.io.read(SAMPLE, ":4")


@pytest.fixture(scope="module")
def features(frames):
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    soap = tradens.SOAP(
        cutoff=4.5, l_max=2, radial={"n_max": 3}, species=species, mixing={"channels": 4}
    )
    return soap.compute(frames)


def rank2_toy(n: int = 40, seed: int = 0):
    """Points mean + a u + b v with orthonormal u, v in 6-D and uncorrelated a, b."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(6, 2)))
    u, v = basis[:, 0], basis[:, 1]
    a = rng.normal(scale=3.0, size=n)
    b = rng.normal(scale=1.0, size=n)
    a -= a.mean()
    b -= b.mean()
    b -= a * (a @ b) / (a @ a)  # exactly uncorrelated
    mean = rng.normal(size=6)
    return mean + a[:, None] * u + b[:, None] * v, a, b, u, v, mean


def test_pca_recovers_a_rank2_set():
    x, a, b, u, v, mean = rank2_toy()
    pca = PCA(2).fit(x)
    np.testing.assert_allclose(pca.mean_, mean, atol=1e-12)
    np.testing.assert_allclose(np.abs(pca.components_ @ u), [1.0, 0.0], atol=1e-10)
    np.testing.assert_allclose(np.abs(pca.components_ @ v), [0.0, 1.0], atol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_, [a.var(ddof=1), b.var(ddof=1)], rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_ratio_.sum(), 1.0, atol=1e-12)
    coords = pca.transform(x)
    np.testing.assert_allclose(coords @ pca.components_ + pca.mean_, x, atol=1e-10)  # exact rank 2
    # sign convention: the largest loading of every component is positive
    assert all(c[np.argmax(np.abs(c))] > 0 for c in pca.components_)
    np.testing.assert_array_equal(PCA(2).fit(x.copy()).components_, pca.components_)


def test_pca_matches_sklearn_and_the_randomised_path():
    decomposition = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 9)) @ np.diag([5, 3, 2, 1, 1, 1, 0.5, 0.5, 0.1])
    ours = PCA(3).fit(x)
    theirs = decomposition.PCA(3).fit(x)
    np.testing.assert_allclose(np.abs(ours.components_), np.abs(theirs.components_), atol=1e-8)
    np.testing.assert_allclose(
        ours.explained_variance_ratio_, theirs.explained_variance_ratio_, rtol=1e-8
    )
    # more than 500 rows and columns: randomised range finder, same leading components
    big = rng.normal(size=(520, 2)) @ rng.normal(size=(2, 510)) * 4
    big += 0.01 * rng.normal(size=(520, 510))
    fast = PCA(2).fit(big)
    _, _, vt = np.linalg.svd(big - big.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(fast.components_ @ vt[:2].T), np.eye(2), atol=1e-6)


def test_kernel_pca_linear_equals_pca_and_polynomial_matches_sklearn():
    x, *_ = rank2_toy(30, seed=2)
    linear = KernelPCA(2, kernel="linear").fit_transform(x)
    pca = PCA(2).fit_transform(x)
    np.testing.assert_allclose(np.abs(linear), np.abs(pca), atol=1e-9)
    decomposition = pytest.importorskip("sklearn.decomposition")
    poly = KernelPCA(2, kernel="polynomial", degree=2).fit_transform(x)
    theirs = decomposition.KernelPCA(
        2, kernel="poly", degree=2, gamma=1.0, coef0=0.0
    ).fit_transform(x)
    np.testing.assert_allclose(np.abs(poly), np.abs(theirs), rtol=1e-7, atol=1e-9)
    rbf = KernelPCA(2, kernel="rbf", gamma=0.3).fit_transform(x)
    theirs = decomposition.KernelPCA(2, kernel="rbf", gamma=0.3).fit_transform(x)
    np.testing.assert_allclose(np.abs(rbf), np.abs(theirs), rtol=1e-7, atol=1e-9)


def test_kernel_pca_landmarks_bound_the_fit():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4))
    model = KernelPCA(2, kernel="rbf", max_fit_points=50).fit(x)
    assert model.X_fit_.shape == (50, 4) and model.gamma_ > 0
    coords = model.transform(x)
    assert coords.shape == (300, 2)
    # the landmarks map onto eigenvector * sqrt(eigenvalue), as in plain kernel PCA
    on_landmarks = model.transform(model.X_fit_)
    np.testing.assert_allclose(
        on_landmarks.T @ on_landmarks, np.diag(model.eigenvalues_), atol=1e-8
    )
    with pytest.raises(ValueError, match="kernel must be"):
        KernelPCA(kernel="cosine").fit(x)


def test_pool_features(features):
    mean = pool_features(features, "mean")
    total = pool_features(features, "sum")
    for s in range(4):
        rows = features.structure == s
        np.testing.assert_allclose(mean.values[s], features.values[rows].mean(0), atol=1e-14)
        np.testing.assert_allclose(total.values[s], features.values[rows].sum(0), atol=1e-13)
    assert mean.center.tolist() == [-1] * 4 and mean.names == features.names
    with pytest.raises(ValueError, match="pooling"):
        pool_features(features, "max")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_map_categories_and_values(tmp_path, features):
    pytest.importorskip("matplotlib")
    xy = PCA(2).fit_transform(features.values)
    many = [f"E{i % 55}" for i in range(len(xy))]  # 55 categories: legend in columns
    plot_map(tmp_path / "elements.png", xy, categories=many, color_label="element")
    plot_map(tmp_path / "energy.png", xy, values=np.arange(len(xy), dtype=float), color_label="eV")
    width, height = _png_size(tmp_path / "elements.png")
    assert width > 500 and height > 400
    assert _png_size(tmp_path / "energy.png")[0] > 500
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "elements.png",
        "energy.png",
    ]  # no temp files
    with pytest.raises(ValueError, match="not both"):
        plot_map(tmp_path / "x.png", xy, categories=many, values=np.zeros(len(xy)))
    with pytest.raises(ValueError, match="categories must have"):
        plot_map(tmp_path / "x.png", xy, categories=["a"])
    assert not (tmp_path / "x.png").exists()


def test_structure_properties(frames):
    props = structure_properties(frames)
    energies = np.array([a.get_potential_energy() for a in frames])
    np.testing.assert_allclose(props["energy"], energies)
    np.testing.assert_allclose(props["energy_per_atom"], energies / [len(a) for a in frames])
    assert props["elements"][0] == "".join(sorted(set(frames[0].get_chemical_symbols())))
    assert "class" in props and "name" in props
    rows = map_properties(frames, structure=[0, 1], center=[3, 5])
    assert rows["element"]["values"].tolist() == [frames[0][3].symbol, frames[1][5].symbol]
    assert rows["energy"]["units"] == "eV" and rows["energy"]["target"] == "atom"


def _check_chemiscope(data: dict, frames, n_rows: int, target: str) -> None:
    """The documented chemiscope schema: meta, structures, properties, environments, settings."""
    assert data["meta"]["name"]
    assert [s["size"] for s in data["structures"]] == [len(a) for a in frames]
    assert data["structures"][0]["names"] == frames[0].get_chemical_symbols()
    np.testing.assert_allclose(data["structures"][0]["x"], frames[0].positions[:, 0])
    np.testing.assert_allclose(data["structures"][0]["cell"], frames[0].cell[:].reshape(-1))
    for name, prop in data["properties"].items():
        assert prop["target"] in ("atom", "structure"), name
        expected = n_rows if prop["target"] == target else len(frames)
        assert len(prop["values"]) == expected, name
    for axis in ("x", "y", "color"):
        assert data["settings"]["map"][axis]["property"] in data["properties"]
    assert data["settings"]["target"] == target
    if target == "atom":
        assert len(data["environments"]) == n_rows
        assert set(data["environments"][0]) == {"structure", "center", "cutoff"}


@pytest.mark.parametrize("use_chemiscope", [False, True])
def test_chemiscope_file_is_valid(tmp_path, frames, features, use_chemiscope):
    if use_chemiscope:
        chemiscope = pytest.importorskip("chemiscope")
    atoms_xy = PCA(2).fit_transform(features.values)
    path = tmp_path / "atoms.json.gz"
    write_chemiscope(
        path,
        frames,
        {"PCA": atoms_xy},
        structure=features.structure,
        center=features.center,
        use_chemiscope=use_chemiscope,
        name="atoms",
    )
    with gzip.open(path, "rt") as handle:
        data = json.load(handle)
    _check_chemiscope(data, frames, len(features), "atom")
    np.testing.assert_allclose(data["properties"]["PCA[2]"]["values"], atoms_xy[:, 1])
    assert data["properties"]["element"]["values"][0] == frames[0][0].symbol
    pooled = PCA(2).fit_transform(pool_features(features).values)
    plain = tmp_path / "structures.json"
    write_chemiscope(
        plain, frames, {"PCA": pooled}, use_chemiscope=use_chemiscope, name="structures"
    )
    data = json.loads(plain.read_text())  # not compressed
    _check_chemiscope(data, frames, len(frames), "structure")
    assert data["settings"]["map"]["color"]["property"] == "energy_per_atom"
    if use_chemiscope:  # loads in chemiscope, and its own validation accepts the content
        chemiscope.show_input(str(path))
        chemiscope.create_input(structures=frames, properties=data["properties"])


def test_fallback_writer_equals_chemiscope_output(tmp_path, frames, features):
    pytest.importorskip("chemiscope")
    xy = PCA(2).fit_transform(features.values)
    paths = []
    for use in (True, False):
        path = tmp_path / f"{use}.json"
        write_chemiscope(
            path,
            frames,
            {"PCA": xy},
            structure=features.structure,
            center=features.center,
            use_chemiscope=use,
            name="same",
            description="d",
        )
        paths.append(path)
    assert json.loads(paths[0].read_text()) == json.loads(paths[1].read_text())


def test_chemiscope_errors(tmp_path, frames):
    xy = np.zeros((len(frames), 2))
    with pytest.raises(ValueError, match=".json or .json.gz"):
        write_chemiscope(tmp_path / "map.txt", frames, {"PCA": xy})
    with pytest.raises(ValueError, match="shape"):
        write_chemiscope(tmp_path / "map.json", frames, {"PCA": xy[:2]})
    with pytest.raises(ValueError, match="unknown colour"):
        write_chemiscope(tmp_path / "map.json", frames, {"PCA": xy}, color="spin")
    assert list(tmp_path.iterdir()) == []


def test_map_example_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("map_and_select", EXAMPLES / "map_and_select.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--output-dir", str(tmp_path), "--channels", "4"])
    printed = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "atoms_pca.png",
        "structures.json.gz",
        "structures_pca.png",
    ]
    assert "19 elements, 50 features per atom" in printed
    assert "FPS structures: [0," in printed
