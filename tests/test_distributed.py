"""dask.distributed: chunks of structures on a LocalCluster of two worker processes."""

from __future__ import annotations

import os
import signal
import sys
import warnings

import ase.io
import numpy as np
import pytest

from tradens import SOAP
from tradens.io import example_path, read_features
from tradens.parallel import make_client, map_bounded, require_dask
from tradens.representations.stream import compute_to_file

distributed = pytest.importorskip("distributed")

FRAMES = ase.io.read(example_path("meam17"), ":24")
SPECIES = sorted({int(z) for atoms in FRAMES for z in atoms.numbers})


def tiny_soap() -> SOAP:
    return SOAP(cutoff=3.0, l_max=2, radial={"n_max": 3}, species=SPECIES, mixing={"channels": 4})


@pytest.fixture(scope="module")
def client():
    client = make_client(workers=2)
    client.wait_for_workers(2)
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def soap():
    return tiny_soap()


@pytest.fixture(scope="module")
def xyz(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "input.xyz"
    ase.io.write(path, FRAMES, format="extxyz")
    return path


@pytest.fixture(scope="module")
def serial_file(soap, xyz, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "serial.h5"
    compute_to_file(soap, xyz, out, chunk_size=2, batch_size=2)
    return out


def test_cluster_file_equals_serial_file(client, soap, xyz, serial_file, tmp_path):
    out = tmp_path / "cluster.h5"
    result = compute_to_file(soap, xyz, out, chunk_size=2, batch_size=2, client=client)
    assert (result.n_chunks, result.computed, result.n_structures) == (12, 12, 24)
    assert out.read_bytes() == serial_file.read_bytes()  # one output, bit for bit
    used = client.run(lambda dask_worker: len(dask_worker.data) >= 0)
    assert len(used) == 2


def test_compute_with_client_equals_compute(client, soap):
    reference = soap.compute(FRAMES, batch_size=2)
    features = soap.compute(FRAMES, batch_size=2, client=client)
    assert np.array_equal(features.values, reference.values)
    assert np.array_equal(features.structure, reference.structure)
    assert np.array_equal(features.center, reference.center)


def test_linear_fit_on_cluster_equals_serial_fit(client, soap):
    from tradens.models import FitWarning, LinearPotential

    options = dict(alphas=(1e-6, 1e-4, 1e-2), cv=3, batch_size=2)
    with warnings.catch_warnings():  # the tiny SOAP fits badly: not the point here
        warnings.simplefilter("ignore", FitWarning)
        serial = LinearPotential(soap, **options).fit(FRAMES)
        clustered = LinearPotential(soap, **options).fit(FRAMES, client=client, chunk_size=5)
    scale = np.abs(serial.weights_).max()
    assert np.abs(clustered.weights_ - serial.weights_).max() <= 1e-10 * scale
    np.testing.assert_allclose(
        clustered.baseline_.reference_energies_,
        serial.baseline_.reference_energies_,
        rtol=0,
        atol=1e-10,
    )
    assert clustered.alpha_ == serial.alpha_
    fitted = [row.name for row in clustered.fit_report_.properties]
    assert fitted == ["energy", "forces", "stress"]  # force and stress rows too
    energy = clustered.predict(FRAMES[:3])["energy"]
    np.testing.assert_allclose(energy, serial.predict(FRAMES[:3])["energy"], rtol=1e-10)


def test_map_bounded_keeps_every_item_once(client):
    items = ((k, k) for k in range(10))
    out = dict(map_bounded(client, _square, items, shared=3, max_in_flight=3))
    assert out == {k: 3 * k * k for k in range(10)}
    with pytest.raises(ValueError, match="max_in_flight"):
        list(map_bounded(client, _square, iter([(0, 1)]), max_in_flight=0))


def _square(shared: int, item: int) -> int:
    return shared * item * item


def test_killed_worker_loses_nothing(client, soap, xyz, serial_file, tmp_path):
    """A worker killed in the middle of the job: the file equals the serial one."""
    pids = client.run(os.getpid)
    killed: list[int] = []

    def kill_a_busy_worker(chunk: int) -> None:
        if killed:
            return
        busy = [address for address, keys in client.processing().items() if keys]
        assert busy, "no task was running when the worker was to be killed"
        os.kill(pids[busy[0]], signal.SIGKILL)
        killed.append(pids[busy[0]])

    out = tmp_path / "fault.h5"
    result = compute_to_file(
        soap,
        xyz,
        out,
        chunk_size=2,
        batch_size=2,
        client=client,
        max_in_flight=4,
        on_chunk=kill_a_busy_worker,
    )
    assert len(killed) == 1
    assert (result.n_chunks, result.computed, result.n_structures) == (12, 12, 24)
    assert out.read_bytes() == serial_file.read_bytes()
    features, _ = read_features(out)
    rows_per_structure = np.bincount(features.structure, minlength=24)
    assert np.array_equal(rows_per_structure, [len(a) for a in FRAMES])  # none lost or doubled
    client.wait_for_workers(2, timeout=120)  # the nanny restarts the killed worker


def test_make_client_arguments():
    with pytest.raises(ValueError, match="either a scheduler address or a number of workers"):
        make_client()
    with pytest.raises(ValueError, match="either a scheduler"):
        make_client(scheduler="tcp://localhost:1", workers=2)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        make_client(workers=0)


def test_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"tradens\[dask\]"):
        require_dask()


def test_kernel_fit_on_cluster_equals_serial_fit(client, soap):
    from tradens.models import FitWarning, SparseKernelPotential

    options = dict(alphas=(1e-4,), cv=None, n_sparse=20, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        serial = SparseKernelPotential(soap, **options).fit(FRAMES)
        clustered = SparseKernelPotential(soap, **options).fit(FRAMES, client=client)
    assert np.array_equal(clustered.sparse_points_, serial.sparse_points_)
    scale = np.abs(serial.weights_).max()
    assert np.abs(clustered.weights_ - serial.weights_).max() <= 1e-10 * scale


def test_cli_scheduler_writes_the_serial_file(client, xyz, tmp_path, capsys):
    from tradens.cli import main

    options = ["--l-max", "2", "--n-max", "3", "--channels", "4", "--cutoff", "3", "-q"]
    serial, clustered = tmp_path / "serial.h5", tmp_path / "cluster.h5"
    argv = ["features", str(xyz), "--chunk-size", "5", "--batch-size", "5", *options]
    assert main([*argv, "-o", str(serial)]) == 0
    address = client.scheduler.address
    assert main([*argv, "-o", str(clustered), "--scheduler", address]) == 0
    assert f"5 computed on {address}" in capsys.readouterr().out
    assert clustered.read_bytes() == serial.read_bytes()
    assert main([*argv, "-o", "x.h5", "--workers", "0"]) == 1
    assert "--workers must be >= 1" in capsys.readouterr().err
