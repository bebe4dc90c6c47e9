"""Stage 4: representations with one ``compute`` entry point.

* :mod:`.soap` — :class:`SOAP` (full and tensor-reduced power spectrum).
* :mod:`.ace` — :class:`ACE` (tensor-reduced ACE invariants, ``nu <= 4``).
* :mod:`.features` — the :class:`Features` result and batching.
"""

from .ace import ACE, AceHypers
from .features import Features
from .soap import SOAP

__all__ = ["ACE", "AceHypers", "Features", "SOAP"]
