"""Backends: leaves of the import graph (arrays in, arrays out; nothing from tradens).

* :mod:`.compiled` — optional numba CPU kernels.
* :mod:`.memory` — huge-page buffers for large outputs.
* :mod:`.determinism` — deterministic torch algorithms during CUDA calls.
"""
