"""Benchmarks: ``python -m bench NAME [--quick]`` runs one and prints its figures as JSON."""
