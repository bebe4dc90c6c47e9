"""TorchScript form of :class:`~tradens.representations.soap.SOAP`: features from pair vectors.

Exported potentials (:mod:`tradens.models.metatomic`) run inside MD engines that
supply their own neighbour list and take forces and stress by autograd. They
need the features as a function of the pair vectors in pure torch, with no
numba, numpy or Python objects in ``forward``. :class:`ScriptedSOAP` is that
function. Its per-pair maths is the library's own differentiable code, not a
copy: the radial basis (:func:`~tradens.density.radial.gaussian_grid_radial`,
:func:`~tradens.density.radial.hermite_spline`), the taper
(:func:`~tradens.density.radial.cosine_cutoff`) and the harmonics
(:func:`~tradens.density.angular.real_harmonics_by_degree`) are the functions that
:class:`~tradens.density.expansion.DensityExpansion` runs whenever a graph is
needed. The density accumulation and the power spectrum follow
:func:`~tradens.density.expansion.expand_density` and
:func:`~tradens.representations.soap.power_spectrum` in their simplest
(differentiable) form; ``tests/test_export.py`` checks them against
:meth:`SOAP.forward` to round-off on every mixing and coupling.

Equations (``docs/theory.md``):

.. math::

    A_{i,k,lm} = \\sum_j \\sum_n W_{s_j N + n,\\,k}\\, f_c(r_{ij}) R_{nl}(r_{ij})
    Y_{lm}(\\hat r_{ij}) + \\text{centre term}, \\qquad
    p_{i,(a,b),l} = \\frac{f_{ab}}{\\sqrt{2l+1}} \\sum_m A^{(1)}_{i,a,lm} A^{(2)}_{i,b,lm}.
"""

import math

import torch

from ..density.angular import l_of_lm, real_harmonics_by_degree, recurrence_constants
from ..density.radial import (
    GaussianGridBasis,
    GtoBasis,
    cosine_cutoff,
    gaussian_grid_radial,
    hermite_spline,
)
from .soap import SOAP

__all__ = ["ScriptedSOAP", "scripted_representation"]

_ROW_BLOCK = 4_000_000  # entries of the per-degree Gram blocks [rows, K1, K2] computed at once


class ScriptedSOAP(torch.nn.Module):
    """The features of a :class:`SOAP` (any mixing, coupling and radial basis) in TorchScript.

    Build it with :func:`scripted_representation`; call ``forward(vectors,
    centers, neighbors, numbers)``.

    Parameters
    ----------
    soap : SOAP
        The representation (its hypers, mixing matrices and plan are copied).
    dtype : torch.dtype
        Floating-point type of the constants (``torch.float64`` or ``torch.float32``).
    """

    # buffers (annotated for mypy; TorchScript reads them as tensor attributes)
    species_table: torch.Tensor
    centre_table: torch.Tensor
    grid: torch.Tensor
    transform: torch.Tensor
    series: torch.Tensor
    spline_values: torch.Tensor
    spline_slopes: torch.Tensor
    centre_values: torch.Tensor
    lm_to_l: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor
    plan_first: torch.Tensor
    plan_second: torch.Tensor
    plan_factor: torch.Tensor

    def __init__(self, soap: SOAP, dtype: torch.dtype = torch.float64):
        super().__init__()
        h = soap.hypers
        if h.average:
            raise ValueError("an averaged SOAP (average=True) has no per-atom energies to export")
        device = torch.device("cpu")
        self.l_max = int(h.l_max)
        self.n_max = int(h.radial.n_max)
        self.n_species = int(h.n_species)
        self.cutoff = float(h.cutoff.radius)
        self.cutoff_width = float(h.cutoff.width)
        self.normalize = bool(h.normalize)
        self.has_sigma0 = h.covariance_sigma0 is not None
        self.sigma0 = float(h.covariance_sigma0) if h.covariance_sigma0 is not None else 0.0
        self.n_features = int(soap.n_features)
        self.skip_unknown = h.unknown_species == "skip"
        # atomic number -> species channel (-1: not a species)
        species = soap.species_map.species
        table = torch.full((119,), -1, dtype=torch.long)
        if species is None:
            table.fill_(0)
        else:
            for index, z in enumerate(species):
                table[int(z)] = index
        self.register_buffer("species_table", table)
        centres = torch.zeros(119, dtype=torch.bool)
        if h.center_species is None:
            centres.fill_(True)
        else:
            for z in h.center_species:
                centres[int(z)] = True
        self.register_buffer("centre_table", centres)
        self.all_centres = h.center_species is None
        # radial basis
        radial = soap.radial_basis
        self.radial_kind = 0 if isinstance(radial, GaussianGridBasis) else 1
        if isinstance(radial, GaussianGridBasis):
            grid, transform, alpha, _, threshold, series = radial.script_constants(dtype, device)
            self.register_buffer("grid", grid)
            self.register_buffer("transform", transform)
            self.register_buffer("series", series)
            self.alpha, self.threshold = float(alpha), float(threshold)
            self.register_buffer("spline_values", torch.zeros(0, dtype=dtype))
            self.register_buffer("spline_slopes", torch.zeros(0, dtype=dtype))
            self.spacing = 0.0
        elif isinstance(radial, GtoBasis):
            self.register_buffer("grid", torch.zeros(0, dtype=dtype))
            self.register_buffer("transform", torch.zeros(0, dtype=dtype))
            self.register_buffer("series", torch.zeros(0, dtype=dtype))
            self.alpha, self.threshold = 0.0, 0.0
            self.register_buffer("spline_values", radial._values.to(dtype))
            self.register_buffer("spline_slopes", radial._derivs.to(dtype))
            self.spacing = float(radial._spacing)
        else:
            raise ValueError(f"no TorchScript form of the radial basis {type(radial).__name__}")
        center = radial.center_values(dtype, device)  # [N]
        self.register_buffer(
            "centre_values", center * (h.density.center_weight / math.sqrt(4.0 * math.pi))
        )
        self.centre_all_species = bool(soap.center_all_species)
        self.has_centre = h.density.center_weight != 0.0
        # harmonics
        diagonal, first, up, down = recurrence_constants(self.l_max)
        self.diagonal, self.first, self.up, self.down = diagonal, first, up, down
        self.register_buffer("lm_to_l", l_of_lm(self.l_max))
        # mixing W1 [S*N, K1], W2 [S*N, K2] (none: unmixed)
        w1, w2 = soap.mixing_matrices(dtype, device)
        self.mixed = w1 is not None
        self.two_densities = w1 is not None and w2 is not w1
        empty = torch.zeros(0, 0, dtype=dtype)
        self.register_buffer("w1", empty if w1 is None else w1.detach().clone())
        self.register_buffer("w2", empty if w2 is None or w2 is w1 else w2.detach().clone())
        # power-spectrum plan
        plan = soap.plan
        self.diagonal_plan = plan.structure == "diagonal"
        self.register_buffer("plan_first", torch.as_tensor(plan.first, dtype=torch.long))
        self.register_buffer("plan_second", torch.as_tensor(plan.second, dtype=torch.long))
        self.register_buffer("plan_factor", torch.as_tensor(plan.factor, dtype=dtype))
        # keep the unmixed channels' dense Gram for most pairs, else gather
        self.dense_plan = bool(plan.dense)
        self.row_block = _ROW_BLOCK

    # ---- the density
    def _radial(self, r: torch.Tensor) -> torch.Tensor:
        """Tapered radial terms ``[pair, N, L]``."""
        if self.radial_kind == 0:
            values = gaussian_grid_radial(
                r, self.grid, self.transform, self.alpha, self.l_max, self.threshold, self.series
            )
        else:
            values = hermite_spline(r, self.spline_values, self.spline_slopes, self.spacing)
            values = values.reshape(-1, self.n_max, self.l_max + 1)
        taper = cosine_cutoff(r, self.cutoff, self.cutoff_width)  # [pair]
        return values * taper[:, None, None]

    def density(
        self,
        vectors: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        species: torch.Tensor,
        weights: torch.Tensor,
    ) -> list[torch.Tensor]:
        """``A_l [atom, K, 2l+1]`` per degree (mixed with ``weights [S*N, K]``; unmixed
        ``c_l [atom, S*N, 2l+1]`` when ``weights`` is empty).

        ``vectors [pair, 3]`` from ``centers`` to ``neighbors`` (Å), ``species [atom]``.
        Kept by degree (never sliced out of one ``[atom, K, lm]`` tensor), so that the
        backward pass does not fill a zero tensor of the whole density per slice.
        """
        n_atoms = species.shape[0]
        n_l = self.l_max + 1
        s_j = species[neighbors]  # [pair]
        if self.skip_unknown:
            keep = s_j >= 0
            vectors, centers, s_j = vectors[keep], centers[keep], s_j[keep]
        r = torch.linalg.vector_norm(vectors, dim=1)  # [pair]
        radial = self._radial(r)  # [pair, N, L]
        harmonics = real_harmonics_by_degree(
            vectors, self.l_max, self.diagonal, self.first, self.up, self.down
        )  # [pair, 2l+1] per l
        mixed = weights.shape[0] > 0
        if mixed:
            n_channels = weights.shape[1]
            w = weights.reshape(self.n_species, self.n_max, n_channels)[s_j]  # [pair, N, K]
            source = torch.bmm(w.transpose(1, 2), radial)  # [pair, K, L]
            index = centers
            n_rows = n_atoms
        else:
            n_channels = self.n_max
            source = radial  # [pair, N, L]
            index = centers * self.n_species + s_j
            n_rows = n_atoms * self.n_species
        term = torch.zeros(0, 0, dtype=vectors.dtype, device=vectors.device)
        if self.has_centre:
            term = self._centre_term(species, vectors.dtype)  # [atom, S*N]
            if mixed:
                term = term @ weights  # [atom, K]
        # A_l[row] = Q_l[row]^T Y_l[row] over the row's pairs, padded to a common count J
        n_pairs = index.shape[0]
        counts = torch.bincount(index, minlength=n_rows)  # [rows]
        width = int(counts.max()) if n_pairs > 0 else 1
        order = torch.argsort(index, stable=True)
        sorted_index = index[order]
        first = torch.cumsum(counts, 0) - counts  # [rows]
        slot = torch.empty_like(index)
        slot[order] = sorted_index * width + (
            torch.arange(n_pairs, device=index.device) - first[sorted_index]
        )  # [pair] position in the padded [rows * J] lists
        padded = torch.zeros(
            n_l, n_rows * width, n_channels, dtype=vectors.dtype, device=vectors.device
        ).index_copy(1, slot, source.permute(2, 0, 1))  # [L, rows*J, K]
        by_degree = padded.reshape(n_l, n_rows, width, n_channels).unbind(0)  # [rows, J, K]
        blocks: list[torch.Tensor] = []
        for l in range(n_l):
            y_l = torch.zeros(
                n_rows * width, 2 * l + 1, dtype=vectors.dtype, device=vectors.device
            ).index_copy(0, slot, harmonics[l])  # [rows*J, 2l+1]
            block = torch.bmm(
                by_degree[l].transpose(1, 2), y_l.reshape(n_rows, width, 2 * l + 1)
            )  # [rows, K, 2l+1]
            if not mixed:
                block = block.reshape(n_atoms, self.n_species * self.n_max, 2 * l + 1)
            if l == 0 and self.has_centre:
                block = block + term[:, :, None]
            blocks.append(block)
        return blocks

    def _centre_term(self, species: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The centre atom's own Gaussian in the ``l = 0`` coefficients ``[atom, S*N]``."""
        n_atoms = species.shape[0]
        present = (species >= 0).to(dtype)  # [atom]
        if self.centre_all_species:
            owner = present[:, None].expand(n_atoms, self.n_species)  # [atom, S]
        else:
            channels = torch.arange(self.n_species, device=species.device)
            owner = (species[:, None] == channels[None, :]).to(dtype)  # [atom, S]
        values = self.centre_values.to(dtype)
        return (owner[:, :, None] * values[None, None, :]).reshape(n_atoms, -1)

    # ---- the invariants
    def products(self, y1: list[torch.Tensor], y2: list[torch.Tensor]) -> torch.Tensor:
        """Normalised power spectrum ``[row, F]`` of densities by degree ``[row, K, 2l+1]``."""
        n_rows = y1[0].shape[0]
        n_l = self.l_max + 1
        if self.diagonal_plan:
            columns: list[torch.Tensor] = []
            for l in range(n_l):
                columns.append((y1[l] * y2[l]).sum(-1) / math.sqrt(2 * l + 1))  # [row, K]
            values = torch.stack(columns, dim=-1).reshape(n_rows, -1)  # [row, K*L]
        else:
            k1, k2 = y1[0].shape[1], y2[0].shape[1]
            step = max(1, self.row_block // max(1, k1 * k2))
            # rows in chunks (bounds the [rows, K1, K2] Gram blocks); split, not sliced
            parts1 = [block.split(step, dim=0) for block in y1]
            parts2 = [block.split(step, dim=0) for block in y2]
            chunks: list[torch.Tensor] = []
            for chunk in range(len(parts1[0])):
                columns = []
                for l in range(n_l):
                    a = parts1[l][chunk]  # [row, K1, 2l+1]
                    b = parts2[l][chunk]  # [row, K2, 2l+1]
                    if self.dense_plan:
                        gram = torch.bmm(a, b.transpose(1, 2))  # [row, K1, K2]
                        pair_values = gram[:, self.plan_first, self.plan_second]  # [row, pair]
                    else:
                        pair_values = (a[:, self.plan_first] * b[:, self.plan_second]).sum(-1)
                    columns.append(pair_values * (self.plan_factor / math.sqrt(2 * l + 1)))
                chunks.append(torch.stack(columns, dim=-1).reshape(columns[0].shape[0], -1))
            if len(chunks) == 0:
                values = torch.zeros(0, self.n_features, dtype=y1[0].dtype, device=y1[0].device)
            else:
                values = torch.cat(chunks, dim=0)  # [row, pair*L]
        if self.normalize:
            norm = torch.linalg.vector_norm(values, dim=1, keepdim=True)
            values = values / torch.where(norm > 0, norm, torch.ones_like(norm))
        if self.has_sigma0:
            values = torch.cat([values, torch.full_like(values[:, :1], self.sigma0)], dim=1)
        return values

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Species channel of every atom ``[atom]`` (-1: not a species); errors on unknown ones."""
        if bool((numbers < 0).any()) or bool((numbers > 118).any()):
            raise ValueError("atomic numbers must be within 0..118")
        species = self.species_table[numbers]
        if not self.skip_unknown and bool((species < 0).any()):
            raise ValueError("an atom's element is not in this model's species list")
        return species

    def centre_rows(self, numbers: torch.Tensor) -> torch.Tensor:
        """Atoms that are centres (``center_species``), ``[row]``."""
        return self.centre_table[numbers].nonzero().squeeze(1)

    def forward(
        self,
        vectors: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        numbers: torch.Tensor,
    ) -> torch.Tensor:
        """Features ``[row, F]`` of the centre atoms (:meth:`centre_rows`).

        Parameters
        ----------
        vectors : torch.Tensor
            ``r_j - r_i`` (+ cell shift) of every pair within the cutoff, ``[pair, 3]`` (Å);
            a full list (both ``i -> j`` and ``j -> i``), periodic images included.
        centers, neighbors : torch.Tensor
            ``i`` and ``j`` of every pair ``[pair]``.
        numbers : torch.Tensor
            Atomic numbers ``[atom]``.
        """
        species = self.species_index(numbers)  # [atom]
        rows = self.centre_rows(numbers)  # [row]
        # the engine's list may have a longer cutoff (another model's, or a skin)
        inside = torch.linalg.vector_norm(vectors, dim=1) < self.cutoff  # [pair]
        vectors, centers, neighbors = vectors[inside], centers[inside], neighbors[inside]
        density = self.density(vectors, centers, neighbors, species, self._weights())
        if not self.all_centres:
            density = [block.index_select(0, rows) for block in density]  # [row, K, 2l+1]
        if self.two_densities:
            sizes = [self.w1.shape[1], self.w2.shape[1]]
            first: list[torch.Tensor] = []
            second: list[torch.Tensor] = []
            for block in density:
                pieces = torch.split(block, sizes, dim=1)  # [row, K1, 2l+1], [row, K2, 2l+1]
                first.append(pieces[0])
                second.append(pieces[1])
            return self.products(first, second)
        return self.products(density, density)

    def _weights(self) -> torch.Tensor:
        """``W1`` or ``[W1 W2]`` ``[S*N, K1(+K2)]``; empty when unmixed."""
        if self.two_densities:
            return torch.cat([self.w1, self.w2], dim=1)
        return self.w1


def scripted_representation(representation, dtype: torch.dtype = torch.float64) -> ScriptedSOAP:
    """The TorchScript-compatible form of ``representation`` (a :class:`SOAP`).

    Raises
    ------
    ValueError
        For a representation without one (e.g. :class:`~tradens.ACE`), naming it.
    """
    if not isinstance(representation, SOAP):
        raise ValueError(
            f"{type(representation).__name__} has no TorchScript form yet: only SOAP and "
            "tensor-reduced SOAP potentials can be exported"
        )
    return ScriptedSOAP(representation, dtype)
