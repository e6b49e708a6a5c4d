"""Checks of the catalog: process side (being written)."""
