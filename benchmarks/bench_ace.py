"""Benchmark: tensor-reduced ACE invariants against the MACE first layer.

System: the 2000-atom random bcc alloy of ``docs/peers.md`` §4 (25 elements by
default), cutoff 5 Å, 8 radial functions, one thread, float64.

Cases (each in its own subprocess, so peak memory is its own):

* ``tradens``: :class:`tradens.ACE`, channel-diagonal (tensor-reduced) basis,
  ``nu <= 3`` with ``l_max`` 6/4 per order and ``nu <= 4`` with 6/4/2, for
  K = 16, 32, 64.
* ``mace``: ``mace.modules.MACE`` with random weights, one interaction,
  ``correlation=3``, ``max_ell=3``, ``hidden_irreps="32x0e"`` (K = 32
  invariants per atom), when ``mace-torch`` is installed (context: not the same
  work).

It also prints the size of the full (uncompressed) ACE basis for S = 1..8
elements beside the TR size, which does not change with S.

Usage::

    python benchmarks/bench_ace.py                   # all cases
    python benchmarks/bench_ace.py --quick           # tiny smoke run
    python benchmarks/bench_ace.py --channels 32 --no-size-table
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine_info,
    memory_status,
    run_worker,
    worker_main,
    write_json_atomically,
)
from bench_soap import elements_for, make_system  # noqa: E402

ORDERS = {3: (0, 6, 4), 4: (0, 6, 4, 2)}


def _single_thread():
    import os

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    import torch

    torch.set_num_threads(1)


def run_case(spec: dict) -> dict:
    """Time one case in this process (called in a worker subprocess)."""
    _single_thread()
    import numpy as np
    from ase.data import atomic_numbers

    elements = elements_for(spec["n_species"])
    atoms = make_system(elements, spec["repeat"])
    species = [atomic_numbers[e] for e in elements]
    before = memory_status()
    if spec["lib"] == "tradens":
        from tradens import ACE

        nu = spec["nu_max"]
        ace = ACE(
            cutoff=5.0,
            species=species,
            nu_max=nu,
            l_max=ORDERS[nu],
            channels=spec["channels"],
            radial={"n_max": 8},
        )

        def call():
            return ace.compute(atoms).values

        n_features = ace.n_features
    else:
        import torch
        from e3nn import o3
        from mace import modules  # noqa: F401  (import mace before e3nn)
        from mace.data import AtomicData, config_from_atoms
        from mace.tools import AtomicNumberTable, torch_geometric

        torch.set_default_dtype(torch.float64)
        table = AtomicNumberTable(species)
        model = modules.MACE(
            r_max=5.0,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=3,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes[
                "RealAgnosticResidualInteractionBlock"
            ],
            num_interactions=1,
            num_elements=len(species),
            hidden_irreps=o3.Irreps("32x0e"),
            MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.zeros(len(species)),
            avg_num_neighbors=26.0,
            atomic_numbers=species,
            correlation=3,
            gate=torch.nn.functional.silu,
        )
        config = config_from_atoms(atoms)
        data = next(
            iter(
                torch_geometric.dataloader.DataLoader(
                    [AtomicData.from_config(config, z_table=table, cutoff=5.0)], batch_size=1
                )
            )
        )

        def call():
            with torch.no_grad():
                return model(data.to_dict(), compute_force=False)["node_feats"]

        n_features = 32
    call()  # warm-up
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    after = memory_status()
    return {
        **spec,
        "time_s": statistics.median(times),
        "features_per_atom": n_features,
        "peak_rss_mb": after.get("VmHWM"),
        "rss_before_mb": before.get("VmRSS"),
    }


def run_in_subprocess(spec: dict, timeout: float) -> dict:
    """One case in a fresh one-thread interpreter; the spec with the result or an ``error``."""
    result = run_worker(__file__, spec, timeout)
    if not result.pop("ok", False):
        return {**spec, "error": result.get("error", "failed")}
    return result


def size_table(max_species: int = 8) -> list[dict]:
    """Full-basis feature counts versus S beside the TR count (nu <= 3, l 6/4, n_max 8, K = 32)."""
    from tradens.invariants.product_basis import ace_product_basis_labels

    tr = len(ace_product_basis_labels(32, 3, ORDERS[3], mode="diagonal"))
    rows = []
    for S in range(1, max_species + 1):
        full = len(ace_product_basis_labels(8 * S, 3, ORDERS[3], mode="full"))
        rows.append({"n_species": S, "full_features": full, "tr_features_K32": tr})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--elements", type=int, default=25, help="number of elements S (default 25)"
    )
    parser.add_argument("--channels", default="16,32,64", help="comma-separated K values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="tiny system, one K, no MACE (smoke test)"
    )
    parser.add_argument(
        "--no-size-table", action="store_true", help="skip the full-basis size table"
    )
    parser.add_argument(
        "--output", default=str(Path(__file__).parent / "results" / "bench_ace.json")
    )
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(run_case, args.worker)
    repeat = 3 if args.quick else 10
    channels = [8] if args.quick else [int(k) for k in args.channels.split(",")]
    specs = [
        {
            "lib": "tradens",
            "nu_max": nu,
            "channels": K,
            "n_species": args.elements,
            "repeat": repeat,
            "repeats": 1 if args.quick else args.repeats,
        }
        for nu in (3, 4)
        for K in channels
    ]
    if not args.quick:
        try:
            import importlib.util

            if importlib.util.find_spec("mace") is not None:
                specs.append(
                    {
                        "lib": "mace",
                        "nu_max": 3,
                        "channels": 32,
                        "n_species": args.elements,
                        "repeat": repeat,
                        "repeats": args.repeats,
                    }
                )
        except ImportError:  # pragma: no cover
            pass
    rows = [run_in_subprocess(spec, timeout=900) for spec in specs]
    print(f"{'lib':8} {'nu':>3} {'K':>4} {'features':>9} {'time s':>8} {'peak MB':>8}")
    for row in rows:
        if "error" in row:
            print(f"{row['lib']:8} {row['nu_max']:>3} {row['channels']:>4}  error: {row['error']}")
            continue
        print(
            f"{row['lib']:8} {row['nu_max']:>3} {row['channels']:>4} {row['features_per_atom']:>9} "
            f"{row['time_s']:>8.3f} {row['peak_rss_mb'] or float('nan'):>8.0f}"
        )
    sizes = [] if (args.no_size_table or args.quick) else size_table()
    if sizes:
        print("\nfull ACE basis (nu <= 3, l 6/4, n_max 8) versus S; TR size (K = 32) is constant")
        print(f"{'S':>3} {'full':>10} {'TR K=32':>8}")
        for row in sizes:
            print(f"{row['n_species']:>3} {row['full_features']:>10} {row['tr_features_K32']:>8}")
    write_json_atomically(
        Path(args.output), {"machine": machine_info(), "cases": rows, "sizes": sizes}
    )
    return 0 if all("error" not in row or row["lib"] != "tradens" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
