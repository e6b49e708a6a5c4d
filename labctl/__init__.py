"""labctl: a containerized network lab for teaching how servers listen for requests."""

__version__ = "0.1.0"
