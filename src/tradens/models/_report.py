"""What a fit reports: errors of every fitted property beside the trivial predictor.

Every potential's ``fit`` leaves a :class:`FitReport` in ``fit_report_``: for
each fitted property its training and validation (cross-validation or
held-out) RMSE next to those of the *trivial predictor* (the per-element
baseline for energies, zero for forces and stress), the property weight that
was used and the chosen regularisation. :func:`warn_about` raises a
:class:`FitWarning` when the model is worse than the trivial predictor on a
property or when the chosen regularisation sits at an edge of its grid.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

__all__ = ["FitWarning", "PropertyErrors", "FitReport", "warn_about", "UNITS", "TOLERANCE"]

#: A model counts as worse than the trivial predictor when its RMSE exceeds the trivial one's by
#: more than this fraction (round-off level differences are not reported).
TOLERANCE = 1e-3

#: Units of the RMSEs as reported (the report stores eV-based values, prints meV).
UNITS = {"energy": "meV/atom", "forces": "meV/A", "stress": "meV/A^3"}


class FitWarning(UserWarning):
    """A fit that is worse than the trivial predictor, or a regularisation at a grid edge."""


@dataclass(frozen=True)
class PropertyErrors:
    """Errors of one fitted property (eV/atom, eV/Å or eV/Å^3; NaN where not computed).

    Attributes
    ----------
    name : str
        ``"energy"``, ``"forces"`` or ``"stress"``.
    key : str
        Label key the values were read from.
    n_labels : int
        Labelled structures.
    weight : float
        Property weight ``w_p`` used in the loss.
    train_rmse, validation_rmse : float
        The model's training and validation RMSE.
    trivial_train_rmse, trivial_validation_rmse : float
        The same for the trivial predictor (baseline energies, zero forces/stress).
    """

    name: str
    key: str
    n_labels: int
    weight: float
    train_rmse: float
    validation_rmse: float
    trivial_train_rmse: float
    trivial_validation_rmse: float

    @property
    def ratio(self) -> float:
        """Validation RMSE over the trivial predictor's (training RMSE if no validation)."""
        model, trivial = self.validation_rmse, self.trivial_validation_rmse
        if not math.isfinite(model) or not math.isfinite(trivial):
            model, trivial = self.train_rmse, self.trivial_train_rmse
        if not (math.isfinite(model) and math.isfinite(trivial)) or trivial <= 0:
            return math.nan
        return model / trivial


@dataclass(frozen=True)
class FitReport:
    """Errors of a fit beside the trivial predictor (``model.fit_report_``).

    Attributes
    ----------
    model : str
        Class name of the potential.
    validation : str
        How the validation errors were obtained (``"5-fold CV"``, ``"held-out"``, ``"none"``).
    properties : tuple of PropertyErrors
        One entry per fitted property.
    alpha : float or None
        Chosen relative regularisation (linear and kernel models).
    alphas : tuple of float
        The grid it was chosen from.
    solver : str or None
        ``"primal"`` or ``"dual"`` (linear and kernel models).
    skipped : dict
        Properties not fitted, with the reason.
    notes : tuple of str
        What was adjusted automatically (e.g. a raised weight).
    """

    model: str
    validation: str
    properties: tuple[PropertyErrors, ...]
    alpha: float | None = None
    alphas: tuple[float, ...] = ()
    solver: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> PropertyErrors:
        for row in self.properties:
            if row.name == name:
                return row
        raise KeyError(f"no fitted property {name!r}; fitted: {[p.name for p in self.properties]}")

    @property
    def alpha_at_edge(self) -> str | None:
        """``"lower"``/``"upper"`` when ``alpha`` is the smallest/largest of a grid of >= 3."""
        if self.alpha is None or len(self.alphas) < 3:
            return None
        if self.alpha <= min(self.alphas):
            return "lower"
        if self.alpha >= max(self.alphas):
            return "upper"
        return None

    def worse_than_trivial(self) -> list[str]:
        """Properties whose (validation) RMSE exceeds the trivial predictor's."""
        return [
            p.name for p in self.properties if math.isfinite(p.ratio) and p.ratio > 1.0 + TOLERANCE
        ]

    def to_dict(self) -> dict:
        """JSON-ready form (saved with the model)."""
        out = asdict(self)
        out["properties"] = [asdict(p) for p in self.properties]
        out["alphas"] = list(self.alphas)
        out["notes"] = list(self.notes)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> FitReport:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["properties"] = tuple(PropertyErrors(**p) for p in data["properties"])
        data["alphas"] = tuple(data.get("alphas", ()))
        data["notes"] = tuple(data.get("notes", ()))
        return cls(**data)

    def __str__(self) -> str:
        head = f"{self.model} fit"
        if self.alpha is not None:
            head += f", alpha {self.alpha:.3g}"
            if len(self.alphas) > 1:
                head += f" of {min(self.alphas):.3g}..{max(self.alphas):.3g} ({len(self.alphas)})"
        if self.solver:
            head += f", {self.solver} solver"
        val = self.validation
        lines = [
            head,
            f"{'property':9s} {'unit':9s} {'labels':>6s} {'weight':>9s} {'train':>10s} "
            f"{'trivial':>10s} {val:>10s} {'trivial':>10s} {'ratio':>6s}",
        ]
        for p in self.properties:
            ratio = p.ratio
            flag = "  WORSE than trivial" if p.name in self.worse_than_trivial() else ""
            lines.append(
                f"{p.name:9s} {UNITS[p.name]:9s} {p.n_labels:6d} {p.weight:9.3g} "
                f"{_milli(p.train_rmse)} {_milli(p.trivial_train_rmse)} "
                f"{_milli(p.validation_rmse)} {_milli(p.trivial_validation_rmse)} "
                f"{ratio:6.2f}{flag}"
            )
        lines.append(
            "(RMSE in milli-units; trivial = per-element baseline energies, zero forces and "
            "stress; ratio = model / trivial on validation)"
        )
        for name, reason in self.skipped.items():
            lines.append(f"not fitted: {name} ({reason})")
        lines.extend(f"note: {note}" for note in self.notes)
        edge = self.alpha_at_edge
        if edge:
            lines.append(f"alpha at the {edge} edge of its grid")
        return "\n".join(lines)


def _milli(value: float) -> str:
    return f"{1000.0 * value:10.4g}" if math.isfinite(value) else f"{'-':>10s}"


def warn_about(report: FitReport, stacklevel: int = 3) -> None:
    """Raise a :class:`FitWarning` for properties worse than trivial and for a grid-edge alpha."""
    worse = report.worse_than_trivial()
    if worse:
        parts = []
        for p in report.properties:
            if p.name in worse:
                valid = math.isfinite(p.validation_rmse) and math.isfinite(
                    p.trivial_validation_rmse
                )
                model = p.validation_rmse if valid else p.train_rmse
                trivial = p.trivial_validation_rmse if valid else p.trivial_train_rmse
                parts.append(f"{p.name} {1000 * model:.4g} vs {1000 * trivial:.4g} {UNITS[p.name]}")
        warnings.warn(
            f"{report.model}: worse than the trivial predictor (baseline energies, zero forces "
            f"and stress) on {', '.join(worse)} ({'; '.join(parts)}); the labels may be "
            "inconsistent or the weights unbalanced: see fit_report_",
            FitWarning,
            stacklevel=stacklevel,
        )
    edge = report.alpha_at_edge
    if edge:
        warnings.warn(
            f"{report.model}: the chosen alpha={report.alpha:.3g} is at the {edge} edge of the "
            f"grid {min(report.alphas):.3g}..{max(report.alphas):.3g}; extend alphas "
            f"{'downwards' if edge == 'lower' else 'upwards'}",
            FitWarning,
            stacklevel=stacklevel,
        )
