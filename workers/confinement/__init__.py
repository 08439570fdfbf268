"""Data-plane confinement: a daemon's file connectors stay under its allowed roots, and it uses
only the connector kinds and hosts it allows (docs/security.md#data-plane-confinement)."""
