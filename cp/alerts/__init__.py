"""Alerts: rules, their evaluation, and the notices delivered to people (docs/notifications.md)."""
