"""Stage 5: derivatives of representations and of models built on them.

Three derivative products, each behind one dispatcher in :mod:`.api`:

* the forces/stress vector-Jacobian product of a model (:func:`energy_forces_stress`);
* the per-centre descriptor Jacobian (:func:`descriptor_gradients`);
* the structure-summed Jacobian used to fit linear models (:mod:`.summed`).

The autograd/JVP path (:mod:`.reference`) is the test oracle of every fast path.
"""

from .api import apply_strain, descriptor_gradients, energy_forces_stress
from .results import DescriptorGradients, ModelOutput

__all__ = [
    "DescriptorGradients",
    "ModelOutput",
    "apply_strain",
    "descriptor_gradients",
    "energy_forces_stress",
]
