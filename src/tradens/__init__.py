"""tradens: tensor-reduced atomic density representations.

Full and tensor-reduced SOAP (GAP-exact), tensor-reduced ACE, gradients,
regression and analysis. See ``docs/theory.md`` for the equations.
"""

from ._version import __version__
from .gradients import descriptor_gradients, energy_forces_stress
from .hypers import Cutoff, Density, Mixing, RadialBasis, SoapHypers, from_dict, to_dict
from .representations.ace import ACE, AceHypers
from .representations.features import Features
from .representations.soap import SOAP
from .systems.batch import Batch, System, as_batch

__all__ = [
    "__version__",
    "ACE",
    "AceHypers",
    "Batch",
    "Cutoff",
    "Density",
    "Features",
    "Mixing",
    "RadialBasis",
    "SOAP",
    "SoapHypers",
    "System",
    "as_batch",
    "descriptor_gradients",
    "energy_forces_stress",
    "from_dict",
    "to_dict",
]
