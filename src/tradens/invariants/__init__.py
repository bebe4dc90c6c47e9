"""Stage 3: rotational invariants of densities.

* :mod:`.coupling` — real Clebsch-Gordan and generalised coupling coefficients.
* :mod:`.product_basis` — the ACE product basis (channel-diagonal and full).

The power spectrum (correlation order 2) lives with :class:`~tradens.SOAP` in
:mod:`tradens.representations.soap`.
"""
