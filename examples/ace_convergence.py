"""Tensor-reduced ACE converges to the full ACE basis as the number of channels K grows.

For structures of the HEA25 set (25 elements), the full species-resolved basis
(one-hot channels (z, n)) is regressed on tensor-reduced features with K random
channels; the relative least-squares residual falls with K. With channel-tuple
products over the K mixed channels ("full" mode) it reaches zero at
K = S * n_max; the channel-diagonal basis needs more channels (it spans only K
quadratic forms per l).

Run: ``python examples/ace_convergence.py [--data PATH] [--structures N]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ase.io
import numpy as np

import tradens

DEFAULT = Path(__file__).resolve().parents[1] / "src" / "tradens" / "data" / "hea25_sample.xyz"


def residual(features: np.ndarray, target: np.ndarray) -> float:
    """Relative residual of ``target`` regressed on ``features`` (with an intercept)."""
    design = np.hstack([features - features.mean(0), np.ones((len(features), 1))])
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.linalg.norm(target - design @ coefficients) / np.linalg.norm(target))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=str(DEFAULT), help="extxyz file (default: bundled HEA25 sample)"
    )
    parser.add_argument("--structures", type=int, default=12, help="number of structures to use")
    args = parser.parse_args(argv)
    frames = ase.io.read(args.data, f":{args.structures}")
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    common = dict(
        cutoff=4.0,
        species=species,
        nu_max=2,
        l_max=(0, 2),
        radial={"n_max": 1},
        density={"sigma": 0.5, "center_weight": 0.0},
    )
    full = tradens.ACE(weights="onehot", mode="full", **common).compute(frames).values
    full = full - full.mean(0)
    S = len(species)
    print(
        f"{len(frames)} structures, {sum(len(a) for a in frames)} atoms, S = {S}, "
        f"full basis: {full.shape[1]} features"
    )
    print(f"{'K':>4} {'mode':>9} {'features':>9} {'residual':>10}")
    for K in sorted({2, 4, S // 2, S - 2, S}):
        for mode in ("full", "diagonal"):
            tr = tradens.ACE(weights="random", mode=mode, channels=K, seed=3, **common)
            x = tr.compute(frames).values
            print(f"{K:>4} {mode:>9} {x.shape[1]:>9} {residual(x, full):>10.2e}")


if __name__ == "__main__":
    main()
