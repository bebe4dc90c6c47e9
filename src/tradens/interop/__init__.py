"""Interoperability with other codes: GAP ``soap`` descriptor strings (:mod:`.quip`)."""
