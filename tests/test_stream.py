"""Streaming: lazy inputs, chunked feature files, resumption after an interruption."""

from __future__ import annotations

import hashlib
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest

from tradens import SOAP
from tradens.analysis.maps import pool_features
from tradens.io import FeatureWriter, example_path, read_features, write_features
from tradens.representations.stream import compute_to_file, iter_structures

FRAMES = ase.io.read(example_path("meam17"), ":12")
SPECIES = sorted({int(z) for atoms in FRAMES for z in atoms.numbers})


def tiny_soap() -> SOAP:
    return SOAP(cutoff=3.0, l_max=2, radial={"n_max": 3}, species=SPECIES, mixing={"channels": 4})


@pytest.fixture(scope="module")
def soap():
    return tiny_soap()


@pytest.fixture(scope="module")
def reference(soap):
    return soap.compute(FRAMES, batch_size=2)


@pytest.fixture
def xyz(tmp_path):
    path = tmp_path / "input.xyz"
    ase.io.write(path, FRAMES, format="extxyz")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".h5", ".zarr", ".npz", ".mts"])
def test_file_equals_in_memory_compute(soap, reference, xyz, tmp_path, suffix):
    out = tmp_path / f"features{suffix}"
    result = compute_to_file(soap, xyz, out, chunk_size=4, batch_size=2)
    assert (result.n_structures, result.n_chunks, result.computed, result.reused) == (12, 3, 3, 0)
    assert result.n_atoms == sum(len(a) for a in FRAMES) == result.n_rows
    features, hypers = read_features(out)
    assert np.array_equal(features.values, reference.values)  # bit for bit
    for key in ("structure", "center", "numbers"):
        assert np.array_equal(getattr(features, key), getattr(reference, key)), key
    assert features.names == reference.names
    assert set(features.labels) == set(reference.labels)
    for key, value in reference.labels.items():
        assert np.array_equal(np.asarray(features.labels[key]), np.asarray(value)), key
    assert hypers["radial"]["n_max"] == 3 and hypers["cutoff"]["radius"] == 3.0
    assert not Path(str(out) + ".partial").exists()  # the work directory is gone


def test_interrupted_run_resumes_bit_for_bit(soap, xyz, tmp_path):
    whole = tmp_path / "whole.h5"
    compute_to_file(soap, xyz, whole, chunk_size=3, batch_size=3)
    out = tmp_path / "resumed.h5"
    stored: list[int] = []

    def stop_after_two(chunk: int) -> None:
        stored.append(chunk)
        if len(stored) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_to_file(soap, xyz, out, chunk_size=3, batch_size=3, on_chunk=stop_after_two)
    assert not out.exists()  # no partial output file
    partial = Path(str(out) + ".partial")
    assert sorted(p.name for p in partial.glob("chunk-*.npz")) == [
        "chunk-00000000.npz",
        "chunk-00000001.npz",
    ]
    computed: list[int] = []
    result = compute_to_file(soap, xyz, out, chunk_size=3, batch_size=3, on_chunk=computed.append)
    assert computed == [2, 3]  # the finished chunks were not computed again
    assert (result.computed, result.reused, result.n_chunks) == (2, 2, 4)
    assert digest(out) == digest(whole)  # the same file, bit for bit
    a, _ = read_features(out)
    b, _ = read_features(whole)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.structure, b.structure)


def test_input_that_fails_midway_resumes(soap, reference, tmp_path):
    def failing():
        for i, atoms in enumerate(FRAMES):
            if i == 7:
                raise OSError("lost the input")
            yield atoms

    out = tmp_path / "f.npz"
    with pytest.raises(OSError, match="lost the input"):
        compute_to_file(soap, failing(), out, chunk_size=3, batch_size=3)
    assert not out.exists()
    computed: list[int] = []
    result = compute_to_file(
        soap, iter(FRAMES), out, chunk_size=3, batch_size=3, on_chunk=computed.append
    )
    assert computed == [2, 3] and result.reused == 2
    features, _ = read_features(out)
    assert np.array_equal(features.values, reference.values)


def test_resume_with_other_settings_is_refused(soap, xyz, tmp_path):
    out = tmp_path / "f.h5"

    def stop(chunk: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_to_file(soap, xyz, out, chunk_size=3, on_chunk=stop)
    with pytest.raises(ValueError, match="other settings.*chunk_size|options"):
        compute_to_file(soap, xyz, out, chunk_size=4)
    computed: list[int] = []
    result = compute_to_file(soap, xyz, out, chunk_size=4, resume=False, on_chunk=computed.append)
    assert computed == [0, 1, 2] and result.reused == 0


def test_pooled_rows(soap, reference, xyz, tmp_path):
    out = tmp_path / "pooled.h5"
    result = compute_to_file(soap, xyz, out, chunk_size=5, batch_size=5, pool="mean")
    features, _ = read_features(out)
    expected = pool_features(reference, "mean")
    assert result.n_rows == 12
    np.testing.assert_allclose(features.values, expected.values, rtol=1e-12, atol=1e-14)
    assert np.array_equal(features.structure, np.arange(12))
    assert (features.center == -1).all()


def test_compute_reads_paths_iterators_and_databases(soap, reference, xyz, tmp_path):
    database = tmp_path / "frames.db"
    with ase.db.connect(database) as db:
        for atoms in FRAMES:
            db.write(atoms)
    inputs = {
        "path": str(xyz),
        "iread": ase.io.iread(xyz),
        "generator": (atoms for atoms in FRAMES),
        "db file": database,
        "db connection": ase.db.connect(database),
        "db rows": list(ase.db.connect(database).select()),
    }
    for name, systems in inputs.items():
        features = soap.compute(systems, batch_size=2)
        np.testing.assert_allclose(features.values, reference.values, rtol=0, atol=1e-12)
        assert np.array_equal(features.structure, reference.structure), name


def test_bad_arguments(soap, xyz, tmp_path):
    with pytest.raises(ValueError, match="unknown feature file type"):
        compute_to_file(soap, xyz, tmp_path / "f.txt")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        compute_to_file(soap, xyz, tmp_path / "f.h5", chunk_size=0)
    with pytest.raises(ValueError, match="pool must be"):
        compute_to_file(soap, xyz, tmp_path / "f.h5", pool="max")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compute_to_file(soap, tmp_path / "missing.xyz", tmp_path / "f.h5")
    with pytest.raises(FileNotFoundError, match="directory"):
        compute_to_file(soap, xyz, tmp_path / "nowhere" / "f.h5")
    with pytest.raises(ValueError, match="empty input"):
        compute_to_file(soap, iter([]), tmp_path / "f.h5")
    with pytest.raises(TypeError, match="expected a path"):
        list(iter_structures(42))


def test_writer_error_keeps_the_old_file(reference, tmp_path):
    for suffix in (".h5", ".npz", ".zarr"):
        out = tmp_path / f"old{suffix}"
        write_features(out, reference, {"old": True})
        with pytest.raises(RuntimeError, match="boom"):
            with FeatureWriter(
                out,
                n_features=reference.n_features,
                dtype=np.float64,
                names=[],
                labels={},
                hypers={},
            ) as writer:
                writer.append(np.zeros((2, reference.n_features)), [0, 0], [0, 1], [1, 1])
                raise RuntimeError("boom")
        features, hypers = read_features(out)
        assert hypers == {"old": True} and np.array_equal(features.values, reference.values)
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tradens")]
        assert leftovers == [], suffix


def test_cli_streamed_equals_in_memory(tmp_path, capsys):
    from tradens.cli import main

    options = ["--l-max", "2", "--n-max", "3", "--channels", "4", "--cutoff", "3", "-q"]
    assert main(["features", "--example", "meam17", "-o", str(tmp_path / "a.npz"), *options]) == 0
    streamed = tmp_path / "b.zarr"
    argv = ["features", "--example", "meam17", "-o", str(streamed), "--chunk-size", "7", *options]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "6 of 7 structures: 6 computed" in out and "wrote" in out
    a, hypers_a = read_features(tmp_path / "a.npz")
    b, hypers_b = read_features(streamed)
    np.testing.assert_allclose(b.values, a.values, rtol=0, atol=1e-12)
    assert np.array_equal(b.structure, a.structure) and hypers_a == hypers_b
    assert main(argv) == 0  # an existing zarr store is replaced
    assert main(["features", "--example", "meam17", "--chunk-size", "0", "-o", "x.h5"]) == 1
    assert "--chunk-size must be >= 1" in capsys.readouterr().err


def test_skip_bad_lists_structures_by_input_index(soap, reference, tmp_path):
    bad = FRAMES[7].copy()
    bad.positions[0, 0] = np.nan
    frames = FRAMES[:7] + [bad] + FRAMES[8:]
    with pytest.warns(UserWarning, match="skipped 1 bad structure"):
        result = compute_to_file(
            soap, iter(frames), tmp_path / "f.h5", chunk_size=3, batch_size=3, skip_bad=True
        )
    assert [index for index, _ in result.skipped] == [7]  # its index in the input, not the chunk
    features, _ = read_features(tmp_path / "f.h5")
    assert 7 not in set(features.structure.tolist())
    keep = reference.structure != 7
    assert np.array_equal(features.values, reference.values[keep])


def test_xyz_slices_hold_every_frame_once(xyz, tmp_path):
    from tradens.representations.stream import xyz_slices

    slices = list(xyz_slices(xyz, 5))
    assert [c for c, _ in slices] == [0, 1, 2] and [len(s) for _, s in slices] == [5, 5, 2]
    frames = [atoms for _, piece in slices for atoms in piece.read()]
    assert len(frames) == 12
    for a, b in zip(frames, FRAMES, strict=True):
        assert np.array_equal(a.numbers, b.numbers) and np.allclose(a.positions, b.positions)
    broken = tmp_path / "broken.xyz"
    broken.write_text("2\ncomment\nH 0 0 0\nH 0 0 1\nnot a count\n")
    with pytest.raises(ValueError, match="line 5: expected the atom count"):
        list(xyz_slices(broken, 5))
