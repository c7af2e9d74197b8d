"""``rate_limit``: token bucket, sliding and fixed windows by ip, header, JWT claim or route.

``config.py`` (the options), ``keys.py`` (what is counted), ``jwt.py`` (bearer token
verification), ``algorithms.py`` (the algorithms and their memory twins; the Redis
halves are ``gateway/stores/lua/rl_*.lua``), ``policy.py`` (the chain element).
"""
