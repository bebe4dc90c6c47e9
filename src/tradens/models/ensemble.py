"""Committee (ensemble) of independently trained potentials: mean prediction and spread.

With few training structures per element (HEA25: 61-72 per fold for 25
elements) a single learned model overfits and its error depends on the seed
(readout initialisation, validation split, batch order). Averaging ``M``
members trained with seeds ``seed, seed + 1, ...`` reduces that variance, and
the members' spread is the usual committee estimate of the prediction
uncertainty (query-by-committee, active learning).

The ensemble is linear in the members, so its forces and stress are the means
of the members' forces and stress (exact derivatives of the mean energy).
"""

from __future__ import annotations

import numpy as np

from ..systems.batch import _as_frames
from ._base import PotentialBase
from .registry import model_classes, register_model

__all__ = ["EnsemblePotential"]


def _clone(estimator, **overrides):
    """An unfitted copy of ``estimator`` with some constructor parameters replaced."""
    params = estimator.get_params()
    params.update(overrides)
    return type(estimator)(**params)


def _reseeded(representation, offset: int):
    """A copy of ``representation`` whose random embedding is drawn with ``seed + offset``.

    Only random embeddings (``weights="random"``, top level as in ACE or under
    ``mixing`` as in SOAP) are reseeded; anything else is returned unchanged.
    """
    from ..hypers import from_dict, to_dict

    if offset == 0 or not hasattr(representation, "hypers"):
        return representation
    data = to_dict(representation.hypers)
    changed = False
    for block in (data, data.get("mixing")):
        if isinstance(block, dict) and block.get("weights") == "random" and "seed" in block:
            block["seed"] = int(block["seed"]) + int(offset)
            changed = True
    return type(representation)(from_dict(data)) if changed else representation


@register_model
class EnsemblePotential(PotentialBase):
    """Mean of ``n_members`` copies of ``estimator`` trained with different seeds.

    Parameters
    ----------
    estimator : PotentialBase
        An unfitted model with a ``seed`` parameter (e.g.
        :class:`~tradens.models.LearnedPotential`); it is cloned, never fitted itself.
    n_members : int
        Committee size ``M >= 1``.
    seed : int
        Member ``j`` is trained with ``seed + j``.
    vary_embedding : bool
        Also start member ``j`` from a random embedding drawn with the
        representation's seed ``+ j`` (when its embedding is ``"random"``), so
        that the members differ in their starting embedding too. Off by
        default: on HEA25 (folds 0 and 3) it made the committee's energies
        worse (330 / 401 against 236 / 316 meV/atom).

    Attributes
    ----------
    members_ : list of PotentialBase
        The fitted members.
    baseline_ : ElementBaseline
        The first member's per-element reference energies (for information).
    """

    def __init__(
        self, estimator=None, n_members: int = 4, seed: int = 0, vary_embedding: bool = False
    ):
        self.estimator = estimator
        self.n_members = n_members
        self.seed = seed
        self.vary_embedding = vary_embedding

    def _check_params(self) -> None:
        if self.estimator is None or not isinstance(self.estimator, PotentialBase):
            raise ValueError(
                f"estimator must be a tradens potential, got {type(self.estimator).__name__}"
            )
        if "seed" not in self.estimator.get_params():
            raise ValueError(f"{type(self.estimator).__name__} has no seed parameter to vary")
        if isinstance(self.estimator, EnsemblePotential):
            raise ValueError("an ensemble of ensembles is not supported")
        if int(self.n_members) != self.n_members or self.n_members < 1:
            raise ValueError(f"n_members must be a positive integer, got {self.n_members!r}")

    def fit(self, frames, validation=None, sample_weight=None, progress=None):
        """Train every member on ``frames`` (same data, seeds ``seed + j``).

        Parameters
        ----------
        frames : list of ase.Atoms
            Training structures.
        validation : list of ase.Atoms, optional
            Passed to each member's ``fit`` (default: each member holds out its
            own seeded share).
        sample_weight : array_like, optional
            ``[structure]`` weights, passed to each member.
        progress : callable, optional
            ``progress(j, member)`` after member ``j`` is fitted.

        Returns
        -------
        EnsemblePotential
            ``self``.
        """
        self._check_params()
        frames = _as_frames(frames)
        members = []
        for j in range(int(self.n_members)):
            overrides = {"seed": int(self.seed) + j}
            params = self.estimator.get_params()
            if self.vary_embedding and "representation" in params:
                overrides["representation"] = _reseeded(params["representation"], j)
            member = _clone(self.estimator, **overrides)
            kwargs = {}
            if validation is not None:
                kwargs["validation"] = validation
            if sample_weight is not None:
                kwargs["sample_weight"] = sample_weight
            member.fit(frames, **kwargs)
            members.append(member)
            if progress is not None:
                progress(j, member)
        self.members_ = members
        self.baseline_ = members[0].baseline_
        self.species_ = getattr(members[0], "species_", None)
        return self

    def predict(
        self,
        frames,
        *,
        forces: bool = True,
        stress: bool = True,
        batch_size: int = 16,
        return_std: bool = False,
    ) -> dict:
        """Mean energies (eV), forces (eV/Å) and stress (eV/Å³) of the members.

        With ``return_std=True`` the dict also holds ``"energy_std"``
        ``[structure]`` and, when computed, ``"forces_std"`` ``[atom, 3]`` and
        ``"stress_std"`` ``[structure, 6]``: the members' standard deviation
        (ddof 0), a committee estimate of the uncertainty.
        """
        self._check_fitted()
        frames = _as_frames(frames)
        predictions = [
            m.predict(frames, forces=forces, stress=stress, batch_size=batch_size)
            for m in self.members_
        ]
        out = {}
        for key in predictions[0]:
            stack = np.stack([p[key] for p in predictions])  # [member, ...]
            out[key] = stack.mean(axis=0)
            if return_std:
                out[f"{key}_std"] = stack.std(axis=0)
        return out

    def has_std(self) -> bool:
        """Committees always have a spread (``predict(..., return_std=True)``)."""
        return True

    def predict_atom_energies(self, frames) -> np.ndarray:
        """Mean per-atom energies (eV) of the members, ``[atom]``."""
        self._check_fitted()
        return np.mean([m.predict_atom_energies(frames) for m in self.members_], axis=0)

    def _check_fitted(self) -> None:
        if not hasattr(self, "members_"):
            raise ValueError("this EnsemblePotential is not fitted yet; call fit(frames) first")

    # ------------------------------------------------------------------ io
    def _get_state(self):

        members, arrays = [], {}
        for j, member in enumerate(self.members_):
            name = type(member).__name__
            if name not in model_classes():
                raise ValueError(f"cannot save an ensemble member of type {name}")
            meta, member_arrays = member._get_state()
            members.append({"class": name, **meta})
            arrays.update({f"member{j}/{key}": value for key, value in member_arrays.items()})
        params = {
            "n_members": int(self.n_members),
            "seed": int(self.seed),
            "vary_embedding": bool(self.vary_embedding),
        }
        return {"params": params, "fitted": {"members": members}}, arrays

    @classmethod
    def _from_state(cls, meta, arrays):

        classes = model_classes()
        members = []
        for j, member_meta in enumerate(meta["fitted"]["members"]):
            if member_meta.get("class") not in classes:
                raise ValueError(f"unknown ensemble member class {member_meta.get('class')!r}")
            prefix = f"member{j}/"
            member_arrays = {
                key[len(prefix) :]: value for key, value in arrays.items() if key.startswith(prefix)
            }
            members.append(classes[member_meta["class"]]._from_state(member_meta, member_arrays))
        model = cls(estimator=_clone(members[0]), **meta["params"])
        model.members_ = members
        model.baseline_ = members[0].baseline_
        model.species_ = getattr(members[0], "species_", None)
        return model
