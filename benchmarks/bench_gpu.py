"""Benchmark: tradens on a CUDA device against tradens on one CPU core, same run.

System: the 2000-atom, 25-element bcc alloy of ``bench_gradients.py`` (``bcc2000``;
``docs/peers.md`` section 4), GAP descriptor strings ``soap cutoff=5 l_max=6
n_max=8 atom_sigma=0.5`` (full, or R+Z tensor-reduced with K = 16, tensor
``tr16`` or element-wise ``tr16-el``), and the TR-ACE of ``bench_ace.py``
(nu <= 3, ``l_max`` 6/4, n_max 8, K = 32).

Tasks, each timed on the GPU (median of ``--repeats`` after one warm-up, with
``torch.cuda.synchronize``; peak = ``torch.cuda.max_memory_allocated``) and on
one CPU thread of the same machine (median of ``--cpu-repeats``; ``--no-cpu``
skips it):

* ``values``: ``compute`` (float64, and float32 for ``tr16-el``);
* ``jacobian``: ``descriptor_gradients(strain=True)``;
* ``forces``: ``energy_forces_stress`` of a linear model (one vector-Jacobian
  product).

The GPU/CPU agreement of every value is checked by ``tests/test_cuda.py``; this
script also prints the largest difference between the two results of each task.

Usage::

    python benchmarks/bench_gpu.py                     # needs CUDA
    python benchmarks/bench_gpu.py --device cpu --quick  # smoke run of the script itself
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_info, write_json_atomically  # noqa: E402
from bench_gradients import gap_string, make_system  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "bench_gpu.json"
ACE_ORDERS = (0, 6, 4)


def build(task: str, variant: str, atoms, species, device: str, dtype: torch.dtype):
    """A closure that runs one task and returns a tensor to compare between devices."""
    from tradens.gradients import descriptor_gradients, energy_forces_stress
    from tradens.quip import soap_from_gap
    from tradens.representations.ace import ACE

    if variant == "ace32":
        rep = ACE(
            cutoff=5.0,
            species=species,
            nu_max=3,
            l_max=ACE_ORDERS,
            channels=32,
            radial={"n_max": 8},
        )
    else:
        rep = soap_from_gap(gap_string(species, variant))
    if task == "values":
        return lambda: rep.compute(atoms, output="torch", device=device, dtype=dtype).values
    if task == "jacobian":

        def run():
            g = descriptor_gradients(rep, atoms, strain=True, device=device, dtype=dtype)
            return g.strain.sum(dim=(0, 1, 2))  # [F]: a small, order-independent digest

        return run
    if task == "forces":
        w = torch.randn(
            rep.n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        )
        w = w.to(device=device, dtype=dtype)

        def run():
            out = energy_forces_stress(
                rep, lambda x, z: x @ w, atoms, device=device, dtype=dtype, output="torch"
            )
            return torch.as_tensor(out.forces)

        return run
    raise ValueError(task)


def timed(run, device: str, repeats: int, warmup: bool = True) -> tuple[float, torch.Tensor, float]:
    """Median seconds of ``repeats`` runs after one warm-up, the last result, peak MB."""
    cuda = device == "cuda"
    if warmup:
        run()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    return statistics.median(times), result, peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-repeats", type=int, default=1)
    parser.add_argument("--no-cpu", action="store_true", help="GPU timings only")
    parser.add_argument("--quick", action="store_true", help="32-atom, 3-element smoke system")
    parser.add_argument("--only", help="comma list of task:variant[:float32] cases")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    atoms, species = make_system("smoke" if args.quick else "bcc2000", 3 if args.quick else 25)
    cases = [
        ("values", "full", "float64"),
        ("values", "tr16-el", "float64"),
        ("values", "tr16-el", "float32"),
        ("values", "tr16", "float64"),
        ("values", "ace32", "float64"),
        ("jacobian", "tr16-el", "float64"),
        ("jacobian", "tr16", "float64"),
        ("forces", "tr16-el", "float64"),
        ("forces", "tr16", "float64"),
        ("forces", "full", "float64"),
        ("forces", "ace32", "float64"),
    ]
    if args.only:
        wanted = [
            tuple(c.split(":")) + (("float64",) if c.count(":") == 1 else ())
            for c in args.only.split(",")
        ]
        cases = [c for c in cases if c in wanted]
    records = []
    print(
        f"{'task':>9} {'variant':>8} {'dtype':>8} {args.device + ' s':>9} "
        f"{'cpu s':>8} {'ratio':>7} "
        f"{'peak MB':>8} {'max|diff|':>10}",
        flush=True,
    )
    for task, variant, dtype_name in cases:
        dtype = getattr(torch, dtype_name)
        record = {"task": task, "variant": variant, "dtype": dtype_name}
        try:
            run = build(task, variant, atoms, species, args.device, dtype)
            seconds, result, peak = timed(run, args.device, args.repeats)
            record.update(device_s=seconds, peak_mb=peak)
            if not args.no_cpu:
                cpu_run = build(task, variant, atoms, species, "cpu", dtype)
                # the full-SOAP forces take about a minute on one core: no warm-up there
                warmup = (task, variant) != ("forces", "full")
                cpu_s, cpu_result, _ = timed(cpu_run, "cpu", args.cpu_repeats, warmup=warmup)
                diff = float(
                    (result.detach().cpu().double() - cpu_result.detach().double()).abs().max()
                )
                record.update(cpu_s=cpu_s, ratio=cpu_s / seconds, max_abs_diff=diff)
            del run, result
        except Exception as error:  # noqa: BLE001 - report and go on
            record["error"] = f"{type(error).__name__}: {error}"
        records.append(record)
        if "error" in record:
            print(f"{task:>9} {variant:>8} {dtype_name:>8}  ERROR {record['error']}", flush=True)
        else:
            print(
                f"{task:>9} {variant:>8} {dtype_name:>8} {record['device_s']:9.4f} "
                f"{record.get('cpu_s', float('nan')):8.3f} "
                f"{record.get('ratio', float('nan')):7.1f} "
                f"{record['peak_mb']:8.0f} {record.get('max_abs_diff', float('nan')):10.2e}",
                flush=True,
            )
        if args.device == "cuda":
            torch.cuda.empty_cache()
    info = machine_info()
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    write_json_atomically(
        args.output, {"machine": info, "torch": torch.__version__, "records": records}
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
