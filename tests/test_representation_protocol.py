"""SOAP and ACE satisfy the :class:`tradens.representations.base.Representation` protocol."""

import torch

from tradens import ACE, SOAP, as_batch
from tradens.representations.base import Representation, cutoff_radius


def test_soap_and_ace_are_representations():
    soap = SOAP(cutoff=3.5, l_max=2, radial={"n_max": 3}, species=[28, 29])
    ace = ACE(cutoff=3.0, species=[28, 29], nu_max=2, l_max=(0, 2), channels=2, radial={"n_max": 3})
    for rep, radius in ((soap, 3.5), (ace, 3.0)):
        assert isinstance(rep, Representation)
        assert cutoff_radius(rep) == radius
        batch = as_batch({"positions": [[0.0, 0.0, 0.0], [0.0, 0.0, 2.2]], "numbers": [28, 29]})
        values, rows = rep.forward(batch)
        assert values.shape == (2, rep.n_features)
        assert torch.equal(rows, torch.arange(2))
        assert len(rep.feature_names()) == rep.n_features


def test_other_objects_are_not_representations():
    assert not isinstance(object(), Representation)
    assert not isinstance(torch.nn.Linear(2, 2), Representation)
