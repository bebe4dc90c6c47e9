"""Full and tensor-reduced SOAP of a multi-element structure set, and the GAP drop-in.

Run: ``python examples/soap_quickstart.py``.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np

import tradens
from tradens.quip import Descriptor

DATA = Path(tradens.__file__).parent / "data" / "hea25_sample.xyz"


def main() -> None:
    frames = ase.io.read(DATA, ":4")
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    hypers = dict(cutoff=5.0, l_max=6, radial={"n_max": 8}, density={"sigma": 0.5}, species=species)

    full = tradens.SOAP(**hypers)
    print(f"S = {len(species)} elements: full SOAP has {full.n_features} features per atom")
    for channels in (8, 16, 32):
        tr = tradens.SOAP(
            **hypers,
            mixing={"mode": "radial+element", "channels": channels},
            coupling="elementwise",
        )
        features = tr.compute(frames)
        print(
            f"TR-SOAP K = {channels:2d}: {features.values.shape[1]:4d} features per atom, "
            f"{len(features)} atoms, first column {features.names[0]}"
        )

    # the GAP string interface gives the same numbers as the native API with GAP's weights
    species_str = " ".join(map(str, species))
    gap = Descriptor(
        f"soap cutoff=5.0 l_max=6 n_max=8 atom_sigma=0.5 n_species={len(species)} "
        f"species_Z={{{species_str}}} R_mix=T Z_mix=T sym_mix=T coupling=F K=16"
    )
    native = tradens.SOAP(
        **hypers,
        mixing={"mode": "radial+element", "channels": 16, "weights": "gap"},
        coupling="elementwise",
        covariance_sigma0=0.0,
    )
    difference = np.abs(gap.calc(frames[0])["data"] - native.compute(frames[0]).values).max()
    print(f"GAP string vs native API with GAP weights: max |difference| = {difference:.1e}")


if __name__ == "__main__":
    main()
