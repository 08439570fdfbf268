"""Daemon log records on the control plane: stored in bulk, queried, grouped by shape (docs/logs.md)."""
