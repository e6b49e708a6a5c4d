"""Checks of the catalog: protocol side (being written)."""
