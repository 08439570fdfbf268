"""Prometheus metrics (docs/metrics.md): read at scrape time from SQL and the broker by one
collector, served by ``mycelial metrics``; the control plane's own counters are kept by its
workers in a Redis hash (``counters.py``)."""
