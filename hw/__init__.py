"""Amaranth gateware: one block per file, each a ``wiring.Component``."""
