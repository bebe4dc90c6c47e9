"""Maps and selection of a multi-element data set with tensor-reduced SOAP.

Computes tensor-reduced SOAP features of the bundled HEA sample (19 elements),
then

1. a PCA map of the atoms coloured by element and a PCA map of the
   mean-pooled structures coloured by energy per atom (PNG files),
2. a chemiscope file of the structure map (open it at https://chemiscope.org),
3. farthest point sampling and CUR selection of structures and of atoms.

Run: ``python examples/map_and_select.py --output-dir maps`` (a few seconds).
The same from the command line: ``tradens map --example -o hea25_map.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ase.io
from ase.data import chemical_symbols

import tradens
from tradens.analysis.maps import (
    PCA,
    KernelPCA,
    plot_map,
    pool_features,
    structure_properties,
    write_chemiscope,
)
from tradens.analysis.selection import cur_selection, farthest_point_sampling

DATA = Path(tradens.__file__).parent / "data" / "hea25_sample.xyz"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("maps"), help="where the files go")
    parser.add_argument("--channels", type=int, default=8, help="K of the tensor reduction")
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)

    frames = ase.io.read(DATA, ":")
    species = sorted({int(z) for atoms in frames for z in atoms.numbers})
    soap = tradens.SOAP(
        cutoff=5.0,
        l_max=4,
        radial={"n_max": 6},
        species=species,
        mixing={"mode": "radial+element", "channels": args.channels},
    )
    features = soap.compute(frames)  # [atom, feature]; the size does not depend on len(species)
    print(
        f"{len(frames)} structures, {len(features)} atoms, {len(species)} elements, "
        f"{features.n_features} features per atom"
    )

    # 1. atom map coloured by element, structure map coloured by energy per atom
    atoms_xy = PCA(2).fit_transform(features.values)  # [atom, 2]
    elements = [chemical_symbols[z] for z in features.numbers]
    plot_map(
        args.output_dir / "atoms_pca.png",
        atoms_xy,
        categories=elements,
        color_label="element",
        order=[chemical_symbols[z] for z in species],
        title="TR-SOAP atoms",
    )
    pooled = pool_features(features, "mean")  # [structure, feature]
    pca = PCA(2).fit(pooled.values)
    structures_xy = pca.transform(pooled.values)  # [structure, 2]
    energy = structure_properties(frames)["energy_per_atom"]  # eV/atom
    plot_map(
        args.output_dir / "structures_pca.png",
        structures_xy,
        values=energy,
        color_label="energy per atom (eV)",
        title="TR-SOAP structures (mean pooled)",
    )
    kpca_xy = KernelPCA(2, kernel="polynomial", degree=2).fit_transform(pooled.values)
    print(
        "PCA explained variance ratio (structures): "
        + ", ".join(f"{r:.3f}" for r in pca.explained_variance_ratio_)
    )

    # 2. chemiscope: both projections; x/y default to the first one
    write_chemiscope(
        args.output_dir / "structures.json.gz",
        frames,
        {"PCA": structures_xy, "KPCA": kpca_xy},
        color="energy_per_atom",
        description="tensor-reduced SOAP of the bundled HEA sample",
    )

    # 3. selection
    fps, hausdorff = farthest_point_sampling(pooled.values, 4, return_distances=True)
    cur = cur_selection(pooled.values, 4)
    atoms_fps = farthest_point_sampling(features.values, 5)
    print(
        f"FPS structures: {fps.tolist()} (Hausdorff distances "
        + ", ".join(f"{d:.3f}" for d in hausdorff[1:])
        + ")"
    )
    print(f"CUR structures: {cur.tolist()}")
    print(
        "FPS atoms (structure, centre, element): "
        + ", ".join(
            f"({features.structure[i]}, {features.center[i]}, {elements[i]})" for i in atoms_fps
        )
    )
    print(
        f"wrote {', '.join(sorted(p.name for p in args.output_dir.iterdir()))} to {args.output_dir}"
    )


if __name__ == "__main__":
    main()
