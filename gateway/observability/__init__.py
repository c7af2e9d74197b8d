"""Metrics, logs and tracing, wired by the chain runner and the front-ends."""
