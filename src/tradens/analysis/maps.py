"""Low-dimensional maps of feature spaces: pooling, PCA, kernel PCA, plots, chemiscope.

* :func:`pool_features` turns per-atom :class:`~tradens.Features` into
  per-structure ones (mean or sum over the atoms of each structure).
* :class:`PCA` and :class:`KernelPCA` are scikit-learn-style estimators
  (``fit`` returns ``self``, fitted attributes end in ``_``) with a
  deterministic sign convention (the largest loading of every component is
  positive), so maps are reproducible.
* :func:`plot_map` writes a PNG scatter plot coloured by a category (element)
  or a number (energy, any per-structure property); :func:`write_chemiscope`
  writes an interactive chemiscope dataset (:mod:`tradens.analysis.chemiscope`).

Nothing here depends on the number of elements: features of any size work.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..models.selection import _top_left_singular, farthest_point_sampling
from ..representations.features import Features
from .chemiscope import map_properties, structure_properties, write_chemiscope

__all__ = [
    "PCA",
    "KernelPCA",
    "pool_features",
    "plot_map",
    "write_chemiscope",
    "structure_properties",
    "map_properties",
]


def pool_features(features: Features, how: str = "mean") -> Features:
    """Per-structure features ``[structure, feature]`` by ``"mean"`` or ``"sum"`` over rows.

    Returns a :class:`~tradens.Features` (numpy) whose rows are structures:
    ``structure = 0..S-1``, ``center = -1``, ``numbers = 0``; labels and names
    are kept. Structures without any row (e.g. no centre atom) get zeros.
    """
    if not isinstance(features, Features):
        raise TypeError(f"pool_features needs tradens.Features, got {type(features).__name__}")
    features = features.numpy()
    values = np.asarray(features.pooled(how))  # [structure, feature]
    n = values.shape[0]
    return Features(
        values,
        np.arange(n),
        np.full(n, -1),
        np.zeros(n, dtype=np.int64),
        dict(features.labels),
        list(features.names),
    )


def _matrix(x, name: str = "X") -> np.ndarray:
    if isinstance(x, Features):
        x = x.numpy().values
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(
            f"{name} must be 2-D [point, feature] with at least one row, got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _fitted_input(X, n_features: int, model: str) -> np.ndarray:
    """:func:`_matrix` of ``X`` with the feature count of the fitted ``model`` checked."""
    x = _matrix(X)
    if x.shape[1] != n_features:
        raise ValueError(f"X has {x.shape[1]} features, the {model} was fitted on {n_features}")
    return x


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Flip columns so that each one's largest-magnitude entry is positive."""
    index = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[index, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def _check_components(n_components, x: np.ndarray) -> int:
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}")
    if n_components > min(x.shape):
        raise ValueError(
            f"n_components={n_components} is larger than min(points, features)={min(x.shape)}"
        )
    return int(n_components)


class PCA:
    """Principal component analysis.

    Parameters
    ----------
    n_components : int
        Number of components (map dimensions).
    center : bool
        Subtract the mean before the decomposition.

    Attributes
    ----------
    mean_ : numpy.ndarray
        ``[feature]`` (zeros if ``center=False``).
    components_ : numpy.ndarray
        ``[component, feature]`` orthonormal directions.
    explained_variance_ : numpy.ndarray
        ``[component]`` variance along each direction (``ddof=1``).
    explained_variance_ratio_ : numpy.ndarray
        ``[component]`` fraction of the total variance.
    n_features_in_ : int
        Feature size seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [2.0, 1.0], [2.0, -1.0]])
    >>> PCA(1).fit(x).components_.round(6).tolist()
    [[1.0, 0.0]]
    """

    def __init__(self, n_components: int = 2, *, center: bool = True):
        self.n_components = n_components
        self.center = center

    def fit(self, X, y=None) -> PCA:
        """Fit on ``X [point, feature]``; returns ``self``."""
        x = _matrix(X)
        k = _check_components(self.n_components, x)
        self.mean_ = x.mean(axis=0) if self.center else np.zeros(x.shape[1])
        xc = x - self.mean_  # [point, feature]
        u = _fix_signs(_top_left_singular(xc.T, k))  # [feature, component]: right singular vectors
        self.components_ = np.ascontiguousarray(u.T)  # [component, feature]
        projected = xc @ u  # [point, component]
        dof = max(x.shape[0] - 1, 1)
        self.explained_variance_ = (projected**2).sum(axis=0) / dof
        total = float((xc**2).sum()) / dof
        self.explained_variance_ratio_ = (
            self.explained_variance_ / total if total > 0 else np.zeros(k)
        )
        self.n_features_in_ = x.shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        """Coordinates ``[point, component]`` of ``X [point, feature]``."""
        x = _fitted_input(X, self.n_features_in_, "PCA")
        return (x - self.mean_) @ self.components_.T

    def fit_transform(self, X, y=None) -> np.ndarray:
        """``fit(X).transform(X)``."""
        return self.fit(X).transform(X)


class KernelPCA:
    """Kernel PCA, optionally fitted on farthest-point-sampled landmarks.

    Kernels between rows ``x``, ``y``: ``"linear"`` ``x.y``; ``"polynomial"``
    ``(x.y + coef0)^degree`` (``degree=2, coef0=0`` is the usual SOAP kernel
    with ``zeta = 2``); ``"rbf"`` ``exp(-gamma |x-y|^2)`` with ``gamma``
    defaulting to 1 / median squared distance between fit points. The kernel
    is centred in feature space.

    Parameters
    ----------
    n_components : int
        Number of components.
    kernel : {"polynomial", "linear", "rbf"}
        Kernel function.
    degree : int
        Exponent of the polynomial kernel (``zeta``).
    coef0 : float
        Constant of the polynomial kernel.
    gamma : float, optional
        Width of the rbf kernel, 1/(feature units)^2.
    max_fit_points : int
        Fit on at most this many points chosen by farthest point sampling
        (Nystroem-style landmarks); all points can then be transformed. Bounds
        the memory at ``8 * max_fit_points^2`` bytes.

    Attributes
    ----------
    X_fit_ : numpy.ndarray
        ``[landmark, feature]`` points the kernel is built on.
    fit_indices_ : numpy.ndarray
        Their rows in the fitted ``X``.
    eigenvalues_ : numpy.ndarray
        ``[component]`` of the centred kernel.
    alphas_ : numpy.ndarray
        ``[landmark, component]`` eigenvectors divided by sqrt(eigenvalue).
    gamma_ : float or None
        The rbf width used.
    """

    def __init__(
        self,
        n_components: int = 2,
        *,
        kernel: str = "polynomial",
        degree: int = 2,
        coef0: float = 0.0,
        gamma: float | None = None,
        max_fit_points: int = 2000,
    ):
        self.n_components = n_components
        self.kernel = kernel
        self.degree = degree
        self.coef0 = coef0
        self.gamma = gamma
        self.max_fit_points = max_fit_points

    def _kernel(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dot = x @ y.T  # [x, y]
        if self.kernel == "linear":
            return dot
        if self.kernel == "polynomial":
            return (dot + self.coef0) ** self.degree
        if self.gamma_ is None:  # set by fit for the rbf kernel
            raise RuntimeError("the rbf kernel needs gamma_: call fit first")
        d2 = np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * dot, 0.0)
        return np.exp(-self.gamma_ * d2)

    def fit(self, X, y=None) -> KernelPCA:
        """Fit on ``X [point, feature]`` (or its FPS landmarks); returns ``self``."""
        if self.kernel not in ("polynomial", "linear", "rbf"):
            raise ValueError(f"kernel must be 'polynomial', 'linear' or 'rbf', got {self.kernel!r}")
        if self.kernel == "polynomial" and (
            not isinstance(self.degree, (int, np.integer)) or self.degree < 1
        ):
            raise ValueError(f"degree must be an integer >= 1, got {self.degree!r}")
        if not isinstance(self.max_fit_points, (int, np.integer)) or self.max_fit_points < 2:
            raise ValueError(f"max_fit_points must be an integer >= 2, got {self.max_fit_points!r}")
        x = _matrix(X)
        if x.shape[0] > self.max_fit_points:
            self.fit_indices_ = np.sort(farthest_point_sampling(x, self.max_fit_points))
        else:
            self.fit_indices_ = np.arange(x.shape[0])
        self.X_fit_ = x[self.fit_indices_]  # [landmark, feature]
        m = self.X_fit_.shape[0]
        k = self.n_components
        if not isinstance(k, (int, np.integer)) or not 1 <= k < m:
            raise ValueError(f"n_components must be an integer in [1, {m - 1}], got {k!r}")
        self.gamma_ = None
        if self.kernel == "rbf":
            if self.gamma is None:
                n2 = (self.X_fit_**2).sum(1)
                d2 = np.maximum(n2[:, None] + n2[None, :] - 2 * self.X_fit_ @ self.X_fit_.T, 0.0)
                median = float(np.median(d2[np.triu_indices(m, 1)]))
                self.gamma_ = 1.0 / median if median > 0 else 1.0
            elif not (isinstance(self.gamma, (int, float)) and self.gamma > 0):
                raise ValueError(f"gamma must be a positive number, got {self.gamma!r}")
            else:
                self.gamma_ = float(self.gamma)
        kernel = self._kernel(self.X_fit_, self.X_fit_)  # [landmark, landmark]
        self.kernel_col_mean_ = kernel.mean(axis=0)  # [landmark]
        self.kernel_mean_ = float(kernel.mean())
        centered = (
            kernel
            - self.kernel_col_mean_[None, :]
            - self.kernel_col_mean_[:, None]
            + self.kernel_mean_
        )
        values, vectors = np.linalg.eigh(centered)  # ascending
        values, vectors = values[::-1][:k], _fix_signs(vectors[:, ::-1][:, :k])
        if values[-1] <= 1e-12 * max(values[0], 1e-300):
            raise ValueError(f"the centred kernel has rank < n_components={k}")
        self.eigenvalues_ = values
        self.alphas_ = vectors / np.sqrt(values)  # [landmark, component]
        self.n_features_in_ = x.shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        """Coordinates ``[point, component]`` of ``X [point, feature]``."""
        x = _fitted_input(X, self.n_features_in_, "kernel PCA")
        kernel = self._kernel(x, self.X_fit_)  # [point, landmark]
        centered = (
            kernel
            - kernel.mean(axis=1, keepdims=True)
            - self.kernel_col_mean_[None, :]
            + self.kernel_mean_
        )
        return centered @ self.alphas_

    def fit_transform(self, X, y=None) -> np.ndarray:
        """``fit(X).transform(X)``."""
        return self.fit(X).transform(X)


def plot_map(
    path,
    coordinates,
    *,
    categories=None,
    values=None,
    title: str | None = None,
    color_label: str | None = None,
    order=None,
    axis_labels: tuple[str, str] = ("component 1", "component 2"),
    dpi: int = 150,
) -> None:
    """Write a 2-D scatter plot as PNG (atomically; needs matplotlib).

    Parameters
    ----------
    path : str or path-like
        Output file (``.png``).
    coordinates : array-like
        ``[point, 2]`` map coordinates (only the first two columns are used).
    categories : sequence, optional
        ``[point]`` labels (e.g. element symbols): one colour and legend
        entry each, any number of categories.
    values : array-like, optional
        ``[point]`` numbers (e.g. energy per atom, eV): colour scale with a
        colour bar. Give at most one of ``categories`` and ``values``.
    order : sequence, optional
        Legend order of the categories (default: order of appearance).
    title, color_label : str, optional
        Plot title and colour-bar (or legend) label.
    axis_labels : (str, str)
        Axis labels.
    dpi : int
        Resolution.
    """
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "PNG maps need the optional package 'matplotlib' (pip install tradens[plot])"
        ) from None
    from ..io import atomic_path

    xy = np.asarray(coordinates, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ValueError(f"coordinates must be [point, >=2], got shape {xy.shape}")
    if categories is not None and values is not None:
        raise ValueError("give categories or values, not both")
    n = xy.shape[0]
    size = float(np.clip(3000.0 / max(n, 1), 2.0, 40.0))
    figure = Figure(figsize=(7.5, 5.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    if categories is not None:
        labels = np.asarray([str(c) for c in categories])
        if labels.shape[0] != n:
            raise ValueError(f"categories must have {n} entries, got {labels.shape[0]}")
        unique = list(dict.fromkeys(labels.tolist()))
        if order is not None:
            rank = {str(c): i for i, c in enumerate(order)}
            unique.sort(key=lambda c: rank.get(c, len(rank)))
        cmap = matplotlib.colormaps["tab20" if len(unique) <= 20 else "turbo"]
        for index, label in enumerate(unique):
            mask = labels == label
            color = cmap(index % 20 if len(unique) <= 20 else index / max(len(unique) - 1, 1))
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=color, label=label, linewidths=0)
        ncol = max(1, math.ceil(len(unique) / 25))
        ax.legend(
            title=color_label,
            fontsize="x-small",
            markerscale=max(1.0, 20.0 / size) ** 0.5,
            ncol=ncol,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            frameon=False,
        )
    elif values is not None:
        colour = np.asarray(values, dtype=np.float64)
        if colour.shape != (n,):
            raise ValueError(f"values must have shape [{n}], got {colour.shape}")
        points = ax.scatter(xy[:, 0], xy[:, 1], s=size, c=colour, cmap="viridis", linewidths=0)
        figure.colorbar(points, ax=ax, label=color_label)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, linewidths=0)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if title:
        ax.set_title(title, fontsize="medium")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
