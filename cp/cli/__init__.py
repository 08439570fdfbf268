"""The ``mycelial`` command line."""
