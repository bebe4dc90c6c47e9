"""Typed, frozen, serialisable hyperparameters.

Every hyper object is a keyword-only frozen dataclass validated on creation.
``to_dict`` gives plain JSON/YAML data with a ``"type"`` tag and ``from_dict``
rebuilds the object through a closed registry (no arbitrary imports). Wherever a
hyper object is expected, the matching dict is accepted too.

Units: lengths in Å. Counting conventions: ``n_max`` is a **count** of radial
functions (as GAP and dscribe), ``l_max`` is the **largest** angular degree
(inclusive), ``channels`` (``K``) is a count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

__all__ = ["Cutoff", "Density", "RadialBasis", "Mixing", "SoapHypers", "to_dict", "from_dict"]


def _positive(name: str, value: float) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


# Sane upper bounds (far above any published setting; memory is checked separately, see
# tradens.kernels.budget): radial functions, angular degree, mixed channels.
MAX_N = 256
MAX_L = 20
MAX_CHANNELS = 2**20


def _count(name: str, value: int, minimum: int = 1, maximum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


@dataclass(frozen=True, kw_only=True)
class Cutoff:
    """Spherical cutoff with a cosine taper.

    Parameters
    ----------
    radius : float
        Cutoff radius ``r_c`` in Å (GAP ``cutoff``, dscribe ``r_cut``).
    width : float
        Width of the cosine taper below the cutoff, Å (GAP
        ``cutoff_transition_width``); 0 gives a hard step.
    """

    radius: float
    width: float = 0.5

    def __post_init__(self):
        _positive("cutoff radius", self.radius)
        if (
            not isinstance(self.width, (int, float))
            or isinstance(self.width, bool)
            or not 0.0 <= self.width <= self.radius
        ):
            raise ValueError(
                f"cutoff width must be in [0, radius={self.radius}], got {self.width!r}"
            )


@dataclass(frozen=True, kw_only=True)
class Density:
    """Gaussian-smeared neighbour density.

    Parameters
    ----------
    sigma : float
        Gaussian width in Å (GAP ``atom_sigma``, dscribe ``sigma``).
    center_weight : float
        Weight of the centre atom's own Gaussian (GAP ``central_weight``).
    center_all_species : bool or None
        Put the centre term into every species channel (GAP
        ``central_reference_all_species``); ``None`` means True for a single
        species and False otherwise, as GAP.
    """

    sigma: float = 0.5
    center_weight: float = 1.0
    center_all_species: bool | None = None

    def __post_init__(self):
        _positive("atom sigma", self.sigma)
        if (
            not isinstance(self.center_weight, (int, float))
            or isinstance(self.center_weight, bool)
            or not math.isfinite(self.center_weight)
        ):
            raise ValueError(f"center_weight must be a finite number, got {self.center_weight!r}")


@dataclass(frozen=True, kw_only=True)
class RadialBasis:
    """Radial basis functions.

    Parameters
    ----------
    kind : {"gaussian_grid", "gto"}
        ``"gaussian_grid"`` is GAP's EQUISPACED_GAUSS; ``"gto"`` are
        orthonormalised Gaussian-type orbitals.
    n_max : int
        Number of radial functions (a count), 1..256.
    error_exponent : float
        GAP ``basis_error_exponent`` (grid extent of ``"gaussian_grid"``).
    """

    kind: str = "gaussian_grid"
    n_max: int = 8
    error_exponent: float = 10.0

    def __post_init__(self):
        if self.kind not in ("gaussian_grid", "gto"):
            raise ValueError(
                f"radial basis kind must be 'gaussian_grid' or 'gto', got {self.kind!r}"
            )
        _count("n_max", self.n_max, maximum=MAX_N)
        _positive("error_exponent", self.error_exponent)


@dataclass(frozen=True, kw_only=True)
class Mixing:
    """Tensor reduction: mixing of density channels into ``K`` channels.

    Parameters
    ----------
    mode : {"radial+element", "element", "radial"}
        What is mixed: species and radial channels together (the paper's
        R+Z, GAP ``R_mix Z_mix``), species only (GAP ``Z_mix``) or radial only
        (GAP ``R_mix``). See :mod:`tradens.density.embeddings` for the layouts.
    channels : int
        Number of mixed channels ``K`` (GAP ``K``), 1..2**20; a configuration
        whose channel pairs or weights exceed the available memory is refused
        when the representation is built (:mod:`tradens.kernels.budget`).
    weights : {"random", "gap", "given", "onehot"}
        Source of the weights: a seeded torch Gaussian, GAP's generator (bit
        for bit, ``seed`` is GAP's ``mix_shift``), a user matrix
        (``matrix``), or the identity (the one-hot embedding, which reproduces
        the full SOAP).
    seed : int
        Seed of ``"random"``; ``mix_shift`` of ``"gap"``.
    symmetric : bool
        One embedding for both densities of a product (GAP ``sym_mix=T``) or
        two independent ones.
    matrix : tuple or None
        For ``weights="given"``: the free parameters as nested tuples, shape
        ``[S*N, K]``, ``[S, K]`` or ``[N, K]`` by mode; for
        ``symmetric=False`` a pair of such matrices.
    learnable : bool
        Register the weights as ``torch.nn.Parameter`` (trainable embedding).
    """

    mode: str = "radial+element"
    channels: int = 16
    weights: str = "random"
    seed: int = 0
    symmetric: bool = True
    matrix: Any = None
    learnable: bool = False

    def __post_init__(self):
        if self.mode not in ("radial+element", "element", "radial"):
            raise ValueError(
                f"mixing mode must be 'radial+element', 'element' or 'radial', got {self.mode!r}"
            )
        _count("channels (K)", self.channels, maximum=MAX_CHANNELS)
        if self.weights not in ("random", "gap", "given", "onehot"):
            raise ValueError(
                f"mixing weights must be 'random', 'gap', 'given' or 'onehot', got {self.weights!r}"
            )
        if (self.weights == "given") != (self.matrix is not None):
            raise ValueError("a mixing matrix must be given exactly when weights='given'")
        if self.matrix is not None:
            object.__setattr__(self, "matrix", _freeze(self.matrix))


def _atomic_numbers(name: str, value: object) -> tuple[int, ...]:
    """``value`` as a tuple of distinct atomic numbers >= 1; a ValueError names ``name``."""
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        items = tuple(cast(Iterable[Any], value))  # not iterable: TypeError; items checked below
        if any(
            isinstance(z, (bool, np.bool_))
            or not isinstance(z, (int, np.integer, float, np.floating))
            or not float(z).is_integer()
            for z in items
        ):
            raise TypeError
        numbers = tuple(int(z) for z in items)
    except TypeError:
        raise ValueError(
            f"{name} must be a list of atomic numbers (integers), got {value!r}"
        ) from None
    if not numbers or min(numbers) < 1 or len(set(numbers)) != len(numbers):
        raise ValueError(f"{name} must be distinct atomic numbers >= 1, got {list(numbers)}")
    return numbers


def _freeze(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return float(value)


@dataclass(frozen=True, kw_only=True)
class SoapHypers:
    """Hyperparameters of the (tensor-reduced) SOAP power spectrum.

    Parameters
    ----------
    cutoff : Cutoff
        Cutoff radius and taper.
    density : Density
        Gaussian width and centre weight.
    radial : RadialBasis
        Radial basis and ``n_max``.
    l_max : int
        Largest angular degree (inclusive), 0..20.
    species : tuple of int or None
        Atomic numbers, in channel order. ``None``: all atoms are one species.
    mixing : Mixing or None
        Tensor reduction; ``None`` gives the full species-resolved SOAP.
    coupling : {"tensor", "elementwise"}
        Products between all pairs of (mixed) channels, or only between
        matching channels (the paper's ``p_kl``; GAP ``coupling=F``).
    normalize : bool
        Divide every feature vector by its Euclidean norm.
    average : bool
        One feature vector per structure (coefficients summed over centres).
    diagonal_radial : bool
        Keep only ``n = n'`` pairs (full SOAP only).
    covariance_sigma0 : float or None
        If set, append one extra column holding this value (GAP layout).
    center_species : tuple of int or None
        Only atoms of these elements are centres (``None``: all atoms).
    unknown_species : {"error", "skip"}
        Elements missing from ``species``: raise, or ignore them as neighbours.
    """

    cutoff: Cutoff
    density: Density = field(default_factory=Density)
    radial: RadialBasis = field(default_factory=RadialBasis)
    l_max: int = 6
    species: tuple[int, ...] | None = None
    mixing: Mixing | None = None
    coupling: str = "tensor"
    normalize: bool = True
    average: bool = False
    diagonal_radial: bool = False
    covariance_sigma0: float | None = None
    center_species: tuple[int, ...] | None = None
    unknown_species: str = "error"

    def __post_init__(self):
        for name, cls in (("cutoff", Cutoff), ("density", Density), ("radial", RadialBasis)):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, from_dict(value, expected=cls))
            elif not isinstance(value, cls):
                raise TypeError(
                    f"{name} must be a {cls.__name__} or a dict, got {type(value).__name__}"
                )
        if isinstance(self.mixing, dict):
            object.__setattr__(self, "mixing", from_dict(self.mixing, expected=Mixing))
        _count("l_max", self.l_max, minimum=0, maximum=MAX_L)
        if self.species is not None:
            object.__setattr__(self, "species", _atomic_numbers("species", self.species))
        if self.center_species is not None:
            object.__setattr__(
                self, "center_species", _atomic_numbers("center_species", self.center_species)
            )
        if self.covariance_sigma0 is not None and (
            not isinstance(self.covariance_sigma0, (int, float))
            or isinstance(self.covariance_sigma0, bool)
            or not math.isfinite(self.covariance_sigma0)
        ):
            raise ValueError(
                f"covariance_sigma0 must be a finite number or None, got {self.covariance_sigma0!r}"
            )
        if self.coupling not in ("tensor", "elementwise"):
            raise ValueError(f"coupling must be 'tensor' or 'elementwise', got {self.coupling!r}")
        if self.unknown_species not in ("error", "skip"):
            raise ValueError(
                f"unknown_species must be 'error' or 'skip', got {self.unknown_species!r}"
            )
        if self.diagonal_radial and self.mixing is not None:
            raise ValueError("diagonal_radial cannot be combined with mixing")
        if self.coupling == "elementwise" and self.mixing is None:
            raise ValueError("coupling='elementwise' needs a mixing (channels to match)")
        if self.mixing is not None and self.mixing.weights == "onehot":
            n_species = 1 if self.species is None else len(self.species)
            expected = {
                "radial+element": n_species * self.radial.n_max,
                "element": n_species,
                "radial": self.radial.n_max,
            }[self.mixing.mode]
            if self.mixing.channels != expected:
                raise ValueError(
                    f"one-hot {self.mixing.mode} mixing needs channels={expected}, "
                    f"got {self.mixing.channels}"
                )

    @property
    def n_species(self) -> int:
        """Number of species channels ``S``."""
        return 1 if self.species is None else len(self.species)


_REGISTRY = {cls.__name__: cls for cls in (Cutoff, Density, RadialBasis, Mixing, SoapHypers)}


def register(cls):
    """Add a hyper dataclass to the closed ``from_dict`` registry (used by tradens modules)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def to_dict(hypers) -> dict:
    """Plain-data form of a hyper object, with ``"type"`` tags (JSON/YAML safe)."""
    out: dict[str, Any] = {"type": type(hypers).__name__}
    for f in dataclasses.fields(hypers):
        value = getattr(hypers, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = _thaw(value)
        out[f.name] = value
    return out


def _thaw(value):
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def from_dict(data: dict, expected: type | None = None):
    """Rebuild a hyper object from :func:`to_dict` output (closed registry)."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a dict of hypers, got {type(data).__name__}")
    data = dict(data)
    name = data.pop("type", None) or (expected.__name__ if expected else None)
    if name not in _REGISTRY:
        raise ValueError(f"unknown hyper type {name!r}; known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[name]
    if expected is not None and cls is not expected:
        raise ValueError(f"expected hypers of type {expected.__name__}, got {name}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {name} hyper(s): {sorted(unknown)}; valid: {sorted(names)}")
    for key, value in data.items():
        if isinstance(value, dict) and "type" in value:
            data[key] = from_dict(value)
        elif isinstance(value, list) and key != "matrix":
            data[key] = tuple(value)
    return cls(**data)
