"""Stage 2: the atomic density expansion and the one home of all per-pair maths.

* :mod:`.radial` — radial bases (GAP's Gaussian grid, GTO) and the cosine taper.
* :mod:`.angular` — real spherical harmonics.
* :mod:`.embeddings` — mixing matrices ``W`` (one-hot, random, GAP's generator, given).
* :mod:`.expansion` — density coefficients ``c [atom, S*N, lm]`` from pairs.
* :mod:`.derivatives` — r-derivatives of the per-pair terms (radial, taper, harmonics).
"""
