"""Reading configuration files as untrusted input: bounded bytes, strict UTF-8, a safe YAML loader."""
