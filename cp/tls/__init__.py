"""Transport security: verified TLS to the broker and to databases (docs/security.md)."""
