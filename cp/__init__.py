"""Mycelial control plane: configuration, scheduling, dispatch and monitoring of edge daemons."""

__version__ = "0.1.0"
