"""The ``tradens`` command line: end to end (a few subprocesses) and in-process through ``main``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest

import tradens
from tradens import cli
from tradens.cli import app as _cli_app
from tradens.io import read_features

SAMPLE = Path(tradens.__file__).parent / "data" / "hea25_sample.xyz"
SMALL = ["--n-max", "3", "--l-max", "2", "--channels", "4", "--quiet"]


def run_tradens(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script (or ``python -m tradens.cli``) in a subprocess."""
    script = shutil.which("tradens")
    command = [script] if script else [sys.executable, "-m", "tradens.cli"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("TRADENS_TRACEBACK", None)
    return subprocess.run(
        command + list(args), cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def clusters_with_55_elements(path: Path) -> list[ase.Atoms]:
    """Random non-periodic clusters using 55 different elements (Z = 1..55)."""
    rng = np.random.default_rng(0)
    numbers = rng.permutation(np.arange(1, 56))
    frames = []
    for chunk in np.array_split(numbers, 5):  # 5 clusters of 11 atoms, every element once
        positions = rng.uniform(0.0, 4.0, size=(len(chunk), 3))
        frames.append(ase.Atoms(numbers=chunk, positions=positions))
    ase.io.write(path, frames, format="extxyz")
    return frames


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("tradens: error: ") and "Traceback" not in stderr
    return lines[0]


# ------------------------------------------------------------ subprocesses (few: ~2 s each)
def test_features_with_55_elements_end_to_end(tmp_path, capsys):
    frames = clusters_with_55_elements(tmp_path / "clusters.xyz")
    result = run_tradens("features", "clusters.xyz", "-o", "out.npz", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "elements   55:" in result.stdout
    with np.load(tmp_path / "out.npz") as data:
        values, names = data["values"], data["names"]
        hypers = json.loads(str(data["hypers"]))
        structure, center, numbers = data["structure"], data["center"], data["numbers"]
    # K(K+1)/2 pairs x (l_max+1): independent of the 55 elements
    assert values.shape == (55, 4 * 5 // 2 * 3) and len(names) == values.shape[1]
    np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1.0, atol=1e-12)
    assert hypers["species"] == list(range(1, 56)) and hypers["mixing"]["channels"] == 4
    assert structure.tolist() == [s for s, a in enumerate(frames) for _ in a]
    assert numbers.tolist() == [int(z) for a in frames for z in a.numbers]
    assert center.tolist() == [i for a in frames for i in range(len(a))]
    # the stored hypers rebuild the same calculator (on the structures as written: extxyz rounds)
    again = (
        tradens.SOAP(tradens.from_dict(hypers))
        .compute(ase.io.read(tmp_path / "clusters.xyz", ":"))
        .values
    )
    np.testing.assert_allclose(again, values, atol=1e-12)
    # the other commands work on it too (in-process: no extra interpreter start-up)
    code = cli.main(
        [
            "map",
            str(tmp_path / "clusters.xyz"),
            "--level",
            "atom",
            "-o",
            str(tmp_path / "m.png"),
            *SMALL,
        ]
    )
    assert code == 0 and (tmp_path / "m.json.gz").is_file()
    code = cli.main(
        [
            "select",
            str(tmp_path / "clusters.xyz"),
            "-n",
            "2",
            "-o",
            str(tmp_path / "s.xyz"),
            "--features",
            str(tmp_path / "out.npz"),
        ]
    )
    assert code == 0 and len(ase.io.read(tmp_path / "s.xyz", ":")) == 2
    assert "55 atom points" in capsys.readouterr().out


def test_bad_input_ends_with_one_line(tmp_path, capsys):
    (tmp_path / "bad.xyz").write_text("3\nnot an extxyz comment\nH 0 0\n")
    result = run_tradens("select", "bad.xyz", "-n", "1", "-o", "s.xyz", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "cannot read structures from 'bad.xyz'" in one_line_error(result.stderr)
    missing = str(tmp_path / "missing.xyz")
    assert cli.main(["features", missing, "-o", str(tmp_path / "out.npz")]) == 1
    assert "missing.xyz' does not exist" in one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.xyz"]  # no output, no temp files


def test_features_threads_option(tmp_path):
    result = run_tradens(
        "features", "--example", "--channels", "4", "--threads", "1", "-q", cwd=tmp_path
    )
    assert result.returncode == 0 and "468 rows x 70 features per atom" in result.stdout, (
        result.stderr
    )
    result = run_tradens("features", "--example", "--threads", "-2", cwd=tmp_path)
    assert result.returncode == 1 and "--threads must be >= 1" in one_line_error(result.stderr)


def test_features_example_prints_a_summary_and_writes_nothing(tmp_path):
    result = run_tradens("features", "--example", "--channels", "8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "12 structures, 468 atoms" in out
    assert "468 rows x 252 features per atom" in out  # K=8: 36 pairs x 7 degrees
    assert "elements   19: Sc Ti V Cr Mn Co Ni Zn Zr Nb Ru Rh Pd Hf Ta W Ir Pt Au" in out
    assert "full SOAP  81396 features per atom" in out  # (19*8)(19*8+1)/2 * 7
    assert "time" in out and "ms per atom" in out
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- in-process
def call(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.xyz"
    ase.io.write(path, ase.io.read(SAMPLE, ":5"), format="extxyz")
    return path


def test_features_formats_and_hypers_round_trip(tmp_path, capsys, sample):
    code, out, err = call(capsys, "features", str(sample), "-o", str(tmp_path / "f.npz"), *SMALL)
    assert code == 0, err
    features, hypers = read_features(tmp_path / "f.npz")
    (tmp_path / "hypers.json").write_text(json.dumps(hypers))
    code, _, err = call(
        capsys,
        "features",
        str(sample),
        "-o",
        str(tmp_path / "g.npz"),
        "--quiet",
        "--hypers",
        str(tmp_path / "hypers.json"),
    )
    assert code == 0, err
    np.testing.assert_array_equal(read_features(tmp_path / "g.npz")[0].values, features.values)
    (tmp_path / "h.yaml").write_text(
        "cutoff: 5.0\nradial: {n_max: 3}\nl_max: 2\nmixing: {channels: 4}\n"
    )
    code, _, err = call(
        capsys,
        "features",
        str(sample),
        "-o",
        str(tmp_path / "y.npz"),
        "--quiet",
        "--hypers",
        str(tmp_path / "h.yaml"),
        "--channels",
        "2",
    )
    assert code == 0, err
    assert read_features(tmp_path / "y.npz")[0].values.shape[1] == 3 * 3  # flag overrides the file
    pytest.importorskip("h5py")
    code, _, err = call(capsys, "features", str(sample), "-o", str(tmp_path / "f.h5"), *SMALL)
    assert code == 0, err
    h5, h5_hypers = read_features(tmp_path / "f.h5")
    np.testing.assert_array_equal(h5.values, features.values)
    assert h5.names == features.names and h5_hypers == hypers


def test_metatensor_feature_file_round_trip(tmp_path, capsys, sample):
    pytest.importorskip("metatensor")
    for suffix in ("npz", "mts"):
        code, _, err = call(
            capsys, "features", str(sample), "-o", str(tmp_path / f"f.{suffix}"), *SMALL
        )
        assert code == 0, err
    reference, hypers = read_features(tmp_path / "f.npz")
    mts, mts_hypers = read_features(tmp_path / "f.mts")
    np.testing.assert_array_equal(mts.values, reference.values)
    for key in ("structure", "center", "numbers"):
        np.testing.assert_array_equal(getattr(mts, key), getattr(reference, key))
    assert mts.names == reference.names and mts_hypers == hypers and mts_hypers
    assert set(mts.labels) == set(reference.labels)
    for key, value in reference.labels.items():
        np.testing.assert_array_equal(mts.labels[key], value)
    # the analysis commands take it as precomputed features
    code, out, err = call(
        capsys, "imbalance", "--a", str(tmp_path / "f.mts"), "--b", str(tmp_path / "f.npz")
    )
    assert code == 0, err
    (tmp_path / "f.mts").write_bytes(b"not a metatensor file")
    with pytest.raises(ValueError, match="cannot read feature file"):
        read_features(tmp_path / "f.mts")


def test_features_from_a_gap_string_and_pooling(tmp_path, capsys, sample):
    gap = (
        "soap cutoff=4.5 n_max=3 l_max=2 atom_sigma=0.5 n_species=2 species_Z={28 29} "
        "Z_mix=T R_mix=T K=3"
    )
    code, _, err = call(
        capsys,
        "features",
        str(sample),
        "-o",
        str(tmp_path / "gap.npz"),
        "--quiet",
        "--gap",
        gap,
        "--pool",
        "mean",
    )
    assert code == 0, err
    features, hypers = read_features(tmp_path / "gap.npz")
    from tradens.quip import soap_from_gap

    expected = soap_from_gap(gap).compute(ase.io.read(sample, ":")).pooled("mean")
    np.testing.assert_allclose(features.values, expected, atol=1e-14)
    assert hypers["gap"] == gap and features.center.tolist() == [-1] * 5


def test_info_counts(capsys):
    code, out, err = call(
        capsys,
        "info",
        "--species",
        "Ni,Cu,Pd",
        "--n-max",
        "4",
        "--l-max",
        "3",
        "--channels",
        "5",
        "--atoms",
        "1000",
        "--json",
    )
    assert code == 0, err
    info = json.loads(out)
    assert info["features_per_atom"] == 5 * 6 // 2 * 4
    full = tradens.SOAP(cutoff=5.0, l_max=3, radial={"n_max": 4}, species=[28, 29, 46])
    assert info["full_soap_features_per_atom"] == full.n_features == 12 * 13 // 2 * 4
    assert info["feature_bytes_float64"] == 8 * 60 * 1000
    code, out, _ = call(capsys, "info", "--example")
    assert code == 0 and "elements               19" in out and "468 atoms" in out


def test_map_writes_png_and_chemiscope(tmp_path, capsys, sample):
    png = tmp_path / "map.png"
    code, out, err = call(capsys, "map", str(sample), "-o", str(png), "--level", "atom", *SMALL)
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG"
    import gzip

    with gzip.open(tmp_path / "map.json.gz", "rt") as handle:
        data = json.load(handle)
    n_atoms = sum(len(a) for a in ase.io.read(sample, ":"))
    assert len(data["environments"]) == n_atoms == len(data["properties"]["PCA[1]"]["values"])
    assert data["settings"]["map"]["color"]["property"] == "element"
    code, out, err = call(
        capsys,
        "map",
        str(sample),
        "-o",
        str(tmp_path / "s.png"),
        "--method",
        "kpca",
        "--chemiscope",
        str(tmp_path / "s.json"),
        "--color",
        "class",
        *SMALL,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text())["settings"]["target"] == "structure"


def test_imbalance_between_hypers_and_files(tmp_path, capsys, sample):
    code, out, err = call(
        capsys,
        "imbalance",
        str(sample),
        "--a",
        "full",
        "--b",
        "full",
        "--n-max",
        "3",
        "--l-max",
        "2",
        "--quiet",
        "--json",
        str(tmp_path / "same.json"),
    )
    assert code == 0, err
    result = json.loads((tmp_path / "same.json").read_text())
    n_atoms = result["n_points"]
    assert result["a_to_b"] == pytest.approx(2 / n_atoms) and result["exact"]
    for name, channels in (("a.npz", "1"), ("b.npz", "6")):
        call(
            capsys,
            "features",
            str(sample),
            "-o",
            str(tmp_path / name),
            "--n-max",
            "3",
            "--l-max",
            "2",
            "--channels",
            channels,
            "--quiet",
        )
    code, out, err = call(
        capsys, "imbalance", "--a", str(tmp_path / "a.npz"), "--b", str(tmp_path / "b.npz")
    )
    assert code == 0, err
    lines = {
        line.split("=")[0].strip(): float(line.split("=")[1].split("+-")[0])
        for line in out.splitlines()
        if line.startswith("Delta")
    }
    assert lines["Delta(A -> B)"] > lines["Delta(B -> A)"]  # K=6 holds more than K=1
    code, out, _ = call(
        capsys,
        "imbalance",
        str(sample),
        "--a",
        "tr:2",
        "--b",
        "rp:12",
        "--level",
        "structure",
        "--k",
        "2",
        "--n-max",
        "3",
        "--l-max",
        "2",
        "--quiet",
    )
    assert code == 0 and "random projection" in out and "points: 5 structures" in out


def test_select_writes_an_extxyz_subset(tmp_path, capsys, sample):
    out_path = tmp_path / "subset.xyz"
    code, out, err = call(
        capsys,
        "select",
        str(sample),
        "-n",
        "3",
        "-o",
        str(out_path),
        "--indices",
        str(tmp_path / "i.json"),
        *SMALL,
    )
    assert code == 0, err
    picked = json.loads((tmp_path / "i.json").read_text())["selected"]
    subset, original = ase.io.read(out_path, ":"), ase.io.read(sample, ":")
    assert picked[0] == 0 and len(set(picked)) == 3
    for rank, atoms in enumerate(subset):
        source = original[picked[rank]]
        assert (
            atoms.info["selection_rank"] == rank and atoms.info["selection_index"] == picked[rank]
        )
        np.testing.assert_allclose(atoms.positions, source.positions)
        assert atoms.get_potential_energy() == pytest.approx(source.get_potential_energy())
    code, _, err = call(
        capsys,
        "select",
        str(sample),
        "-n",
        "4",
        "--level",
        "atom",
        "--method",
        "cur",
        "-o",
        str(tmp_path / "atoms.xyz"),
        *SMALL,
    )
    assert code == 0, err
    marked = ase.io.read(tmp_path / "atoms.xyz", ":")
    ranks = sorted(int(r) for atoms in marked for r in atoms.arrays["selection_rank"] if r >= 0)
    assert ranks == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["features", "{sample}", "-o", "x.npz", "--cutoff", "-1"],
            "cutoff radius must be a positive number",
        ),
        (
            ["features", "{sample}", "-o", "x.npz", "--species", "Ni,Cu"],
            "not in the species list [28, 29]; "
            "add them with --species or pass --unknown-species skip",
        ),
        (["features", "{sample}", "-o", "x.npz", "--species", "Qq"], "unknown element 'Qq'"),
        (["features", "{sample}", "-o", "x.txt"], "unknown feature file type"),
        (
            ["features", "{sample}", "-o", "x.npz", "--gap", "soap cutoff=3", "--cutoff", "4"],
            "--gap",
        ),
        (["map", "{sample}", "-o", "x.png", "--color", "spin"], "unknown --color 'spin'"),
        (["imbalance", "{sample}", "--a", "full", "--b", "xx"], "unknown representation 'xx'"),
        (["info"], "give --species"),
        (["bench", "--script", "no_such_bench.py"], "benchmark script not found"),
    ],
)
def test_errors_are_one_line(capsys, tmp_path, sample, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{sample}", str(sample)) for a in args]
    code, out, err = call(
        capsys,
        *args,
        *(
            ["--quiet", "--n-max", "2", "--l-max", "1"]
            if args[0] in ("features", "map", "imbalance")
            else []
        ),
    )
    assert code == 1
    assert message in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.xyz"]


def test_usage_errors_exit_2(capsys):
    code, _, err = call(capsys, "features", "--cutoff", "abc")
    assert code == 2 and "invalid float value: 'abc'" in one_line_error(err)
    code, _, err = call(capsys, "select", "--bogus")
    assert code == 2


def test_ctrl_c_leaves_no_partial_output(tmp_path, capsys, sample, monkeypatch):
    target = tmp_path / "f.npz"
    target.write_bytes(b"previous")

    def interrupted(handle, **arrays):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    code, _, err = call(capsys, "features", str(sample), "-o", str(target), *SMALL)
    assert code == 130 and "interrupted" in err
    assert target.read_bytes() == b"previous"  # untouched, and no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz", "sample.xyz"]


def test_subcommand_registry(capsys, tmp_path, monkeypatch):
    seen = {}

    def add(parser):
        parser.add_argument("--value", type=int, default=1)

    def run(args):
        seen["value"] = args.value
        return 3

    # a reserved name that nothing registered yet ends with a clear error
    without_eval = {k: v for k, v in _cli_app._SUBCOMMANDS.items() if k != "eval"}
    monkeypatch.setattr(_cli_app, "_SUBCOMMANDS", without_eval)
    code, _, err = call(capsys, "eval")
    assert code == 1 and "'eval' is reserved" in one_line_error(err)
    # registering it: one function for the arguments, one to run, one call
    cli.register_subcommand(
        "eval", add, run, help="a test eval", epilog="examples:\n  tradens eval --value 2"
    )
    assert call(capsys, "eval", "--value", "7")[0] == 3 and seen == {"value": 7}
    with pytest.raises(ValueError, match="already registered"):
        cli.register_subcommand("eval", add, run, help="again")
    cli.register_subcommand(
        "demo", "tradens.cli.commands:add_bench_arguments", run, help="lazy"
    )  # "module:function" strings are resolved when used
    assert "demo" in cli.subcommands()
    bench = tmp_path / "bench.py"
    bench.write_text("def main(argv=None):\n    print('ARGS', argv)\n    return 0\n")
    code, out, _ = call(capsys, "bench", "--script", str(bench), "--quick", "--repeat", "2")
    assert code == 0 and "ARGS ['--quick', '--repeat', '2']" in out


def test_help_has_examples_for_every_subcommand(capsys):
    for name in ("features", "info", "map", "imbalance", "select", "bench"):
        with pytest.raises(SystemExit) as stop:
            cli.main([name, "--help"])
        assert stop.value.code == 0
        assert "examples:" in capsys.readouterr().out, name
