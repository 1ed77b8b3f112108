"""evolution-reconciler: keeps Evolution API servers in line with the database."""

__version__ = "0.1.0"
