"""Public entry point of the ASE calculator (implemented in :mod:`tradens.models.calculator`)."""

from .models.calculator import TradensCalculator

__all__ = ["TradensCalculator"]
