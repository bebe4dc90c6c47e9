"""Property-based tests of the input surface (hypothesis).

Every call with a random structure, random hypers or a random GAP descriptor
string either returns finite values that pass the invariance contract
(:mod:`tradens.testing`) or raises a ``ValueError``/``TypeError`` whose message
names the offending input; no other exception type escapes the public API.

The examples are derandomised (the same in every run) and few, so that the
suite stays fast in CI; set ``TRADENS_FUZZ_EXAMPLES`` for a longer local run.
"""

from __future__ import annotations

import math
import os
import re

import ase
import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tradens import ACE, SOAP  # noqa: E402
from tradens.interop.quip import _ALIASES, _DEFAULTS  # noqa: E402
from tradens.quip import Descriptor  # noqa: E402
from tradens.testing import (  # noqa: E402
    assert_permutation_covariant,
    assert_rotation_invariant,
    assert_translation_invariant,
)

FUZZ = settings(
    max_examples=int(os.environ.get("TRADENS_FUZZ_EXAMPLES", "25")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ELEMENTS = [0, 1, 6, 8, 26, 28, 29, 46, 79, 92, 118]  # 0 is ASE's "X": not an element
SPECIES = list(range(1, 119))  # every element has a channel (then mixed into K = 4)


def soap_many_elements(**kwargs) -> SOAP:
    options = dict(
        cutoff=3.0, l_max=2, radial={"n_max": 2}, species=SPECIES, mixing={"channels": 4}
    )
    options.update(kwargs)
    return SOAP(**options)


# ------------------------------------------------------------------ structures
def _cell(draw) -> np.ndarray:
    kind = draw(st.sampled_from(["none", "cubic", "sheared", "nearly singular", "2D", "1D"]))
    lengths = draw(st.lists(st.floats(2.0, 7.0), min_size=3, max_size=3))
    if kind == "none":
        return np.zeros((3, 3))
    cell = np.diag(lengths)
    if kind in ("sheared", "nearly singular"):
        shear = draw(st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3))
        cell[1, 0], cell[2, 0], cell[2, 1] = shear
    if kind == "nearly singular":
        # the third vector almost in the plane of the first two: thin (1e-1) or degenerate
        eps = draw(st.sampled_from([1e-1, 1e-9]))
        cell[2] = cell[0] + cell[1] + eps * np.array([0.0, 0.0, 1.0])
    if kind == "2D":
        cell[draw(st.integers(0, 2))] = 0.0
    if kind == "1D":
        keep = draw(st.integers(0, 2))
        cell[[d for d in range(3) if d != keep]] = 0.0
    return cell


@st.composite
def structures(draw) -> ase.Atoms:
    n_atoms = draw(st.integers(1, 5))
    numbers = draw(st.lists(st.sampled_from(ELEMENTS), min_size=n_atoms, max_size=n_atoms))
    scale = draw(st.sampled_from([1e-3, 1.0, 1.0, 1.0]))  # tiny, or ordinary coordinates
    coordinates = draw(st.lists(st.floats(-3.0, 3.0), min_size=3 * n_atoms, max_size=3 * n_atoms))
    offset = draw(st.sampled_from([0.0, 0.0, -7.5, 1e6, -1e8]))  # huge coordinates
    positions = np.asarray(coordinates).reshape(n_atoms, 3) * scale + offset
    pbc = draw(st.lists(st.booleans(), min_size=3, max_size=3))
    return ase.Atoms(numbers=numbers, positions=positions, cell=_cell(draw), pbc=pbc)


def _names_the_input(message: str) -> bool:
    return bool(re.search(r"structure \d+|atomic number|atoms? \d+", message))


@FUZZ
@given(atoms=structures(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_random_structures(atoms, dtype):
    original = atoms.copy()
    soap = soap_many_elements()
    try:
        values = soap.compute(atoms, dtype=dtype).values
    except (ValueError, TypeError) as error:
        assert _names_the_input(str(error)), str(error)
        return
    assert atoms == original and np.array_equal(atoms.positions, original.positions)
    assert values.shape == (len(atoms), soap.n_features) and values.dtype == np.dtype(
        str(dtype).replace("torch.", "")
    )
    assert np.isfinite(values).all()
    if dtype == torch.float64:
        assert_rotation_invariant(soap, atoms, atol=1e-7)
        assert_permutation_covariant(soap, atoms, atol=1e-7)
        assert_translation_invariant(soap, atoms, atol=1e-7)
        # float32 agrees with float64 wherever the structure sits
        single = soap.compute(atoms, dtype=torch.float32).values
        np.testing.assert_allclose(single, values, atol=2e-4, rtol=0)


@FUZZ
@given(atoms=structures())
def test_random_structures_ace(atoms):
    ace = ACE(
        cutoff=3.0, species=SPECIES, nu_max=3, l_max=(0, 2, 2), channels=3, radial={"n_max": 2}
    )
    try:
        values = ace.compute(atoms).values
    except (ValueError, TypeError) as error:
        assert _names_the_input(str(error)), str(error)
        return
    assert values.shape == (len(atoms), ace.n_features) and np.isfinite(values).all()
    # unnormalised: thin periodic cells give large values, so the tolerance scales with them;
    # pseudoscalar invariants (odd sum of l) are proper-rotation invariant only
    atol = 1e-7 * max(1.0, float(np.abs(values).max()))
    assert_rotation_invariant(ace, atoms, atol=atol)
    assert_permutation_covariant(ace, atoms, atol=atol)


ACE_VALID = {
    "nu_max": st.integers(1, 4),
    "l_max": st.integers(0, 3),
    "channels": st.integers(1, 4),
    "mode": st.sampled_from(["diagonal", "full"]),
    "parity": st.sampled_from(["all", "even"]),
}
ACE_INVALID = {
    "nu_max": (st.sampled_from([0, 5, -1, 2.0, "3", None]), ("nu_max",)),
    "l_max": (st.sampled_from([-1, 21, 1.5, "2", None]), ("l_max",)),
    "channels": (st.sampled_from([0, -2, 2.5, "4", 2**20 + 1, True]), ("channels",)),
    "mode": (st.sampled_from(["diagnal", "", 1]), ("mode",)),
    "parity": (st.sampled_from(["odd", "evn", None]), ("parity",)),
}


@FUZZ
@given(data=st.data())
def test_random_ace_hypers(data):
    values = {name: data.draw(strategy) for name, strategy in ACE_VALID.items()}
    bad = data.draw(st.sampled_from([None, *ACE_INVALID]))
    if bad is not None:
        values[bad] = data.draw(ACE_INVALID[bad][0])
    nu = values["nu_max"] if isinstance(values["nu_max"], int) else 3
    l_max = values["l_max"]
    try:
        ace = ACE(
            cutoff=3.0,
            species=[1, 8, 28],
            radial={"n_max": 2},
            nu_max=values["nu_max"],
            l_max=(l_max,) * max(nu, 1) if isinstance(l_max, int) else l_max,
            channels=values["channels"],
            mode=values["mode"],
            parity=values["parity"],
        )
    except (ValueError, TypeError) as error:
        message = str(error)
        assert bad is not None, f"valid ACE hypers {values} refused: {message}"
        assert any(word in message for word in ACE_INVALID[bad][1]), (bad, values[bad], message)
        return
    assert bad is None, f"invalid {bad}={values[bad]!r} accepted"
    x = ace.compute(MOLECULE).values
    assert x.shape == (3, ace.n_features) and np.isfinite(x).all()
    assert_rotation_invariant(ace, MOLECULE, atol=1e-9)


# ------------------------------------------------------------------ hypers
VALID = {
    "cutoff": st.floats(1.5, 6.0),
    "sigma": st.floats(0.2, 1.5),
    "n_max": st.integers(1, 6),
    "l_max": st.integers(0, 4),
    "channels": st.integers(1, 6),
    "mode": st.sampled_from(["radial+element", "element", "radial", None]),
    "coupling": st.sampled_from(["tensor", "elementwise"]),
    "weights": st.sampled_from(["random", "gap"]),
}
INVALID = {  # (strategy, words one of which the message must contain)
    "cutoff": (
        st.sampled_from([0.0, -1.0, math.nan, math.inf, "5", None, True]),
        ("cutoff",),
    ),
    "sigma": (st.sampled_from([0.0, -0.5, math.nan, "0.5", None]), ("sigma",)),
    "n_max": (st.sampled_from([0, -3, 2.5, "8", 257, 10**9, True, None]), ("n_max",)),
    "l_max": (st.sampled_from([-1, 21, 1.0, "6", None, 10**6]), ("l_max",)),
    "channels": (st.sampled_from([0, -1, 1.5, "16", 2**20 + 1, True]), ("channels",)),
    "mode": (st.sampled_from(["radial+elemnt", "", "Radial", 3]), ("mode",)),
    "coupling": (st.sampled_from(["tensr", "", None, 1]), ("coupling",)),
    "weights": (st.sampled_from(["randon", "", None, 0.5]), ("weights",)),
}


def _soap_kwargs(values: dict) -> dict:
    mixing = None
    if values["mode"] is not None:
        mixing = {
            "mode": values["mode"],
            "channels": values["channels"],
            "weights": values["weights"],
        }
    return dict(
        cutoff=values["cutoff"],
        density={"sigma": values["sigma"]},
        radial={"n_max": values["n_max"]},
        l_max=values["l_max"],
        species=[1, 8, 28],
        mixing=mixing,
        coupling=values["coupling"] if mixing is not None else "tensor",
    )


@st.composite
def hypers(draw):
    values = {name: draw(strategy) for name, strategy in VALID.items()}
    bad = draw(st.sampled_from([None, *INVALID]))
    if bad is not None:
        if bad in ("channels", "weights", "coupling") and values["mode"] is None:
            values["mode"] = "radial+element"  # these only exist with a mixing
        values[bad] = draw(INVALID[bad][0])
    return values, bad


MOLECULE = ase.Atoms("NiOH", positions=[[0, 0, 0], [1.7, 0.2, 0.1], [0.3, 1.1, -0.9]])


@FUZZ
@given(drawn=hypers())
def test_random_hypers(drawn):
    values, bad = drawn
    try:
        soap = SOAP(**_soap_kwargs(values))
    except (ValueError, TypeError) as error:
        message = str(error)
        assert bad is not None, f"valid hypers {values} refused: {message}"
        assert any(word in message for word in INVALID[bad][1]), (bad, values[bad], message)
        return
    assert bad is None, f"invalid {bad}={values[bad]!r} accepted"
    x = soap.compute(MOLECULE).values
    assert x.shape == (3, soap.n_features) and np.isfinite(x).all()
    assert np.abs(x).max() > 0
    assert_rotation_invariant(soap, MOLECULE, atol=1e-9)


# ------------------------------------------------------------------ GAP descriptor strings
GAP_BASE = [
    ("cutoff", "3.5"),
    ("l_max", "2"),
    ("n_max", "3"),
    ("atom_sigma", "0.5"),
    ("n_species", "2"),
    ("species_Z", "{28 29}"),
]
MIXING = [("R_mix", "T"), ("Z_mix", "T"), ("K", "3"), ("coupling", "F")]
KNOWN_KEYWORDS = set(_DEFAULTS) | set(_ALIASES)
ALLOY = ase.Atoms(
    "NiCuNi", positions=[[0, 0, 0], [1.8, 0.1, 0.2], [0.2, 1.9, 0.1]], cell=[3.6] * 3, pbc=True
)


def _text(pairs) -> str:
    return "soap " + " ".join(f"{k}={v}" if v is not None else k for k, v in pairs)


def _misspell(draw, key: str) -> str:
    position = draw(st.integers(0, len(key) - 1))
    action = draw(st.sampled_from(["drop", "double", "swap"]))
    if action == "drop":
        return key[:position] + key[position + 1 :]
    if action == "double":
        return key[:position] + key[position] + key[position:]
    other = draw(st.sampled_from("xqz_"))
    return key[:position] + other + key[position + 1 :]


@st.composite
def gap_strings(draw):
    pairs = list(GAP_BASE) + (MIXING if draw(st.booleans()) else [])
    kind = draw(
        st.sampled_from(
            ["valid", "misspelled", "unbalanced", "duplicate", "wrong type", "missing", "junk"]
        )
    )
    culprit = None
    index = draw(st.integers(0, len(pairs) - 1))
    key, value = pairs[index]
    if kind == "misspelled":
        culprit = _misspell(draw, key)
        assume(culprit.lower() not in KNOWN_KEYWORDS)  # e.g. "K" -> "z" is another keyword
        pairs[index] = (culprit, value)
    elif kind == "unbalanced":
        culprit = draw(st.sampled_from(["{", "}", '"']))
        pairs[5] = ("species_Z", {"{": "{28 29", "}": "28 29}", '"': '"28 29'}[culprit])
    elif kind == "duplicate":
        pairs.append((key, value))  # the same value again: the last one wins, as in GAP
        if key in ("cutoff", "atom_sigma"):
            pairs.append((key, "0.7"))
    elif kind == "wrong type":
        culprit = draw(st.sampled_from(["abc", "1.5.2", "T", "{1 2}", "-", "1e400"]))
        pairs[index] = (key, culprit)
    elif kind == "missing":
        culprit = key
        del pairs[index]
    elif kind == "junk":
        culprit = draw(st.sampled_from(["=", "==3", "soap", "cutoff", "K=", "{}"]))
        pairs.insert(draw(st.integers(0, len(pairs))), (culprit, None))
    return _text(pairs), kind, culprit, pairs


def _deduplicated(pairs) -> str:
    last = {}
    for key, value in pairs:
        last[key] = value
    return _text(last.items())


@FUZZ
@given(case=gap_strings())
def test_random_gap_strings(case):
    text, kind, culprit, pairs = case
    try:
        descriptor = Descriptor(text)
    except (ValueError, TypeError) as error:
        message = str(error)
        assert kind != "valid" and kind != "duplicate", f"{text!r} refused: {message}"
        shown = culprit.strip('{}"=') if culprit else ""
        assert shown.lower() in message.lower() or "descriptor" in message, (text, message)
        return
    data = descriptor.calc(ALLOY)["data"]
    assert data.shape == (3, descriptor.dimensions()) and np.isfinite(data).all()
    if kind == "duplicate":  # the last value of a repeated keyword counts, as in GAP
        expected = Descriptor(_deduplicated(pairs)).calc(ALLOY)["data"]
        np.testing.assert_array_equal(data, expected)
    assert_rotation_invariant(descriptor.soap, ALLOY, atol=1e-9)


@pytest.mark.parametrize("value", [None, 5, b"soap cutoff=3", ["soap"]])
def test_gap_string_of_the_wrong_type(value):
    with pytest.raises(TypeError, match="the descriptor must be a string"):
        Descriptor(value)
