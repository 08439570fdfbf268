"""Connector implementations, one module per kind; see ``workers.movement.registry``."""
