"""Checks of the catalog: concurrency side (being written)."""
