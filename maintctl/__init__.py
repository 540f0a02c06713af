"""maintctl keeps the PostgreSQL database of a data-import system healthy."""

__version__ = "0.1.0"
