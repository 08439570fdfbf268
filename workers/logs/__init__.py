"""A daemon's log records on their way to the control plane (docs/logs.md)."""
