"""A policy gateway: a reverse proxy that applies declarative YAML policies."""

__version__ = "0.1.0"
