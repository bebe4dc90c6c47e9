"""Data analysis on features: information imbalance, maps, selection, chemiscope files."""

from .imbalance import Imbalance, information_imbalance, random_projection
from .maps import PCA, KernelPCA, plot_map, pool_features, write_chemiscope
from .selection import CUR, FPS, cur_selection, farthest_point_sampling

__all__ = [
    "CUR",
    "FPS",
    "PCA",
    "Imbalance",
    "KernelPCA",
    "cur_selection",
    "farthest_point_sampling",
    "information_imbalance",
    "plot_map",
    "pool_features",
    "random_projection",
    "write_chemiscope",
]
