"""The ``cache`` policy: a two-tier (memory + Redis) shared HTTP cache per RFC 9111."""
