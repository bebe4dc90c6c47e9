"""What every benchmark script shares: one-thread worker subprocesses, memory, machine, JSON.

Each timed case runs in a fresh interpreter (``python <script> --worker '<spec json>'``)
with every thread pool set to one thread, so that its peak resident set
(``VmHWM``) is its own. The worker prints one line ``BENCH_RESULT <json>``;
:func:`run_worker` reads it back (or reports why there was none).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
RESULT_PREFIX = "BENCH_RESULT "
PEER_PACKAGES = (
    "tradens",
    "torch",
    "numpy",
    "ase",
    "vesin",
    "quippy-ase",
    "featomic",
    "metatensor-core",
    "dscribe",
    "mace-torch",
)


def memory_status() -> dict:
    """Current (``VmRSS``) and peak (``VmHWM``) resident set of this process, MB."""
    out = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0]) / 1024.0
    except OSError:  # not Linux: getrusage gives the peak only
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak / 1024.0 if sys.platform != "darwin" else peak / 2**20
        out = {"VmRSS": float("nan"), "VmHWM": peak}
    return out


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def cuda_visible() -> bool:
    """Whether torch sees a CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False


def worker_main(run_case, spec_json: str) -> int:
    """Worker side: ``run_case(spec)`` and print its result (or the error) as one line."""
    spec = json.loads(spec_json)
    try:
        result = {"ok": True, **run_case(spec)}
    except Exception as error:  # reported to the parent, which goes on with the next case
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def run_worker(script: str | os.PathLike, spec: dict, timeout: float) -> dict:
    """Parent side: run one case of ``script`` in a fresh one-thread interpreter."""
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = "1"
    command = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)]
    try:
        completed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
    return {"ok": False, "error": f"worker exited with {completed.returncode}: {' | '.join(tail)}"}


def machine_info() -> dict:
    """Where and with what a benchmark ran: CPU, memory, load, package versions, git commit."""
    from importlib import metadata

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/cpuinfo") as handle:
            models = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        info["cpu_model"] = models[0] if models else None
        with open("/proc/meminfo") as handle:
            total = handle.readline().split()[1]
        info["memory_total_gb"] = int(total) / 2**20
    except OSError:
        pass
    versions = {}
    for package in PEER_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    info["versions"] = versions
    try:
        info["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    info["threads"] = {name: "1" for name in THREAD_VARIABLES}
    info["torch_threads"] = 1
    info["cuda"] = cuda_visible()
    return info


def write_json_atomically(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=1)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


#: Environment variable naming the shared data folder (the one with ``hea25/``, ``meam17/``).
DATA_VARIABLE = "TRADENS_DATA"


def data_candidates(relative: str) -> list[Path]:
    """Where the shared data file ``relative`` is looked for, in order.

    ``$TRADENS_DATA/relative``, then ``<repo>/../shared/data/relative`` (the
    documented layout: ``shared/`` next to the checkout), then
    ``<repo>/shared/data/relative`` (``shared/`` inside the checkout).
    """
    root = Path(__file__).resolve().parents[1]
    out = []
    if os.environ.get(DATA_VARIABLE):
        out.append(Path(os.environ[DATA_VARIABLE]) / relative)
    out.append(root.parent / "shared" / "data" / relative)
    out.append(root / "shared" / "data" / relative)
    return out


def shared_data(relative: str) -> Path:
    """The first existing candidate of :func:`data_candidates`, else the first one.

    The path is only returned (not checked) so that ``--help`` works anywhere;
    :func:`require_data` gives the error.
    """
    candidates = data_candidates(relative)
    return next((p for p in candidates if p.exists()), candidates[0])


def require_data(path: str | os.PathLike, relative: str) -> Path:
    """``path`` if it exists, else a SystemExit naming every place that was searched."""
    path = Path(path)
    if path.exists():
        return path
    tried = ", ".join(str(p) for p in dict.fromkeys([path, *data_candidates(relative)]))
    raise SystemExit(
        f"data file not found: {path} (tried {tried}); set {DATA_VARIABLE} to the shared data "
        "folder or pass --data"
    )
