"""One strategy per module."""
